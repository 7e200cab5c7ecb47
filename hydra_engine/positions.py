"""Position manager (issue #5): protects every open trade with its stop, target, trailing stop and
time limit, and flattens everything on a kill. It only decides; the engine turns each
:class:`ExitInstruction` into an order and records ``reason`` as the trade's exit reason.

Seeds: strategy bible, the loop's step 8 "MANAGE — stop/target/trailing stop"; layer specifications,
"Kill Switches" (immediate flattening). Checks run on the last close each cycle, identically in
backtest, simulation and paper trading.

Trailing stops ratchet: the high-water mark (highest close since entry; lowest for shorts) only
improves, and the stop only moves toward the price, never away. A position may trail by a percentage
(``trailing_stop_pct``), by an ATR multiple (``trailing_atr_mult``, ATR = mean true range over
``atr_period`` bars of the symbol's series, in price units) or both, in which case the tighter wins.
Positions restored after a restart with ``high_water_mark == 0`` rebuild it from the closes since
``opened_at`` (never before entry, never past ``now``), falling back to the entry price.
"""
from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from .domain import AssetClass, OrderType, Position
from .ports import AssetSpec, BarSeries, MarketSnapshot

EXIT_REASONS = ("kill", "stop", "trailing_stop", "target", "time", "strategy")


@dataclass(frozen=True, slots=True)
class ExitInstruction:
    symbol: str
    reason: str          # one of EXIT_REASONS: the trade's exit_reason
    trigger_price: float  # the close that triggered it (NaN for a kill without a usable price)
    detail: str = ""


def average_true_range(high: np.ndarray, low: np.ndarray, close: np.ndarray, period: int = 14) -> float | None:
    """Mean true range over the last ``period`` bars (price units); None with too few bars."""
    if len(close) < period + 1:
        return None
    h, lo, c = (np.asarray(a[-(period + 1):], dtype=float) for a in (high, low, close))
    tr = np.maximum(h[1:] - lo[1:], np.maximum(np.abs(h[1:] - c[:-1]), np.abs(lo[1:] - c[:-1])))
    value = float(np.mean(tr))
    return value if math.isfinite(value) and value > 0 else None


def trailing_candidate(long: bool, high_water: float, pct: float | None, atr_mult: float | None,
                       atr: float | None) -> float | None:
    """The stop the trailing rules ask for at ``high_water`` (the tighter of percent and ATR)."""
    cands = []
    if pct:
        cands.append(high_water * (1 - pct / 100) if long else high_water * (1 + pct / 100))
    if atr_mult and atr:
        cands.append(high_water - atr_mult * atr if long else high_water + atr_mult * atr)
    if not cands:
        return None
    return max(cands) if long else min(cands)


def uses_native_trailing(asset: AssetSpec, trailing_stop_pct: float | None) -> bool:
    """True when the broker can hold the trail itself: an equity with a percent trail (Alpaca's
    ``trailing_stop`` order with ``trail_percent``). Crypto and ATR trails are engine-managed. The
    engine decides whether to use it (e.g. only on the Alpaca broker) and passes those symbols to
    :meth:`PositionManager.manage` as ``native_stops``."""
    return (asset.asset_class is AssetClass.EQUITY and bool(trailing_stop_pct) and trailing_stop_pct > 0
            and (not asset.order_types or OrderType.TRAILING_STOP in asset.order_types))


class PositionManager:
    def __init__(self, atr_period: int = 14):
        self.atr_period = atr_period

    def _atr(self, bars: BarSeries | None) -> float | None:
        if bars is None:
            return None
        return average_true_range(bars.high, bars.low, bars.close, self.atr_period)

    @staticmethod
    def restore_high_water(pos: Position, bars: BarSeries | None, now: datetime) -> None:
        """Rebuild an unset (0) high-water mark from the closes since entry, else the entry price."""
        entry, long = float(pos.avg_entry_price), pos.qty > 0
        hwm = entry
        if bars is not None and len(bars):
            closes_at = bars.ts + bars.interval_s
            mask = (closes_at > pos.opened_at.timestamp()) & (closes_at <= now.timestamp())
            seen = bars.close[mask]
            seen = seen[np.isfinite(seen) & (seen > 0)]
            if len(seen):
                hwm = max(entry, float(seen.max())) if long else min(entry, float(seen.min()))
        pos.high_water_mark = hwm

    def update_high_water(self, pos: Position, price: float, atr: float | None = None) -> bool:
        """Move the high-water mark with ``price`` and ratchet the trailing stop (never loosened).
        Returns True when the stop moved."""
        long = pos.qty > 0
        hwm = pos.high_water_mark or price
        pos.high_water_mark = max(hwm, price) if long else min(hwm, price)
        if not (pos.trailing_stop_pct or pos.trailing_atr_mult):
            return False   # no trailing rule: only the mark moves (the common case, every cycle)
        cand = trailing_candidate(long, pos.high_water_mark, pos.trailing_stop_pct, pos.trailing_atr_mult, atr)
        if cand is None:
            return False
        new = max(pos.stop_price, cand) if long else min(pos.stop_price, cand)
        moved, pos.stop_price = new != pos.stop_price, new
        return moved

    def manage(self, positions: dict[str, Position], market: MarketSnapshot, now: datetime,
               kill: bool = False, native_stops: Collection[str] = ()) -> list[ExitInstruction]:
        """Exit decisions for this cycle, at most one per position, in priority order
        kill > stop / trailing_stop > target > time. ``kill=True`` exits everything with reason "kill"
        (even without a price). Symbols in ``native_stops`` have a trailing stop held by the broker: the
        manager keeps their mirror stop up to date and leaves the stop exit to the broker once the trail
        has passed the plan's fixed stop; before that the fixed stop is the tighter one and exits here."""
        exits: list[ExitInstruction] = []
        for symbol, pos in positions.items():
            qty = pos.qty
            if qty == 0:
                continue
            price = market.price(symbol)
            valid = 0 < price < math.inf   # finite and positive (NaN compares False)
            if kill:
                exits.append(ExitInstruction(symbol, "kill", price if valid else math.nan, "kill switch: flatten"))
                continue
            if not valid:
                continue  # no trustworthy price: keep the stop where it is, decide next cycle
            if not pos.initial_stop_price:
                pos.initial_stop_price = pos.stop_price
            if pos.high_water_mark <= 0:
                self.restore_high_water(pos, market.bars.get(symbol), now)
            # the bar history is read only when a rule needs it (a snapshot may build it on demand)
            self.update_high_water(pos, price, self._atr(market.bars.get(symbol)) if pos.trailing_atr_mult else None)
            long = qty > 0
            moved = pos.stop_price != pos.initial_stop_price
            # a broker-held trail protects only from its own level: until the trail passes the plan's fixed
            # stop (the mirror has not moved), the fixed stop is the tighter one and is enforced here
            if (symbol not in native_stops or not moved) and ((long and price <= pos.stop_price) or
                                                              (not long and price >= pos.stop_price)):
                exits.append(ExitInstruction(symbol, "trailing_stop" if moved else "stop", price,
                                             f"price {price:g} crossed {'trailing ' if moved else ''}stop "
                                             f"{pos.stop_price:g} (high-water {pos.high_water_mark:g})"))
            elif (long and price >= pos.target_price) or (not long and price <= pos.target_price):
                exits.append(ExitInstruction(symbol, "target", price,
                                             f"price {price:g} reached target {pos.target_price:g}"))
            elif pos.max_holding is not None and now - pos.opened_at >= pos.max_holding:
                exits.append(ExitInstruction(symbol, "time", price, f"held {now - pos.opened_at} >= {pos.max_holding}"))
        return exits
