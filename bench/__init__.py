"""Benchmarks and load generation: `charrnn bench ...`, `make load`.

Not part of the serving image or a serve-only install: nothing in `service/` or `training/` imports it.
"""
