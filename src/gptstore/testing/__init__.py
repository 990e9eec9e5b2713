"""Helpers for tests, examples and benchmarks: tiny random models that need no network."""
