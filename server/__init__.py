"""The gateway: starlette app, client sessions, transports, REST and its settings type.
It imports nothing of the feeds; the ``oddstream`` command that runs it is in ``oddstream/``."""
