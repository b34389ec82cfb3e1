"""The benchmark harness (issue 3): ``python -m bench.run``."""

from pathlib import Path

# The checkout: every child of the bench runs in it, and the report is written into it.
ROOT = Path(__file__).resolve().parent.parent
