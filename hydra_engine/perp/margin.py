"""Binance USD-M margin arithmetic as pure functions: leverage brackets, initial and maintenance margin,
the isolated-margin liquidation price, the margin ratio, and the stop-versus-liquidation check.

Units: prices in USDT per base coin, quantities in base coin (signed: positive long, negative short),
notional and margin in USDT, rates as fractions (0.004 = 0.4 %). Everything is ``Decimal``; nothing here
rounds, so the venue and the tests can compare to the last digit.

Leverage brackets are data (``brackets.json`` next to this file; its ``_source`` names where the rows come
from). A bracket (Binance: "leverage bracket", ccxt: "leverage tier") covers a range of position notional
and gives the most leverage allowed there, the maintenance margin rate (MMR) and the maintenance amount
(Binance ``cum``), which makes the maintenance margin continuous across brackets:

    maintenance margin = notional × MMR − cum            (notional = |qty| × mark)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from ..domain import Side

ZERO = Decimal(0)
ONE = Decimal(1)
HUNDRED = Decimal(100)
BRACKETS_FILE = Path(__file__).with_name("brackets.json")


class BracketError(ValueError):
    """A bracket table that is inconsistent, or a request outside it (unknown symbol, notional past the
    last cap, leverage above the first bracket's)."""


@dataclass(frozen=True, slots=True)
class Bracket:
    bracket: int
    notional_floor_usdt: Decimal
    notional_cap_usdt: Decimal
    max_leverage: int
    maint_margin_rate: Decimal
    maint_amount_usdt: Decimal

    def maintenance_margin_usdt(self, notional_usdt: Decimal) -> Decimal:
        return notional_usdt * self.maint_margin_rate - self.maint_amount_usdt


@dataclass(frozen=True, slots=True)
class LeverageBrackets:
    """One symbol's brackets, lowest notional first. Checked on construction: contiguous floors/caps,
    non-increasing leverage, non-decreasing MMR, and ``cum`` equal to what continuity demands
    (cum_k = cum_{k-1} + floor_k × (MMR_k − MMR_{k-1})), so a mistyped row cannot slip in."""

    symbol: str
    tiers: tuple[Bracket, ...]

    def __post_init__(self) -> None:
        if not self.tiers:
            raise BracketError(f"{self.symbol}: no brackets")
        first = self.tiers[0]
        if first.notional_floor_usdt != 0 or first.maint_amount_usdt != 0:
            raise BracketError(f"{self.symbol}: the first bracket must start at 0 notional with cum 0")
        for prev, cur in zip(self.tiers, self.tiers[1:]):
            if cur.notional_floor_usdt != prev.notional_cap_usdt:
                raise BracketError(f"{self.symbol}: bracket {cur.bracket} starts at {cur.notional_floor_usdt}, "
                                   f"bracket {prev.bracket} ends at {prev.notional_cap_usdt}")
            if cur.max_leverage > prev.max_leverage or cur.maint_margin_rate < prev.maint_margin_rate:
                raise BracketError(f"{self.symbol}: bracket {cur.bracket} allows more leverage or a lower MMR "
                                   f"than bracket {prev.bracket}")
            expected = prev.maint_amount_usdt + cur.notional_floor_usdt * (cur.maint_margin_rate - prev.maint_margin_rate)
            if cur.maint_amount_usdt != expected:
                raise BracketError(f"{self.symbol}: bracket {cur.bracket} cum {cur.maint_amount_usdt} "
                                   f"!= {expected} (maintenance margin would jump at {cur.notional_floor_usdt} USDT)")

    @property
    def max_leverage(self) -> int:
        """The most leverage the symbol allows at all (the first bracket's)."""
        return self.tiers[0].max_leverage

    def for_notional(self, notional_usdt: Decimal) -> Bracket:
        """The bracket whose [floor, cap] holds ``notional_usdt`` (a notional on a boundary takes the lower
        bracket; both give the same maintenance margin there)."""
        if notional_usdt < 0:
            raise BracketError(f"{self.symbol}: notional must be >= 0, got {notional_usdt}")
        for tier in self.tiers:
            if notional_usdt <= tier.notional_cap_usdt:
                return tier
        raise BracketError(f"{self.symbol}: notional {notional_usdt} USDT is above the last bracket's cap "
                           f"{self.tiers[-1].notional_cap_usdt} USDT")

    def max_leverage_for_notional(self, notional_usdt: Decimal) -> int:
        return self.for_notional(notional_usdt).max_leverage

    def max_notional_for_leverage(self, leverage: int) -> Decimal:
        """Binance ``maxNotionalValue`` for a leverage setting: the cap of the last bracket that still
        allows ``leverage``."""
        if leverage < 1 or leverage > self.max_leverage:
            raise BracketError(f"{self.symbol}: leverage {leverage} outside 1..{self.max_leverage}")
        return max(t.notional_cap_usdt for t in self.tiers if t.max_leverage >= leverage)


def load_brackets(path: str | Path = BRACKETS_FILE) -> dict[str, LeverageBrackets]:
    """Every symbol's brackets from a JSON file shaped like ``brackets.json`` (values as decimal strings)."""
    raw = json.loads(Path(path).read_text())
    out: dict[str, LeverageBrackets] = {}
    for symbol, rows in raw["symbols"].items():
        tiers = tuple(Bracket(bracket=int(r["bracket"]), notional_floor_usdt=Decimal(r["notional_floor_usdt"]),
                              notional_cap_usdt=Decimal(r["notional_cap_usdt"]), max_leverage=int(r["max_leverage"]),
                              maint_margin_rate=Decimal(r["maint_margin_rate"]),
                              maint_amount_usdt=Decimal(r["maint_amount_usdt"]))
                      for r in sorted(rows, key=lambda r: int(r["bracket"])))
        out[symbol] = LeverageBrackets(symbol, tiers)
    return out


# --------------------------------------------------------------------------- margin
def notional_usdt(qty: Decimal, price: Decimal) -> Decimal:
    return abs(qty) * price


def initial_margin_usdt(qty: Decimal, price: Decimal, leverage: int | Decimal) -> Decimal:
    """Margin posted to open ``qty`` at ``price`` with ``leverage``: notional / leverage."""
    if leverage < 1:
        raise ValueError(f"leverage must be >= 1, got {leverage}")
    return notional_usdt(qty, price) / Decimal(leverage)


def maintenance_margin_usdt(qty: Decimal, mark_price: Decimal, brackets: LeverageBrackets) -> Decimal:
    """Binance maintenance margin at the mark: notional × MMR − cum, with the bracket of that notional."""
    notional = notional_usdt(qty, mark_price)
    return brackets.for_notional(notional).maintenance_margin_usdt(notional)


def unrealized_pnl_usdt(qty: Decimal, entry_price: Decimal, mark_price: Decimal) -> Decimal:
    """qty × (mark − entry): positive when a long's mark is above entry or a short's below."""
    return qty * (mark_price - entry_price)


def margin_ratio(maint_margin_usdt: Decimal, margin_balance_usdt: Decimal) -> Decimal:
    """Binance "Margin Ratio = Maintenance Margin / Margin Balance"; the position is liquidated when it
    reaches 1 (100 %). A margin balance at or below zero is past liquidation: the ratio is infinite."""
    if margin_balance_usdt <= 0:
        return Decimal("Infinity")
    return maint_margin_usdt / margin_balance_usdt


def liquidation_price(qty: Decimal, entry_price: Decimal, wallet_balance_usdt: Decimal,
                      brackets: LeverageBrackets, *, other_maint_margin_usdt: Decimal = ZERO,
                      other_unrealized_pnl_usdt: Decimal = ZERO) -> Decimal | None:
    """Binance's liquidation price of a one-way (``positionSide`` BOTH) position.

    Source: Binance FAQ "How to Calculate Liquidation Price of USDⓈ-M Contracts"
    (https://www.binance.com/en/support/faq/b3c689c1f50a44cabb3a84e663b81d93), as implemented in
    freqtrade ``freqtrade/exchange/binance.py`` ``dry_run_liquidation_price`` (commit c9ae5e1e):

        LP = (WB − TMM1 + UPNL1 + cumB − Side1BOTH × Position1BOTH × EP1BOTH)
             / (Position1BOTH × MMRB − Side1BOTH × Position1BOTH)

    WB: wallet balance (isolated: the position's isolated wallet = isolated margin); TMM1, UPNL1: the
    maintenance margin and unrealised P&L of every *other* contract (0 in isolated mode); cumB, MMRB: the
    bracket's maintenance amount and rate; Side1BOTH: +1 long, −1 short; Position1BOTH: |qty|; EP1BOTH:
    entry price. It is the price at which margin balance (WB + qty × (P − EP)) equals maintenance margin
    (|qty| × P × MMR − cum).

    Which bracket: the one holding the notional *at the liquidation price*, found by trying each bracket
    and keeping the one whose [floor, cap] holds |qty| × LP — the only choice that makes "margin balance
    = maintenance margin" hold at LP. (Maintenance margin is continuous across brackets, so the answer is
    unique.) For positions inside the first bracket (every HYDRA-sized position) it is simply bracket 1.

    Returns None when the position cannot be liquidated (a long whose wallet covers the fall to zero, or a
    flat position).
    """
    if qty == 0:
        return None
    side = ONE if qty > 0 else -ONE
    size = abs(qty)
    cross = other_unrealized_pnl_usdt - other_maint_margin_usdt
    candidates = []
    for tier in brackets.tiers:
        denominator = size * tier.maint_margin_rate - side * size
        lp = (wallet_balance_usdt + cross + tier.maint_amount_usdt - side * size * entry_price) / denominator
        if lp <= 0:
            continue
        if tier.notional_floor_usdt <= size * lp <= tier.notional_cap_usdt:
            candidates.append(lp)
    if candidates:
        # on a bracket boundary two brackets agree up to Decimal rounding; take the first (lowest bracket)
        return candidates[0]
    if side > 0:
        return None   # every candidate was <= 0: the long's margin covers a fall to zero
    raise BracketError(f"{brackets.symbol}: no bracket holds the liquidation notional of {qty} at {entry_price}")


def stop_inside_liquidation(side: Side, entry_price: Decimal, stop_price: Decimal,
                            liq_price: Decimal | None, buffer_pct: Decimal) -> bool:
    """True when a protective stop fires safely before the liquidation price: for a long the stop must
    sit at least ``buffer_pct`` percent (of the liquidation price) above it, for a short at least that far
    below it. False when the stop is beyond the liquidation price or too near it — the risk layer refuses
    such a trade, since the venue would liquidate (with its fee, at the liquidation price) before the stop
    could act. ``liq_price`` None (the position cannot be liquidated) is always safe.

    ``entry_price`` guards against a mis-sided call: a long's liquidation price is below entry, a short's
    above it; anything else raises ValueError rather than answering a question nobody asked.
    """
    if buffer_pct < 0:
        raise ValueError(f"buffer_pct must be >= 0, got {buffer_pct}")
    if liq_price is None:
        return True
    margin = liq_price * buffer_pct / HUNDRED
    if side is Side.BUY:
        if not liq_price < entry_price:
            raise ValueError(f"a long's liquidation price {liq_price} must be below its entry {entry_price}")
        return stop_price > liq_price and stop_price >= liq_price + margin
    if not liq_price > entry_price:
        raise ValueError(f"a short's liquidation price {liq_price} must be above its entry {entry_price}")
    return stop_price < liq_price and stop_price <= liq_price - margin
