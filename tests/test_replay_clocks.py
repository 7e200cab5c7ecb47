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


# =========================================================================== cleaning
def reference_clean_bars(frame, symbol, quality):
    """clean_bars before its numpy checks (pandas all the way; the price split is unchanged)."""
    from hydra_engine.data.replay import split_bad_prices
    frame = frame.dropna(subset=["open_time"])
    unsorted = int((frame["open_time"].diff().dt.total_seconds() < 0).sum())
    if unsorted:
        quality.out_of_order[symbol] = unsorted
    frame = frame.sort_values("open_time", kind="stable")
    dupes = int(frame["open_time"].duplicated(keep="last").sum())
    if dupes:
        quality.duplicates[symbol] = dupes
        frame = frame.drop_duplicates("open_time", keep="last")
    gaps = frame["open_time"].diff() > 30 * (frame["close_time"] - frame["open_time"]).median()
    first_gap = int(np.argmax(gaps.to_numpy())) if gaps.any() else 0
    if 0 < first_gap <= 5:
        quality.leading_fragment[symbol] = first_gap
        frame = frame.iloc[first_gap:]
    return split_bad_prices(frame, symbol, quality)


@pytest.mark.parametrize("seed", range(40))
def test_clean_bars_equals_the_pandas_rule(seed):
    from hydra_engine.data.replay import DataQuality, clean_bars
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 60))
    minutes = np.arange(n) + (int(rng.integers(0, 3)) * 50_000 if n > 8 else 0)
    if n > 8 and seed % 3 == 0:
        minutes[: int(rng.integers(1, 7))] -= 100_000          # a leading fragment (<= 5 rows: dropped)
    opened = pd.Series(T0 + pd.to_timedelta(minutes, unit="min"))
    if seed % 4 == 1 and n > 4:
        opened.iloc[rng.integers(0, n, 3)] = opened.iloc[rng.integers(0, n, 3)].to_numpy()   # duplicates
    if seed % 5 == 2 and n > 4:
        order = rng.permutation(n)
        opened = opened.iloc[order].reset_index(drop=True)    # out of order
    if seed % 7 == 3 and n > 4:
        opened.iloc[rng.integers(0, n, 2)] = pd.NaT
    c = 100 + rng.normal(0, 1, n)
    if n > 4:
        c[rng.integers(0, n, 2)] = [np.nan, -1.0]
    frame = pd.DataFrame({"open_time": opened, "close_time": opened + pd.Timedelta(minutes=1),
                          "open": c, "high": c, "low": c, "close": c, "volume": np.ones(n)})
    q_new, q_ref = DataQuality(), DataQuality()
    got, got_bad = clean_bars(frame.copy(), "X", q_new)
    want, want_bad = reference_clean_bars(frame.copy(), "X", q_ref)
    pd.testing.assert_frame_equal(got, want)
    assert got_bad.tolist() == want_bad.tolist() and q_new == q_ref
