"""Funding of USDT-margined perpetuals: the real settlement history as a schedule, and one settlement.

Binance exchanges funding between longs and shorts at discrete settlement times (every 8 h for the
HYDRA universe: 00:00, 08:00, 16:00 UTC; ``fundingInfo`` lists symbols on other intervals). Whoever holds
a position at a settlement time pays or receives

    amount_usdt = −qty × mark × rate          (qty signed: + long, − short)

so with a positive rate a long pays (amount < 0) and a short receives; with a negative rate the reverse.
The amount is on the position's notional at the mark — never multiplied by leverage — and is paid once
per settlement, never accrued per bar.

Sources: ``shared/data/crypto_perp/binance_usdm/funding/<SYMBOL>_funding_8h.parquet`` (settled rates,
``datetime`` index, ``funding_rate`` column; PROVENANCE §1.3) and, where a settlement also appears in
``funding_with_mark/binance_funding_mark_*.parquet`` (PROVENANCE §1.4), its ``mark_price``. Rows from
the REST endpoint ``GET /fapi/v1/fundingRate`` (``{symbol, fundingRate, fundingTime, markPrice}``,
``markPrice`` possibly "") load through :func:`schedule_from_binance_rows`.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Iterable, Protocol

from ..domain import UTC, FundingPayment, require_utc

RATE_QUANTUM = Decimal("0.00000001")   # Binance publishes funding rates with 8 decimals ("0.00010000")


class FundingDataError(ValueError):
    """A funding file or row that cannot be read as a settlement history."""


@dataclass(frozen=True, slots=True)
class FundingSettlement:
    """One settlement: nominal time ``ts`` (whole second), the rate per interval (fraction) and the mark
    at settlement where the source has it. ``recorded_at`` keeps the time as delivered (Binance stamps
    settlements a few milliseconds after the hour; see :func:`nominal_time`)."""

    symbol: str
    ts: datetime
    rate: Decimal
    mark_price: Decimal | None = None
    recorded_at: datetime | None = None


def nominal_time(ts: datetime) -> datetime:
    """The settlement's nominal time: ``ts`` truncated to the whole second. Binance's history carries
    millisecond jitter (16:00:00.009); kept as is, a fill at the 16:00:00 bar open would sort *before* that
    settlement and be charged for it, which the exchange does not do."""
    require_utc(ts, "funding settlement time")
    return ts.replace(microsecond=0)


def _rate(value, where: str) -> Decimal:
    """A funding rate as Decimal: through the float's shortest repr, then checked to be a whole number of
    1e-8 (what Binance publishes). A value with more digits means the file is not what we think: raise."""
    try:
        d = Decimal(value) if isinstance(value, str) else Decimal(repr(float(value)))
    except (ArithmeticError, ValueError, TypeError):
        raise FundingDataError(f"{where}: funding rate {value!r} is not a number") from None
    if not d.is_finite():
        raise FundingDataError(f"{where}: funding rate {value!r} is not finite")
    q = d.quantize(RATE_QUANTUM)
    if q != d:
        raise FundingDataError(f"{where}: funding rate {value!r} has more than 8 decimals")
    return q


class FundingSchedule:
    """One symbol's settlements, sorted by time, with range queries for the venue."""

    def __init__(self, symbol: str, settlements: Iterable[FundingSettlement]):
        self.symbol = symbol
        rows = sorted(settlements, key=lambda s: s.ts)
        for a, b in zip(rows, rows[1:]):
            if a.ts == b.ts:
                raise FundingDataError(f"{symbol}: two settlements at {a.ts:%Y-%m-%d %H:%M:%S}Z")
        self.settlements: tuple[FundingSettlement, ...] = tuple(rows)
        self._times = [s.ts for s in rows]

    def __len__(self) -> int:
        return len(self.settlements)

    def between(self, after: datetime | None, until: datetime) -> list[FundingSettlement]:
        """Settlements with ``after < ts <= until`` (``after`` None: from the start), oldest first."""
        lo = 0 if after is None else bisect.bisect_right(self._times, after)
        hi = bisect.bisect_right(self._times, until)
        return list(self.settlements[lo:hi])

    def next_after(self, after: datetime | None) -> FundingSettlement | None:
        lo = 0 if after is None else bisect.bisect_right(self._times, after)
        return self.settlements[lo] if lo < len(self.settlements) else None

    def at(self, ts: datetime) -> FundingSettlement | None:
        i = bisect.bisect_left(self._times, ts)
        return self.settlements[i] if i < len(self._times) and self._times[i] == ts else None


def schedule_from_binance_rows(rows: Iterable[dict]) -> dict[str, FundingSchedule]:
    """Schedules from ``GET /fapi/v1/fundingRate`` rows (the shape of ``fundingRate.json``). A ``markPrice``
    of "" (old records) is no mark, not zero."""
    by_symbol: dict[str, list[FundingSettlement]] = {}
    for row in rows:
        symbol = row["symbol"]
        recorded = datetime.fromtimestamp(int(row["fundingTime"]) / 1000, UTC)
        mark = row.get("markPrice") or None
        by_symbol.setdefault(symbol, []).append(FundingSettlement(
            symbol, nominal_time(recorded), _rate(str(row["fundingRate"]), f"{symbol} {recorded}"),
            Decimal(mark) if mark is not None else None, recorded))
    return {s: FundingSchedule(s, rows) for s, rows in by_symbol.items()}


def load_funding_history(symbol: str, folder: str | Path) -> FundingSchedule:
    """The settled funding history of ``symbol`` (e.g. ``BTCUSDT``) from the shared-data layout under
    ``folder`` (``.../crypto_perp/binance_usdm``), with the mark price where the one-year file has it."""
    import pandas as pd   # only the loader needs pandas; the venue and the maths do not

    folder = Path(folder)
    path = folder / "funding" / f"{symbol}_funding_8h.parquet"
    if not path.is_file():
        raise FundingDataError(f"no funding history for {symbol} at {path}")
    frame = pd.read_parquet(path)
    if "funding_rate" not in frame.columns:
        raise FundingDataError(f"{path}: expected a funding_rate column, got {list(frame.columns)}")
    marks: dict[datetime, Decimal] = {}
    for mark_file in sorted((folder / "funding_with_mark").glob("*.parquet")):
        m = pd.read_parquet(mark_file, columns=["venue_symbol", "settlement_ts", "mark_price", "is_predicted"])
        m = m[(m.venue_symbol == symbol) & ~m.is_predicted & m.mark_price.notna()]
        for ts, price in zip(m.settlement_ts, m.mark_price):
            marks[nominal_time(ts.to_pydatetime())] = Decimal(repr(float(price)))
    settlements = []
    for ts, rate in zip(frame.index, frame["funding_rate"].to_numpy()):
        recorded = ts.to_pydatetime()
        if recorded.tzinfo is None:
            raise FundingDataError(f"{path}: settlement times must be UTC-aware, got {recorded!r}")
        recorded = recorded.astimezone(UTC)
        nominal = nominal_time(recorded)
        settlements.append(FundingSettlement(symbol, nominal, _rate(rate, f"{path.name} {recorded}"),
                                             marks.get(nominal), recorded))
    return FundingSchedule(symbol, settlements)


class HasSignedQty(Protocol):
    symbol: str
    qty: Decimal


def settle(position: HasSignedQty, rate: Decimal, mark: Decimal, ts: datetime) -> FundingPayment:
    """The funding one settlement moves for ``position`` (anything with ``symbol`` and a signed ``qty``):
    ``amount_usd = −qty × mark × rate`` in USDT (1 USDT taken as 1 USD; the field name is the domain's).
    Exact Decimal, not rounded: Binance's rounding of FUNDING_FEE income (8 decimals) is not documented,
    and an exact amount keeps the venue's books checkable to the last digit."""
    require_utc(ts, "funding settlement time")
    if mark <= 0:
        raise ValueError(f"{position.symbol}: mark price must be > 0 at settlement {ts}, got {mark}")
    return FundingPayment(symbol=position.symbol, ts=ts, rate=rate, mark_price=mark,
                          position_qty=position.qty, amount_usd=-position.qty * mark * rate)
