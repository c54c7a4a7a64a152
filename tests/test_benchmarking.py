"""The benchmark timer: warm-up call apart, repeat budget respected."""

import time

from himl.benchmarking import median_time


def test_first_call_is_timed_apart_and_repeats_are_counted():
    calls = []
    median, n, first = median_time(lambda: calls.append(time.sleep(0.002)), repeats=4)
    assert n == 4 and len(calls) == 5
    assert first >= 0.002 and median >= 0.002


def test_slow_calls_shrink_to_the_budget_but_not_below_three():
    calls = []
    _, n, _ = median_time(lambda: calls.append(time.sleep(0.01)), repeats=100, budget_s=0.001)
    assert n == 3 and len(calls) == 4
    _, n, first = median_time(lambda: None, repeats=0)
    assert n == 0 and first >= 0.0
