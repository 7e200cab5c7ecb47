"""The perp instruments' contract specs (issue #20): tick size, step size, quantity limits, minimum notional
and trading status -- shipped from a recorded venue row with the source named (``specs.json``), and on a
Binance account replaced at start-up by the venue's own ``GET /fapi/v1/exchangeInfo`` (the leverage
brackets by the signed ``GET /fapi/v1/leverageBracket``), every difference from the shipped values noted.

A symbol the venue does not list, that is not a USDT-margined perpetual, or whose status is not ``TRADING``
is refused with the reason (:func:`venue_specs`); it is never traded on a guessed spec.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Mapping

from .margin import Bracket, BracketError, LeverageBrackets

SPECS_FILE = Path(__file__).with_name("specs.json")


@dataclass(frozen=True)
class PerpSpec:
    symbol: str
    tick_size: Decimal
    step_size: Decimal
    min_qty: Decimal
    min_notional_usdt: Decimal
    max_qty: Decimal | None = None
    market_max_qty: Decimal | None = None
    status: str = "TRADING"
    source: str = ""

    def differences(self, other: "PerpSpec") -> list[str]:
        """What ``other`` (the venue's) says that this (the shipped one) does not, field by field."""
        out = []
        for name in ("tick_size", "step_size", "min_qty", "min_notional_usdt", "max_qty", "market_max_qty"):
            a, b = getattr(self, name), getattr(other, name)
            if (a is None) != (b is None) or (a is not None and a.compare(b) != 0):
                out.append(f"{name} {_shown(a)} -> {_shown(b)}")
        return out


def _dec(x) -> Decimal | None:
    return None if x in (None, "") else Decimal(str(x))


def _inc(x) -> Decimal:
    """A tick or step: trailing zeros dropped ("0.10" -> 0.1), so prices keep the venue's decimals."""
    return Decimal(str(x)).normalize()


def _shown(x: Decimal | None) -> str:
    return "none" if x is None else format(x.normalize(), "f")


def load_shipped_specs(path: str | Path = SPECS_FILE) -> dict[str, PerpSpec]:
    raw = json.loads(Path(path).read_text())
    return {s: PerpSpec(s, _inc(r["tick_size"]), _inc(r["step_size"]), _dec(r["min_qty"]), _dec(r["min_notional_usdt"]),
                        _dec(r.get("max_qty")), _dec(r.get("market_max_qty")), r.get("status", "TRADING"),
                        "specs.json" + ("" if r.get("verified") else " (UNVERIFIED: no recorded venue row)"))
            for s, r in raw["symbols"].items()}


def spec_from_exchange_info(row: Mapping[str, Any]) -> PerpSpec:
    """One ``exchangeInfo`` symbol row (filters by ``filterType``; futures' MIN_NOTIONAL field is ``notional``)."""
    f = {x.get("filterType"): x for x in row.get("filters", [])}
    try:
        price, lot = f["PRICE_FILTER"], f["LOT_SIZE"]
    except KeyError as exc:
        raise ValueError(f"{row.get('symbol')}: exchangeInfo row has no {exc.args[0]} filter") from None
    mn = f.get("MIN_NOTIONAL", {})
    return PerpSpec(row["symbol"], _inc(price["tickSize"]), _inc(lot["stepSize"]), _dec(lot.get("minQty")) or Decimal(0),
                    _dec(mn.get("notional") or mn.get("minNotional")) or Decimal(0), _dec(lot.get("maxQty")),
                    _dec(f.get("MARKET_LOT_SIZE", {}).get("maxQty")), str(row.get("status") or row.get("contractStatus")),
                    "GET /fapi/v1/exchangeInfo")


def venue_specs(body: Mapping[str, Any], symbols) -> tuple[dict[str, PerpSpec], dict[str, str]]:
    """(the specs of ``symbols`` the venue trades, symbol -> why it is refused) from an exchangeInfo body."""
    rows = {r.get("symbol"): r for r in body.get("symbols", [])}
    specs, refused = {}, {}
    for s in symbols:
        row = rows.get(s)
        if row is None:
            refused[s] = f"{s} is not listed in the venue's exchangeInfo: refused (no spec to trade it on)"
            continue
        status = row.get("status") or row.get("contractStatus")
        if status != "TRADING":
            refused[s] = f"{s} status at the venue is {status!r}, not TRADING: refused"
        elif row.get("contractType", "PERPETUAL") != "PERPETUAL" or row.get("marginAsset", "USDT") != "USDT":
            refused[s] = (f"{s} is a {row.get('contractType')} contract margined in {row.get('marginAsset')}, not a "
                          "USDT-margined perpetual: refused")
        else:
            try:
                specs[s] = spec_from_exchange_info(row)
            except (ValueError, KeyError, ArithmeticError) as exc:
                refused[s] = f"{s}: the venue's exchangeInfo row is unreadable ({exc}): refused"
    return specs, refused


def venue_brackets(body, symbols) -> dict[str, LeverageBrackets]:
    """``GET /fapi/v1/leverageBracket`` rows (``initialLeverage``, ``notionalFloor``/``Cap``, ``maintMarginRatio``,
    ``cum``) as :class:`LeverageBrackets`, for ``symbols`` that have them."""
    rows = body if isinstance(body, list) else [body]
    out = {}
    for r in rows:
        if r.get("symbol") not in symbols:
            continue
        tiers = tuple(Bracket(bracket=int(b["bracket"]), notional_floor_usdt=Decimal(str(b["notionalFloor"])),
                              notional_cap_usdt=Decimal(str(b["notionalCap"])), max_leverage=int(b["initialLeverage"]),
                              maint_margin_rate=Decimal(str(b["maintMarginRatio"])),
                              maint_amount_usdt=Decimal(str(b.get("cum", 0))))
                      for b in sorted(r.get("brackets", []), key=lambda b: int(b["bracket"])))
        try:
            out[r["symbol"]] = LeverageBrackets(r["symbol"], tiers)
        except BracketError:
            continue   # an unusable table: the caller keeps the shipped one and says so
    return out


def bracket_differences(shipped: LeverageBrackets, venue: LeverageBrackets) -> list[str]:
    out = []
    if shipped.max_leverage != venue.max_leverage:
        out.append(f"max leverage {shipped.max_leverage}x -> {venue.max_leverage}x")
    if len(shipped.tiers) != len(venue.tiers):
        out.append(f"{len(shipped.tiers)} -> {len(venue.tiers)} brackets")
    for a, b in zip(shipped.tiers, venue.tiers):
        if (a.notional_cap_usdt, a.max_leverage, a.maint_margin_rate, a.maint_amount_usdt) != \
                (b.notional_cap_usdt, b.max_leverage, b.maint_margin_rate, b.maint_amount_usdt):
            out.append(f"bracket {a.bracket}: cap {a.notional_cap_usdt} -> {b.notional_cap_usdt}, {a.max_leverage}x -> "
                       f"{b.max_leverage}x, maint. rate {a.maint_margin_rate} -> {b.maint_margin_rate}")
    return out
