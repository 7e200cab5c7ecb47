"""The seams between layers: market data, broker, asset capabilities and typed broker errors.

Backtest, offline simulation and paper trading differ only in which implementation of these
interfaces is injected (replay or Alpaca data; simulated or Alpaca broker), so strategy, risk and
position code is one code path in every mode.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from typing import Callable, Mapping, Protocol, runtime_checkable

import numpy as np

from .domain import UTC, AssetClass, Fill, Order, OrderType, TimeInForce
from .events import Event


# --------------------------------------------------------------------------- market data
@dataclass(frozen=True, slots=True)
class BarSeries:
    """Closed bars of one symbol, oldest first, as numpy arrays (views, never copies, on the hot path).

    ``ts`` holds bar open times in epoch seconds; a bar is closed at ``ts + interval_s``."""

    symbol: str
    interval_s: int
    ts: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray

    def __len__(self) -> int:
        return len(self.ts)

    @property
    def last_close(self) -> float:
        return float(self.close[-1]) if len(self.close) else math.nan

    @property
    def last_close_time(self) -> datetime | None:
        if not len(self.ts):
            return None
        return datetime.fromtimestamp(int(self.ts[-1]) + self.interval_s, UTC)


@dataclass(frozen=True, slots=True)
class PointSeries:
    """A point-in-time series (funding rate per settlement, open interest snapshots), oldest first.

    ``ts`` in epoch seconds is the moment a value became known; ``values`` are in the series' own
    units (funding: fraction per interval; open interest: base-asset units)."""

    kind: str
    symbol: str
    ts: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.ts)

    @property
    def last(self) -> float:
        return float(self.values[-1]) if len(self.values) else math.nan


# MarketSnapshot.events_of's answers for the newest events tuple: (that tuple, {(kind, subject): events})
_events_of_memo: tuple[tuple, dict] = ((), {})


@dataclass(slots=True)
class MarketSnapshot:
    """What the engine may know at ``now``: only closed bars and already-published points.

    ``bars`` may be any mapping; replay data hands a lazy one that builds a symbol's ``BarSeries`` on
    first access, and fills ``newest_ts`` and ``closes`` (newest bar per symbol) so that a cycle which
    only needs prices (most cycles) never builds a series."""

    now: datetime
    bars: Mapping[str, BarSeries] = field(default_factory=dict)
    series: dict[tuple[str, str], PointSeries] = field(default_factory=dict)
    stale: dict[str, str] = field(default_factory=dict)   # symbol -> why entries are blocked
    feed_problems: dict[str, str] = field(default_factory=dict)  # feed -> why it is unhealthy
    newest_ts: dict[str, int] = field(default_factory=dict)    # symbol -> open time (s) of its newest bar
    closes: dict[str, float] = field(default_factory=dict)     # symbol -> close of its newest bar
    # longer histories than ``bars`` for the regime detector's intraday feature symbols (hourly BTC: its
    # 20-day features need more days than ``engine.history_bars`` hours hold); ``bars`` is unchanged
    regime_bars: Mapping[str, BarSeries] = field(default_factory=dict)
    # dated events known at ``now`` (``known_at <= now``), in ``happened_at`` order: macro releases, CME
    # margin changes, AI launches... filled from the event feeds a plugin's ``DataNeed("events", kind)``
    # asked for (hydra_engine/data/event_feeds.py); a tuple, shared between cycles while nothing new is known
    events: tuple[Event, ...] = ()
    # intraday candles (15-minute, extended hours included) of the symbols a plugin asked for with
    # ``DataNeed("intraday", symbol)`` (issue #18); ``intraday_missing`` says why a symbol has none
    intraday: Mapping[str, BarSeries] = field(default_factory=dict)
    intraday_missing: Mapping[str, str] = field(default_factory=dict)
    # finer bars inside a closed coarse bar (issue #17): fine_path(symbol, open_s, close_s, (o, h, l, c)) ->
    # [(o, h, l, c), ...] in time order, or None where the data has none; the position manager walks them
    # to decide a bar whose extremes' order matters. None: no finer data at all
    fine_path: Callable | None = None
    # replay data: rows_since(symbol, from_s) read straight from its arrays, the same rows as
    # :meth:`bars_since` reads from ``bars`` (the position manager asks for every held symbol every cycle)
    rows_since: Callable | None = None

    def bars_since(self, symbol: str, from_s: int) -> list[tuple[int, float, float, float, float]] | None:
        """The bars of ``symbol`` in ``bars`` that open at or after ``from_s`` (epoch s), oldest first, as
        (open s, open, high, low, close); None when the symbol has no bars at all."""
        if self.rows_since is not None:
            return self.rows_since(symbol, from_s)
        bars = self.bars.get(symbol)
        if bars is None or not len(bars):
            return None
        ts = bars.ts
        k = int(np.searchsorted(ts, from_s, "left"))
        return [(int(ts[j]), float(bars.open[j]), float(bars.high[j]), float(bars.low[j]), float(bars.close[j]))
                for j in range(k, len(ts))]

    def events_of(self, kind: str, subject: str | None = None) -> tuple[Event, ...]:
        """The known events of ``kind`` (and ``subject``, when given), in ``happened_at`` order; this
        includes scheduled ones still to happen (a CPI release known a week ahead)."""
        events = self.events
        if not events:
            return ()
        if type(events) is not tuple or type(kind) is not str or not (subject is None or type(subject) is str):
            return tuple(e for e in events if e.kind == kind and (subject is None or e.subject == subject))
        # replay feeds hand every snapshot the same tuple while nothing new is known (events.py): the
        # answer is kept per tuple (its identity; the memo holds it, so the identity cannot be reused) --
        # a tuple of frozen events answers the same every time (issue #24: one full scan a cycle)
        global _events_of_memo
        memo = _events_of_memo
        if memo[0] is not events:
            memo = _events_of_memo = (events, {})
        hit = memo[1].get((kind, subject))
        if hit is None:
            hit = memo[1][(kind, subject)] = tuple(
                e for e in events if e.kind == kind and (subject is None or e.subject == subject))
        return hit

    def price(self, symbol: str) -> float:
        """Last close, or NaN when there is none."""
        close = self.closes.get(symbol)
        if close is not None:
            return close
        bars = self.bars.get(symbol)
        return bars.last_close if bars is not None else math.nan

    def prices(self) -> dict[str, float]:
        """Last close of every symbol with bars (NaN where a series is empty)."""
        if len(self.closes) == len(self.bars):   # replay: every priced symbol is in ``closes``
            return dict(self.closes)
        return {s: self.price(s) for s in self.bars}

    def newest_bar_ts(self, symbol: str) -> int | None:
        """Open time (epoch s) of ``symbol``'s newest closed bar — which bar a cycle is looking at."""
        ts = self.newest_ts.get(symbol)
        if ts is not None:
            return ts
        bars = self.bars.get(symbol)
        return int(bars.ts[-1]) if bars is not None and len(bars) else None

    def point_series(self, kind: str, symbol: str) -> PointSeries | None:
        return self.series.get((kind, symbol))

    def tradable(self, symbol: str) -> bool:
        """True when fresh, finite, positive prices allow new entries on ``symbol``."""
        return symbol not in self.stale and symbol in self.bars


class MarketData(Protocol):
    """Source of market state. Replay reads files; the Alpaca adapter polls REST."""

    def snapshot(self, now: datetime) -> MarketSnapshot: ...

    def next_bar_open(self, symbol: str, after: datetime, now: datetime) -> tuple[datetime, float] | None:
        """The first bar that opened at or after ``after`` and has closed by ``now``: (open time,
        open price). Used by the simulated broker to fill at the next available price."""
        ...


# --------------------------------------------------------------------------- assets
@dataclass(frozen=True, slots=True)
class AssetSpec:
    """What a venue accepts for one symbol (the capability matrix row)."""

    symbol: str
    asset_class: AssetClass
    tradable: bool = True
    shortable: bool = False
    fractionable: bool = False
    qty_increment: Decimal = Decimal(1)
    price_increment: Decimal = Decimal("0.01")
    min_order_size: Decimal = Decimal(0)
    order_types: frozenset[OrderType] = frozenset()
    time_in_force: frozenset[TimeInForce] = frozenset()

    def round_qty(self, qty: Decimal) -> Decimal:
        """Round a quantity down (never up: never more than risk approved) to the increment."""
        step = self.qty_increment if self.fractionable or self.asset_class is AssetClass.CRYPTO else Decimal(1)
        return (qty / step).to_integral_value(rounding=ROUND_DOWN) * step

    def round_price(self, price: Decimal | float, rounding: str = ROUND_HALF_UP) -> Decimal:
        """Round to the venue's tick. Equities >= $1 trade in cents, below $1 in 1/100 cents."""
        price = Decimal(str(price))
        tick = self.price_increment
        if self.asset_class is AssetClass.EQUITY and price < 1:
            tick = Decimal("0.0001")
        return (price / tick).to_integral_value(rounding=rounding) * tick


# --------------------------------------------------------------------------- broker
@dataclass(frozen=True, slots=True)
class Account:
    cash_usd: Decimal
    equity_usd: Decimal
    buying_power_usd: Decimal


@dataclass(frozen=True, slots=True)
class BrokerPosition:
    symbol: str
    qty: Decimal
    avg_entry_price: Decimal


class BrokerError(Exception):
    """Base of every typed broker error; ``retryable`` tells the engine whether to try again."""

    retryable = False
    user_hint = "the broker refused the request"

    def __init__(self, message: str, *, symbol: str | None = None, client_order_id: str | None = None):
        super().__init__(message)
        self.symbol = symbol
        self.client_order_id = client_order_id

    def describe(self) -> str:
        """The failure in one line for a command's message (``status``, ``kill``, a refused ``run``)."""
        return f"{type(self).__name__}: {self}"


class InsufficientBuyingPower(BrokerError):
    user_hint = "not enough buying power for this order; HYDRA skips it"


class ShortNotAllowed(BrokerError):
    user_hint = "the asset cannot be sold short (crypto, hard-to-borrow or fractional short)"


class InvalidOrder(BrokerError):
    user_hint = "the order type, time-in-force or size is not accepted for this asset"


class InvalidTimeInForce(InvalidOrder):
    user_hint = "the time-in-force is not allowed for this asset class (crypto: gtc/ioc only)"


class HeldQuantity(BrokerError):
    user_hint = "shares are held by another open order (a stop or bracket leg); cancel it first"


class WashTradeRejected(BrokerError):
    user_hint = "an opposite-side order is working on the same symbol (potential wash trade)"


class MarketClosed(BrokerError):
    user_hint = "the market is closed; nothing is sent until it opens"


class AuthError(BrokerError):
    user_hint = "the API keys were refused; check APCA_API_KEY_ID / APCA_API_SECRET_KEY"

    def describe(self) -> str:
        # the one broker failure the user fixes by hand: every command points at the keys, not just the cycle
        return f"{super().describe()} — {self.user_hint}"


class RateLimited(BrokerError):
    retryable = True
    user_hint = "too many requests; HYDRA backs off and retries"


class UnknownOrderOutcome(BrokerError):
    retryable = True
    user_hint = "the broker did not say whether the order was accepted; HYDRA looks it up by client_order_id"


class OrderNotFound(BrokerError):
    user_hint = "no such order at the broker"


@dataclass(frozen=True, slots=True)
class VenueCapabilities:
    """What a venue declares it can do, read by the executor and the risk layer instead of probing the
    broker object (``getattr``). Per-asset rules (shortable, fractionable, order types, increments) stay in
    :class:`AssetSpec`; these are the venue-wide ones."""

    name: str = "venue"
    native_trailing_stops: bool = False      # holds a percent trailing stop at the venue
    brackets: bool = False                   # holds an entry's stop and target as legs (OTO/OCO)
    fractional_equities: bool = False
    short_equities: bool = False             # per-asset shortable still applies
    short_crypto: bool = False
    reduce_only: bool = False                # honours reduce_only on orders (perp venues)
    max_leverage: float = 1.0
    fee_currency: str = "USD"                # what fees are charged in (USD, USDT)
    fees_in_received_asset: frozenset[AssetClass] = frozenset()   # Alpaca crypto: fee taken from the coins bought
    marks_from_engine: bool = False          # a simulated venue is told each cycle's prices (update_marks)
    # perps: ``settle_funding(now) -> [FundingPayment]`` and ``venue_exit_reason(client_order_id)`` (a
    # venue-made close, e.g. "liquidation"), read by the engine each cycle
    settles_funding: bool = False
    extended_hours_limit: bool = False       # takes DAY limit orders flagged extended_hours (equities)


@runtime_checkable
class Broker(Protocol):
    """Execution venue. Implementations: ``SimulatedBroker`` and the Alpaca adapter.

    ``capabilities`` declares what the venue can do (see :class:`VenueCapabilities`)."""

    capabilities: VenueCapabilities

    def capabilities_for(self, symbol: str) -> VenueCapabilities:
        """What the venue that trades ``symbol`` can do (a single venue: ``capabilities``)."""
        ...

    def account(self) -> Account: ...

    def positions(self) -> dict[str, BrokerPosition]: ...

    def asset(self, symbol: str) -> AssetSpec: ...

    def is_market_open(self, symbol: str, now: datetime) -> bool: ...

    def submit(self, order: Order) -> Order:
        """Send ``order``; return it with status and broker id. Raises a BrokerError subclass."""
        ...

    def cancel(self, client_order_id: str) -> None: ...

    def open_orders(self) -> list[Order]: ...

    def get_order(self, client_order_id: str) -> Order | None: ...

    def poll_fills(self, now: datetime) -> list[Fill]:
        """Executions that happened since the last call, oldest first."""
        ...


def to_decimal(value: float | str | Decimal, name: str = "value") -> Decimal:
    """Float to Decimal through its shortest repr, refusing NaN and infinities."""
    try:
        d = value if isinstance(value, Decimal) else Decimal(str(value))
    except ArithmeticError:   # decimal.InvalidOperation: "abc", "", a list...
        raise ValueError(f"{name} is not a number: {value!r}") from None
    if not d.is_finite():
        raise ValueError(f"{name} must be finite, got {value!r}")
    return d


ZERO = Decimal(0)
HOUR = timedelta(hours=1)
