"""Test data kept in the repository (see ``feeds/README.md`` for sources and licences)."""

from pathlib import Path

#: Real odds-feed recordings (Betfair stream files, Sportradar UOF messages).
FEEDS = Path(__file__).parent / "feeds"
