"""Regime layer: reads the market state and names the regime.

``TrendVolRule`` is the honest interim detector (issue #2): a volatility/trend rule on a
reference symbol. The HMM detector of issue #4 implements the same ``detect`` interface.
"""
from __future__ import annotations

from datetime import datetime
from typing import Protocol

import numpy as np

from .domain import Regime, RegimeReading
from .ports import MarketSnapshot


class RegimeDetector(Protocol):
    name: str

    def detect(self, market: MarketSnapshot) -> RegimeReading: ...


class TrendVolRule:
    """Interim rule on the reference symbol's closes (SPY daily by default, BTC/USD as fallback).

    - 20-bar realised volatility at or above the 90th percentile of the visible history: CRASH when
      the 20-bar return is below -8 %, else HIGH_VOL;
    - otherwise a 20-bar return beyond ±2 %: TRENDING_UP / TRENDING_DOWN;
    - otherwise MEAN_REVERTING. Fewer than 60 bars: UNKNOWN (entries restricted)."""

    name = "trend_vol_rule"

    def __init__(self, reference_symbols: tuple[str, ...] = ("SPY", "BTC/USD"), lookback: int = 20):
        self.reference_symbols = reference_symbols
        self.lookback = lookback

    def detect(self, market: MarketSnapshot) -> RegimeReading:
        for symbol in self.reference_symbols:
            bars = market.bars.get(symbol)
            if bars is not None and len(bars) >= 3 * self.lookback + 1:
                return self._classify(symbol, bars.close, market.now)
        return RegimeReading(Regime.UNKNOWN, 0.0, self.name, market.now,
                             {"why": f"fewer than {3 * self.lookback + 1} bars on {self.reference_symbols}"})

    def _classify(self, symbol: str, close: np.ndarray, now: datetime) -> RegimeReading:
        with np.errstate(divide="ignore", invalid="ignore"):
            rets = np.diff(np.log(close))
        rets = rets[np.isfinite(rets)]
        n = self.lookback
        if len(rets) < 3 * n:
            return RegimeReading(Regime.UNKNOWN, 0.0, self.name, now, {"why": "too few finite returns"})
        vols = np.lib.stride_tricks.sliding_window_view(rets, n).std(axis=1)
        vol_now = float(vols[-1])
        pct = float((vols < vol_now).mean())
        ret_n = float(rets[-n:].sum())
        if pct >= 0.9:
            regime = Regime.CRASH if ret_n < -0.08 else Regime.HIGH_VOL
            conf = pct
        elif abs(ret_n) > 0.02:
            regime = Regime.TRENDING_UP if ret_n > 0 else Regime.TRENDING_DOWN
            conf = min(1.0, abs(ret_n) / 0.06)
        else:
            regime = Regime.MEAN_REVERTING
            conf = 1.0 - abs(ret_n) / 0.02
        details = {"symbol": symbol, "return_20": round(ret_n, 6), "vol_20": round(vol_now, 6),
                   "vol_percentile": round(pct, 4)}
        return RegimeReading(regime, round(max(0.0, min(1.0, conf)), 4), self.name, now, details)
