"""The fan-out seam: brokers (memory, Redis), snapshot and history storage, the per-node
hub that hands one encoded frame to every subscriber, and the relay that keeps a gateway's
local books current and heals sequence gaps."""
