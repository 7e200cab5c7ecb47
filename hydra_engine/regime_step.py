"""Step 2 of the cycle, DETECT REGIME: the scheduled refit, the reading, its freshness (a reading on inputs
older than ``truth.regime_max_age_days`` is UNKNOWN), and the regime-break kill switch's inputs. Mixed into
:class:`~hydra_engine.engine.Engine`."""
from __future__ import annotations

from datetime import datetime

from .domain import Regime, RegimeReading
from .ports import MarketSnapshot
from .regime import TrendVolRule
from .regime_freshness import freshen, is_stale
from .regime_refit import refit_step

_VOL_RULE = TrendVolRule()


class RegimeStep:
    def _detect_regime(self, market: MarketSnapshot, now: datetime, report: dict) -> None:
        """Every ``regime_refresh_cycles``: refit when due, then read the regime; a new model names the
        same market afresh, so a changed name then is a relabel, not a regime break."""
        model_changed = False
        if self.cycle == 1 or self.cycle % self.settings.engine.regime_refresh_cycles == 0:
            model_changed = self._refit_regime_if_due(market, now, report)
            try:
                self.regime = self.regime_detector.detect(market)
            except Exception as exc:  # a broken detector restricts entries, it does not stop the loop
                self.regime = RegimeReading(Regime.UNKNOWN, 0.0, getattr(self.regime_detector, "name", "?"), now,
                                            {"why": f"detector failed: {exc}"})
                report["errors"].append(f"regime: {exc}")
        # issue #17: a reading on inputs older than truth.regime_max_age_days is UNKNOWN, with the reason
        max_age = self.settings.truth.regime_max_age_days
        fresh = freshen(self.regime, now, max_age)
        if fresh is not self.regime and not is_stale(self.regime):
            # too old between two scheduled detections: ask the detector again before calling it stale (a
            # daily model re-reads only when a new day closed, so this is cheap and rare)
            try:
                fresh = freshen(self.regime_detector.detect(market), now, max_age)
            except Exception as exc:
                report["errors"].append(f"regime: {exc}")
        if fresh is not self.regime and not (is_stale(fresh) and is_stale(self.regime)
                                             and fresh.details["stale_since"] == self.regime.details["stale_since"]):
            self.regime = fresh
        if is_stale(self.regime):
            self.regime_stale_cycles += 1
            if self.regime_stale_since is None:
                self.regime_stale_since = now
        report["regime"] = self.regime   # the reading; format_report makes it JSON-ready, once per reading
        market_kill = self.risk.on_market(self.regime, self._vol_percentile(market), now,
                                          regime_break=False if model_changed else None, market=market)
        if market_kill:
            report["notes"].append(f"kill switch fired: {market_kill}")

    def _refit_regime_if_due(self, market: MarketSnapshot, now: datetime, report: dict) -> bool:
        """Refit the regime model when the schedule says so; True when the detector was replaced."""
        if self.regime_refitter is None:
            return False
        self.regime_detector, changed = refit_step(self.regime_refitter, self.regime_detector, market, now, report)
        if "regime_refit" in report:
            self.regime_refits.append(report["regime_refit"])
        return changed

    def _vol_percentile(self, market: MarketSnapshot) -> float | None:
        """Where the reference market's 20-bar realised volatility ranks in its visible history (SPY,
        else BTC/USD): the "extreme volatility" half of the regime-break kill switch."""
        if self._vol_pct[0] is self.regime:  # a break can only come with a new reading: once per reading
            return self._vol_pct[1]
        pct = self.regime.details.get("vol_percentile")
        if pct is None:
            pct = _VOL_RULE.detect(market).details.get("vol_percentile")
        self._vol_pct = (self.regime, pct)
        return pct
