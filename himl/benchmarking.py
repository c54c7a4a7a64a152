"""Timing for the benchmarks in `experiments/`: steady-state medians, compile time apart."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_time(
    fn: Callable[[], object], repeats: int, budget_s: float = 30.0
) -> tuple[float, int, float]:
    """`(median seconds, calls timed, first-call seconds)` of `fn()`.

    The first call (compilation included) is timed apart and not in the median. When one
    call is so slow that `repeats` calls would exceed `budget_s`, fewer are timed (>= 3).
    `fn` must block until its result is ready (e.g. end in `jax.block_until_ready`).
    """
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    n = repeats if first * repeats <= budget_s else max(3, int(budget_s / max(first, 1e-9)))
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return (statistics.median(times) if times else first), n, first
