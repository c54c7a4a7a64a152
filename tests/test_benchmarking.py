"""The benchmark timer: warm-up call apart, repeat budget respected."""

import time

from himl.benchmarking import alternating_call_times, median_time, timed_against


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


def test_alternation_times_short_calls_in_bursts_and_long_calls_once_per_round():
    """A call shorter than `burst_s` is timed over a burst after an untimed call each round
    (its sample the burst's mean), a long one once per round; the rounds alternate."""
    order = []

    def short():
        order.append("s")
        time.sleep(0.001)

    def long():
        order.append("L")
        time.sleep(0.06)

    (short_t, short_min, rounds), (long_t, _, long_rounds) = alternating_call_times(
        [short, long], repeats=4, budget_s=60, burst_s=0.05
    )
    assert rounds == long_rounds == 4
    assert order[:4] == ["s", "s", "L", "L"]  # each: warm-up, then the first call's timing
    per_round = "".join(order[4:]).split("L")
    assert per_round[-1] == "" and len(per_round) == 4 + 1
    burst = len(per_round[0]) - 1  # each round: one untimed call and the burst
    assert 2 <= burst <= 50 and all(len(r) == burst + 1 for r in per_round[:-1])
    assert 0.001 <= short_min <= short_t < 0.02 < 0.06 <= long_t


def test_alternation_reads_the_given_clock_and_shrinks_to_the_budget():
    ticks = iter(range(10**6))
    timings = alternating_call_times(
        [lambda: time.sleep(0.01)], repeats=100, budget_s=0.001, clock=lambda: next(ticks)
    )
    ((median, fastest, rounds),) = timings
    assert rounds == 3 and median == fastest == 1.0  # one tick per clock read pair


def test_run_on_one_cpu_pins_the_process_and_sets_the_xla_flag_once():
    """In a subprocess (it changes the process): one CPU, XLA's Eigen pool off, idempotent."""
    import json
    import os
    import subprocess
    import sys

    code = (
        "import json, os; from himl.benchmarking import run_on_one_cpu; "
        "run_on_one_cpu(); run_on_one_cpu(); "
        "print(json.dumps([os.environ['XLA_FLAGS'], sorted(os.sched_getaffinity(0))]))"
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    flags, cpus = json.loads(out.stdout)
    assert flags == "--xla_cpu_multi_thread_eigen=false" and len(cpus) == 1


def test_a_reference_slower_than_its_cap_is_timed_by_one_call():
    """`timed_against`: a reference whose warm-up call exceeds `ref_max_s` runs once; a
    fast one alternates with himl's call every round."""
    counts = {"himl": 0, "ref": 0}

    def himl():
        counts["himl"] += 1

    def slow_ref():
        counts["ref"] += 1
        time.sleep(0.03)

    (_, _, rounds), (ref_s, ref_min, ref_rounds) = timed_against(
        himl, slow_ref, repeats=3, ref_max_s=0.01
    )
    assert counts["ref"] == 1 and ref_rounds == 1 and ref_s == ref_min >= 0.03
    assert rounds == 3 and counts["himl"] > 3
    timings = timed_against(himl, slow_ref, repeats=3, ref_max_s=1.0)
    assert counts["ref"] == 1 + 1 + 2 + 3 and timings[1][2] == 3  # probe, warm-up, first, rounds
