"""The perp venue's records and rules: contract specs, the venue's typed refusals, an open position,
a closed trade with its funding, a funding record; and the venue's fee and size constants."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal
from typing import Mapping

from ..domain import (AssetClass, Fill, FundingPayment, Order, OrderStatus, OrderType, Side, TimeInForce,
                      require_utc)
from ..ports import (Account, AssetSpec, BrokerPosition, InsufficientBuyingPower, InvalidOrder,
                     InvalidTimeInForce, MarketData, VenueCapabilities, to_decimal)
from .bars import BarRangeSource
from .funding import FundingSchedule, settle
from .margin import LeverageBrackets, liquidation_price, load_brackets, maintenance_margin_usdt

ZERO = Decimal(0)
BPS = Decimal("0.0001")
FEE_QUANTUM_USDT = Decimal("0.00000001")   # Binance reports commissions with 8 decimals ("-0.01000000")
MAKER_FEE_BPS = Decimal("2")               # VIP 0 maker 0.0200 % (unverified here, see the module docstring)
TAKER_FEE_BPS = Decimal("5")               # VIP 0 taker 0.0500 %
MIN_NOTIONAL_USDT = Decimal("5")           # the −4164 message's value; real minimums vary per symbol
PERP_TIF = frozenset({TimeInForce.GTC, TimeInForce.IOC, TimeInForce.GTX})   # GTX: post-only limits
LIQUIDATION = "liquidation"
POST_ONLY_CROSS = "Due to the order could not be executed as maker, the Post Only order will be rejected (Binance -5022)"
BAR_OPEN_PEEK = timedelta(days=1)         # longer than any bar the venue is fed


def perp_spec(symbol: str, *, qty_step: str, tick: str) -> AssetSpec:
    step = Decimal(qty_step)
    return AssetSpec(symbol, AssetClass.CRYPTO, tradable=True, shortable=True, fractionable=True,
                     qty_increment=step, price_increment=Decimal(tick), min_order_size=step,
                     order_types=frozenset({OrderType.MARKET, OrderType.LIMIT}), time_in_force=PERP_TIF)


def _shipped() -> dict[str, AssetSpec]:
    from .specs import load_shipped_specs
    return {s: perp_spec(s, qty_step=str(p.step_size), tick=str(p.tick_size)) for s, p in load_shipped_specs().items()}


#: LOT_SIZE step and PRICE_FILTER tick from ``specs.json``, which names its source: BTCUSDT and ETHUSDT from a
#: recorded Binance exchangeInfo row, SOLUSDT and BNBUSDT unverified (no recorded row). A Binance account's
#: adapter replaces them with the venue's own at start-up (:mod:`hydra_engine.adapters.binance_usdm_specs`).
DEFAULT_PERP_SPECS: dict[str, AssetSpec] = _shipped()


class ReduceOnlyRejected(InvalidOrder):
    """Binance −2022 "ReduceOnly Order is rejected.": the order would open, add to or flip a position."""

    user_hint = "a reduce-only order would increase or flip the position; HYDRA skips it"


class LeverageNotAllowed(InvalidOrder):
    """A leverage above the symbol's bracket cap, a change while a position is open, or a position larger
    than the leverage allows (Binance −4028 / maxNotionalValue)."""

    user_hint = "the leverage or the position size is above what the venue's leverage brackets allow"


@dataclass(slots=True)
class PerpPosition:
    """One isolated position. ``isolated_margin_usdt`` is the isolated wallet (initial margin plus funding
    received minus funding paid); ``funding_usdt`` and ``entry_fees_usdt`` are what the open quantity has
    accumulated, handed pro rata to each closed part."""

    symbol: str
    qty: Decimal
    entry_price: Decimal
    leverage: int
    isolated_margin_usdt: Decimal
    opened_at: datetime
    funding_usdt: Decimal = ZERO
    entry_fees_usdt: Decimal = ZERO

    @property
    def side(self) -> Side:
        return Side.BUY if self.qty > 0 else Side.SELL


@dataclass(frozen=True, slots=True)
class ClosedPerpTrade:
    """A closed (part of a) position. ``pnl_usdt`` = price P&L − fees (entry share + exit) + funding."""

    symbol: str
    side: str                    # long | short
    qty: Decimal
    entry_price: Decimal
    exit_price: Decimal
    opened_at: datetime
    closed_at: datetime
    price_pnl_usdt: Decimal
    fees_usdt: Decimal
    funding_usdt: Decimal
    pnl_usdt: Decimal
    exit_reason: str             # "order" (an order closed it) or "liquidation"
    client_order_id: str


@dataclass(frozen=True, slots=True)
class FundingRecord:
    payment: FundingPayment
    mark_source: str             # history | bar_open | last_mark


@dataclass(slots=True)
class _Clock:
    funding_through: datetime | None = None            # every settlement at or before this is done
    bars_from: dict[str, datetime] = field(default_factory=dict)   # next bar open to check, per held symbol


