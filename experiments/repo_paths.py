"""Puts this checkout's `tests/` on `sys.path`, so that a benchmark run as
`python experiments/bench_x.py` imports the NumPy references of `tests/references` under
the name the tests use (`references`). Import it before `references`."""

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
