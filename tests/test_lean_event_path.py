"""Issue #24 item 2 (a leaner event path): each shortcut gives exactly what the code it replaced gave.

* the replay snapshot's ``rows_since`` (bars read straight from the arrays) = ``MarketSnapshot.bars_since``
  read from the snapshot's ``BarSeries`` (shared and own bar clocks, gaps, a short history window, every
  ``from_s`` around the window);
* the position manager's float pre-check never skips a bar on which ``bar_step`` would do something, and
  gives the same high-water mark where it skips (random bars and levels, long and short);
* ``sma_crossover.wants_cycle`` (one loop) = "``_waking`` yields a symbol" (the generator it replaced);
* a report's raw Signal/Fill objects and RegimeReading become, in ``format_report``, what ``to_jsonable``
  made of them at once before.
The whole-run equivalence (every report, fill, trade and the exact equity) is ``tests/test_quiet_path.py``,
``tests/test_bench_reference.py`` and the golden file.
"""
from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import pandas as pd

from hydra_engine.cycle_report import format_report, new_report
from hydra_engine.data.bars import BarFileMarketData
from hydra_engine.domain import Fill, Regime, RegimeReading, Side, Signal
from hydra_engine.positions import BarStep, bar_step
from hydra_engine.tradelog import to_jsonable

T0 = pd.Timestamp("2024-01-01", tz="UTC")


def _frame(minutes, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    c = 100 + np.cumsum(rng.normal(0, 1, len(minutes)))
    idx = pd.DatetimeIndex([T0 + pd.Timedelta(minutes=int(m)) for m in minutes])
    return pd.DataFrame({"open": c + 0.1, "high": c + 1, "low": c - 1, "close": c, "volume": np.ones(len(c))},
                        index=idx)


def test_replay_rows_since_equals_the_bar_series_rows():
    shared = list(range(0, 200))
    gappy = [m for m in range(0, 300) if m % 7 not in (3, 4)]          # its own clock, with holes
    market = BarFileMarketData({"A": _frame(shared, 1), "B": _frame(shared, 2), "C": _frame(gappy, 3)},
                               interval=timedelta(minutes=1), history_bars=30)
    checked = 0
    for minute in (1, 2, 5, 31, 57, 120, 199, 230, 301):
        snap = market.snapshot((T0 + pd.Timedelta(minutes=minute)).to_pydatetime())
        assert snap.rows_since is not None
        generic = dataclasses.replace(snap, rows_since=None)
        for symbol in ("A", "B", "C", "NOPE"):
            bars = snap.bars.get(symbol)
            lo = int(bars.ts[0]) - 120 if bars is not None else int(T0.timestamp())
            hi = int(bars.ts[-1]) + 120 if bars is not None else lo + 60
            for from_s in list(range(lo, hi, 30)) + [lo + 0.5, hi - 59.5]:
                fast, slow = snap.rows_since(symbol, from_s), generic.bars_since(symbol, from_s)
                assert fast == slow, (minute, symbol, from_s)
                assert fast is None or all(type(r[0]) is int and all(type(v) is float for v in r[1:]) for r in fast)
                checked += 1
    assert checked > 300


def test_the_float_pre_check_skips_only_bars_bar_step_does_nothing_with():
    rng = random.Random(24)
    skipped = 0
    for _ in range(20_000):
        long = rng.random() < 0.5
        o = rng.uniform(90, 110)
        h, lo = o + rng.uniform(0, 8), o - rng.uniform(0, 8)
        c = rng.uniform(lo, h)
        stop = rng.uniform(80, 100) if long else rng.uniform(100, 120)
        target = rng.uniform(100, 125) if long else rng.uniform(75, 100)
        if rng.random() < 0.05:   # touching the levels exactly
            stop = lo if long else h
        hwm = rng.uniform(95, 115)
        pre = (stop < lo and stop < o and h < target and o < target if long else
               stop > h and stop > o and lo > target and o > target)
        step = bar_step(long, o, h, lo, c, stop, target, hwm, None, None, None)
        if pre:
            skipped += 1
            assert step == BarStep(None, None, stop, max(hwm, h) if long else min(hwm, lo), False)
    assert 2_000 < skipped < 18_000


def test_sma_wants_cycle_is_the_waking_generator():
    from strategies.sma_crossover import SmaCrossover
    minutes = list(range(0, 400))
    frames = {s: _frame(minutes, k) for k, s in enumerate(("X", "Y", "Z"))}
    market = BarFileMarketData(frames, interval=timedelta(minutes=1), history_bars=100)
    strat = SmaCrossover({"symbols": ["X", "Y", "Z"], "fast": 5, "slow": 12})
    strat.prepare({s: market.history(s) for s in frames})
    both = 0
    for minute in range(0, 402):
        snap = market.snapshot((T0 + pd.Timedelta(minutes=minute)).to_pydatetime())
        want = next(strat._waking(snap), None) is not None
        assert strat.wants_cycle(snap) is want, minute
        both += want
    assert 0 < both < 402
    unprepared = SmaCrossover({"symbols": ["X"], "fast": 5, "slow": 12})
    assert unprepared.wants_cycle(market.snapshot((T0 + pd.Timedelta(minutes=50)).to_pydatetime())) is True


def test_format_report_converts_raw_signals_fills_and_regime_as_before():
    now = datetime(2024, 3, 1, 12, tzinfo=UTC)
    sig = Signal(symbol="BTC/USD", score=1.0, confidence=0.7, source="sma_cross", created_at=now,
                 half_life=timedelta(minutes=1), thesis="t")
    fill = Fill(client_order_id="c1", symbol="BTC/USD", side=Side.BUY, qty=Decimal("0.123456789012345678"),
                price=Decimal("30000.12"), fee_usd=Decimal("3.7"), ts=now, fill_id="f1")
    reading = RegimeReading(Regime.TRENDING_UP, 0.9, "fixed", now, {"why": "w", "n": 1})
    raw, before = new_report(1, now), new_report(1, now)
    raw["signals"], raw["fills"], raw["regime"] = [sig], [fill], reading
    before["signals"], before["fills"], before["regime"] = [to_jsonable(sig)], [to_jsonable(fill)], to_jsonable(reading)
    format_report(raw)
    format_report(before)
    assert raw == before
    assert raw["regime"] is not to_jsonable(reading) and raw["regime"]["regime"] == "TRENDING_UP"
    again = new_report(2, now)
    again["regime"] = reading
    format_report(again)
    assert again["regime"] == raw["regime"] and again["regime"] is not raw["regime"]   # a copy per report
