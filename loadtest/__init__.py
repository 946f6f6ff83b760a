"""Benchmarks and load tools. They print figures; nothing here asserts a timing."""
