"""Timing for the benchmarks in `experiments/`: steady-state medians, compile time apart."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np

# A call shorter than this is timed in a burst of back-to-back calls after an untimed one
# (its mean is one sample): alone, the first call after the other code's runs with cold
# caches, and at N = 32 took 3x longer than in a loop (0.5 vs 0.15 ms for a HiMulConE step).
BURST_S = 0.005

# What a benchmark times: wall-clock seconds, or the CPU seconds of this process (all its
# threads). On one pinned CPU (`run_on_one_cpu`) the CPU seconds are the work a call takes,
# nearly unaffected by other processes sharing the cores (which only stretch wall-clock).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}

SINGLE_THREAD_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false"


def run_on_one_cpu() -> None:
    """Pin this process to one CPU and XLA's CPU backend to one thread.

    Call before JAX's backend starts (before importing anything that computes with jax):
    XLA sizes its CPU thread pool from the CPUs this process may run on when its backend
    starts (the Eigen flag alone leaves XLA's own pool on every core: its calls then took
    ~20% more CPU time, and 3x more for a 0.3 ms step, in thread hand-offs). Set torch's
    threads to 1 as well to compare with it.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if SINGLE_THREAD_XLA_FLAGS not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {SINGLE_THREAD_XLA_FLAGS}".strip()
    if hasattr(os, "sched_setaffinity"):  # Linux; elsewhere XLA may use every core
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


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


def alternating_call_times(
    fns: Sequence[Callable[[], object]],
    repeats: int,
    budget_s: float = 30.0,
    clock: Callable[[], float] = time.perf_counter,
    burst_s: float | None = None,
) -> list[tuple[float, float, int]]:
    """`[(median s, min s, rounds)]` per function, the calls alternating between them (one
    burst of each per round), so that a slow spell of a shared machine hits all of them
    alike: the ratio of their medians is then far steadier than that of separate runs.

    Each function's sample per round is its mean over a burst of `~burst_s` (default
    `BURST_S`) of calls after an untimed one (calls of `burst_s` or longer: one timed call),
    the steady state that a loop of calls sees, for every code alike. As `median_time`:
    fewer rounds (>= 3) when `repeats` rounds would exceed `budget_s`. `clock` is what is
    read (e.g. `time.process_time` for the CPU seconds of this process). The minimum is
    the call least disturbed by other processes on a shared machine.
    """
    burst_s = BURST_S if burst_s is None else burst_s
    firsts = []
    for fn in fns:
        fn()  # warm-up
        t0 = time.perf_counter()
        fn()
        firsts.append(time.perf_counter() - t0)
    bursts = [max(1, int(burst_s / max(first, 1e-9))) for first in firsts]
    per_round = sum(f * (b + (b > 1)) for f, b in zip(firsts, bursts, strict=True))
    rounds = repeats if per_round * repeats <= budget_s else max(3, int(budget_s / per_round))
    samples = []
    for _ in range(rounds):
        times = []
        for fn, burst in zip(fns, bursts, strict=True):
            if burst > 1:
                fn()
            t0 = clock()
            for _ in range(burst):
                fn()
            times.append((clock() - t0) / burst)
        samples.append(times)
    samples = np.asarray(samples)
    return [(float(np.median(t)), float(t.min()), rounds) for t in samples.T]


def timed_against(
    himl_call: Callable[[], object],
    ref_call: Callable[[], object],
    repeats: int,
    clock: Callable[[], float] = time.perf_counter,
    ref_max_s: float | None = None,
) -> list[tuple[float, float, int]]:
    """`[(median s, min s, rounds)]` of himl's and a reference's call, alternating (short
    ones in bursts), so that a slow spell of a shared machine hits both alike (timed one
    after the other, CPU ratios swung 2-5x between runs).

    A reference whose first (warm-up) call takes longer than `ref_max_s` is timed by that
    call alone (1 round; e.g. PML's NTXentLoss took 25 s at B = 512 on the CPU), so that
    one slow reference cannot use up a run's time.
    """
    t0 = clock()
    ref_call()
    first = clock() - t0
    if ref_max_s is not None and first > ref_max_s:
        (himl,) = alternating_call_times([himl_call], repeats, 30.0, clock)
        return [himl, (first, first, 1)]
    return alternating_call_times([himl_call, ref_call], repeats, 30.0, clock)
