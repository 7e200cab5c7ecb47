"""Clocks (issue #2): the simulated clock walks historical ticks in order; the live clock runs cycles
through APScheduler, exactly ``max_ticks`` of them, and never two at once even when a cycle is slower
than the interval. The live tests use a 1 s interval and take about 4 s together."""
from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hydra_engine.clock import LiveClock, SimulatedClock
from hydra_engine.domain import UTC

T0 = datetime(2024, 3, 4, tzinfo=UTC)


# --------------------------------------------------------------------------- simulated
def test_simulated_clock_visits_every_tick_in_order_and_now_follows():
    ticks = [T0 + timedelta(hours=h) for h in range(5)]
    clock = SimulatedClock(ticks)
    assert clock.now() == ticks[0]
    seen = []

    def on_tick(now):
        assert clock.now() == now  # "now" is the tick being processed
        seen.append(now)

    assert clock.run(on_tick) == 5
    assert seen == ticks
    assert clock.now() == ticks[-1]


def test_simulated_clock_stops_when_the_callback_returns_false():
    ticks = [T0 + timedelta(hours=h) for h in range(10)]
    seen = []

    def on_tick(now):
        seen.append(now)
        return False if len(seen) == 3 else True  # None or True keep going

    assert SimulatedClock(ticks).run(on_tick) == 3
    assert seen == ticks[:3]


@given(n=st.integers(0, 50), max_ticks=st.one_of(st.none(), st.integers(0, 60)),
       stop_at=st.one_of(st.none(), st.integers(1, 60)))
def test_simulated_clock_tick_count_property(n, max_ticks, stop_at):
    ticks = [T0 + timedelta(minutes=m) for m in range(n)]
    seen = []

    def on_tick(now):
        seen.append(now)
        return len(seen) != stop_at and None  # None keeps going, False stops

    done = SimulatedClock(ticks).run(on_tick, max_ticks=max_ticks)
    expected = min(n, max_ticks if max_ticks is not None else n, stop_at if stop_at is not None else n)
    assert done == len(seen) == expected
    assert seen == ticks[:expected]


def test_simulated_clock_refuses_naive_or_non_utc_ticks():
    with pytest.raises(ValueError, match="tick must be timezone-aware UTC"):
        SimulatedClock([datetime(2024, 3, 4)])
    with pytest.raises(ValueError, match="UTC"):
        SimulatedClock([datetime(2024, 3, 4, tzinfo=timezone(timedelta(hours=1)))])


def test_simulated_clock_without_ticks_has_no_now():
    clock = SimulatedClock([])
    with pytest.raises(RuntimeError, match="no ticks"):
        clock.now()
    assert clock.run(lambda now: None) == 0


# --------------------------------------------------------------------------- live (APScheduler)
def test_live_clock_runs_exactly_max_ticks_cycles():
    clock = LiveClock(interval_s=1)
    seen: list[datetime] = []
    threads: set[str] = set()

    def on_tick(now):
        seen.append(now)
        threads.add(threading.current_thread().name)

    started = time.monotonic()
    assert clock.run(on_tick, max_ticks=2) == 2
    assert len(seen) == 2
    assert all(t.tzinfo is not None and t.utcoffset() == timedelta(0) for t in seen)
    assert seen[1] - seen[0] >= timedelta(seconds=0.9)  # the second cycle waited for the interval
    assert threading.current_thread().name not in threads  # cycles run on the scheduler's workers
    time.sleep(1.1)  # past the slot a third cycle would have had
    assert len(seen) == 2  # the scheduler is really stopped: no third cycle later
    assert time.monotonic() - started < 30  # sanity only (it returns after ~1 s), not a speed test


def test_live_clock_stops_when_the_callback_returns_false_and_uses_the_injected_now():
    fixed = datetime(2030, 1, 1, tzinfo=UTC)
    clock = LiveClock(interval_s=1, now_fn=lambda: fixed)
    seen = []
    assert clock.run(lambda now: seen.append(now) or False, max_ticks=5) == 1
    assert seen == [fixed] and clock.now() == fixed


def test_a_cycle_that_raises_ends_the_live_run_with_that_error():
    """APScheduler logs a job's exception and runs it again next interval: a paper session whose cycle
    kept failing ran forever, never reaching its cycle limit. The run must stop and raise it."""
    clock = LiveClock(interval_s=1)
    calls = []

    def broken(now):
        calls.append(now)
        if len(calls) >= 3:   # only so that a regression fails in seconds instead of hanging the suite
            return False
        raise ValueError("stored state 'control' is not valid JSON")

    with pytest.raises(ValueError, match="not valid JSON"):
        clock.run(broken, max_ticks=5)
    time.sleep(1.1)
    assert len(calls) == 1


def test_slow_cycles_never_overlap():
    clock = LiveClock(interval_s=1)
    lock = threading.Lock()
    active = 0
    overlaps = 0
    spans: list[tuple[float, float]] = []

    def slow_tick(now):
        nonlocal active, overlaps
        with lock:
            active += 1
            if active > 1:
                overlaps += 1
        start = time.monotonic()
        time.sleep(1.2)  # slower than the 1 s interval
        with lock:
            active -= 1
        spans.append((start, time.monotonic()))

    assert clock.run(slow_tick, max_ticks=2) == 2
    assert overlaps == 0
    assert len(spans) == 2
    assert spans[1][0] >= spans[0][1]  # the second cycle started after the first had finished
