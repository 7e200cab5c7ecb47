"""The one feature module of the trained models: the live cycle and training call the same functions.

* :func:`scorer_features` (signal scorer): the specification's 49 features of one signal at ``ctx.now``,
  from the signal, the market snapshot the cycle sees and the clock. The five per-primitive source
  one-hots of the specification are generalised to one per signal source of every enabled plugin
  (``signal_source_<source>``), so equity, macro, metals and perp signals are told apart.
* :func:`regime_features` (perp regime classifier): the specification's regime features of one perp
  symbol from its hourly bars, funding, open interest and taker flow.

Honest about what the data holds: a feature the snapshot cannot give is ``NaN`` (never 0 or a guess).
CatBoost and XGBoost take NaN as "missing". In the shared history that means: minute returns and
minute volatility (the finest bars are hourly), order-book depth, spread and imbalance, the long/short
account ratio and real liquidations (live-only series; the liquidation picture uses the perp module's
declared open-interest-flush proxy), the expected return and adverse excursion (no plugin states them
on its signal). Live, a feed that publishes the series ``ob_imbalance``, ``spread_bps``,
``bid_depth_usd``, ``ask_depth_usd``, ``long_short_ratio`` or ``liquidations_*_usd`` fills them, and
the cycle report records every scored signal's features (``ml_scores``), so later retraining can use them.

Every value is a function of the snapshot (closed bars, published points) and of ``now``: nothing
after ``now`` can reach it (tests/test_ml_models.py scrambles the future to prove it).
"""
from __future__ import annotations

import hashlib
import math
from datetime import datetime

import numpy as np

from ..ports import BarSeries, MarketSnapshot
from ..perp.stats import VOL_WINDOW, PerpRegime, RuleRegimeLabeller, hourly_vol, perp_state, snapshot_memo

NAN = math.nan
HOUR_S = 3600
#: spot or Alpaca symbols whose perp market (funding, open interest, taker flow) describes them
PERP_OF = {"BTC/USD": "BTCUSDT", "ETH/USD": "ETHUSDT", "BTCUSDT": "BTCUSDT", "ETHUSDT": "ETHUSDT",
           "SOLUSDT": "SOLUSDT", "BNBUSDT": "BNBUSDT"}
CRYPTO = frozenset(PERP_OF)
REGIME_ONE_HOT = {PerpRegime.TRENDING_UP: "regime_trending_up", PerpRegime.TRENDING_DOWN: "regime_trending_down",
                  PerpRegime.RANGING: "regime_ranging", PerpRegime.HIGH_VOLATILITY: "regime_high_vol",
                  PerpRegime.CASCADE_RISK: "regime_cascade", PerpRegime.SQUEEZE_LONG: "regime_squeeze_long",
                  PerpRegime.SQUEEZE_SHORT: "regime_squeeze_short"}
_RULE = RuleRegimeLabeller()   # the scorer's regime features use the rule, whatever labeller is installed

# the specification's scorer features, without its five source one-hots (added per source seen)
SIGNAL_BASE = ("signal_direction", "signal_confidence", "expected_return", "expected_adverse_excursion")
PRICE = ("return_1m", "return_5m", "return_15m", "return_1h", "volatility_5m", "volatility_1h",
         "price_vs_sma_20", "price_vs_sma_50", "rsi_14", "atr_14")
FUNDING = ("funding_rate", "funding_rate_zscore", "funding_annualized", "funding_momentum")
OI = ("oi_delta_pct", "oi_delta_zscore", "oi_price_divergence")
LIQ = ("liq_imbalance", "liq_velocity", "liq_zscore")
BOOK = ("ob_imbalance", "spread_bps", "bid_depth_usd", "ask_depth_usd")
POSITIONING = ("long_short_ratio", "taker_buy_sell_ratio")
REGIME = (*REGIME_ONE_HOT.values(), "volatility_regime", "cascade_probability")
TIME = ("hour_of_day_sin", "hour_of_day_cos", "day_of_week_sin", "day_of_week_cos", "minutes_to_funding")
#: ours, beside the specification's: the signal's strength and the bar length the price features are in
EXTRA = ("signal_strength", "bar_interval_h", "return_1bar", "return_5bar")
SCORER_BASE_FEATURES: tuple[str, ...] = (*SIGNAL_BASE, *PRICE, *FUNDING, *OI, *LIQ, *BOOK, *POSITIONING, *REGIME,
                                         *TIME, *EXTRA)
#: the id of this feature set, recorded with every scored signal's inputs (ml/recorded.py skips rows of another)
FEATURE_SET_ID = hashlib.sha1(",".join(SCORER_BASE_FEATURES).encode()).hexdigest()[:12]
#: features that exist only live (or as a declared proxy) — the model card lists their coverage
LIVE_ONLY = (*BOOK, "long_short_ratio", "liq_zscore")


def source_feature(source: str) -> str:
    return f"signal_source_{source}"


def scorer_feature_names(sources) -> list[str]:
    """The model's column order: the base features, then one one-hot per known signal source."""
    return [*SCORER_BASE_FEATURES, *(source_feature(s) for s in sorted(sources))]


# --------------------------------------------------------------------------- bar helpers
_F64 = np.dtype(np.float64)
_add = np.add.reduce


def _mean(x: np.ndarray):
    """``np.mean`` of a 1-D float64 array, bit for bit (its own sum, then one division), without its
    Python-level dispatch (a few microseconds a call, dozens of calls a feature row)."""
    if x.dtype != _F64 or x.ndim != 1 or not len(x):
        return np.mean(x)
    return _add(x) / len(x)


def _std(x: np.ndarray) -> float:
    """``np.std`` (ddof 0) of a 1-D float64 array, bit for bit: numpy's own steps (the mean as a sum over n,
    the squared deviations summed, over n, square root) without its dispatch."""
    if x.dtype != _F64 or x.ndim != 1 or not len(x):
        return float(np.std(x))
    d = x - _add(x) / len(x)
    return math.sqrt(_add(d * d) / len(x))


def _mean_std(x: np.ndarray) -> tuple:
    """``(_mean(x), _std(x))``, the mean computed once (``_std`` takes its deviations from the same value)."""
    if x.dtype != _F64 or x.ndim != 1 or not len(x):
        return np.mean(x), float(np.std(x))
    mu = _add(x) / len(x)
    d = x - mu
    return mu, math.sqrt(_add(d * d) / len(x))


def _returns(out: dict, bars: BarSeries, close: np.ndarray) -> None:
    """``out[return_Nh] = _ret_over(bars, N h)`` for N = 1, 4, 24, the three bar look-ups in one search."""
    iv = bars.interval_s
    last = float(close[-1])
    ks = bars.ts.searchsorted(int(bars.ts[-1]) - np.array(_RET_S), "right") - 1   # _close_at's index, each
    for name, secs, k in zip(_RET_NAMES, _RET_S, ks.tolist()):
        if iv > secs:
            continue
        prev = float(close[k]) if k >= 0 else NAN
        out[name] = last / prev - 1.0 if prev > 0 else NAN


_RET_NAMES, _RET_S = ("return_1h", "return_4h", "return_24h"), (HOUR_S, 4 * HOUR_S, 24 * HOUR_S)


def _close_at(bars: BarSeries, t: int) -> float:
    """Close of the newest bar closed at or before epoch ``t``; NaN before the first."""
    k = int(np.searchsorted(bars.ts, t - bars.interval_s, side="right")) - 1   # ts + interval <= t, integers
    return float(bars.close[k]) if k >= 0 else NAN


def _ret_over(bars: BarSeries, seconds: int) -> float:
    """Return over the last ``seconds``; NaN when the bars are coarser than that (hourly bars hold no
    5-minute return) or the history is too short."""
    if bars.interval_s > seconds or not len(bars):
        return NAN
    last = float(bars.close[-1])
    prev = _close_at(bars, int(bars.ts[-1]) + bars.interval_s - seconds)
    return last / prev - 1.0 if prev > 0 else NAN


def _sma_gap(close: np.ndarray, n: int) -> float:
    if len(close) < n:
        return NAN
    return float(close[-1] / _mean(close[-n:]) - 1.0)


def _rsi(close: np.ndarray, n: int = 14) -> float:
    if len(close) <= n:
        return NAN
    d = np.diff(close[-(n + 1):])
    gain, loss = float(_add(d[d > 0])) / n, float(-_add(d[d < 0])) / n
    if loss == 0:
        return 100.0 if gain > 0 else 50.0
    return 100.0 - 100.0 / (1.0 + gain / loss)


def _true_range(bars: BarSeries, n: int) -> np.ndarray:
    h, lo, c = bars.high[-n:], bars.low[-n:], bars.close[-n - 1:]
    prev = c[:-1]
    return np.maximum(h - lo, np.maximum(np.abs(h - prev), np.abs(lo - prev)))


def _atr_norm(bars: BarSeries, n: int = 14) -> float:
    if len(bars) <= n:
        return NAN
    return float(_mean(_true_range(bars, n)) / bars.close[-1])


def _series_last(market: MarketSnapshot, kind: str, symbol: str, now_s: int, max_age_s: int) -> float:
    s = market.point_series(kind, symbol)
    if s is None or not len(s) or now_s - int(s.ts[-1]) > max_age_s:
        return NAN
    v = float(s.values[-1])
    return v if math.isfinite(v) else NAN


def _f(value) -> float:
    return NAN if value is None else float(value)


# --------------------------------------------------------------------------- the signal scorer's features
def _block(market: MarketSnapshot, symbol: str, kind: str, compute) -> dict[str, float]:
    """The features of a snapshot and symbol that do not depend on the signal, computed once for every
    signal of a cycle on that symbol (``perp.stats.snapshot_memo``)."""
    return snapshot_memo(market, f"scorer_{kind}", symbol, compute)


def _price_block(market: MarketSnapshot, symbol: str) -> dict[str, float]:
    """The price features of ``symbol``'s bars (nothing of the signal's, nothing of ``now`` but its bars)."""
    out: dict[str, float] = {}
    bars = market.bars.get(symbol)
    if bars is None or len(bars) < 2:
        return out
    close = np.asarray(bars.close, dtype=float)
    out["bar_interval_h"] = bars.interval_s / HOUR_S
    for name, secs in (("return_1m", 60), ("return_5m", 300), ("return_15m", 900), ("return_1h", 3600)):
        out[name] = _ret_over(bars, secs)
    # minute volatility needs minute bars: the replay's finest are hourly, so these stay NaN there
    if bars.interval_s <= 60 and len(close) > 60:
        r = np.diff(np.log(close[-61:]))
        out["volatility_5m"] = float(_std(r[-5:]) * math.sqrt(365 * 24 * 60))
        out["volatility_1h"] = float(_std(r) * math.sqrt(365 * 24 * 60))
    out["price_vs_sma_20"] = _sma_gap(close, 20)
    out["price_vs_sma_50"] = _sma_gap(close, 50)
    out["rsi_14"] = _rsi(close)
    out["atr_14"] = _atr_norm(bars)
    out["return_1bar"] = float(close[-1] / close[-2] - 1.0)
    out["return_5bar"] = float(close[-1] / close[-6] - 1.0) if len(close) > 5 else NAN
    return out


def _perp_block(market: MarketSnapshot, perp: str) -> dict[str, float]:
    out: dict[str, float] = {}
    if perp in market.bars:
        _perp_features(out, market, perp)
    return out


def scorer_features(signal, market: MarketSnapshot, now: datetime) -> dict[str, float]:
    """The base features of ``signal`` at ``now`` (the source one-hot is added by :func:`vectorise`)."""
    now_s = int(now.timestamp())
    out: dict[str, float] = dict.fromkeys(SCORER_BASE_FEATURES, NAN)
    out["signal_direction"] = 1.0 if signal.score > 0 else -1.0 if signal.score < 0 else 0.0
    out["signal_confidence"] = float(signal.confidence)
    out["signal_strength"] = abs(float(signal.score))
    out.update(_block(market, signal.symbol, "price", _price_block))
    perp = PERP_OF.get(signal.symbol)
    if perp is not None:
        out.update(_block(market, perp, "perp", _perp_block))
    hour = now.hour + now.minute / 60
    out["hour_of_day_sin"], out["hour_of_day_cos"] = math.sin(2 * math.pi * hour / 24), math.cos(2 * math.pi * hour / 24)
    dow = now.weekday()
    out["day_of_week_sin"], out["day_of_week_cos"] = math.sin(2 * math.pi * dow / 7), math.cos(2 * math.pi * dow / 7)
    if signal.symbol in CRYPTO:   # Binance settles at 00, 08 and 16 UTC
        out["minutes_to_funding"] = float(((8 * 3600 - now_s % (8 * 3600)) % (8 * 3600)) / 60)
    for kind in BOOK + ("long_short_ratio",):   # live-only series: present when a live feed publishes them
        out[kind] = _series_last(market, kind, perp or signal.symbol, now_s, 2 * HOUR_S)
    return out


def _perp_features(out: dict, market: MarketSnapshot, perp: str) -> None:
    st = perp_state(market, perp)
    out["funding_rate"] = _f(st.funding)
    out["funding_rate_zscore"] = _f(st.funding_z)
    if st.funding is not None:
        out["funding_annualized"] = st.funding * 3 * 365
        fs = market.point_series("funding_rate", perp)
        if fs is not None and len(fs) >= 4:
            out["funding_momentum"] = float(fs.values[-1] - _mean(fs.values[-4:-1]))
    out["oi_delta_pct"] = _f(st.oi_delta_1h)
    out["oi_delta_zscore"] = snapshot_memo(market, "oi_delta_z", perp, _oi_delta_z)
    if st.oi_delta_24h is not None and st.price_change_24h is not None:
        out["oi_price_divergence"] = 1.0 if st.oi_delta_24h * st.price_change_24h < 0 else 0.0
    out["liq_imbalance"] = _f(st.liq_imbalance) if st.liq_source != "none" else NAN
    if st.liq_source != "none" and out["liq_imbalance"] != out["liq_imbalance"]:
        out["liq_imbalance"] = 0.0   # a liquidation picture with no liquidations in it: balanced
    out["liq_velocity"] = _f(st.liquidation_velocity)
    out["taker_buy_sell_ratio"] = _f(st.taker_buy_sell_24h)
    label = _RULE.label(st, market)[0]
    if label is not None:
        for regime, name in REGIME_ONE_HOT.items():
            out[name] = 1.0 if regime is label else 0.0
    vr = st.vol_regime
    out["volatility_regime"] = NAN if vr is None else {"normal": 0.0, "elevated": 1.0}.get(vr, 2.0)
    out["cascade_probability"] = _f(st.cascade_probability)


def _oi_delta_z(market: MarketSnapshot, perp: str, n: int = 168) -> float:
    """The newest hourly open-interest change against the last week's hourly changes."""
    oi = market.point_series("open_interest", perp)
    if oi is None or len(oi) < 48:
        return NAN
    v = np.asarray(oi.values[-(n + 1):], dtype=float)
    d = v[1:] / v[:-1] - 1.0
    d = d[np.isfinite(d)]
    if len(d) < 24:
        return NAN
    sd = float(_std(d[:-1]))
    return float((d[-1] - _mean(d[:-1])) / sd) if sd > 0 else 0.0


def vectorise(base: dict[str, float], source: str, names: list[str]) -> np.ndarray:
    """One row in the model's column order: base features plus the one-hot of ``source``."""
    row = np.full(len(names), NAN)
    hot = source_feature(source)
    for i, n in enumerate(names):
        if n.startswith("signal_source_"):
            row[i] = 1.0 if n == hot else 0.0
        else:
            row[i] = base.get(n, NAN)
    return row


# --------------------------------------------------------------------------- the regime classifier's features
REGIME_FEATURES: tuple[str, ...] = (
    "return_1h", "return_4h", "return_24h", "sma_20_slope", "sma_50_slope", "price_vs_sma_20", "price_vs_sma_50",
    "adx_14",
    "volatility_5m", "volatility_1h", "volatility_24h", "volatility_zscore", "atr_14", "atr_zscore", "bollinger_width",
    "funding_rate", "funding_zscore", "oi_delta_pct", "oi_zscore", "long_short_ratio",
    "liq_velocity", "liq_imbalance", "cascade_probability",
    "volume_zscore", "cvd_momentum",
)
REGIME_LIVE_ONLY = ("volatility_5m", "volatility_1h", "long_short_ratio")


try:   # the C function np.convolve ends in (numpy 2); np.convolve itself where it is not there
    from numpy._core.multiarray import correlate as _correlate
except ImportError:   # pragma: no cover - numpy 1.x
    _correlate = None
_ADX_KERNEL = np.ones(14) / 14
if VOL_WINDOW != 24:   # regime_features' volatility features are 24-bar ones and read perp.stats' deviations
    raise ImportError(f"perp.stats.VOL_WINDOW is {VOL_WINDOW}, regime_features needs the 24-bar deviations")


def _convolve_valid(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``np.convolve(x, k, "valid")`` for a 1-D ``x`` at least as long as ``k``: the C correlation it ends
    in (``correlate(x, k[::-1], "valid")``), without its argument checks."""
    return _correlate(x, k[::-1], "valid") if _correlate is not None else np.convolve(x, k, "valid")


def _adx(bars: BarSeries, n: int = 14) -> float:
    """ADX(n) over the last 3n bars: the true range and the directional moves smoothed by an n-bar mean
    (``np.convolve(x, ones(n) / n, "valid")``), DX = |+DI - -DI| / (+DI + -DI), its last n finite values
    averaged. The three smoothings run as one correlation of the three series laid end to end: every output
    it keeps is the same n-term dot product over the same values, in the same order, as each series' own
    convolution (tests/test_cycle_shared_vol.py checks it bit for bit on real data)."""
    if len(bars) < 3 * n:
        return NAN
    h, lo, c = (np.asarray(x[-3 * n:], dtype=float) for x in (bars.high, bars.low, bars.close))
    up, down = h[1:] - h[:-1], -(lo[1:] - lo[:-1])   # np.diff's own subtraction
    m = len(up)
    x = np.zeros(3 * m + n - 1)           # [true range | +DM | -DM | n - 1 zeros: outputs never read]
    np.maximum(h[1:] - lo[1:], np.maximum(np.abs(h[1:] - c[:-1]), np.abs(lo[1:] - c[:-1])), out=x[:m])
    np.copyto(x[m:2 * m], up, where=(up > down) & (up > 0))    # np.where(cond, up, 0.0)
    np.copyto(x[2 * m:3 * m], down, where=(down > up) & (down > 0))
    conv = _convolve_valid(x, _ADX_KERNEL if n == 14 else np.ones(n) / n)
    sm = conv.reshape(3, m)[:, :m - n + 1]   # row j: the windows wholly inside series j
    old = np.seterr(divide="ignore", invalid="ignore")   # np.errstate's effect, less its context manager
    try:
        di = sm[1:] / sm[0]               # +DI, -DI
        dx = np.abs(di[0] - di[1]) / (di[0] + di[1])
    finally:
        np.seterr(**old)
    dx = dx[np.isfinite(dx)]
    return float(_mean(dx[-n:]) * 100) if len(dx) >= n else NAN


def regime_features(market: MarketSnapshot, symbol: str) -> dict[str, float]:
    """The perp regime classifier's features of ``symbol`` (hourly perp bars) at ``market.now``."""
    out: dict[str, float] = dict.fromkeys(REGIME_FEATURES, NAN)
    bars = market.bars.get(symbol)
    if bars is None or len(bars) < 60:
        return out
    now_s = int(market.now.timestamp())
    close = np.asarray(bars.close, dtype=float)
    _returns(out, bars, close)
    for n in (20, 50):
        sma_now, sma_prev = _mean(close[-n:]), _mean(close[-n - 5:-5])
        out[f"sma_{n}_slope"] = float(sma_now / sma_prev - 1.0)
        out[f"price_vs_sma_{n}"] = float(close[-1] / sma_now - 1.0)   # _sma_gap(close, n): len(close) >= 60
    out["adx_14"] = _adx(bars)
    hv = hourly_vol(market, symbol)   # log returns, rolling 24-bar deviations: shared with the perp state
    if len(hv.r) >= 24 * 4:
        sd = hv.sd
        out["volatility_24h"] = float(sd[-1] * math.sqrt(365 * 24))
        mu, s = _mean_std(sd)
        out["volatility_zscore"] = float((sd[-1] - mu) / s) if s > 0 else 0.0
    if len(bars) > 200:
        tr = _true_range(bars, 200) / close[-200:]
        atr = _convolve_valid(tr, _ADX_KERNEL)
        out["atr_14"] = float(atr[-1])
        mu, s = _mean_std(atr)
        out["atr_zscore"] = float((atr[-1] - mu) / s) if s > 0 else 0.0
    mu, s = _mean_std(close[-20:])
    out["bollinger_width"] = float(4 * s / mu)
    st = perp_state(market, symbol)
    out["funding_rate"] = _f(st.funding)
    out["funding_zscore"] = _f(st.funding_z)
    out["oi_delta_pct"] = _f(st.oi_delta_1h)
    out["oi_zscore"] = snapshot_memo(market, "oi_delta_z", symbol, _oi_delta_z)
    out["long_short_ratio"] = _series_last(market, "long_short_ratio", symbol, now_s, 2 * HOUR_S)
    out["liq_velocity"] = _f(st.liquidation_velocity)
    out["liq_imbalance"] = _f(st.liq_imbalance) if st.liq_imbalance is not None else (0.0 if st.liq_source != "none" else NAN)
    out["cascade_probability"] = _f(st.cascade_probability)
    vol = np.asarray(bars.volume, dtype=float)
    if len(vol) >= 168:
        lv = np.log1p(vol[-168:])
        mu, s = _mean_std(lv)
        out["volume_zscore"] = float((np.log1p(_add(vol[-24:]) / 24) - mu) / s) if s > 0 else 0.0
    taker = market.point_series("taker_buy_ratio", symbol)
    if taker is not None and len(taker) >= 48 and now_s - int(taker.ts[-1]) <= 2 * HOUR_S:
        share = np.asarray(taker.values[-48:], dtype=float)
        v48 = vol[-48:] if len(vol) >= 48 else None
        if v48 is not None and np.isfinite(share).all() and (v48_sum := _add(v48)) > 0:
            delta = (2 * share - 1) * v48
            out["cvd_momentum"] = float((_add(delta[24:]) - _add(delta[:24])) / v48_sum)
    return out
