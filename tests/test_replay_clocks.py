"""Replay snapshots with symbols grouped by bar clock (one searchsorted per clock, precomputed refused-row
checks) must equal the plain per-symbol rule: same spans, newest bars, closes, stale reasons, in the same
(symbol) order. The reference below is the per-symbol snapshot the grouping replaced."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from hydra_engine.data.bars import BarFileMarketData

T0 = pd.Timestamp("2024-01-01", tz="UTC")


def frame(minutes, closes) -> pd.DataFrame:
    idx = pd.DatetimeIndex([T0 + pd.Timedelta(minutes=int(m)) for m in minutes])
    c = np.asarray(closes, dtype=float)
    return pd.DataFrame({"open": c, "high": c, "low": c, "close": c, "volume": np.ones(len(c))}, index=idx)


def reference(market, now: datetime):
    """The per-symbol snapshot rule (before grouping): spans, stale, newest (open ts, close)."""
    now_s = int(now.timestamp())
    n = market.history_bars
    spans, stale, newest = {}, {}, {}
    for symbol, b in market._bars.items():
        i = int(b.close_ts.searchsorted(now_s, "right"))
        if i == 0:
            stale[symbol] = "no closed bar yet"
            continue
        spans[symbol] = (i - n if i > n else 0, i)
        newest[symbol] = (b.open_ts.item(i - 1), b.c.item(i - 1))
        last_close = b.close_ts.item(i - 1)
        bad = b.bad_close_ts
        k = int(bad.searchsorted(now_s, "right")) if len(bad) else 0
        if k and int(bad[k - 1]) > last_close:
            stale[symbol] = f"newest bar has an invalid price (closed {datetime.fromtimestamp(int(bad[k - 1]), UTC):%Y-%m-%d %H:%M}Z)"
        elif now_s - last_close > market._stale_after[symbol]:
            stale[symbol] = f"newest bar closed {(now_s - last_close) / 3600:.1f} h ago"
    return spans, stale, newest


@pytest.fixture
def mixed_market():
    rng = np.random.default_rng(7)
    minutes = np.arange(300)
    walk = lambda k: 100 + np.cumsum(rng.normal(0, 0.5, k))   # noqa: E731
    bad = walk(300)
    bad[[40, 41, 120, 299]] = [np.nan, -1.0, 0.0, np.inf]   # refused rows, one of them the very last
    gappy = np.setdiff1d(minutes, np.arange(150, 170))       # a 20-minute hole: stale in between
    frames = {
        "A": frame(minutes, walk(300)),              # clock 1
        "B": frame(minutes[::2], walk(150)),         # clock 2 (every other minute), between A and C
        "C": frame(minutes, walk(300)),              # clock 1 again: not contiguous with A
        "BAD": frame(minutes, bad),                  # clock 1 ... its good rows only: a clock of its own
        "LATE": frame(minutes[60:], walk(240)),      # clock 3: no closed bar before minute 61
        "GAP": frame(gappy, walk(len(gappy))),       # clock 4
        "D": frame(minutes[::2], walk(150)),         # clock 2 again
    }
    return BarFileMarketData(frames, history_bars=25)


def test_clock_groups_are_detected_once(mixed_market):
    groups = [c.symbols for c in mixed_market._clocks]
    assert groups == [("A", "C"), ("B", "D"), ("BAD",), ("LATE",), ("GAP",)]
    assert not mixed_market._clock_order_is_symbol_order
    a = mixed_market._bars["A"]
    assert a.c.flags.c_contiguous and np.shares_memory(a.c, mixed_market._clocks[0].closes)


def test_grouped_snapshot_equals_the_per_symbol_rule(mixed_market):
    ticks = mixed_market.timeline()
    extra = [ticks[0] - timedelta(minutes=5), ticks[0] + timedelta(seconds=30), ticks[-1] + timedelta(hours=3),
             ticks[-1] + timedelta(days=2)]
    seen_reasons = set()
    for now in ticks + extra:
        spans, stale, newest = reference(mixed_market, now)
        snap = mixed_market.snapshot(now)
        assert list(snap.bars._spans.items()) == list(spans.items()), now
        assert list(snap.stale.items()) == list(stale.items()), now
        assert list(snap.newest_ts.items()) == [(s, v[0]) for s, v in newest.items()], now
        assert list(snap.closes.items()) == [(s, v[1]) for s, v in newest.items()], now
        assert list(snap.prices()) == list(spans)
        for s, (ts, close) in newest.items():
            assert snap.price(s) == close and snap.newest_bar_ts(s) == ts
            series = snap.bars[s]
            assert series.ts[-1] == ts and series.close[-1] == close and len(series) == spans[s][1] - spans[s][0]
        seen_reasons.update("no bar" if r == "no closed bar yet" else "invalid" if "invalid" in r else "old"
                            for r in stale.values())
    # the fixture really exercises every branch
    assert seen_reasons == {"no bar", "invalid", "old"}


def test_refused_newest_row_in_a_shared_clock():
    """A refused row whose good rows still match the clock of other symbols: the symbol stays grouped
    (its refused row is not one of its bars) and is stale exactly while that row is the newest period."""
    minutes = np.arange(100)
    ok = 100 + np.arange(100.0)
    bad = ok.copy()
    bad[50] = np.nan
    frames = {"X": frame(minutes, ok), "Y": frame(np.delete(minutes, 50), np.delete(ok, 50)),
              "Z": frame(minutes, bad)}
    market = BarFileMarketData(frames)
    assert [c.symbols for c in market._clocks] == [("X",), ("Y", "Z")]
    closed_bad = T0 + pd.Timedelta(minutes=51)   # row 50 closes at minute 51
    snap = market.snapshot(closed_bad.to_pydatetime())
    assert snap.stale == {"Z": "newest bar has an invalid price (closed 2024-01-01 00:51Z)"}
    assert snap.price("Z") == snap.price("Y") == 149.0       # exits still see the last good close
    assert market.snapshot((closed_bad + pd.Timedelta(minutes=1)).to_pydatetime()).stale == {}


def test_timeline_and_span_cover_every_symbols_closes(mixed_market):
    every = sorted({int(t) for b in mixed_market._bars.values() for t in b.close_ts})
    assert [int(t.timestamp()) for t in mixed_market.timeline()] == every
    assert all(t.tzinfo is UTC for t in mixed_market.timeline())
    assert [int(t.timestamp()) for t in mixed_market.span()] == [every[0], every[-1]]
