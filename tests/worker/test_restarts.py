"""The fleet's restart rules: exponential backoff, give-up within a window, reset after health."""

from __future__ import annotations

from worker.restarts import CrashHistory, RestartPolicy

POLICY = RestartPolicy(base_s=1.0, cap_s=8.0, max_crashes=5, window_s=60.0)


def test_backoff_doubles_up_to_the_cap() -> None:
    history = CrashHistory(policy=POLICY)
    delays = []
    for n in range(4):
        history.started(now_s=n)
        delays.append(history.record(now_s=n + 0.5).delay_s)
    assert delays == [1.0, 2.0, 4.0, 8.0]
    assert POLICY.delay_s(10) == 8.0


def test_gives_up_at_max_crashes_within_the_window() -> None:
    history = CrashHistory(policy=POLICY)
    verdicts = []
    for n in range(5):
        history.started(now_s=n * 10)
        verdicts.append(history.record(now_s=n * 10 + 1))
    assert [v.give_up for v in verdicts] == [False, False, False, False, True]
    assert verdicts[-1].crashes == 5


def test_crashes_older_than_the_window_do_not_count() -> None:
    history = CrashHistory(policy=POLICY)
    for t in (0.0, 1.0, 2.0, 3.0):
        history.started(now_s=t)
        history.record(now_s=t + 0.1)
    # A fifth crash 70 s after the first ones: only itself is recent.
    history.started(now_s=69.0)
    verdict = history.record(now_s=70.0)
    assert not verdict.give_up and verdict.crashes == 1 and verdict.delay_s == 1.0


def test_a_worker_that_ran_for_a_window_resets_the_count() -> None:
    history = CrashHistory(policy=POLICY)
    for t in (0.0, 1.0, 2.0, 3.0):
        history.started(now_s=t)
        history.record(now_s=t + 0.5)
    history.started(now_s=4.0)
    # Ran healthily from 4 s to 64.5 s, a full window, then crashed.
    verdict = history.record(now_s=64.5)
    assert not verdict.give_up and verdict.crashes == 1 and history.crashes == 1


def test_a_short_run_keeps_the_count() -> None:
    history = CrashHistory(policy=POLICY)
    for t in (0.0, 1.0, 2.0, 3.0):
        history.started(now_s=t)
        history.record(now_s=t + 0.5)
    history.started(now_s=4.0)
    assert history.record(now_s=30.0).give_up


def test_verdict_changes_nothing_and_reset_starts_afresh() -> None:
    history = CrashHistory(policy=POLICY)
    history.record(now_s=1.0)
    assert history.verdict(now_s=2.0).crashes == 2
    assert history.crashes == 1
    history.reset()
    assert history.crashes == 0 and history.verdict(now_s=3.0).crashes == 1
