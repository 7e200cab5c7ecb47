"""Risk layer: the last gate before money moves. "HYDRA prefers not trading over dying."

Interim (issue #2): fixed-fraction sizing (risk a fixed share of equity to the stop) under the
bible's hard limits, with a daily-loss kill switch. Issue #5 adds half-Kelly, volatility scaling,
correlation penalties, cooldowns and the other kill switches behind the same interface.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from .config import RiskConfig
from .domain import ClosedTrade, Position, RiskDecision, Side, TradeProposal
from .ports import AssetSpec, to_decimal

HARD_LIMITS = {  # the strategy bible's table; config may tighten, never loosen
    "max_position_pct": 3.0, "max_asset_pct": 5.0, "max_total_exposure_pct": 25.0,
    "max_trades_per_day": 30, "max_consecutive_losses": 3, "max_daily_loss_pct": 5.0,
    "max_drawdown_pct": 10.0,
}


class RiskConfigError(ValueError):
    pass


def check_hard_limits(cfg: RiskConfig) -> None:
    for key, ceiling in HARD_LIMITS.items():
        value = getattr(cfg, key)
        if value > ceiling:
            raise RiskConfigError(f"risk.{key} = {value} loosens the hard limit {ceiling}; "
                                  f"config may only tighten it")


@dataclass(slots=True)
class PortfolioView:
    now: datetime
    equity_usd: Decimal
    buying_power_usd: Decimal
    positions: dict[str, Position]
    marks: dict[str, float]

    def exposure_usd(self, symbol: str | None = None) -> Decimal:
        total = Decimal(0)
        for sym, pos in self.positions.items():
            if symbol is None or sym == symbol:
                total += abs(pos.qty) * to_decimal(self.marks.get(sym, float(pos.avg_entry_price)))
        return total


@dataclass(slots=True)
class RiskState:
    day: str = ""
    day_start_equity: float = 0.0
    trades_today: int = 0
    killed: bool = False
    kill_reason: str = ""
    history: list = field(default_factory=list)


class RiskManager:
    name = "fixed_fraction_interim"

    def __init__(self, cfg: RiskConfig):
        check_hard_limits(cfg)
        self.cfg = cfg
        self.state = RiskState()

    # ------------------------------------------------------------------ state
    def _roll_day(self, now: datetime, equity: float) -> None:
        day = now.date().isoformat()
        if day != self.state.day:
            self.state.day, self.state.day_start_equity, self.state.trades_today = day, equity, 0

    def on_equity(self, equity_usd: Decimal, now: datetime) -> str | None:
        """Update day accounting; return a kill reason when a kill condition fires now."""
        eq = float(equity_usd)
        self._roll_day(now, eq)
        if not self.state.killed and self.state.day_start_equity > 0:
            loss_pct = (self.state.day_start_equity - eq) / self.state.day_start_equity * 100
            if loss_pct >= self.cfg.max_daily_loss_pct:
                self.kill(f"daily loss {loss_pct:.2f}% >= {self.cfg.max_daily_loss_pct}%")
                return self.state.kill_reason
        return None

    def kill(self, reason: str) -> None:
        self.state.killed, self.state.kill_reason = True, reason

    def resume(self) -> None:
        self.state.killed, self.state.kill_reason = False, ""

    def entries_blocked(self, now: datetime) -> str | None:
        if self.state.killed:
            return f"kill switch: {self.state.kill_reason}"
        return None

    def on_entry_filled(self, now: datetime) -> None:
        self.state.trades_today += 1

    def on_trade_closed(self, trade: ClosedTrade, now: datetime) -> None:
        """Interim: no loss-streak cooldown yet."""

    def to_state(self) -> dict:
        s = self.state
        return {"day": s.day, "day_start_equity": s.day_start_equity, "trades_today": s.trades_today,
                "killed": s.killed, "kill_reason": s.kill_reason}

    def load_state(self, data: dict) -> None:
        for key, value in data.items():
            if hasattr(self.state, key):
                setattr(self.state, key, value)

    # ------------------------------------------------------------------ sizing
    def evaluate(self, proposal: TradeProposal, asset: AssetSpec, portfolio: PortfolioView) -> RiskDecision:
        cfg = self.cfg
        equity = portfolio.equity_usd
        blocked = self.entries_blocked(portfolio.now)
        if blocked:
            return RiskDecision(proposal, False, rule="kill_switch", reason=blocked)
        if self.state.trades_today >= cfg.max_trades_per_day:
            return RiskDecision(proposal, False, rule="max_trades_per_day",
                                reason=f"{self.state.trades_today} trades today >= {cfg.max_trades_per_day}")
        if proposal.side is Side.SELL and not asset.shortable:
            return RiskDecision(proposal, False, rule="not_shortable", reason=f"{asset.symbol} cannot be sold short")
        pct = Decimal("0.01")
        caps = {
            "risk_per_trade": equity * to_decimal(cfg.risk_per_trade_pct) * pct / to_decimal(proposal.stop_distance_pct),
            "max_position_pct": equity * to_decimal(cfg.max_position_pct) * pct,
            "max_asset_pct": equity * to_decimal(cfg.max_asset_pct) * pct - portfolio.exposure_usd(proposal.symbol),
            "max_total_exposure_pct": equity * to_decimal(cfg.max_total_exposure_pct) * pct - portfolio.exposure_usd(),
            "buying_power": portfolio.buying_power_usd * Decimal("0.95"),
        }
        if proposal.max_notional_usd is not None:
            caps["strategy_max_notional"] = to_decimal(proposal.max_notional_usd)
        rule, notional = min(caps.items(), key=lambda kv: kv[1])
        numbers = {k: str(v.quantize(Decimal("0.01"))) for k, v in caps.items()}
        if notional <= 0:
            return RiskDecision(proposal, False, rule=rule, reason=f"no room under {rule}", details=numbers)
        price = to_decimal(proposal.entry_price)
        qty = asset.round_qty(notional / price)
        notional = qty * price
        if qty <= 0 or qty < asset.min_order_size or notional < to_decimal(proposal.min_notional_usd):
            return RiskDecision(proposal, False, rule="min_size",
                                reason=f"size {qty} (${notional:.2f}) below the minimum after {rule}", details=numbers)
        return RiskDecision(proposal, True, qty=qty, notional_usd=notional.quantize(Decimal("0.01")), rule=rule,
                            reason=f"sized by {rule}: {qty} {asset.symbol} = ${notional:.2f}", details=numbers)
