"""Layer 2 of the perp module ("is it safe to trade right now?"): what one perp symbol's market says at
``now`` — funding, open interest, taker flow, realised-volatility regime, the liquidation picture and
the cascade probability, and the symbol's perp regime. Pure functions of a :class:`MarketSnapshot`;
:func:`perp_state` computes them once per (symbol, cycle) for every consumer (primitives, gate rules,
risk rules, kill switches).

Inputs and what stands in for what (a missing input gives ``None``, never a guess):

* funding: the settled Binance rate (``funding_rate`` series), at most ``FUNDING_MAX_AGE`` old.
* open interest: Bybit's hourly linear-perp open interest (PROVENANCE §1.5) — **a proxy for Binance's
  open interest**, which the shared data does not hold; live, Binance's ``openInterest``.
* taker flow: the taker-buy share of each hourly Binance perp bar (``taker_buy_ratio``).
* liquidations — **proxy in history**: an *open-interest flush* (open interest down at least
  ``FLUSH_OI_PCT`` in the hour) together with a *large price move* (at least ``FLUSH_MOVE_PCT``) and
  *taker flow on the move's side* (sellers dominant on a fall, buyers on a rise) stands in for a
  liquidation cluster; the flushed open interest is the liquidated amount, on the longs when price fell
  and on the shorts when it rose. Live, the ``forceOrder`` stream gives real liquidations (a series
  ``liquidations_long_usd`` / ``liquidations_short_usd``; when present it is used instead).
* long/short crowding — **proxy in history**: the 24 h taker buy/sell volume ratio together with the
  funding z-score stands in for the long/short account ratio (live: ``globalLongShortAccountRatio``,
  series ``long_short_ratio``).

Thresholds are the layer specification's (LAYER 2): volatility percentile > 95 extreme (BLOCK), > 80
high (RESTRICT), > 50 elevated; cascade velocity > 5 % of open interest → 0.9, > 2 % → 0.6, else
velocity × 10; data health: fresh bars, funding and open interest present, at least 20 candles.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

from ..ports import MarketSnapshot

FUNDING_MAX_AGE = timedelta(hours=9)      # one 8 h interval and a margin
OI_MAX_AGE = timedelta(hours=2)
BARS_MAX_AGE = timedelta(hours=2)
MIN_CANDLES = 20
VOL_WINDOW = 24                           # hourly returns per realised-volatility reading
LIQ_LOOKBACK_H = 6                        # the liquidation picture: the last six hours
FUNDING_Z_SETTLEMENTS = 90                # funding z-score against the last 30 days of settlements
TREND_WINDOW_H = 72
TREND_MOVE_PCT = 3.0
SQUEEZE_IMBALANCE = 0.7
from .series_reads import (_FLUSH_PREFILTER, _MOMENTS, FLUSH_MOVE_PCT, FLUSH_OI_PCT, _add,  # noqa: F401,E402
                           _close_at, _flush, _flush_many, _funding_moments, _latest, _latest_s, _mean,
                           _oi_delta, _oi_delta_newest, _std, _value_at)


class PerpRegime(str, enum.Enum):
    """The layer specification's seven perp regimes (per symbol)."""

    TRENDING_UP = "TRENDING_UP"
    TRENDING_DOWN = "TRENDING_DOWN"
    RANGING = "RANGING"
    HIGH_VOLATILITY = "HIGH_VOLATILITY"
    CASCADE_RISK = "CASCADE_RISK"
    SQUEEZE_LONG = "SQUEEZE_LONG"      # shorts getting squeezed
    SQUEEZE_SHORT = "SQUEEZE_SHORT"    # longs getting squeezed


@dataclass(frozen=True, slots=True, repr=False)
class PerpState:
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
    taker: Deferred                       # taker_buy_sell_24h, computed at the first read
    vol: Deferred                         # (vol_annual, vol_percentile), computed at the first read
    liq_long: float                       # liquidated open interest (fraction of OI) in the lookback, longs
    liq_short: float
    liq_source: str                       # "forceOrder" | "proxy:oi_flush" | "none"
    liquidation_velocity: float | None    # newest hour: liquidated / open interest
    health_problems: tuple[str, ...]

    @property
    def taker_buy_sell_24h(self) -> float | None:   # taker buy volume / taker sell volume over 24 h
        return self.taker.get()

    @property
    def vol_annual(self) -> float | None:
        return self.vol.get()[0]

    @property
    def vol_percentile(self) -> float | None:     # fraction in [0, 1] against the visible history
        return self.vol.get()[1]

    @property
    def vol_regime(self) -> str | None:
        return vol_regime(self.vol.get()[1])

    def __repr__(self) -> str:   # the dataclass's own repr as it was: the deferred values by their names
        return "PerpState(" + ", ".join(
            f"{k}={getattr(self, k)!r}" for k in _STATE_REPR) + ")"

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


_STATE_REPR = ("symbol", "now", "price", "candles", "bars_age_s", "funding", "funding_z", "oi_delta_1h", "oi_delta_8h",
               "oi_delta_24h", "price_change_24h", "taker_buy_sell_24h", "vol_annual", "vol_percentile", "liq_long",
               "liq_short", "liq_source", "liquidation_velocity", "health_problems")


class Deferred:
    """A perp state's value that is computed at its first read: ``(vol_annual, vol_percentile)`` (the
    state's most expensive part, the rolling deviations of every bar) and ``taker_buy_sell_24h``. Most
    readers of a state never ask for them: in a killed backtest cycle only a hot-funding carry test or
    the regime label reads the volatility, only a funding z-score beyond +-2 the taker ratio. The read
    computes exactly what :func:`compute_perp_state` computed eagerly before, from the same snapshot's
    arrays and under the numpy error settings in force when the state was made; the value is then kept
    (and the arrays let go). Equal, hashed, shown and pickled as that value."""

    __slots__ = ("_args", "_value")

    def __init__(self, compute=None, args: tuple = (), errstate=None, value=None):
        self._args = None if compute is None else (compute, args, errstate)
        self._value = value

    def get(self):
        if self._args is not None:
            compute, args, err = self._args
            token = _set_errstate(err)
            try:
                self._value = compute(*args)
            finally:
                _reset_errstate(token)
            self._args = None
        return self._value

    def __eq__(self, other):
        return self.get() == other.get() if isinstance(other, Deferred) else NotImplemented

    def __hash__(self):
        return hash(self.get())

    def __repr__(self) -> str:
        return f"Deferred({self.get()!r})"

    def __reduce__(self):
        return Deferred, (None, (), None, self.get())


def _get_errstate() -> dict:
    """numpy's floating-point error settings (the four error modes), to be restored at a deferred read."""
    return np.geterr()


def _set_errstate(err: dict):
    ctx = np.errstate(**err)
    ctx.__enter__()
    return ctx


def _reset_errstate(ctx) -> None:
    ctx.__exit__(None, None, None)


_NO_VOL = Deferred(value=(None, None))   # not hourly bars, or fewer than VOL_WINDOW * 3 of them
_NO_TAKER = Deferred(value=None)          # no hourly bars or taker flow (24 of each), or not fresh


def _taker_buy_sell(shares, volume) -> float | None:
    """Taker buy volume over taker sell volume in the last 24 hourly bars (taker shares all finite)."""
    shares = np.asarray(shares[-24:], dtype=float)
    vols = np.asarray(volume[-24:], dtype=float)
    if not np.isfinite(shares).all():
        return None
    buy = float(_add(shares * vols))      # np.sum's own reduction, without its dispatch
    sell = float(_add((1 - shares) * vols))
    return buy / sell if sell > 0 else None


_SQRT_YEAR_H = math.sqrt(365 * 24)


def _vol_of(market: MarketSnapshot, symbol: str, bars) -> tuple[float | None, float | None]:
    """(vol_annual, vol_percentile) of ``symbol``'s hourly bars (at least VOL_WINDOW * 3 of them)."""
    vol_annual = vol_pct = None
    if (hv := hourly_vol(market, symbol)).finite:
        # every return finite (the usual case): the snapshot's shared rolling deviations are the ones below
        if len(hv.r) >= VOL_WINDOW * 2:
            sd = hv.sd
            last = sd.item(-1)                    # the float64 as a Python float: the same product and test
            vol_annual = last * _SQRT_YEAR_H
            vol_pct = float(np.count_nonzero(sd <= last) / len(sd))
    else:
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
    return vol_annual, vol_pct


def vol_regime(percentile: float | None) -> str | None:
    if percentile is None:
        return None
    if percentile > 0.95:
        return "extreme"
    if percentile > 0.80:
        return "high"
    if percentile > 0.50:
        return "elevated"
    return "normal"


def cascade_probability(velocity: float | None) -> float | None:
    """Layer spec ``check_cascade``: liquidation velocity (liquidated / open interest) to a probability."""
    if velocity is None:
        return None
    if velocity > 0.05:
        return 0.9
    if velocity > 0.02:
        return 0.6
    return velocity * 10


_BARS_MAX_AGE_S = BARS_MAX_AGE.total_seconds()
_FUNDING_MAX_AGE_S = FUNDING_MAX_AGE.total_seconds()
_OI_MAX_AGE_S = OI_MAX_AGE.total_seconds()


def compute_perp_state(market: MarketSnapshot, symbol: str) -> PerpState:
    now = market.now
    now_ts = now.timestamp()
    t_now = int(now_ts)
    problems: list[str] = []
    bars = market.bars.get(symbol)
    candles = len(bars) if bars is not None else 0
    price = bars_age = None
    if candles:
        price = float(bars.close[-1])
        bars_age = t_now - (int(bars.ts[-1]) + bars.interval_s)
        if bars_age > _BARS_MAX_AGE_S:
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
    f = _latest_s(fseries, now_ts, _FUNDING_MAX_AGE_S)
    funding = f[0] if f else None
    if funding is None:
        problems.append("funding missing or older than 9 h")
    funding_z = None
    if funding is not None and len(fseries) >= 30:
        mean, sd = _funding_moments(np.asarray(fseries.values[-FUNDING_Z_SETTLEMENTS:], dtype=float))
        funding_z = (funding - mean) / sd if sd > 0 else 0.0

    oi = market.point_series("open_interest", symbol)
    o = _latest_s(oi, now_ts, _OI_MAX_AGE_S)
    if o is None:
        problems.append("open interest missing or older than 2 h")
    t_oi = o[1] if o else None
    d1 = _oi_delta_newest(oi, t_oi, 1) if t_oi else None   # t_oi is the newest point's time
    d8 = _oi_delta_newest(oi, t_oi, 8) if t_oi else None
    d24 = _oi_delta_newest(oi, t_oi, 24) if t_oi else None

    change_24h = None
    if hourly and candles > 24:
        c0 = float(bars.close[-25])
        change_24h = price / c0 - 1.0 if c0 > 0 else None

    taker = market.point_series("taker_buy_ratio", symbol)
    # taker_buy_sell_24h, vol_annual and vol_percentile: computed when first read (Deferred), from this snapshot
    err = _get_errstate()
    buy_sell = _NO_TAKER
    if (hourly and taker is not None and len(taker) >= 24 and candles >= 24
            and now_ts - int(taker.ts[-1]) <= _BARS_MAX_AGE_S):
        buy_sell = Deferred(_taker_buy_sell, (taker.values, bars.volume), err)
    vol = Deferred(_vol_of, (market, symbol, bars), err) if hourly and candles >= VOL_WINDOW * 3 else _NO_VOL

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
        # with a trained labeller installed (its monitor labels the 24 h window that just ended: once a day by
        # default, every hour with monitor_every_hours = 1) the last FLUSH_TABLE_H hours go in the snapshot's
        # flush table, in the one pass the 6 hours need (~1 us more): that label reads them from there. Only
        # which hours are computed depends on it, never a value
        span = FLUSH_TABLE_H if getattr(_LABELLER, "booster", None) is not None else LIQ_LOOKBACK_H
        hours = flush_hours(market, symbol, [t_oi - h * 3600 for h in range(span)])
        for h, (lo, sh) in enumerate(hours[:LIQ_LOOKBACK_H]):
            liq_long += lo
            liq_short += sh
            if h == 0:
                velocity = lo + sh
    return PerpState(symbol, now, price, candles, bars_age, funding, funding_z, d1, d8, d24, change_24h, buy_sell,
                     vol, liq_long, liq_short, source, velocity, tuple(problems))


class HourlyVol:
    """One symbol's bar log returns and their rolling ``n``-bar (``VOL_WINDOW``) standard deviation, as
    :func:`compute_perp_state`, ``ml.features.regime_features`` and ``ml.labels.regime_label`` compute them:
    ``r = diff(log(close))`` over the snapshot's bars (not filtered: ``finite`` says whether every one is
    finite), ``sd[i]`` the deviation of ``r[i:i + VOL_WINDOW]`` by cumulative sums (None when fewer returns).
    The cumulative sums run from the first return in order, so the deviations of a prefix of the bars
    (``regime_label``'s history before its window) are the first ones of ``sd``, bit for bit."""

    __slots__ = ("finite", "r", "sd")

    def __init__(self, close: np.ndarray, n: int = VOL_WINDOW):
        # the same element operations in the same order as diff(log(close)), cumsum(r), cumsum(r * r) and the
        # window arithmetic on each, with r and r * r as the two rows of one array: one call for both rows
        # (a row's cumulative sum runs along it from its first element, as a 1-D cumsum does)
        lg = np.log(close)
        if lg.dtype != np.float64 or lg.ndim != 1:
            self._numpy(lg, n)
            return
        m = len(lg) - 1 if len(lg) else 0
        rr = np.empty((2, m))
        self.r = r = np.subtract(lg[1:], lg[:-1], out=rr[0])   # np.diff's own subtraction
        self.finite = bool(np.isfinite(r).all())
        self.sd = None
        if m >= n:
            np.multiply(r, r, out=rr[1])
            c = np.zeros((2, m + 1))
            rr.cumsum(axis=1, out=c[:, 1:])
            w = c[:, n:] - c[:, :-n]
            w /= n
            mean = w[0]
            var = w[1] - mean * mean
            self.sd = np.sqrt(np.maximum(var, 0.0, out=var), out=var)

    def _numpy(self, lg: np.ndarray, n: int) -> None:
        """The steps as separate numpy calls (an input that is not a 1-D float64 array)."""
        self.r = r = np.diff(lg)
        self.finite = bool(np.isfinite(r).all())
        self.sd = None
        if len(r) >= n:
            c1, c2 = np.empty(len(r) + 1), np.empty(len(r) + 1)
            c1[0] = c2[0] = 0.0
            np.cumsum(r, out=c1[1:])
            np.cumsum(r * r, out=c2[1:])
            mean = (c1[n:] - c1[:-n]) / n
            self.sd = np.sqrt(np.maximum((c2[n:] - c2[:-n]) / n - mean * mean, 0.0))


#: per-snapshot values several consumers of one cycle read: (kind, symbol, time, id(snapshot)) -> (snapshot,
#: value). The entry keeps its snapshot alive (an id is unique only while its object lives), so a later
#: snapshot never reads an earlier one's value; nothing is carried from one snapshot to the next
_MEMO: dict[tuple, tuple] = {}


def snapshot_memo(market: MarketSnapshot, kind: str, symbol: str, compute):
    """``compute(market, symbol)``, once per (kind, symbol, snapshot)."""
    key = (kind, symbol, market.now, id(market))
    hit = _MEMO.get(key)
    if hit is None or hit[0] is not market:
        if len(_MEMO) > 256:   # a cycle asks ~10-20 kinds x symbols: only earlier snapshots' entries go
            _MEMO.clear()
        hit = _MEMO[key] = (market, compute(market, symbol))
    return hit[1]


FLUSH_TABLE_H = 24   # hours the perp state puts in the flush table: ml.labels.REGIME_WINDOW_H


def _new_table(market: MarketSnapshot, symbol: str) -> dict:
    return {}


def flush_hours(market: MarketSnapshot, symbol: str, ts: list[int]) -> list[tuple[float, float]]:
    """``_flush_many(oi, bars, taker, ts)`` on ``symbol``'s open interest, bars and taker flow in ``market``,
    through a per-snapshot table hour -> value: an hour one consumer of this snapshot asked for (the perp
    state, the realised regime label) is not computed again; the others are computed in one pass. Each
    hour's value is a function of the snapshot's series and that hour alone, whatever else is asked with it."""
    table = snapshot_memo(market, "flush", symbol, _new_table)
    missing = [t for t in ts if t not in table]
    if missing:
        oi = market.point_series("open_interest", symbol)
        got = _flush_many(oi, market.bars.get(symbol), market.point_series("taker_buy_ratio", symbol), missing)
        table.update(zip(missing, got))
    return [table[t] for t in ts]


def _hourly_vol(market: MarketSnapshot, symbol: str) -> HourlyVol | None:
    bars = market.bars.get(symbol)
    return None if bars is None or len(bars) < 2 else HourlyVol(np.asarray(bars.close, dtype=float))


def hourly_vol(market: MarketSnapshot, symbol: str) -> HourlyVol | None:
    """:class:`HourlyVol` of ``symbol``'s bars in ``market`` (None under two bars), once per snapshot."""
    return snapshot_memo(market, "hourly_vol", symbol, _hourly_vol)


def perp_state(market: MarketSnapshot, symbol: str) -> PerpState:
    """:func:`compute_perp_state`, once per (symbol, snapshot) for all the consumers of a cycle."""
    return snapshot_memo(market, "perp_state", symbol, compute_perp_state)


class RuleRegimeLabeller:
    """The perp regime of one symbol by rule on the trailing window (issue #21 swaps in a trained
    classifier with the same ``label(state, market) -> (PerpRegime | None, confidence, why)``).

    In order: CASCADE_RISK (cascade probability > 0.7), SQUEEZE_SHORT / SQUEEZE_LONG (liquidation
    imbalance over the last six hours beyond ±0.7: longs / shorts being liquidated), HIGH_VOLATILITY
    (realised-volatility percentile > 0.8), TRENDING_UP / TRENDING_DOWN (72 h move beyond ±3 %),
    else RANGING. None when the price history is too short to say."""

    name = "perp_rule_v1"

    def label(self, state: PerpState, market: MarketSnapshot) -> tuple[PerpRegime | None, float, str]:
        cp = state.cascade_probability
        if cp is not None and cp > 0.7:
            return PerpRegime.CASCADE_RISK, cp, f"cascade probability {cp:.2f} > 0.7"
        imb = state.liq_imbalance
        if imb is not None and imb > SQUEEZE_IMBALANCE:
            return PerpRegime.SQUEEZE_SHORT, imb, f"longs liquidated (imbalance {imb:+.2f}, {state.liq_source})"
        if imb is not None and imb < -SQUEEZE_IMBALANCE:
            return PerpRegime.SQUEEZE_LONG, -imb, f"shorts liquidated (imbalance {imb:+.2f}, {state.liq_source})"
        if state.vol_percentile is not None and state.vol_percentile > 0.8:
            return PerpRegime.HIGH_VOLATILITY, state.vol_percentile, f"vol percentile {state.vol_percentile:.2f} > 0.8"
        bars = market.bars.get(state.symbol)
        if bars is None or len(bars) <= TREND_WINDOW_H or state.price is None:
            return None, 0.0, "fewer than 73 hourly bars"
        move = state.price / float(bars.close[-TREND_WINDOW_H - 1]) - 1.0
        if move > TREND_MOVE_PCT / 100:
            return PerpRegime.TRENDING_UP, min(1.0, move / 0.10), f"72 h move {move * 100:+.1f}%"
        if move < -TREND_MOVE_PCT / 100:
            return PerpRegime.TRENDING_DOWN, min(1.0, -move / 0.10), f"72 h move {move * 100:+.1f}%"
        return PerpRegime.RANGING, 1.0 - abs(move) / (TREND_MOVE_PCT / 100), f"72 h move {move * 100:+.1f}%"


#: the labeller every perp consumer uses; #21 replaces it (``set_regime_labeller``)
_LABELLER = RuleRegimeLabeller()


def set_regime_labeller(labeller) -> None:
    global _LABELLER
    _LABELLER = labeller


def perp_regime(market: MarketSnapshot, symbol: str) -> tuple[PerpRegime | None, float, str]:
    return _LABELLER.label(perp_state(market, symbol), market)
