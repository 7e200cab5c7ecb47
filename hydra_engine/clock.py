"""Clocks: the only source of "now". Injected, so backtest, simulation and paper share one loop.

``SimulatedClock`` steps through historical timestamps as fast as the engine can go.
``LiveClock`` ticks every ``interval_s`` through APScheduler with ``max_instances=1`` and coalescing,
so a slow cycle never overlaps the next one and missed runs collapse into one.
"""
from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta
from typing import Callable, Iterable

from .domain import UTC, require_utc

log = logging.getLogger(__name__)


class SimulatedClock:
    def __init__(self, ticks: Iterable[datetime]):
        ticks = list(ticks)
        if any(t.__class__ is not datetime or t.tzinfo is not UTC for t in ticks):   # the cheap common case first
            ticks = [require_utc(t, "tick") for t in ticks]
        self.ticks = ticks
        self._now = self.ticks[0] if self.ticks else None

    def now(self) -> datetime:
        if self._now is None:
            raise RuntimeError("the simulated clock has no ticks (empty data span?)")
        return self._now

    def run(self, on_tick: Callable[[datetime], bool | None], max_ticks: int | None = None) -> int:
        """Call ``on_tick(now)`` for each tick in order; stop early if it returns False."""
        done = 0
        for tick in self.ticks[: max_ticks if max_ticks is not None else len(self.ticks)]:
            self._now = tick
            done += 1
            if on_tick(tick) is False:
                break
        return done


class LiveClock:
    def __init__(self, interval_s: int = 60, now_fn: Callable[[], datetime] | None = None):
        self.interval_s = interval_s
        self._now_fn = now_fn or (lambda: datetime.now(UTC))

    def now(self) -> datetime:
        return self._now_fn()

    def start_at(self, start: datetime) -> None:
        """Issue #16, for tests and dry runs only (``run --mode paper --clock-start``, refused with
        ``--live``): this clock's time begins at ``start`` and advances with the wall clock, so the engine
        can be driven against a simulated broker whose market time is not the wall clock (e.g. 16:43 New
        York). The broker and data adapters take their "now" from this clock."""
        start = require_utc(start, "clock start")
        t0 = time.monotonic()
        self._now_fn = lambda: start + timedelta(seconds=time.monotonic() - t0)
        self.started_at = start

    def run(self, on_tick: Callable[[datetime], bool | None], max_ticks: int | None = None) -> int:
        """Run cycles on a blocking APScheduler until ``max_ticks`` cycles ran or ``on_tick`` says stop."""
        from apscheduler.schedulers.blocking import BlockingScheduler

        scheduler = BlockingScheduler(timezone=UTC)
        count = 0
        lock = threading.Lock()
        failed: list[BaseException] = []

        def job() -> None:
            nonlocal count
            with lock:  # belt and braces beside max_instances=1: never two cycles at once
                count += 1
                try:
                    keep_going = on_tick(self.now())
                except Exception as exc:  # noqa: BLE001 -- APScheduler would log it and run the job again
                    # forever: stop, and raise it from run() so the session ends with the error named
                    failed.append(exc)
                    scheduler.shutdown(wait=False)
                    return
                if keep_going is False or (max_ticks is not None and count >= max_ticks):
                    scheduler.shutdown(wait=False)

        scheduler.add_job(job, "interval", seconds=self.interval_s, max_instances=1, coalesce=True,
                          next_run_time=datetime.now(UTC), misfire_grace_time=self.interval_s)
        try:
            scheduler.start()
        except (KeyboardInterrupt, SystemExit):
            log.info("live clock stopped by the user")
        if failed:
            raise failed[0]
        return count
