"""Feed adapters, the sans-I/O market book and the book processor."""
