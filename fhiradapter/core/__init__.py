"""Functional core: pure functions over values (no files, network, clock, environment or randomness)."""
