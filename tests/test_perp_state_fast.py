"""Issue #24 / #21, session 11: the cheaper per-snapshot perp state (``compute_perp_state``), checked against
the code it replaced -- copied below verbatim from main at 55b2bcb, renamed ``*_ref`` (its two calls into the
snapshot memo, ``hourly_vol`` and ``flush_hours``, go to the reference ``HourlyVol`` and ``_flush_many``
directly: the memo only shares a value between consumers) -- bit for bit, field by field and by ``repr``:

* on real data: the shared history's killed stretch of 2020 (open interest appears mid-year), the May 2021
  crash (real open-interest flushes), SOL and BNB (8-hour Hyperliquid candles) in 2024, and the shipped
  half-year, at consecutive hours (the funding-moment memo hits) and at odd times;
* on edge cases: gaps, NaN, zero and negative values in the open-interest tail, float timestamps, a short
  or empty series, closes that are zero or NaN (the non-finite branch, read lazily), few bars;
* the lazy volatility: nothing computed before the first read, the same pair after it, under the error
  settings in force when the state was made; equal, hashed, shown and pickled as the eager fields were.
"""
from __future__ import annotations

import math
import pickle
import warnings
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from hydra_engine.domain import UTC
from hydra_engine.perp import stats as PS
from hydra_engine.perp.stats import (
    _FLUSH_PREFILTER,
    BARS_MAX_AGE,
    FLUSH_TABLE_H,
    FUNDING_MAX_AGE,
    FUNDING_Z_SETTLEMENTS,
    LIQ_LOOKBACK_H,
    MIN_CANDLES,
    OI_MAX_AGE,
    VOL_WINDOW,
    _add,
    _flush,
    _latest,
    _mean,
    _oi_delta,
    _std,
    cascade_probability,
    vol_regime,
)
from hydra_engine.ports import MarketSnapshot

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ the code before (main 55b2bcb), verbatim
@dataclass(frozen=True, slots=True)
class _PerpStateRef:
    symbol: str
    now: datetime
    price: float | None
    candles: int
    bars_age_s: float | None
    funding: float | None                 # newest settled rate (fraction per 8 h), None if missing/old
    funding_z: float | None
    oi_delta_1h: float | None             # fractions
    oi_delta_8h: float | None
    oi_delta_24h: float | None
    price_change_24h: float | None
    taker_buy_sell_24h: float | None      # taker buy volume / taker sell volume over 24 h
    vol_annual: float | None
    vol_percentile: float | None          # fraction in [0, 1] against the visible history
    liq_long: float                       # liquidated open interest (fraction of OI) in the lookback, longs
    liq_short: float
    liq_source: str                       # "forceOrder" | "proxy:oi_flush" | "none"
    liquidation_velocity: float | None    # newest hour: liquidated / open interest
    health_problems: tuple[str, ...]

    @property
    def vol_regime(self) -> str | None:
        return vol_regime(self.vol_percentile)

    @property
    def cascade_probability(self) -> float | None:
        return cascade_probability(self.liquidation_velocity)

    @property
    def liq_imbalance(self) -> float | None:
        """(long − short) / (long + short) of the lookback's liquidations; None when there were none."""
        total = self.liq_long + self.liq_short
        return (self.liq_long - self.liq_short) / total if total > 0 else None

    @property
    def healthy(self) -> bool:
        return not self.health_problems


def _flush_many_ref(oi, bars, taker, ts: list[int]) -> list[tuple[float, float]]:
    """``[_flush(oi, bars, taker, t) for t in ts]``, the same values, cheaper: the open-interest test that
    rejects most hours (a drop of at least FLUSH_OI_PCT in the hour) runs on all of them in one pass, with
    a 1 % margin (``last <= prev * 0.9802`` for a drop of 2 %), and only an hour it cannot rule out goes
    through :func:`_flush` itself. NaN or non-positive values fail the pass as they fail ``_value_at``."""
    zero = (0.0, 0.0)
    if oi is None or not len(oi.ts):
        return [zero] * len(ts)
    t = np.asarray(ts, dtype=np.int64)
    ots = oi.ts
    k1 = ots.searchsorted(t, "right") - 1          # _value_at(oi, t, 0)
    k0 = ots.searchsorted(t - 3600, "right") - 1   # _value_at(oi, t - 1 h), 2 h tolerance
    k1c, k0c = np.maximum(k1, 0), np.maximum(k0, 0)
    last = np.asarray(oi.values[k1c], dtype=float)
    prev = np.asarray(oi.values[k0c], dtype=float)
    maybe = ((k0 >= 0) & (ots[k1c] >= t) & (t - 3600 - ots[k0c] <= 7200)   # k1 >= k0: k0 >= 0 covers both
             & (last > 0) & (last <= prev * _FLUSH_PREFILTER))
    return [_flush(oi, bars, taker, x) if m else zero for x, m in zip(ts, maybe.tolist())]


def _compute_perp_state_ref(market: MarketSnapshot, symbol: str) -> _PerpStateRef:
    now = market.now
    t_now = int(now.timestamp())
    problems: list[str] = []
    bars = market.bars.get(symbol)
    candles = len(bars) if bars is not None else 0
    price = bars_age = None
    if candles:
        price = float(bars.close[-1])
        bars_age = t_now - (int(bars.ts[-1]) + bars.interval_s)
        if bars_age > BARS_MAX_AGE.total_seconds():
            problems.append(f"newest bar {bars_age / 3600:.1f} h old")
    else:
        problems.append("no bars")
    if symbol in market.stale:
        problems.append(f"stale: {market.stale[symbol]}")
    if candles < MIN_CANDLES:
        problems.append(f"{candles} candles < {MIN_CANDLES}")
    # BNBUSDT's bars are Hyperliquid 8-hour candles (#20): the statistics below count hourly bars, so they
    # are not computed from them (None: each primitive then has no signal) and the state is unhealthy
    hourly = bars is not None and bars.interval_s == 3600
    if bars is not None and not hourly:
        problems.append(f"bars are {bars.interval_s / 3600:g} h candles: the hourly statistics do not apply")

    fseries = market.point_series("funding_rate", symbol)
    f = _latest(fseries, now, FUNDING_MAX_AGE)
    funding = f[0] if f else None
    if funding is None:
        problems.append("funding missing or older than 9 h")
    funding_z = None
    if funding is not None and len(fseries) >= 30:
        hist = np.asarray(fseries.values[-FUNDING_Z_SETTLEMENTS:], dtype=float)
        sd = _std(hist)
        funding_z = (funding - float(_mean(hist))) / sd if sd > 0 else 0.0

    oi = market.point_series("open_interest", symbol)
    o = _latest(oi, now, OI_MAX_AGE)
    if o is None:
        problems.append("open interest missing or older than 2 h")
    t_oi = o[1] if o else None
    d1 = _oi_delta(oi, t_oi, 1) if t_oi else None
    d8 = _oi_delta(oi, t_oi, 8) if t_oi else None
    d24 = _oi_delta(oi, t_oi, 24) if t_oi else None

    change_24h = None
    if hourly and candles > 24:
        c0 = float(bars.close[-25])
        change_24h = price / c0 - 1.0 if c0 > 0 else None

    taker = market.point_series("taker_buy_ratio", symbol)
    buy_sell = None
    if hourly and taker is not None and len(taker) >= 24 and candles >= 24:
        shares = np.asarray(taker.values[-24:], dtype=float)
        vols = np.asarray(bars.volume[-24:], dtype=float)
        if now.timestamp() - int(taker.ts[-1]) <= BARS_MAX_AGE.total_seconds() and np.isfinite(shares).all():
            buy = float(_add(shares * vols))      # np.sum's own reduction, without its dispatch
            sell = float(_add((1 - shares) * vols))
            buy_sell = buy / sell if sell > 0 else None

    vol_annual = vol_pct = None
    if hourly and candles >= VOL_WINDOW * 3 and (hv := _hourly_vol_ref(market, symbol)).finite:
        # every return finite (the usual case): the snapshot's shared rolling deviations are the ones below
        if len(hv.r) >= VOL_WINDOW * 2:
            sd = hv.sd
            vol_annual = float(sd[-1] * math.sqrt(365 * 24))
            vol_pct = float(np.count_nonzero(sd <= sd[-1]) / len(sd))
    elif hourly and candles >= VOL_WINDOW * 3:
        r = np.diff(np.log(np.asarray(bars.close, dtype=float)))
        r = r[np.isfinite(r)]
        if len(r) >= VOL_WINDOW * 2:
            # rolling 24-bar standard deviation via cumulative sums (one pass)
            c1 = np.concatenate(([0.0], np.cumsum(r)))
            c2 = np.concatenate(([0.0], np.cumsum(r * r)))
            n = VOL_WINDOW
            mean = (c1[n:] - c1[:-n]) / n
            var = np.maximum((c2[n:] - c2[:-n]) / n - mean * mean, 0.0)
            sd = np.sqrt(var)
            vol_annual = float(sd[-1] * math.sqrt(365 * 24))
            # np.mean of the booleans: their count (exact) over n
            vol_pct = float(np.count_nonzero(sd <= sd[-1]) / len(sd))

    # the liquidation picture: real liquidations where a feed gives them, else the declared proxy
    liq_long = liq_short = 0.0
    velocity = None
    source = "none"
    real_long = market.point_series("liquidations_long_usd", symbol)
    real_short = market.point_series("liquidations_short_usd", symbol)
    if real_long is not None and real_short is not None and o is not None and price:
        source = "forceOrder"
        oi_usd = o[0] * price
        since = t_now - LIQ_LOOKBACK_H * 3600
        liq_long = float(np.sum(real_long.values[real_long.ts > since])) / oi_usd
        liq_short = float(np.sum(real_short.values[real_short.ts > since])) / oi_usd
        hour = t_now - 3600
        velocity = (float(np.sum(real_long.values[real_long.ts > hour]))
                    + float(np.sum(real_short.values[real_short.ts > hour]))) / oi_usd
    elif hourly and oi is not None and t_oi is not None and candles >= 2:
        source = "proxy:oi_flush"
        # with a trained labeller installed (its monitor labels, each cycle, the 24 h window that just ended)
        # the last FLUSH_TABLE_H hours go in the snapshot's flush table, in the one pass the 6 hours need:
        # that label reads them from there. Only which hours are computed depends on it, never a value
        span = FLUSH_TABLE_H if getattr(PS._LABELLER, "booster", None) is not None else LIQ_LOOKBACK_H
        hours = _flush_many_ref(oi, bars, taker, [t_oi - h * 3600 for h in range(span)])
        for h, (lo, sh) in enumerate(hours[:LIQ_LOOKBACK_H]):
            liq_long += lo
            liq_short += sh
            if h == 0:
                velocity = lo + sh
    return _PerpStateRef(symbol, now, price, candles, bars_age, funding, funding_z, d1, d8, d24, change_24h, buy_sell,
                     vol_annual, vol_pct, liq_long, liq_short, source, velocity, tuple(problems))


class _HourlyVolRef:
    """One symbol's bar log returns and their rolling ``n``-bar (``VOL_WINDOW``) standard deviation, as
    :func:`compute_perp_state`, ``ml.features.regime_features`` and ``ml.labels.regime_label`` compute them:
    ``r = diff(log(close))`` over the snapshot's bars (not filtered: ``finite`` says whether every one is
    finite), ``sd[i]`` the deviation of ``r[i:i + VOL_WINDOW]`` by cumulative sums (None when fewer returns).
    The cumulative sums run from the first return in order, so the deviations of a prefix of the bars
    (``regime_label``'s history before its window) are the first ones of ``sd``, bit for bit."""

    __slots__ = ("finite", "r", "sd")

    def __init__(self, close: np.ndarray, n: int = VOL_WINDOW):
        self.r = r = np.diff(np.log(close))
        self.finite = bool(np.isfinite(r).all())
        self.sd = None
        if len(r) >= n:
            c1, c2 = np.empty(len(r) + 1), np.empty(len(r) + 1)
            c1[0] = c2[0] = 0.0
            np.cumsum(r, out=c1[1:])
            np.cumsum(r * r, out=c2[1:])
            mean = (c1[n:] - c1[:-n]) / n
            self.sd = np.sqrt(np.maximum((c2[n:] - c2[:-n]) / n - mean * mean, 0.0))


def _hourly_vol_ref(market: MarketSnapshot, symbol: str) -> _HourlyVolRef | None:
    bars = market.bars.get(symbol)
    return None if bars is None or len(bars) < 2 else _HourlyVolRef(np.asarray(bars.close, dtype=float))


# ------------------------------------------------------------------ helpers
FIELDS = PS._STATE_REPR


def _same(a, b) -> bool:
    """Equal bit for bit: floats by their bytes (NaN equal to NaN, -0.0 not 0.0), None only to None."""
    if isinstance(a, float) or isinstance(b, float):
        return type(a) is type(b) and np.float64(a).tobytes() == np.float64(b).tobytes()
    return type(a) is type(b) and a == b


def _repr(want: _PerpStateRef) -> str:
    """The dataclass repr the state had, under its own class name."""
    return repr(want).replace("_PerpStateRef(", "PerpState(", 1)


def _check(snap, symbol) -> PS.PerpState:
    PS._MEMO.clear()
    got = PS.compute_perp_state(snap, symbol)
    want = _compute_perp_state_ref(snap, symbol)
    bad = [k for k in FIELDS if not _same(getattr(got, k), getattr(want, k))]
    assert not bad, (symbol, snap.now, [(k, getattr(got, k), getattr(want, k)) for k in bad])
    assert repr(got) == _repr(want)
    return got


def _replay(root, symbols, start=None, end=None):
    from hydra_engine.data.replay import ReplayMarketData
    return ReplayMarketData(root, symbols, start=start, end=end, history_bars=500)


def _with_series(snap, symbol, kind, ts, values):
    from hydra_engine.ports import PointSeries
    return replace(snap, series={**snap.series, (kind, symbol): PointSeries(kind, symbol, np.asarray(ts),
                                                                             np.asarray(values))})


# ------------------------------------------------------------------ real data
def test_the_perp_state_equals_the_code_before_on_real_data(shared_data):
    seen = {k: set() for k in ("funding_z", "oi_delta_1h", "oi_delta_24h", "vol_percentile", "liq_long",
                               "liq_short", "taker_buy_sell_24h")}
    n = flushed = 0
    spans = [
        # the five-year run's killed stretch: 2020 (open interest starts mid-year), consecutive hours
        (_replay(shared_data, ["BTCUSDT", "ETHUSDT"], date(2020, 1, 1), date(2020, 12, 31)),
         [datetime(2020, 3, 6, tzinfo=UTC) + timedelta(hours=h) for h in range(0, 7000, 23)]
         + [datetime(2020, 9, 1, tzinfo=UTC) + timedelta(hours=h) for h in range(60)]),
        # the May 2021 crash: real flushes, at consecutive hours and odd minutes
        (_replay(shared_data, ["BTCUSDT", "ETHUSDT"], date(2021, 3, 20), date(2021, 5, 25)),
         [datetime(2021, 5, 10, tzinfo=UTC) + timedelta(hours=h, minutes=(7 * h) % 60) for h in range(360)]),
        # SOL, and BNB's 8-hour candles
        (_replay(shared_data, ["SOLUSDT", "BNBUSDT"], date(2024, 6, 1), date(2024, 9, 1)),
         [datetime(2024, 7, 20, tzinfo=UTC) + timedelta(hours=5 * h) for h in range(60)]),
        # the shipped half-year (what ml_latency replays)
        (_replay(ROOT / "data", ["BTCUSDT", "ETHUSDT"]),
         [datetime(2024, 1, 3, tzinfo=UTC) + timedelta(hours=h) for h in range(0, 4000, 17)]),
    ]
    for market, times in spans:
        for t in times:
            snap = market.snapshot(t)
            for s in market._bars:
                if s not in snap.bars:
                    continue
                st = _check(snap, s)
                n += 1
                flushed += st.liq_long + st.liq_short > 0
                for k, v in seen.items():
                    v.add(getattr(st, k))
    assert n > 1300
    assert flushed >= 20                                   # real proxy liquidations among them
    assert all(len(v) > 30 for v in seen.values()), {k: len(v) for k, v in seen.items()}


def test_with_a_trained_labeller_the_24_hour_flush_table_equals_the_code_before(shared_data, monkeypatch):
    class Trained:   # only whether a model is installed matters to the perp state
        booster = object()

    monkeypatch.setattr(PS, "_LABELLER", Trained())
    market = _replay(shared_data, ["BTCUSDT", "ETHUSDT"], date(2021, 4, 1), date(2021, 5, 25))
    nonzero = 0
    for h in range(0, 300, 3):
        snap = market.snapshot(datetime(2021, 5, 12, tzinfo=UTC) + timedelta(hours=h))
        for s in ("BTCUSDT", "ETHUSDT"):
            _check(snap, s)
            oi, bars, taker = (snap.point_series("open_interest", s), snap.bars[s],
                               snap.point_series("taker_buy_ratio", s))
            ts = [int(oi.ts[-1]) - k * 3600 for k in range(FLUSH_TABLE_H)]
            want = _flush_many_ref(oi, bars, taker, ts)
            assert PS._flush_many(oi, bars, taker, ts) == want == [_flush(oi, bars, taker, t) for t in ts]
            assert PS.flush_hours(snap, s, ts) == want
            nonzero += sum(w != (0.0, 0.0) for w in want)
            # the realised label's hours (after the newest point, unaligned, older): the other path, same values
            for other in ([t + 3600 for t in ts], [t - 1800 for t in ts], ts[::-1] + [ts[0] - 100 * 3600]):
                assert PS._flush_many(oi, bars, taker, other) == _flush_many_ref(oi, bars, taker, other)
    assert nonzero >= 10


# ------------------------------------------------------------------ edge cases
@pytest.fixture(scope="module")
def shipped():
    return _replay(ROOT / "data", ["BTCUSDT", "ETHUSDT"])


def test_open_interest_tails_with_gaps_bad_values_and_odd_types_equal_the_code_before(shipped):
    snap = shipped.snapshot(datetime(2024, 3, 1, 5, tzinfo=UTC))
    s = "BTCUSDT"
    oi = snap.point_series("open_interest", s)
    ts, v = oi.ts.copy(), oi.values.astype(float)
    rng = np.random.default_rng(11)
    bars, taker = snap.bars[s], snap.point_series("taker_buy_ratio", s)
    cases = []
    for k in (1, 2, 5, 7, 8, 9, 24, 25, 26):                   # a gap k points back
        cases.append((np.delete(ts, -k), np.delete(v, -k)))
    for k in (1, 2, 3, 6, 7, 9, 25):                           # a bad value k points back
        for bad in (np.nan, 0.0, -5.0, np.inf):
            w = v.copy()
            w[-k] = bad
            cases.append((ts, w))
    drop = v.copy()
    drop[-6:] = v[-7] * np.cumprod(np.full(6, 0.97))           # flushes in every one of the six hours
    cases.append((ts, drop))
    cases.append((ts + 1800, v))                               # points at half hours
    cases.append((ts.astype(float), v))                        # float timestamps
    cases.append((ts.astype(float) + 0.5, v))
    cases.append((ts, v.astype(np.float32)))
    dup = np.concatenate([ts[:-1], ts[-2:-1] + 0, ts[-1:]])     # a repeated time just before the newest
    cases.append((np.sort(dup), np.concatenate([v[:-1], v[-2:-1] * 0.9, v[-1:]])))
    for n in (0, 1, 2, 3, 6, 7, 8, 9, 10, 25, 26, 27):          # short series
        cases.append((ts[len(ts) - n:], v[len(v) - n:]))
    cases.append((ts, v * (1 + rng.normal(0, 0.02, len(v)))))  # noisy: many hours pass the pre-pass
    n = 0
    for cts, cv in cases:
        sn = _with_series(snap, s, "open_interest", cts, cv)
        with np.errstate(invalid="ignore", divide="ignore"):
            _check(sn, s)
        o = sn.point_series("open_interest", s)
        if len(o.ts):
            t_last = o.ts[-1].item()
            t_int = int(o.ts[-1])
            for hs in (range(6), range(24), range(30), [3, 1, 0], [0, 0, 2]):
                for tt in ([t_last - h * 3600 for h in hs], [t_int - h * 3600 for h in hs]):
                    assert PS._flush_many(o, bars, taker, tt) == _flush_many_ref(o, bars, taker, tt)
            for h in (1, 8, 24, 30):
                a, b = PS._oi_delta_newest(o, t_int, h), _oi_delta(o, t_int, h)
                assert (a is None and b is None) or _same(a, b), (h, a, b)
        n += 1
    assert n == len(cases)


def test_few_bars_no_bars_eight_hour_bars_and_missing_series_equal_the_code_before(shipped, shared_data):
    snap = shipped.snapshot(datetime(2024, 4, 2, 7, 30, tzinfo=UTC))
    s = "ETHUSDT"
    bars = snap.bars[s]
    for n in (0, 1, 2, 19, 20, 24, 25, 47, 48, 49, 71, 72, 73, 120):
        cut = replace(bars, ts=bars.ts[-n:] if n else bars.ts[:0], open=bars.open[len(bars) - n:],
                      high=bars.high[len(bars) - n:], low=bars.low[len(bars) - n:],
                      close=bars.close[len(bars) - n:], volume=bars.volume[len(bars) - n:])
        _check(replace(snap, bars={**snap.bars, s: cut}), s)
    for kind in ("funding_rate", "open_interest", "taker_buy_ratio"):
        gone = replace(snap, series={k: v for k, v in snap.series.items() if k != (kind, s)})
        _check(gone, s)
        empty = _with_series(snap, s, kind, np.array([], dtype=np.int64), np.array([]))
        _check(empty, s)
    # real liquidation series (forceOrder) present
    ts = snap.point_series("open_interest", s).ts
    live = _with_series(_with_series(snap, s, "liquidations_long_usd", ts, np.linspace(1e5, 2e6, len(ts))),
                        s, "liquidations_short_usd", ts, np.linspace(3e5, 1e5, len(ts)))
    assert _check(live, s).liq_source == "forceOrder"
    _check(replace(snap, stale={s: "newest bar closed 3.0 h ago"}), s)
    _check(snap, "SOLUSDT") if "SOLUSDT" in snap.bars else None
    _check(replace(snap, bars={}), s)                            # no bars at all
    # taker shares that are not finite, or finite but summing past the largest float (the finiteness test)
    taker = snap.point_series("taker_buy_ratio", s)
    for k, bad in ((1, np.nan), (3, np.inf), (24, -np.inf), (25, np.nan), (2, 1e308), (5, -1e308)):
        w = taker.values.astype(float).copy()
        w[-k] = bad
        if k == 2:
            w[-24:] = 1e308                                      # every share finite, their sum is not
        with np.errstate(over="ignore", invalid="ignore"):
            _check(_with_series(snap, s, "taker_buy_ratio", taker.ts, w), s)


def test_closes_that_are_not_finite_read_lazily_equal_the_code_before_and_warn_as_before(shipped):
    snap = shipped.snapshot(datetime(2024, 2, 20, tzinfo=UTC))
    bars = snap.bars["BTCUSDT"]
    for idx, vals in (([100, 300], (0.0, np.nan)), ([len(bars) - 1], (np.inf,)), ([5], (-1.0,)),
                      (list(range(0, len(bars), 3)), (np.nan,)), ([len(bars) - 2], (0.0,))):
        close = bars.close.astype(float).copy()
        close[idx] = vals if len(vals) == len(idx) else vals[0]
        bad = replace(snap, bars={**snap.bars, "BTCUSDT": replace(bars, close=close)})
        with np.errstate(divide="ignore", invalid="ignore"):
            PS._MEMO.clear()
            st = PS.compute_perp_state(bad, "BTCUSDT")
            want = _compute_perp_state_ref(bad, "BTCUSDT")
        # read outside the errstate: computed under the settings in force when the state was made (no warning)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert _same(st.vol_annual, want.vol_annual) and _same(st.vol_percentile, want.vol_percentile)
        assert repr(st) == _repr(want)
    assert want.vol_annual is not None
    # the other way round: made under the default settings (warn), read under "ignore": the read warns, as
    # the eager computation did when the state was made
    close = bars.close.astype(float).copy()
    close[50] = 0.0
    bad = replace(snap, bars={**snap.bars, "BTCUSDT": replace(bars, close=close)})
    PS._MEMO.clear()
    with np.errstate(divide="warn", invalid="warn"):
        st = PS.compute_perp_state(bad, "BTCUSDT")
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        _ = st.vol_percentile


def test_the_volatility_is_computed_at_the_first_read_only_and_behaves_as_the_fields_did(shipped):
    snap = shipped.snapshot(datetime(2024, 3, 10, 4, tzinfo=UTC))
    PS._MEMO.clear()
    st = PS.compute_perp_state(snap, "BTCUSDT")
    assert st.vol._args is not None and not any(k[0] == "hourly_vol" for k in PS._MEMO)   # nothing computed yet
    want = _compute_perp_state_ref(snap, "BTCUSDT")
    assert _same(st.vol_percentile, want.vol_percentile) and _same(st.vol_annual, want.vol_annual)
    assert st.vol._args is None and any(k[0] == "hourly_vol" for k in PS._MEMO)           # computed, shared
    assert st.vol_regime == want.vol_regime and st.vol_regime is not None
    PS._MEMO.clear()
    other = PS.compute_perp_state(snap, "BTCUSDT")
    assert other.vol._args is not None
    assert other == st and hash(other) == hash(st)   # equality reads both
    assert other.vol._args is None
    moved = PS.compute_perp_state(shipped.snapshot(datetime(2024, 3, 10, 9, tzinfo=UTC)), "BTCUSDT")
    assert moved != st
    back = pickle.loads(pickle.dumps(st))
    assert back == st and repr(back) == repr(st) == _repr(want)
    assert PS.compute_perp_state(snap, "BTCUSDT").vol.get() == (want.vol_annual, want.vol_percentile)
    assert PS._NO_VOL.get() == (None, None)


def test_hourly_vol_equals_the_code_before_on_real_closes_and_edge_arrays(shipped):
    rng = np.random.default_rng(7)
    arrays = []
    for k in range(30):
        bars = shipped.snapshot(datetime(2024, 1, 25, tzinfo=UTC) + timedelta(hours=97 * k)).bars["ETHUSDT"]
        arrays.append(np.asarray(bars.close, dtype=float))
    for n in (0, 1, 2, 3, 24, 25, 26, 47, 48, 100, 499, 500):
        arrays.append(100 * np.exp(np.cumsum(rng.normal(0, 0.01, n))))
    x = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 300)))
    for bad in (0.0, np.nan, np.inf, -1.0):
        y = x.copy()
        y[[7, 150]] = bad
        arrays.append(y)
    arrays.append(np.full(200, 5.0))
    arrays.append(x.astype(np.float32))                          # not float64: the separate numpy calls
    arrays.append(x[::2])                                        # a strided view
    for a in arrays:
        for n in (VOL_WINDOW, 1, 2, 12, 48):
            with np.errstate(divide="ignore", invalid="ignore"):
                got, want = PS.HourlyVol(a, n), _HourlyVolRef(a, n)
            assert got.finite is want.finite
            assert got.r.dtype == want.r.dtype and got.r.tobytes() == want.r.tobytes()
            assert (got.sd is None) is (want.sd is None)
            if want.sd is not None:
                assert got.sd.dtype == want.sd.dtype and got.sd.tobytes() == want.sd.tobytes(), (len(a), n)


def test_the_funding_moments_memo_answers_by_content_bit_for_bit(shipped):
    rng = np.random.default_rng(3)
    PS._MOMENTS.clear()
    wins = [rng.normal(1e-4, 2e-4, 90) for _ in range(40)]
    z = np.zeros(90)
    wins += [z, -z, np.full(90, 1e-4)]
    w = wins[0].copy()
    w[17] = np.nextafter(w[17], 1)                              # one ULP apart: its own entry
    wins.append(w)
    for rep in range(3):
        for win in wins:
            got = PS._funding_moments(win.copy())
            assert _same(got[0], float(_mean(win))) and _same(got[1], _std(win))
    assert len(PS._MOMENTS) == len(wins)
    for _ in range(600):                                        # bounded
        PS._funding_moments(rng.normal(0, 1, 90))
    assert len(PS._MOMENTS) <= 513


def test_the_taker_ratio_is_computed_at_the_first_read_only(shipped):
    snap = shipped.snapshot(datetime(2024, 3, 12, 9, tzinfo=UTC))
    PS._MEMO.clear()
    st = PS.compute_perp_state(snap, "ETHUSDT")
    want = _compute_perp_state_ref(snap, "ETHUSDT")
    assert st.taker._args is not None
    assert _same(st.taker_buy_sell_24h, want.taker_buy_sell_24h) and want.taker_buy_sell_24h is not None
    assert st.taker._args is None
    assert PS._NO_TAKER.get() is None


# the rule as it stood at 55b2bcb (CrowdingFade._idea's proxy part), verbatim but for `self.` -> the constants
# and _Idea -> a tuple
def _crowding_proxy_ref(st, f, PROXY_RATIO=1.10, PROXY_Z=2.0):
    r, z = st.taker_buy_sell_24h, st.funding_z
    if r is None or z is None:
        return None
    if r > PROXY_RATIO and z > PROXY_Z and f > 0.0003:
        return ("SELL", 0.6, 0.015, 24, (f"proxy crowding: taker buy/sell {r:.2f} over 24 h and funding "
                                         f"z {z:+.1f} ({f * 100:+.4f}%): longs crowded"))
    if r < 1 / PROXY_RATIO and z < -PROXY_Z and f < -0.0003:
        return ("BUY", 0.6, 0.015, 24, (f"proxy crowding: taker buy/sell {r:.2f} over 24 h and funding "
                                        f"z {z:+.1f} ({f * 100:+.4f}%): shorts crowded"))
    return None


def test_crowding_fade_reads_the_taker_ratio_only_when_the_funding_tests_pass_and_decides_as_before(shipped):
    from strategies.perp_primitives import CrowdingFade

    plugin = CrowdingFade()
    snap = shipped.snapshot(datetime(2024, 3, 12, 9, tzinfo=UTC))
    base = PS.compute_perp_state(snap, "BTCUSDT")
    read = sells = buys = 0
    values = (None, math.nan, -3.0, -2.0000001, -2.0, -1.5, 0.0, 1.5, 2.0, 2.0000001, 3.0)
    ratios = (None, math.nan, 0.5, 0.9, 1 / 1.10, 0.95, 1.0, 1.10, 1.2, 2.0)
    fundings = (-0.001, -0.00030001, -0.0003, -0.0001, 0.0, 0.0003, 0.00030001, 0.001)
    for z in values:
        for r in ratios:
            for f in fundings:
                reads = []
                taker = PS.Deferred(lambda r=r, reads=reads: reads.append(r) or r, (), PS._get_errstate())
                st = replace(base, funding=f, funding_z=z, taker=taker)
                got = plugin._idea(st, snap)
                if reads:                                    # read only when a funding test passes
                    read += 1
                    assert z is not None and ((z > 2 and f > 0.0003) or (z < -2 and f < -0.0003)), (z, f)
                want = _crowding_proxy_ref(st, f)
                assert (got is None and want is None) or (
                    (got.side.name, got.confidence, got.eae, got.hours, got.thesis) == want), (z, r, f)
                sells += want is not None and want[0] == "SELL"
                buys += want is not None and want[0] == "BUY"
    assert read > 20 and sells >= 3 and buys >= 3
