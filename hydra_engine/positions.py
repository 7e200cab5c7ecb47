"""Position manager: protects every open trade with its stop, target, trailing stop and time limit.

The manager only decides; the engine turns its ExitInstructions into orders. Interim (issue #2):
checks run on the last close each cycle. Issue #5 adds broker-native trailing stops and ATR trails.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from .domain import Position
from .ports import MarketSnapshot


@dataclass(frozen=True, slots=True)
class ExitInstruction:
    symbol: str
    reason: str          # stop | target | trailing_stop | time | kill | strategy
    trigger_price: float
    detail: str = ""


class PositionManager:
    def update_high_water(self, pos: Position, price: float) -> None:
        """Raise (never lower) the trailing stop as the best price since entry moves."""
        if pos.qty > 0:
            pos.high_water_mark = max(pos.high_water_mark, price)
            if pos.trailing_stop_pct:
                pos.stop_price = max(pos.stop_price, pos.high_water_mark * (1 - pos.trailing_stop_pct / 100))
        else:
            pos.high_water_mark = min(pos.high_water_mark or price, price)
            if pos.trailing_stop_pct:
                pos.stop_price = min(pos.stop_price, pos.high_water_mark * (1 + pos.trailing_stop_pct / 100))

    def manage(self, positions: dict[str, Position], market: MarketSnapshot, now: datetime) -> list[ExitInstruction]:
        exits: list[ExitInstruction] = []
        for symbol, pos in positions.items():
            price = market.price(symbol)
            if not (math.isfinite(price) and price > 0):
                continue  # no trustworthy price: keep the stop where it is, decide next cycle
            long = pos.qty > 0
            if (long and price <= pos.stop_price) or (not long and price >= pos.stop_price):
                moved = pos.stop_price != pos.initial_stop_price
                exits.append(ExitInstruction(symbol, "trailing_stop" if moved else "stop", price,
                                             f"price {price:g} crossed stop {pos.stop_price:g}"))
            elif (long and price >= pos.target_price) or (not long and price <= pos.target_price):
                exits.append(ExitInstruction(symbol, "target", price, f"price {price:g} reached target {pos.target_price:g}"))
            elif pos.max_holding is not None and now - pos.opened_at >= pos.max_holding:
                exits.append(ExitInstruction(symbol, "time", price, f"held {now - pos.opened_at} >= {pos.max_holding}"))
            else:
                self.update_high_water(pos, price)
        return exits
