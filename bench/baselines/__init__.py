"""The alternatives the benchmark serves the same model with, each run as `python -m bench.baselines.NAME`."""
