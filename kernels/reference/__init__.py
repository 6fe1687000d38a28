"""Readable reference implementations, one module per op, shared by tests and benchmarks."""
