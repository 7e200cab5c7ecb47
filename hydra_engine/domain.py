"""HYDRA's domain types: the vocabulary every layer speaks.

Units are explicit: prices and cash are USD (``Decimal`` at the broker boundary), quantities are
asset units, rates are fractions per interval unless a name says ``_bps``. Every datetime is
timezone-aware UTC; constructors refuse naive or non-UTC times so a local-time bug cannot creep in.
Signal maths runs on floats (scores, confidences); money that reaches a broker is ``Decimal``.
"""
from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal

UTC = timezone.utc


def require_utc(value: datetime, name: str = "timestamp") -> datetime:
    """Return ``value`` if it is a UTC-aware datetime, else raise ValueError naming the field."""
    if value.__class__ is datetime and value.tzinfo is UTC:   # the common case, checked cheaply
        return value
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() != timedelta(0):
        raise ValueError(f"{name} must be timezone-aware UTC, got {value!r}")
    return value


class Side(str, enum.Enum):
    BUY = "buy"
    SELL = "sell"

    @property
    def sign(self) -> int:
        return 1 if self is Side.BUY else -1

    def opposite(self) -> "Side":
        return Side.SELL if self is Side.BUY else Side.BUY


class AssetClass(str, enum.Enum):
    EQUITY = "us_equity"
    CRYPTO = "crypto"
    INDEX = "index"  # data-only series such as VIX: never traded


class InstrumentKind(str, enum.Enum):
    """What an instrument is, for the rules that differ by kind (leverage, funding, margin)."""

    SPOT = "spot"          # crypto spot (Alpaca): no leverage, no funding
    EQUITY = "equity"
    PERP = "perp"          # a USDT-margined perpetual future: leverage, funding, maintenance margin


@dataclass(frozen=True, slots=True)
class Instrument:
    """A tradable instrument and the venue that trades it. Spot and equity instruments take the
    defaults (1x, no margin, no funding); a perpetual names its caps, margin rates and funding interval."""

    symbol: str
    kind: InstrumentKind
    venue: str = "alpaca"
    max_leverage: float = 1.0
    initial_margin_rate: float = 1.0       # fraction of notional posted to open (1 / leverage at the cap)
    maintenance_margin_rate: float = 0.0   # fraction of notional below which the position is liquidated
    funding_interval: timedelta | None = None

    def __post_init__(self) -> None:
        if not self.symbol:
            raise ValueError("Instrument.symbol is empty")
        if not (math.isfinite(self.max_leverage) and self.max_leverage >= 1.0):
            raise ValueError(f"Instrument.max_leverage must be >= 1, got {self.max_leverage!r}")
        if self.kind is not InstrumentKind.PERP and (self.max_leverage != 1.0 or self.funding_interval is not None):
            raise ValueError(f"{self.symbol}: only a perp has leverage or a funding interval")
        if not (0.0 <= self.maintenance_margin_rate < self.initial_margin_rate <= 1.0) and self.kind is InstrumentKind.PERP:
            raise ValueError(f"{self.symbol}: need 0 <= maintenance_margin_rate < initial_margin_rate <= 1")


class Regime(str, enum.Enum):
    """The named regimes of the strategy bible. UNKNOWN restricts entries."""

    TRENDING_UP = "TRENDING_UP"
    TRENDING_DOWN = "TRENDING_DOWN"
    MEAN_REVERTING = "MEAN_REVERTING"
    HIGH_VOL = "HIGH_VOL"
    CRASH = "CRASH"
    RECOVERY = "RECOVERY"
    UNKNOWN = "UNKNOWN"

    @classmethod
    def parse(cls, name: str) -> set["Regime"]:
        """Parse a regime name from a plugin or config. ``ALL`` means every known regime and
        ``TRENDING`` both trending regimes (the bible uses both shorthands)."""
        key = name.strip().upper()
        if key == "ALL":
            return {r for r in cls if r is not cls.UNKNOWN}
        if key == "TRENDING":
            return {cls.TRENDING_UP, cls.TRENDING_DOWN}
        try:
            return {cls(key)}
        except ValueError:
            valid = ", ".join([r.value for r in cls] + ["ALL", "TRENDING"])
            raise ValueError(f"unknown regime {name!r}; expected one of {valid}") from None


class OrderType(str, enum.Enum):
    MARKET = "market"
    LIMIT = "limit"
    STOP = "stop"
    STOP_LIMIT = "stop_limit"
    TRAILING_STOP = "trailing_stop"


class TimeInForce(str, enum.Enum):
    DAY = "day"
    GTC = "gtc"
    IOC = "ioc"
    FOK = "fok"
    OPG = "opg"
    CLS = "cls"
    GTX = "gtx"   # Binance USD-M post-only ("good till crossing"): refused where it would take liquidity


class OrderStatus(str, enum.Enum):
    NEW = "new"                 # created locally, not yet acknowledged
    ACCEPTED = "accepted"       # acknowledged by the broker, working
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELED = "canceled"
    REJECTED = "rejected"
    EXPIRED = "expired"
    UNKNOWN = "unknown"         # outcome not known (timeout, 5xx): must be looked up, never guessed

    @property
    def is_open(self) -> bool:
        return self in (OrderStatus.NEW, OrderStatus.ACCEPTED, OrderStatus.PARTIALLY_FILLED,
                        OrderStatus.UNKNOWN)


@dataclass(frozen=True, slots=True)
class Bar:
    """One OHLCV bar. ``ts`` is the bar's open time; it is visible only from ``close_time`` on."""

    symbol: str
    ts: datetime
    interval: timedelta
    open: float
    high: float
    low: float
    close: float
    volume: float

    @property
    def close_time(self) -> datetime:
        return self.ts + self.interval


@dataclass(frozen=True, slots=True)
class Signal:
    """A directional opinion about one symbol from one source.

    ``score`` in [-1, 1] (negative = downside), ``confidence`` in [0, 1]. Its influence halves every
    ``half_life`` after ``created_at`` (see :meth:`decay`)."""

    symbol: str
    score: float
    confidence: float
    source: str
    created_at: datetime
    half_life: timedelta
    thesis: str = ""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.score) and -1.0 <= self.score <= 1.0):
            raise ValueError(f"Signal.score must be in [-1, 1], got {self.score!r} from {self.source}")
        if not (math.isfinite(self.confidence) and 0.0 <= self.confidence <= 1.0):
            raise ValueError(f"Signal.confidence must be in [0, 1], got {self.confidence!r} from {self.source}")
        if self.half_life <= timedelta(0):
            raise ValueError(f"Signal.half_life must be positive, got {self.half_life} from {self.source}")
        require_utc(self.created_at, "Signal.created_at")

    def decay(self, now: datetime) -> float:
        """Weight multiplier in (0, 1]: 0.5 ** (age / half_life); a signal from the future counts 0."""
        age = (now - self.created_at).total_seconds()
        if age < 0:
            return 0.0
        return 0.5 ** (age / self.half_life.total_seconds())


@dataclass(frozen=True, slots=True)
class TradeProposal:
    """A strategy's proposed entry. Prices in USD; ``reward_risk`` = |target-entry| / |entry-stop|."""

    strategy: str
    symbol: str
    side: Side
    entry_price: float
    stop_price: float
    target_price: float
    confidence: float
    expected_holding: timedelta
    thesis: str = ""
    max_notional_usd: float | None = None  # a plugin's own cap (the hunter's $2,000)
    min_notional_usd: float = 0.0          # below this the trade is not worth taking
    trailing_stop_pct: float | None = None  # trail this many percent behind the high-water mark
    trailing_atr_mult: float | None = None  # trail this many ATRs behind it (both set: the tighter wins)
    leverage: float = 1.0                   # perps only: the leverage the plugin asks for (risk may lower it)
    # an equity entry before the 09:30 open (an 08:30 release): sent as a DAY limit order with
    # extended_hours, at ``limit_price`` (a marketable limit the plugin sets); filled only pre-market in sim
    extended_hours: bool = False
    limit_price: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.leverage) and self.leverage >= 1.0):
            raise ValueError(f"TradeProposal.leverage must be >= 1, got {self.leverage!r}")
        for name in ("entry_price", "stop_price", "target_price"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"TradeProposal.{name} must be a positive price, got {value!r}")
        if self.side is Side.BUY and not (self.stop_price < self.entry_price < self.target_price):
            raise ValueError(f"buy proposal needs stop < entry < target, got "
                             f"{self.stop_price} / {self.entry_price} / {self.target_price}")
        if self.side is Side.SELL and not (self.target_price < self.entry_price < self.stop_price):
            raise ValueError(f"sell proposal needs target < entry < stop, got "
                             f"{self.target_price} / {self.entry_price} / {self.stop_price}")
        if not (0.0 <= self.confidence <= 1.0):
            raise ValueError(f"TradeProposal.confidence must be in [0, 1], got {self.confidence!r}")
        if self.extended_hours and not (self.limit_price is not None and math.isfinite(self.limit_price)
                                        and self.limit_price > 0):
            raise ValueError(f"TradeProposal.limit_price must be a positive price for an extended-hours entry, "
                             f"got {self.limit_price!r}")

    @property
    def reward_risk(self) -> float:
        return abs(self.target_price - self.entry_price) / abs(self.entry_price - self.stop_price)

    @property
    def stop_distance_pct(self) -> float:
        return abs(self.entry_price - self.stop_price) / self.entry_price


@dataclass(frozen=True, slots=True)
class RiskDecision:
    """The risk layer's answer to one proposal: an approved quantity, or a veto naming rule and numbers."""

    proposal: TradeProposal
    approved: bool
    qty: Decimal = Decimal(0)
    notional_usd: Decimal = Decimal(0)
    rule: str = ""         # the rule that vetoed or bound the size, e.g. "max_position_pct"
    reason: str = ""       # human-readable with the numbers
    details: dict = field(default_factory=dict)


_CLIENT_ID_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def make_client_order_id(session_id: str, strategy: str, symbol: str, sequence: int) -> str:
    """Deterministic client_order_id: session, strategy, symbol, sequence (Alpaca allows 128 chars).

    The same inputs always give the same id, so a retry or a restart can never create a second order
    without the broker noticing the duplicate id."""
    parts = [_CLIENT_ID_SAFE.sub("", p) for p in (session_id, strategy, symbol)]
    return f"{parts[0][:40]}-{parts[1][:40]}-{parts[2][:16]}-{sequence:06d}"[:128]


@dataclass(slots=True)
class Order:
    """An order as HYDRA tracks it. Quantities and prices are Decimal, rounded to the asset's increments."""

    client_order_id: str
    symbol: str
    side: Side
    qty: Decimal
    order_type: OrderType
    time_in_force: TimeInForce
    created_at: datetime
    strategy: str
    purpose: str = "entry"          # entry | exit
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    trail_percent: Decimal | None = None
    take_profit_price: Decimal | None = None   # bracket legs (equities)
    stop_loss_price: Decimal | None = None
    status: OrderStatus = OrderStatus.NEW
    broker_order_id: str | None = None
    filled_qty: Decimal = Decimal(0)
    filled_avg_price: Decimal | None = None
    reject_reason: str = ""
    legs: tuple["Order", ...] = ()  # a placed bracket's take-profit and stop-loss orders (as the broker named them)
    reduce_only: bool = False       # may only reduce a position (perp exits); refused where the venue cannot honour it
    extended_hours: bool = False    # Alpaca: a DAY limit order that may fill outside 09:30-16:00 (pre-market entries)
    venue: str = ""                 # the venue a VenueRouter sent it to ("" = the session's one broker)


@dataclass(frozen=True, slots=True)
class Fill:
    """One execution. ``fee_usd`` is what the fill cost in fees; price already includes slippage."""

    client_order_id: str
    symbol: str
    side: Side
    qty: Decimal
    price: Decimal
    fee_usd: Decimal
    ts: datetime
    fill_id: str
    # the venue that executed it (issue #20): "alpaca" (Alpaca, and the simulated Alpaca book), "perp" (the perp
    # venue: the simulated USD-M account or the Binance USD-M account) -- the names orders carry (VenueRouter)
    venue: str = ""


@dataclass(slots=True)
class Position:
    """A managed position: the broker's quantity plus the plan that protects it."""

    symbol: str
    qty: Decimal                 # positive long, negative short
    avg_entry_price: Decimal
    strategy: str
    opened_at: datetime
    stop_price: float
    target_price: float
    trailing_stop_pct: float | None = None
    high_water_mark: float = 0.0          # best price seen since entry (lowest for shorts)
    max_holding: timedelta | None = None
    regime_at_entry: str = Regime.UNKNOWN.value
    entry_fees_usd: Decimal = Decimal(0)
    initial_stop_price: float = 0.0       # the stop at entry: 1R for the r_multiple
    trailing_atr_mult: float | None = None  # trail this many ATRs (price units) behind the high-water mark
    regime_confidence_at_entry: float = 0.0
    # share of the coins bought that the broker kept as its fee (Alpaca crypto); 0 where fees are paid in USD
    fee_share_of_received_asset: Decimal = Decimal(0)
    # exits filled so far (an exit can fill in parts): quantity, its dollar value and fees
    exit_qty: Decimal = Decimal(0)
    exit_notional_usd: Decimal = Decimal(0)
    exit_fees_usd: Decimal = Decimal(0)
    funding_usd: Decimal = Decimal(0)     # perps: funding received (+) or paid (-) while held

    @property
    def side(self) -> Side:
        return Side.BUY if self.qty > 0 else Side.SELL


@dataclass(frozen=True, slots=True)
class FundingPayment:
    """One perpetual-futures funding settlement on a held position. ``amount_usd`` is signed from the
    position holder's side: negative when the position paid (a long at positive funding), positive when
    it received. Computed on the position's notional at the mark, never multiplied by leverage."""

    symbol: str
    ts: datetime                 # the settlement time
    rate: Decimal                # the funding rate for the interval (fraction, e.g. 0.0001 = 1 bp)
    mark_price: Decimal
    position_qty: Decimal        # signed quantity held at the settlement
    amount_usd: Decimal

    def __post_init__(self) -> None:
        require_utc(self.ts, "FundingPayment.ts")


@dataclass(frozen=True, slots=True)
class ClosedTrade:
    """A round trip, as written to the JSON log (the public schema in the README).

    The one definition of the closed-trade record: the store's ``trades`` table derives its columns from
    these fields (``store.TradeRow``), so a field added here is a column there (tests/test_trade_schema.py).
    A new field needs a default, which is what the record means where it did not exist yet."""

    strategy: str
    symbol: str
    side: str
    qty: str
    entry_time: str
    entry_price: str
    exit_time: str
    exit_price: str
    pnl_usd: str
    fees_usd: str
    r_multiple: float
    regime_at_entry: str
    exit_reason: str
    regime_confidence_at_entry: float = 0.0
    # perpetual-futures funding over the trade, USD, signed: + received, - paid; "0" for every non-perp trade
    funding_usd: str = "0"
    # the venue of the trade's symbol when the session spans venues (VenueRouter: "alpaca"/"sim", "perp"); ""
    # for a one-venue session
    venue: str = ""


@dataclass(frozen=True, slots=True)
class RegimeReading:
    """The regime layer's output for one cycle."""

    regime: Regime
    confidence: float
    detector: str
    as_of: datetime
    details: dict = field(default_factory=dict)


@dataclass(slots=True)
class CycleReport:
    """Everything one cycle saw and decided: the decision trace that ``explain`` reads back."""

    cycle: int
    ts: datetime
    mode: str = "trade"                      # observe | trade | killed
    regime: RegimeReading | None = None
    prices: dict[str, float] = field(default_factory=dict)
    stale_symbols: list[str] = field(default_factory=list)
    signals: list[dict] = field(default_factory=list)
    aggregated: dict[str, dict] = field(default_factory=dict)
    strategies_run: list[str] = field(default_factory=list)
    strategies_gated: list[str] = field(default_factory=list)
    proposals: list[dict] = field(default_factory=list)
    decisions: list[dict] = field(default_factory=list)
    orders: list[dict] = field(default_factory=list)
    fills: list[dict] = field(default_factory=list)
    exits: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    equity_usd: str = "0"
    cash_usd: str = "0"
    weights: dict[str, float] = field(default_factory=dict)
