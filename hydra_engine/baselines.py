"""Baseline strategies traded through the *same* simulated broker and replay data as HYDRA.

Why: a backtest number means little alone. Each baseline steps HYDRA's exact timeline, sends market
orders to :class:`SimulatedBroker` (same fees, slippage, next-bar-open fills, Alpaca's long-only crypto
rule, buying-power checks) and polls fills the same way the engine does, so any difference in the
comparison table comes from decisions, not from different cost models or data.

A baseline is a small class with ``name``, ``rebalance_due(now, last)`` and ``targets(snapshot, now)``
returning target portfolio weights; :class:`TargetWeightDriver` turns weights into orders. Orders are
sent in two phases (reductions first, then additions once the sells have filled and freed buying power),
because the broker reserves buying power for every working order. Documents returned by
:func:`run_baseline` have the session-log shape that :func:`hydra_engine.metrics.compute_all` reads.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_DOWN, Decimal
from pathlib import Path

import numpy as np

from .brokers.capabilities import DEFAULT_ASSET_SPECS
from .brokers.sim import SimulatedBroker
from .config import Settings
from .data.replay import ReplayMarketData
from .domain import AssetClass, Order, OrderStatus, OrderType, Side, TimeInForce
from .ports import BrokerError, MarketSnapshot
from .tradelog import to_jsonable

DAY_S = 86_400


def _new_month(now: datetime, last: datetime | None) -> bool:
    return last is None or (now.year, now.month) != (last.year, last.month)


def _tradable(snap: MarketSnapshot, symbols: list[str]) -> list[str]:
    return [s for s in symbols if s in snap.bars and snap.tradable(s)]


def daily_closes(bars) -> np.ndarray:
    """Daily closes of a bar series: equity bars as they are; intraday bars sampled at 00:00 UTC closes
    (so crypto and equities are judged on the same daily clock)."""
    if bars.interval_s >= DAY_S:
        return bars.close
    return bars.close[(bars.ts + bars.interval_s) % DAY_S == 0]


def rsi(closes: np.ndarray, period: int = 14) -> float:
    """Wilder's RSI of the last close (NaN with fewer than period + 1 closes)."""
    if len(closes) < period + 1:
        return math.nan
    d = np.diff(np.asarray(closes, float))
    up, dn = np.clip(d, 0, None), np.clip(-d, 0, None)
    au, ad = up[:period].mean(), dn[:period].mean()
    for u, v in zip(up[period:], dn[period:]):
        au, ad = (au * (period - 1) + u) / period, (ad * (period - 1) + v) / period
    return 100.0 if ad == 0 else 100.0 - 100.0 / (1.0 + au / ad)


# ------------------------------------------------------------------ the baselines
@dataclass
class BuyAndHold:
    """Equal weight across every universe symbol with fresh data, rebalanced on the first tick of each month."""

    name: str = "buy_and_hold"
    history_days: int = 0

    def rebalance_due(self, now, last):
        return _new_month(now, last)

    def targets(self, snap: MarketSnapshot, symbols: list[str], held: dict) -> dict[str, float]:
        live = _tradable(snap, symbols)
        return {s: 1.0 / len(live) for s in live} if live else {}


@dataclass
class TimeSeriesMomentum:
    """Long 1/N of a symbol whose ``lookback_days`` calendar-day return is positive, else flat; monthly.
    Symbols without a full lookback of history stay flat (no guessing)."""

    lookback_days: int = 365
    name: str = "momentum"

    @property
    def history_days(self) -> int:
        return self.lookback_days + 10

    def rebalance_due(self, now, last):
        return _new_month(now, last)

    def targets(self, snap, symbols, held):
        live = _tradable(snap, symbols)
        out = {}
        for s in live:
            b = snap.bars[s]
            then = b.ts[-1] + b.interval_s - self.lookback_days * DAY_S   # close time one lookback ago
            k = int(np.searchsorted(b.ts + b.interval_s, then, side="right")) - 1
            if k >= 0 and then - (b.ts[k] + b.interval_s) <= 5 * DAY_S and b.close[-1] > b.close[k]:
                out[s] = 1.0 / len(live)
        return out


@dataclass
class MeanReversion:
    """RSI(``period``) on daily closes: buy 1/N when RSI < ``buy_below``, exit when RSI > ``exit_above``.
    Checked once per day (the first tick after 00:00 UTC), which every symbol's daily close precedes."""

    period: int = 14
    buy_below: float = 30.0
    exit_above: float = 70.0
    name: str = "mean_reversion"
    history_days: int = 120
    resize: bool = False          # a held position is kept as bought, not re-sized every day

    def rebalance_due(self, now, last):
        return last is None or now.date() != last.date()

    def targets(self, snap, symbols, held):
        live = _tradable(snap, symbols)
        out = {}
        for s in symbols:
            if s not in snap.bars:
                continue
            value = rsi(daily_closes(snap.bars[s]), self.period)
            was = held.get(s, 0) > 0
            if (was and not value > self.exit_above) or (not was and s in live and value < self.buy_below):
                out[s] = 1.0 / len(symbols)
        return out


BASELINES = {"buy_and_hold": BuyAndHold, "momentum": TimeSeriesMomentum, "mean_reversion": MeanReversion}


# ------------------------------------------------------------------ the driver
@dataclass
class TargetWeightDriver:
    """Steps a timeline, turns target weights into market orders and records equity, fills and trades.

    ``invest`` (< 1) keeps a cash cushion so next-open gaps, slippage and fees never make a buy fail the
    broker's buying-power check; ``min_trade_pct`` skips rebalancing dust (percent of equity)."""

    strategy: object
    market: ReplayMarketData
    broker: SimulatedBroker
    symbols: list[str]
    invest: float = 0.98
    min_trade_pct: float = 0.5
    cycles: list[dict] = field(default_factory=list)
    fills: list[dict] = field(default_factory=list)
    trades: list[dict] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    _targets: dict | None = None
    _seq: int = 0
    _lots: dict = field(default_factory=dict)       # symbol -> [qty, cost incl. fees, opened_at]
    _sent: list = field(default_factory=list)       # client order ids not yet filled

    def step(self, now: datetime) -> None:
        for f in self.broker.poll_fills(now):
            self._on_fill(f)
        for coid in list(self._sent):   # an order that ended unfilled (expired, refused at fill) is a refusal
            order = self.broker.get_order(coid)
            if order.status.is_open:
                continue
            self._sent.remove(coid)
            if order.status is not OrderStatus.FILLED:
                self.rejected.append(f"{order.created_at:%Y-%m-%d %H:%M} {order.side.value} {order.qty} {order.symbol}: "
                                     f"{order.status.value}: {order.reject_reason}")
        snap = self.market.snapshot(now)
        prices = {s: b.last_close for s, b in snap.bars.items()}
        self.broker.update_marks(prices)
        last = datetime.fromisoformat(self.cycles[-1]["ts"].replace("Z", "+00:00")) if self.cycles else None
        if self.strategy.rebalance_due(now, last):
            held = {s: p.qty for s, p in self.broker.positions().items()}
            self._targets = self.strategy.targets(snap, self.symbols, held)
        if self._targets is not None and not self.broker.open_orders():
            self._rebalance(now, prices, set(_tradable(snap, self.symbols)))
        eq = self.broker.account().equity_usd
        self.cycles.append({"cycle": len(self.cycles) + 1, "ts": to_jsonable(now), "equity_usd": str(eq.quantize(Decimal("0.01")))})

    def _rebalance(self, now: datetime, prices: dict[str, float], live: set[str]) -> None:
        acct = self.broker.account()
        equity = float(acct.equity_usd)
        held = {s: p.qty for s, p in self.broker.positions().items()}
        sells, buys = [], []
        for s in sorted(set(held) | set(self._targets)):
            price = prices.get(s)
            if s not in live or not price or not math.isfinite(price):
                continue   # no fresh price (e.g. its data ended): a holding in it is left as it is
            if not getattr(self.strategy, "resize", True) and held.get(s) and self._targets.get(s):
                continue
            want = self.invest * equity * self._targets.get(s, 0.0) / price
            delta = want - float(held.get(s, 0))
            if abs(delta) * price < self.min_trade_pct / 100 * equity and not (want == 0 and held.get(s)):
                continue
            spec = self.broker.asset(s)
            qty = spec.round_qty(Decimal(str(abs(delta))))
            if delta < 0:
                qty = min(qty, held.get(s, Decimal(0))) if want > 0 else held.get(s, Decimal(0))
                sells.append((s, qty))
            else:
                buys.append((s, qty, price))
        if sells:  # phase 1: reduce; additions wait until these fills free buying power
            for s, qty in sells:
                self._submit(s, Side.SELL, qty, now)
            return
        bp = float(acct.buying_power_usd)
        need = sum(float(q) * p for _, q, p in buys) * (1 + float(self.broker.slippage + self.broker.fee_rate))
        scale = min(1.0, bp / need) if need > 0 else 1.0
        for s, qty, _ in buys:
            q = self.broker.asset(s).round_qty(qty * Decimal(str(scale)).quantize(Decimal("0.000001"), ROUND_DOWN))
            self._submit(s, Side.BUY, q, now)
        self._targets = None

    def _submit(self, symbol: str, side: Side, qty: Decimal, now: datetime) -> None:
        spec = self.broker.asset(symbol)
        if qty <= 0 or qty < spec.min_order_size:
            return
        self._seq += 1
        tif = TimeInForce.GTC if spec.asset_class is AssetClass.CRYPTO else TimeInForce.DAY
        order = Order(f"{self.strategy.name}-{self._seq}", symbol, side, qty, OrderType.MARKET, tif, now,
                      self.strategy.name, purpose="rebalance")
        try:
            self.broker.submit(order)
            self._sent.append(order.client_order_id)
        except BrokerError as exc:  # recorded, never hidden: a refusal means the baseline under-trades
            self.rejected.append(f"{now:%Y-%m-%d %H:%M} {side.value} {qty} {symbol}: {type(exc).__name__}: {exc}")

    def _on_fill(self, f) -> None:
        """Record the fill; average-cost round trips become trades when a position returns to zero."""
        self.fills.append(to_jsonable(f))
        lot = self._lots.setdefault(f.symbol, [Decimal(0), Decimal(0), f.ts, Decimal(0)])
        if f.side is Side.BUY:
            lot[0] += f.qty
            lot[1] += f.qty * f.price + f.fee_usd
            lot[3] += f.fee_usd
            return
        avg = lot[1] / lot[0] if lot[0] else Decimal(0)
        pnl = f.qty * (f.price - avg) - f.fee_usd
        lot[0] -= f.qty
        lot[1] -= f.qty * avg
        lot.append(pnl)
        if lot[0] == 0:
            realised = sum(lot[4:], Decimal(0))
            self.trades.append({"strategy": self.strategy.name, "symbol": f.symbol, "side": "buy",
                                "entry_time": to_jsonable(lot[2]), "exit_time": to_jsonable(f.ts),
                                "pnl_usd": str(realised.quantize(Decimal("0.000001"))),
                                "fees_usd": str(lot[3] + f.fee_usd), "r_multiple": None,
                                "regime_at_entry": None, "exit_reason": "rebalance"})
            del self._lots[f.symbol]
        else:
            lot[3] += f.fee_usd


def build_market(settings: Settings, data_dir: Path, history_days: int = 0) -> ReplayMarketData:
    """The engine's replay configuration; only the visible history grows for long-lookback baselines."""
    d = settings.data
    bars = max(settings.engine.history_bars, history_days * 24)
    return ReplayMarketData(data_dir, settings.universe.symbols, data_only=settings.universe.data_only,
                            history_bars=bars, start=d.start, end=d.end,
                            crypto_stale_after_s=d.crypto_stale_after_s, equity_stale_after_s=d.equity_stale_after_s)


def run_baseline(strategy, settings: Settings, data_dir: Path, *, ticks: list[datetime] | None = None,
                 progress: bool = False) -> dict:
    """Run one baseline over the data span of ``settings`` and return a session-shaped document."""
    market = build_market(settings, data_dir, strategy.history_days)
    broker = SimulatedBroker(market, DEFAULT_ASSET_SPECS, starting_cash_usd=settings.broker.starting_cash_usd,
                             fee_bps=settings.broker.fee_bps, slippage_bps=settings.broker.slippage_bps)
    driver = TargetWeightDriver(strategy, market, broker, list(settings.universe.symbols))
    ticks = ticks if ticks is not None else market.timeline()
    if progress:
        from tqdm import tqdm
        ticks = tqdm(ticks, desc=f"baseline {strategy.name}", unit="cycle", mininterval=0.5, dynamic_ncols=True)
    for now in ticks:
        driver.step(now)
    acct = broker.account()
    start = Decimal(str(settings.broker.starting_cash_usd))
    cyc = driver.cycles
    return {
        "schema_version": 1,
        "session": {"session_id": f"baseline-{strategy.name}", "mode": "baseline", "strategies": [strategy.name],
                    "starting_equity_usd": str(start), "fee_bps": settings.broker.fee_bps,
                    "slippage_bps": settings.broker.slippage_bps,
                    "started_at": cyc[0]["ts"] if cyc else None, "ended_at": cyc[-1]["ts"] if cyc else None},
        "orders": [], "fills": driver.fills, "trades": driver.trades, "cycles": cyc,
        "summary": {"cycles": len(cyc), "starting_equity_usd": str(start),
                    "final_equity_usd": str(acct.equity_usd.quantize(Decimal("0.01"))),
                    "fees_usd": str(broker.fees_paid), "fills": len(driver.fills), "closed_trades": len(driver.trades),
                    "orders_refused": len(driver.rejected), "refusals": driver.rejected[:50],
                    "open_positions": {s: str(p.qty) for s, p in broker.positions().items()}},
    }


__all__ = ["BASELINES", "BuyAndHold", "TimeSeriesMomentum", "MeanReversion", "TargetWeightDriver", "run_baseline",
           "rsi", "daily_closes", "build_market"]
