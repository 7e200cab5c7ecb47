"""Perp benchmarks for the backtest comparison (issue #20 (e)): buy-and-hold, momentum and mean-reversion
perpetuals traded on the *same* simulated USD-M venue as HYDRA's perp sleeve (funding at the real
settlements, taker fee and slippage from ``[perps]``, liquidation on wicks, next-bar-open fills), over
HYDRA's own clock ticks, starting from ``perps.starting_balance_usdt``.

The rules (1x leverage, so a position's notional equals the margin it posts; weights are signed, + long):

* ``perp_buy_and_hold`` -- long 1/N of every configured perp symbol with fresh bars, re-sized on the first
  tick of each month.
* ``perp_momentum`` -- on the first tick of each month, per symbol: long 1/N when its
  ``lookback_days`` (90) return is positive, short 1/N when negative; flat without a full lookback.
* ``perp_mean_reversion`` -- once a day on daily (00:00 UTC) closes, RSI(14): open long 1/N below 30, open
  short 1/N above 70; a long is closed once RSI is back above 50, a short once it is back below 50.
  Positions are kept as opened (not re-sized daily).

Orders: a reduction or close is a reduce-only market order; a flip closes first and opens on a later
tick, after the close filled. ``invest`` (0.95) keeps a margin cushion for fees, slippage and funding.
Trades are the venue's own closed trades, with ``funding_usd`` and exit reason ``rebalance`` or
``liquidation``. Amounts in USDT are read as USD (1 USDT = 1 USD), as in the router's account sum.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import numpy as np

from ..baselines import DAY_S, _new_month, daily_closes, rsi
from ..data.replay import ReplayMarketData
from ..domain import Order, OrderStatus, OrderType, Side, TimeInForce
from ..ports import BrokerError, MarketSnapshot
from ..tradelog import to_jsonable

ZERO = Decimal(0)


def _live(snap: MarketSnapshot, symbols: list[str]) -> list[str]:
    return [s for s in symbols if s in snap.bars and snap.tradable(s)]


@dataclass
class PerpBuyAndHold:
    name: str = "perp_buy_and_hold"
    history_days: int = 0
    resize: bool = True

    def rebalance_due(self, now, last):
        return _new_month(now, last)

    def targets(self, snap, symbols, held):
        live = _live(snap, symbols)
        return {s: 1.0 / len(symbols) for s in live}


@dataclass
class PerpMomentum:
    lookback_days: int = 90
    name: str = "perp_momentum"
    resize: bool = True

    @property
    def history_days(self) -> int:
        return self.lookback_days + 10

    def rebalance_due(self, now, last):
        return _new_month(now, last)

    def targets(self, snap, symbols, held):
        out = {}
        for s in _live(snap, symbols):
            b = snap.bars[s]
            then = b.ts[-1] + b.interval_s - self.lookback_days * DAY_S
            k = int(np.searchsorted(b.ts + b.interval_s, then, side="right")) - 1
            if k >= 0 and then - (b.ts[k] + b.interval_s) <= 5 * DAY_S and b.close[k] > 0:
                move = b.close[-1] / b.close[k] - 1.0
                if move != 0:
                    out[s] = math.copysign(1.0 / len(symbols), move)
        return out


@dataclass
class PerpMeanReversion:
    period: int = 14
    long_below: float = 30.0
    short_above: float = 70.0
    exit_at: float = 50.0
    name: str = "perp_mean_reversion"
    history_days: int = 120
    resize: bool = False

    def rebalance_due(self, now, last):
        return last is None or now.date() != last.date()

    def targets(self, snap, symbols, held):
        live = set(_live(snap, symbols))
        out = {}
        for s in symbols:
            if s not in snap.bars:
                continue
            value = rsi(daily_closes(snap.bars[s]), self.period)
            if math.isnan(value):
                continue
            h = held.get(s, ZERO)
            w = 1.0 / len(symbols)
            if h > 0 and not value > self.exit_at:
                out[s] = w
            elif h < 0 and not value < self.exit_at:
                out[s] = -w
            elif h == 0 and s in live and value < self.long_below:
                out[s] = w
            elif h == 0 and s in live and value > self.short_above:
                out[s] = -w
        return out


PERP_BASELINES = {"perp_buy_and_hold": PerpBuyAndHold, "perp_momentum": PerpMomentum,
                  "perp_mean_reversion": PerpMeanReversion}


@dataclass
class PerpTargetDriver:
    """Steps the ticks, turns signed target weights into orders at the perp venue, records equity."""

    strategy: object
    market: ReplayMarketData
    venue: object
    symbols: list[str]
    invest: float = 0.95
    min_trade_pct: float = 0.5
    cycles: list[dict] = field(default_factory=list)
    fills: list[dict] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    _targets: dict | None = None
    _seq: int = 0
    _sent: list = field(default_factory=list)

    def step(self, now: datetime) -> None:
        snap = self.market.snapshot(now)
        prices = {s: snap.bars[s].last_close for s in self.symbols if s in snap.bars}
        self.venue.update_marks(prices, now)
        for f in self.venue.poll_fills(now):
            self.fills.append(to_jsonable(f))
        for coid in list(self._sent):
            order = self.venue.get_order(coid)
            if order.status.is_open:
                continue
            self._sent.remove(coid)
            if order.status is not OrderStatus.FILLED:
                self.rejected.append(f"{order.created_at:%Y-%m-%d %H:%M} {order.side.value} {order.qty} "
                                     f"{order.symbol}: {order.status.value}: {order.reject_reason}")
        last = datetime.fromisoformat(self.cycles[-1]["ts"].replace("Z", "+00:00")) if self.cycles else None
        if self.strategy.rebalance_due(now, last):
            held = {s: p.qty for s, p in self.venue.positions().items()}
            self._targets = self.strategy.targets(snap, self.symbols, held)
        if self._targets is not None and not self.venue.open_orders():
            self._rebalance(now, prices, set(_live(snap, self.symbols)))
        eq = self.venue.account().equity_usd
        self.cycles.append({"cycle": len(self.cycles) + 1, "ts": to_jsonable(now),
                            "equity_usd": str(eq.quantize(Decimal("0.01")))})

    def _rebalance(self, now, prices, live) -> None:
        equity = float(self.venue.account().equity_usd)
        held = {s: p.qty for s, p in self.venue.positions().items()}
        reduce, add = [], []
        for s in sorted(set(held) | set(self._targets)):
            price = prices.get(s)
            if s not in live or not price or not math.isfinite(price):
                continue
            h = held.get(s, ZERO)
            w = self._targets.get(s, 0.0)
            if not self.strategy.resize and h and w and (h > 0) == (w > 0):
                continue
            want = self.invest * equity * w / price
            if h and (want == 0 or (want > 0) != (h > 0)):      # close (a flip opens after the close fills)
                reduce.append((s, Side.SELL if h > 0 else Side.BUY, abs(h)))
                continue
            delta = want - float(h)
            if abs(delta) * price < self.min_trade_pct / 100 * equity:
                continue
            spec = self.venue.asset(s)
            qty = spec.round_qty(Decimal(str(abs(delta))))
            side = Side.BUY if delta > 0 else Side.SELL
            if h and abs(want) < abs(float(h)):
                reduce.append((s, side, min(qty, abs(h))))
            else:
                add.append((s, side, qty))
        if reduce:
            for s, side, qty in reduce:
                self._submit(s, side, qty, now, reduce_only=True)
            return
        for s, side, qty in add:
            self._submit(s, side, qty, now, reduce_only=False)
        self._targets = None

    def _submit(self, symbol, side, qty, now, *, reduce_only: bool) -> None:
        if qty <= 0:
            return
        self._seq += 1
        order = Order(f"{self.strategy.name}-{self._seq}", symbol, side, qty, OrderType.MARKET, TimeInForce.GTC,
                      now, self.strategy.name, purpose="exit" if reduce_only else "rebalance", reduce_only=reduce_only)
        try:
            self.venue.submit(order)
            self._sent.append(order.client_order_id)
        except BrokerError as exc:
            self.rejected.append(f"{now:%Y-%m-%d %H:%M} {side.value} {qty} {symbol}: {type(exc).__name__}: {exc}")


def perp_market(settings, data_dir: Path, history_days: int) -> ReplayMarketData:
    d = settings.data
    return ReplayMarketData(data_dir, list(settings.perps.symbols), history_bars=max(settings.engine.history_bars,
                            history_days * 24), start=d.start, end=d.end,
                            crypto_stale_after_s=d.crypto_stale_after_s, equity_stale_after_s=d.equity_stale_after_s)


def run_perp_baseline(strategy, settings, data_dir: Path, *, ticks: list[datetime], progress: bool = False) -> dict:
    """One perp benchmark over ``ticks``; a session-shaped document (``metrics.compute_all`` reads it)."""
    from .wiring import build_perp_venue, replay_span
    market = perp_market(settings, data_dir, strategy.history_days)
    start, end = replay_span(market)
    venue = build_perp_venue(settings, market=market, folder=data_dir, start=start, end=end)
    for s in settings.perps.symbols:
        venue.set_leverage(s, 1)
    driver = PerpTargetDriver(strategy, market, venue, list(settings.perps.symbols))
    it = ticks
    if progress:
        from tqdm import tqdm
        it = tqdm(ticks, desc=f"baseline {strategy.name}", unit="cycle", mininterval=0.5, dynamic_ncols=True)
    for now in it:
        driver.step(now)
    trades = [{"strategy": strategy.name, "symbol": t.symbol, "side": "buy" if t.side == "long" else "sell",
               "venue": "perp", "entry_time": to_jsonable(t.opened_at), "exit_time": to_jsonable(t.closed_at),
               "entry_price": str(t.entry_price), "exit_price": str(t.exit_price), "qty": str(t.qty),
               "pnl_usd": str(t.pnl_usdt), "fees_usd": str(t.fees_usdt), "funding_usd": str(t.funding_usdt),
               "r_multiple": None, "regime_at_entry": None,
               "exit_reason": "liquidation" if t.exit_reason == "liquidation" else "rebalance"}
              for t in venue.closed_trades]
    open_funding = sum((p.funding_usdt for p in venue._positions.values()), ZERO)
    acct = venue.account()
    start_eq = Decimal(repr(settings.perps.starting_balance_usdt))
    cyc = driver.cycles
    funding_total = sum((r.payment.amount_usd for r in venue.funding_log), ZERO)
    return {
        "schema_version": 1,
        "session": {"session_id": f"baseline-{strategy.name}", "mode": "baseline", "strategies": [strategy.name],
                    "venue": "perp", "starting_equity_usd": str(start_eq), "fee_bps": settings.perps.taker_fee_bps,
                    "slippage_bps": settings.perps.slippage_bps,
                    "started_at": cyc[0]["ts"] if cyc else None, "ended_at": cyc[-1]["ts"] if cyc else None},
        "orders": [], "fills": driver.fills, "trades": trades, "cycles": cyc,
        "summary": {"cycles": len(cyc), "starting_equity_usd": str(start_eq),
                    "final_equity_usd": str(acct.equity_usd.quantize(Decimal("0.01"))),
                    "fees_usd": str(venue.fees_paid_usdt), "fills": len(driver.fills), "closed_trades": len(trades),
                    "funding_usd": str(funding_total.quantize(Decimal("0.01"))),
                    "funding_open_usd": str(open_funding.quantize(Decimal("0.01"))),
                    "liquidations": sum(1 for t in trades if t["exit_reason"] == "liquidation"),
                    "orders_refused": len(driver.rejected), "refusals": driver.rejected[:50],
                    "open_positions": {s: str(p.qty) for s, p in venue.positions().items()}},
    }


__all__ = ["PERP_BASELINES", "PerpBuyAndHold", "PerpMomentum", "PerpMeanReversion", "PerpTargetDriver",
           "run_perp_baseline"]
