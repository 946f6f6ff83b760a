"""The record: every market message of the ``deltas`` topic archived in MySQL
(``docs/data.md``), and the read side over it."""
