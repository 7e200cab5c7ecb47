"""The five behavioural primitives of the perp module (layer specification, LAYER 3), one plugin each.

Each reads one perp symbol's state (:func:`hydra_engine.perp.stats.perp_state`: funding, open interest,
taker flow, volatility regime, liquidation picture) and, with the layer specification's logic and
thresholds, gives a signal with a side, a confidence, an expected adverse excursion (the stop distance,
through :func:`~hydra_engine.perp.governance.exits_from_eae`) and a holding period. A primitive whose
input is missing gives no signal — never a guess. Where history has no real input the thesis says
which proxy stood in (``proxy:``):

* ``funding_squeeze`` — funding beyond ±0.05 % per 8 h while open interest grew over the interval
  (Bybit open interest stands in for Binance's): fade the side that pays. Confidence min(0.8, |f| × 500).
* ``liquidation_reversal`` — heavy one-sided liquidations in the last six hours (imbalance beyond ±0.7)
  and the cascade over (probability < 0.3): trade the bounce, confidence 0.65. Live input: the
  ``forceOrder`` stream; in history **proxy**: an open-interest flush with a large price move and taker
  flow on the move's side (see ``perp/stats.py``).
* ``oi_divergence`` — price up more than 2 % in 24 h while open interest fell more than 2 %: a weak rally,
  short; price down more than 2 % with open interest down more than 2 %: a weak sell-off, long. 0.55.
* ``crowding_fade`` — live input: the long/short account ratio (> 2 with funding > 0.03 %: short; < 0.5
  with funding < −0.03 %: long), 0.6. In history **proxy**: the 24 h taker buy/sell volume ratio beyond
  1.10 (below 0.91) *and* the funding z-score beyond +2 (below −2) stand in for the ratio; the
  thresholds of the proxy are set here, not in the specification, and are not fitted.
* ``funding_carry`` — in a RANGING perp regime with volatility neither high nor extreme, take the side
  that receives funding beyond ±0.05 %, 0.5.
"""
from __future__ import annotations

import math
from abc import abstractmethod
from datetime import timedelta
from typing import Mapping

from pydantic import Field

import numpy as np

from hydra_engine.domain import Regime, Side, Signal, TradeProposal
from hydra_engine.perp import stats as _stats
from hydra_engine.perp.governance import exits_from_eae
from hydra_engine.perp.stats import (FLUSH_OI_PCT, LIQ_LOOKBACK_H, PerpRegime, PerpState, perp_regime,
                                     perp_state)
from hydra_engine.ports import MarketSnapshot
from hydra_engine.strategy import CombinedSignal, DataNeed, ExitRequest, Strategy, StrategyContext, StrategyParams

PERP_SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT")
_KINDS = ("bars", "funding_rate", "open_interest", "taker_buy_ratio")


class PerpPrimitiveParams(StrategyParams):
    min_notional_usd: float = Field(50.0, ge=0)
    max_notional_usd: float | None = Field(None, gt=0)


class _Idea:
    __slots__ = ("side", "confidence", "eae", "hours", "thesis")

    def __init__(self, side: Side, confidence: float, eae: float, hours: float, thesis: str):
        self.side, self.confidence, self.eae, self.hours, self.thesis = side, confidence, eae, hours, thesis


SLACK = 1e-9   # the promises' thresholds are widened by this much: a float test may differ in the last bit


def _funding_above(threshold: float):
    """The promise rule "the newest funding rate is beyond +-``threshold``" (finite, |f| > threshold)."""
    def hot(src) -> np.ndarray:
        v = np.asarray(src.values, dtype=float)
        with np.errstate(invalid="ignore"):
            return np.isfinite(v) & (np.abs(v) > threshold - SLACK)
    return hot


def _oi_deltas(src, hours: int) -> tuple[np.ndarray, np.ndarray]:
    """Per point of an open-interest series: (defined, change) of ``stats._oi_delta(oi, ts, hours)`` -- the
    point against the newest one at or before ``hours`` earlier, at most 2 h older than that."""
    ts = np.asarray(src.ts, dtype=np.int64)
    v = np.asarray(src.values, dtype=float)
    back = ts - hours * 3600
    k = np.searchsorted(ts, back, side="right") - 1
    ok = k >= 0
    kk = np.where(ok, k, 0)
    prev = v[kk]
    with np.errstate(invalid="ignore", divide="ignore"):
        ok &= (back - ts[kk] <= 7200) & np.isfinite(prev) & (prev > 0) & np.isfinite(v) & (v > 0)
        change = np.where(ok, v / np.where(ok, prev, 1.0) - 1.0, 0.0)
    return ok, change


class _PerpPrimitive(Strategy):
    interface_version = 1
    regimes = frozenset(r for r in Regime if r is not Regime.UNKNOWN)   # the perp regime is per symbol
    assets = PERP_SYMBOLS
    data_needs = tuple(DataNeed(k, s) for s in PERP_SYMBOLS for k in _KINDS)
    Params = PerpPrimitiveParams

    def __init__(self, params=None):
        super().__init__(params)
        self._ideas: tuple = (None, {})   # (snapshot time, {symbol: _Idea})

    def idea(self, market: MarketSnapshot, symbol: str) -> _Idea | None:
        if symbol not in market.bars:
            return None
        return self._idea(perp_state(market, symbol), market)

    @abstractmethod
    def _idea(self, st: PerpState, market: MarketSnapshot) -> _Idea | None:
        """The primitive's rule on one symbol's state: an idea, or None (also when an input is missing)."""

    def _all(self, market: MarketSnapshot) -> dict:
        if self._ideas[0] != market.now:
            self._ideas = (market.now, {s: i for s in PERP_SYMBOLS if (i := self.idea(market, s)) is not None})
        return self._ideas[1]

    def wants_cycle(self, market: MarketSnapshot) -> bool:
        return bool(self._all(market))

    # ------------------------------------------------------------------ event-horizon replay
    horizon_reads_data = True   # the replay driver passes its data source: the future points' times

    def horizon_next_wake(self, market: MarketSnapshot, data=None):
        """Event-horizon replay (hydra_engine/horizon.py): the earliest time ``wants_cycle`` could be True.

        Each primitive's rule needs a condition on the newest point of one point series per symbol (the
        subclass's :meth:`_horizon_rule`: the series kind and, per point of the whole replay series, whether
        the condition could hold while it is the newest -- a superset, with a 1e-9 margin on every
        threshold); the promise is the ``known_at`` of the next such point of any perp symbol, none while the
        newest known point is one (``horizon_plugins.point_wake``). None without a replay source, for a
        primitive without a rule, or when a subclass or patch changed the predicate."""
        cls = type(self)
        if (_PROMISED.get(cls) is not cls._idea or cls.wants_cycle is not _PerpPrimitive.wants_cycle
                or cls.idea is not _PerpPrimitive.idea or cls._all is not _PerpPrimitive._all
                or perp_state is not _stats.perp_state):
            return None
        rule = self._horizon_rule(data)
        if rule is None:
            return None
        kind, hot = rule
        from hydra_engine.horizon_plugins import cached, point_wake
        return point_wake(market, data, [(kind, sym) for sym in PERP_SYMBOLS],
                          lambda key, src: cached(self, key, src, lambda: hot(src)))

    def _horizon_rule(self, data):
        """(point kind, ``hot(series) -> bool array``) or None (no promise; every primitive here has a rule)."""

    def generate_signals(self, ctx: StrategyContext) -> list[Signal]:
        return [Signal(symbol=s, score=i.side.sign * i.confidence, confidence=i.confidence, source=self.name,
                       created_at=ctx.now, half_life=timedelta(hours=max(1.0, i.hours / 2)), thesis=i.thesis)
                for s, i in self._all(ctx.market).items()]

    def propose(self, ctx: StrategyContext, combined: Mapping[str, CombinedSignal]) -> list[TradeProposal | ExitRequest]:
        out: list[TradeProposal | ExitRequest] = []
        for symbol, i in self._all(ctx.market).items():
            held = ctx.held.get(symbol, 0.0)
            if held:
                if held * i.side.sign < 0:   # this primitive now says the other way: close its position
                    out.append(ExitRequest(self.name, symbol, f"{self.name} reversed: {i.thesis}"))
                continue
            view = combined.get(symbol)
            if view is not None and view.score * i.side.sign < 0:
                continue                     # the other primitives, together, say the other way
            price = ctx.market.price(symbol)
            if not (math.isfinite(price) and price > 0):
                continue
            st = perp_state(ctx.market, symbol)
            stop, target, eae = exits_from_eae(price, i.side, i.eae, st.vol_regime)
            out.append(TradeProposal(strategy=self.name, symbol=symbol, side=i.side, entry_price=price,
                                     stop_price=stop, target_price=target, confidence=i.confidence,
                                     expected_holding=timedelta(hours=i.hours),
                                     thesis=f"{i.thesis}; stop {eae:.1%} (expected adverse excursion)",
                                     max_notional_usd=self.params.max_notional_usd,
                                     min_notional_usd=self.params.min_notional_usd))
        return out


class FundingSqueeze(_PerpPrimitive):
    name = "funding_squeeze"

    def _horizon_rule(self, data):   # needs |funding| > 0.05 %
        return "funding_rate", _funding_above(0.0005)

    def _idea(self, st: PerpState, market: MarketSnapshot) -> _Idea | None:
        f, d = st.funding, st.oi_delta_8h
        if f is None or d is None or d <= 0 or abs(f) <= 0.0005:
            return None
        side = Side.SELL if f > 0 else Side.BUY
        crowd = "longs" if f > 0 else "shorts"
        return _Idea(side, min(0.8, abs(f) * 500), 0.01, 24,
                     f"{crowd} paying {f * 100:+.4f}% per 8 h while open interest grew {d * 100:+.1f}% in 8 h "
                     f"(Bybit open interest as the proxy of Binance's): they capitulate")


class LiquidationReversal(_PerpPrimitive):
    name = "liquidation_reversal"

    def _horizon_rule(self, data):
        """Needs liquidations in the last six hours: in history the proxy, an open-interest fall of
        ``FLUSH_OI_PCT`` in the hour at one of the newest point's six hourly times (t_oi - h h, h < 6). A
        replay with real liquidation series (``forceOrder``): no promise."""
        points = getattr(data, "_points", None) or {}
        if any(k in points for sym in PERP_SYMBOLS for k in (("liquidations_long_usd", sym),
                                                             ("liquidations_short_usd", sym))):
            return None

        def hot(src) -> np.ndarray:
            ok, change = _oi_deltas(src, 1)
            flush = (ok & (change <= -FLUSH_OI_PCT / 100 + SLACK)).astype(np.int64)
            ts = np.asarray(src.ts, dtype=np.int64)
            count = np.concatenate(([0], np.cumsum(flush)))
            lo = np.searchsorted(ts, ts - (LIQ_LOOKBACK_H - 1) * 3600, side="left")
            return count[1:] - count[lo] > 0      # a flush at a point in [t - 5 h, t]
        return "open_interest", hot

    def _idea(self, st: PerpState, market: MarketSnapshot) -> _Idea | None:
        imb, cp = st.liq_imbalance, st.cascade_probability
        if imb is None or cp is None or cp >= 0.3 or abs(imb) <= 0.7:
            return None
        side = Side.BUY if imb > 0 else Side.SELL
        who = "longs" if imb > 0 else "shorts"
        label = ("proxy: open-interest flush + price move + taker flow" if st.liq_source.startswith("proxy")
                 else st.liq_source)
        return _Idea(side, 0.65, 0.02, 12,
                     f"{who} liquidated in the last 6 h (imbalance {imb:+.2f}, {label}) and the cascade is over "
                     f"(probability {cp:.2f}): forced flow exhausted, reversal")


class OIDivergence(_PerpPrimitive):
    name = "oi_divergence"

    def _horizon_rule(self, data):   # needs open interest down more than 2 % in 24 h
        def hot(src) -> np.ndarray:
            ok, change = _oi_deltas(src, 24)
            return ok & (change < -0.02 + SLACK)
        return "open_interest", hot

    def _idea(self, st: PerpState, market: MarketSnapshot) -> _Idea | None:
        p, o = st.price_change_24h, st.oi_delta_24h
        if p is None or o is None or o >= -0.02:
            return None
        if p > 0.02:
            return _Idea(Side.SELL, 0.55, 0.015, 24, f"price {p * 100:+.1f}% in 24 h but open interest "
                                                     f"{o * 100:+.1f}% (Bybit, proxy): weak rally")
        if p < -0.02:
            return _Idea(Side.BUY, 0.55, 0.015, 24, f"price {p * 100:+.1f}% in 24 h with open interest "
                                                    f"{o * 100:+.1f}% (Bybit, proxy): weak sell-off")
        return None


class CrowdingFade(_PerpPrimitive):
    name = "crowding_fade"
    PROXY_RATIO = 1.10
    PROXY_Z = 2.0

    def _horizon_rule(self, data):   # both the ratio and the proxy need |funding| > 0.03 %
        return "funding_rate", _funding_above(0.0003)

    def _idea(self, st: PerpState, market: MarketSnapshot) -> _Idea | None:
        f = st.funding
        if f is None:
            return None
        ls = market.point_series("long_short_ratio", st.symbol)
        if ls is not None and len(ls) and market.now.timestamp() - int(ls.ts[-1]) <= 7200:
            ratio = float(ls.values[-1])
            if ratio > 2.0 and f > 0.0003:
                return _Idea(Side.SELL, 0.6, 0.015, 24, f"long/short ratio {ratio:.2f} > 2 and funding "
                                                        f"{f * 100:+.4f}%: longs crowded")
            if ratio < 0.5 and f < -0.0003:
                return _Idea(Side.BUY, 0.6, 0.015, 24, f"long/short ratio {ratio:.2f} < 0.5 and funding "
                                                       f"{f * 100:+.4f}%: shorts crowded")
            return None
        # the funding tests first: the taker ratio (computed when first read) is read only when they pass;
        # z cannot be beyond +2 and -2 at once, so the two rules and their None tests are the same as before
        z = st.funding_z
        if z is None:
            return None
        if z > self.PROXY_Z and f > 0.0003:
            r = st.taker_buy_sell_24h
            if r is not None and r > self.PROXY_RATIO:
                return _Idea(Side.SELL, 0.6, 0.015, 24, f"proxy crowding: taker buy/sell {r:.2f} over 24 h and "
                                                        f"funding z {z:+.1f} ({f * 100:+.4f}%): longs crowded")
        elif z < -self.PROXY_Z and f < -0.0003:
            r = st.taker_buy_sell_24h
            if r is not None and r < 1 / self.PROXY_RATIO:
                return _Idea(Side.BUY, 0.6, 0.015, 24, f"proxy crowding: taker buy/sell {r:.2f} over 24 h and "
                                                       f"funding z {z:+.1f} ({f * 100:+.4f}%): shorts crowded")
        return None


class FundingCarry(_PerpPrimitive):
    name = "funding_carry"

    def _horizon_rule(self, data):   # needs |funding| > 0.05 %
        return "funding_rate", _funding_above(0.0005)

    def _idea(self, st: PerpState, market: MarketSnapshot) -> _Idea | None:
        f = st.funding
        if f is None or abs(f) <= 0.0005 or st.vol_regime in (None, "high", "extreme"):
            return None
        regime = perp_regime(market, st.symbol)[0]
        if regime is not PerpRegime.RANGING:
            return None
        side = Side.SELL if f > 0 else Side.BUY
        return _Idea(side, 0.5, 0.01, 24, f"ranging, vol {st.vol_regime}: {'short' if f > 0 else 'long'} to "
                                          f"receive funding {f * 100:+.4f}% per 8 h")


# the rules each promise is derived from (a subclass or patch that replaces one gets no promise)
_PROMISED = {cls: cls._idea for cls in (FundingSqueeze, LiquidationReversal, OIDivergence, CrowdingFade, FundingCarry)}
