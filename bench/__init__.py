"""The benchmark harness (issue 3): ``python -m bench.run``."""
