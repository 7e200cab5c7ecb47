"""The asset capability matrix: what Alpaca accepts per asset, as data, and the local check of an order.

Rules (contracts NOTES §1.6, Alpaca docs orders.md / crypto-trading.md / fractional-trading.md):
  * equities: market, limit, stop, stop_limit, trailing_stop; TIF day, gtc, opg, cls, ioc, fok;
    order classes simple and bracket (HYDRA uses no oco/oto). Trailing stops and brackets need day/gtc;
    a trailing stop cannot be a bracket leg; opg/cls only on market and limit orders. Fractional
    quantities: market orders, TIF day, simple class, never short. A hard-to-borrow stock is not shortable.
  * crypto: market, limit, stop_limit; TIF gtc, ioc; simple class only; never short (non-marginable).
    HYDRA manages crypto trailing stops itself (re-placed stop_limit or market exit).
Everything the venue cannot express is refused here, before a request is made, with a typed error
naming the rule; quantities are rounded down to the increment and prices to the tick.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..domain import UTC, AssetClass, Order, OrderType, Side, TimeInForce, require_utc
from ..ports import AssetSpec, InvalidOrder, InvalidTimeInForce, ShortNotAllowed

log = logging.getLogger(__name__)

EQUITY_ORDER_TYPES = frozenset(OrderType)
EQUITY_TIF = frozenset({TimeInForce.DAY, TimeInForce.GTC, TimeInForce.OPG, TimeInForce.CLS,
                        TimeInForce.IOC, TimeInForce.FOK})
CRYPTO_ORDER_TYPES = frozenset({OrderType.MARKET, OrderType.LIMIT, OrderType.STOP_LIMIT})
CRYPTO_TIF = frozenset({TimeInForce.GTC, TimeInForce.IOC})
DAY_OR_GTC = frozenset({TimeInForce.DAY, TimeInForce.GTC})
FRACTIONAL_ORDER_TYPES = frozenset({OrderType.MARKET})    # "only market and day order types" (spec: qty)
AUCTION_TIF = frozenset({TimeInForce.OPG, TimeInForce.CLS})   # "use this TIF with a market/limit order type"
EQUITY_FRACTION_STEP = Decimal("0.000000001")    # Alpaca accepts up to 9 decimals


def equity_spec(symbol: str, *, shortable: bool = True, fractionable: bool = True, tradable: bool = True) -> AssetSpec:
    step = EQUITY_FRACTION_STEP if fractionable else Decimal(1)
    return AssetSpec(symbol, AssetClass.EQUITY, tradable=tradable, shortable=shortable, fractionable=fractionable,
                     qty_increment=step, price_increment=Decimal("0.01"), min_order_size=step,
                     order_types=EQUITY_ORDER_TYPES, time_in_force=EQUITY_TIF)


def crypto_spec(symbol: str, *, min_order_size: Decimal, qty_increment: Decimal, price_increment: Decimal,
                tradable: bool = True) -> AssetSpec:
    return AssetSpec(symbol, AssetClass.CRYPTO, tradable=tradable, shortable=False, fractionable=True,
                     qty_increment=qty_increment, price_increment=price_increment, min_order_size=min_order_size,
                     order_types=CRYPTO_ORDER_TYPES, time_in_force=CRYPTO_TIF)


#: Offline defaults for the HYDRA universe (used by the simulated broker). BTC/USD is the Assets API
#: example (asset.BTCUSD.get.json: min 0.0001, increment 0.0001, price increment 1); ETH/USD uses
#: Alpaca's published ETH/USD values (min 0.001, increment 0.001, price increment 0.1).
DEFAULT_ASSET_SPECS: dict[str, AssetSpec] = {
    "BTC/USD": crypto_spec("BTC/USD", min_order_size=Decimal("0.0001"), qty_increment=Decimal("0.0001"),
                           price_increment=Decimal("1")),
    "ETH/USD": crypto_spec("ETH/USD", min_order_size=Decimal("0.001"), qty_increment=Decimal("0.001"),
                           price_increment=Decimal("0.1")),
    **{s: equity_spec(s, shortable=(s != "LZ")) for s in
       ("SPY", "TLT", "GLD", "SLV", "GDX", "IGV", "CRM", "SHOP", "ADBE", "MSFT", "WDAY", "LZ", "HYG")},
}


def _dec(value: Any, default: Decimal) -> Decimal:
    """Assets API numbers (alpaca-py floats) as Decimal; 1.0 becomes 1, 0.0001 stays 0.0001."""
    if value in (None, ""):
        return default
    d = Decimal(str(value))
    return d.quantize(Decimal(1)) if d == d.to_integral_value() else d


def spec_from_asset(asset: Any) -> AssetSpec:
    """Build a capability row from an alpaca-py ``Asset`` (or the raw Assets API dict)."""
    get = (lambda k: asset.get(k)) if isinstance(asset, Mapping) else (lambda k: getattr(asset, k, None))
    cls = get("asset_class") or get("class")
    cls_value = getattr(cls, "value", cls)
    symbol = get("symbol")
    tradable = bool(get("tradable")) and getattr(get("status"), "value", get("status")) in (None, "active")
    if cls_value == AssetClass.CRYPTO.value:
        return crypto_spec(symbol, min_order_size=_dec(get("min_order_size"), Decimal(0)),
                           qty_increment=_dec(get("min_trade_increment"), Decimal("0.000000001")),
                           price_increment=_dec(get("price_increment"), Decimal("0.01")), tradable=tradable)
    if cls_value == AssetClass.EQUITY.value:
        # shortable only while easy to borrow: Alpaca refuses a short on a hard-to-borrow name (spec, Assets:
        # easy_to_borrow is deprecated for borrow_status, which alpaca-py 0.44's model does not carry yet)
        borrow = getattr(get("borrow_status"), "value", get("borrow_status"))
        shortable = bool(get("shortable")) and get("easy_to_borrow") is not False and borrow in (None, "easy_to_borrow")
        return equity_spec(symbol, shortable=shortable, fractionable=bool(get("fractionable")), tradable=tradable)
    raise InvalidOrder(f"asset {symbol}: class {cls_value!r} is not traded by HYDRA (us_equity or crypto only)",
                       symbol=symbol)


_CRYPTO_OR_UNKNOWN = (AssetClass.CRYPTO.value, None)
_QUOTES = ("USDT", "USDC", "USD", "BTC")   # tried in this order: USDT before USD


def normalise_symbol(symbol: str, asset_class: str | None = None, known: Iterable[str] = ()) -> str:
    """Crypto positions come back as ``BTCUSD``; orders, assets and data use ``BTC/USD`` (NOTES §1.3).
    Split when the asset class says crypto, or (class unknown) when the slash form is in ``known``."""
    if "/" in symbol or asset_class not in _CRYPTO_OR_UNKNOWN or not symbol.endswith(_QUOTES):
        return symbol   # the engine asks once per held symbol per entry: the common answers first
    for quote in _QUOTES:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            pair = f"{symbol[:-len(quote)]}/{quote}"
            if asset_class is not None or pair in set(known):
                return pair
    return symbol


# --------------------------------------------------------------------------- cache
def _spec_to_json(spec: AssetSpec) -> dict:
    row = dataclasses.asdict(spec)
    row["asset_class"] = spec.asset_class.value
    row["order_types"] = sorted(t.value for t in spec.order_types)
    row["time_in_force"] = sorted(t.value for t in spec.time_in_force)
    for k in ("qty_increment", "price_increment", "min_order_size"):
        row[k] = str(row[k])
    return row


def _spec_from_json(row: dict) -> AssetSpec:
    return AssetSpec(row["symbol"], AssetClass(row["asset_class"]), tradable=row["tradable"], shortable=row["shortable"],
                     fractionable=row["fractionable"], qty_increment=Decimal(row["qty_increment"]),
                     price_increment=Decimal(row["price_increment"]), min_order_size=Decimal(row["min_order_size"]),
                     order_types=frozenset(OrderType(t) for t in row["order_types"]),
                     time_in_force=frozenset(TimeInForce(t) for t in row["time_in_force"]))


def save_capabilities(path: Path, specs: Mapping[str, AssetSpec], fetched_at: datetime) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"fetched_at": require_utc(fetched_at, "fetched_at").isoformat(),
               "assets": {s: _spec_to_json(v) for s, v in sorted(specs.items())}}
    path.write_text(json.dumps(payload, indent=1), encoding="utf-8")


def read_capabilities(path: Path) -> tuple[datetime, dict[str, AssetSpec]]:
    payload = json.loads(path.read_text(encoding="utf-8"))
    return (datetime.fromisoformat(payload["fetched_at"]).astimezone(UTC),
            {s: _spec_from_json(r) for s, r in payload["assets"].items()})


def load_capabilities(fetch_asset, symbols: Iterable[str], *, now: datetime, cache_path: Path | None = None,
                      max_age: timedelta = timedelta(hours=24)) -> dict[str, AssetSpec]:
    """Capability rows for ``symbols``: from the JSON cache when it is younger than ``max_age`` and
    covers every symbol, else from ``fetch_asset(symbol)`` (the Assets API), then cached."""
    symbols = list(symbols)
    if cache_path is not None and cache_path.exists():
        try:
            fetched_at, cached = read_capabilities(cache_path)
            if now - fetched_at <= max_age and all(s in cached for s in symbols):
                return {s: cached[s] for s in symbols}
        except (ValueError, KeyError, json.JSONDecodeError) as exc:
            log.warning("ignoring unreadable capability cache %s: %s", cache_path, exc)
    specs = {s: spec_from_asset(fetch_asset(s)) for s in symbols}
    if cache_path is not None:
        save_capabilities(cache_path, specs, now)
    return specs


# --------------------------------------------------------------------------- validation
def _refuse(cls: type[InvalidOrder] | type[ShortNotAllowed], order: Order, why: str):
    return cls(f"{order.symbol} {order.side.value} {order.order_type.value} {order.client_order_id}: {why}",
               symbol=order.symbol, client_order_id=order.client_order_id)


def validate_and_round(order: Order, spec: AssetSpec, *, notional_usd: Decimal | None = None) -> Order:
    """Return a copy of ``order`` rounded to ``spec`` (qty down to the increment, prices to the tick),
    or raise ``InvalidOrder`` / ``InvalidTimeInForce`` / ``ShortNotAllowed`` naming what the venue
    cannot express. A sell with ``purpose == "entry"`` opens a short; an ``exit`` sell closes a long.
    With ``notional_usd`` (a dollar-amount market order) ``order.qty`` is ignored and left as is."""
    if order.symbol != spec.symbol:
        raise _refuse(InvalidOrder, order, f"capability row is for {spec.symbol}")
    crypto = spec.asset_class is AssetClass.CRYPTO
    venue = "crypto" if crypto else "equities"
    if not spec.tradable:
        raise _refuse(InvalidOrder, order, "asset is not tradable at Alpaca")
    if order.order_type not in spec.order_types:
        why = f"{order.order_type.value} is not accepted for {venue} (allowed: " \
              f"{', '.join(sorted(t.value for t in spec.order_types))})"
        if crypto and order.order_type is OrderType.TRAILING_STOP:
            why += "; crypto trailing stops are engine-managed (stop_limit re-placed or market exit)"
        raise _refuse(InvalidOrder, order, why)
    if order.time_in_force not in spec.time_in_force:
        raise _refuse(InvalidTimeInForce, order, f"time_in_force {order.time_in_force.value} is not accepted for "
                      f"{venue} (allowed: {', '.join(sorted(t.value for t in spec.time_in_force))})")
    if order.time_in_force in AUCTION_TIF and order.order_type not in (OrderType.MARKET, OrderType.LIMIT):
        raise _refuse(InvalidTimeInForce, order, f"time_in_force {order.time_in_force.value} (an auction) takes "
                      "market or limit orders only")
    bracket = order.take_profit_price is not None or order.stop_loss_price is not None
    if bracket and crypto:
        raise _refuse(InvalidOrder, order, "crypto accepts simple orders only (no bracket take-profit/stop-loss legs)")

    if notional_usd is not None:
        if order.order_type is not OrderType.MARKET or bracket or notional_usd < Decimal("1"):
            raise _refuse(InvalidOrder, order, f"a notional order must be a simple market order of at least $1, "
                          f"got {order.order_type.value} for ${notional_usd}")
        if not (crypto or spec.fractionable) or (not crypto and order.time_in_force is not TimeInForce.DAY):
            raise _refuse(InvalidOrder, order, "notional orders need a crypto or fractionable asset (equities: day TIF)")
    qty = spec.round_qty(order.qty) if notional_usd is None else Decimal(1)
    fractional = notional_usd is not None or qty != qty.to_integral_value()
    if order.side is Side.SELL and order.purpose == "entry":
        if crypto:
            raise _refuse(ShortNotAllowed, order, "crypto cannot be sold short at Alpaca")
        if not spec.shortable:
            raise _refuse(ShortNotAllowed, order, "asset is not shortable (hard to borrow)")
        if fractional:
            raise _refuse(ShortNotAllowed, order, f"fractional short sale of {qty} is not allowed; use whole shares")
    # a notional order's quantity is the broker's to work out from the dollars: no minimum to check here
    if notional_usd is None and (qty <= 0 or qty < spec.min_order_size):
        raise _refuse(InvalidOrder, order, f"qty {order.qty} rounds down to {qty} (increment {spec.qty_increment}), "
                      f"below the minimum order size {spec.min_order_size or spec.qty_increment}")
    if fractional and not crypto:
        if order.order_type not in FRACTIONAL_ORDER_TYPES or bracket or order.time_in_force is not TimeInForce.DAY:
            raise _refuse(InvalidOrder, order, f"fractional qty {qty} needs a simple market order with "
                          "time_in_force day")

    needs = {OrderType.LIMIT: ("limit_price",), OrderType.STOP: ("stop_price",),
             OrderType.STOP_LIMIT: ("stop_price", "limit_price"), OrderType.TRAILING_STOP: ("trail_percent",)}
    for name in needs.get(order.order_type, ()):
        if getattr(order, name) is None:
            raise _refuse(InvalidOrder, order, f"{order.order_type.value} needs {name}")
    if order.order_type is OrderType.TRAILING_STOP:
        if bracket:
            raise _refuse(InvalidOrder, order, "a trailing stop cannot carry bracket legs (single orders only)")
        if order.time_in_force not in DAY_OR_GTC:
            raise _refuse(InvalidTimeInForce, order, "trailing stops accept time_in_force day or gtc only")
        if not (Decimal(0) < order.trail_percent < Decimal(100)):
            raise _refuse(InvalidOrder, order, f"trail_percent {order.trail_percent} must be in (0, 100)")
    if bracket:
        if order.take_profit_price is None or order.stop_loss_price is None:
            raise _refuse(InvalidOrder, order, "a bracket needs both take_profit_price and stop_loss_price")
        if order.time_in_force not in DAY_OR_GTC:
            raise _refuse(InvalidTimeInForce, order, "bracket orders accept time_in_force day or gtc only")

    rounded: dict[str, Decimal | None] = {}
    for name in ("limit_price", "stop_price", "take_profit_price", "stop_loss_price"):
        value = getattr(order, name)
        if value is None:
            rounded[name] = None
            continue
        price = spec.round_price(value)
        if price <= 0:
            raise _refuse(InvalidOrder, order, f"{name} {value} is below the smallest tick and cannot be expressed")
        if price != value:
            log.info("%s %s rounded %s -> %s (tick)", order.client_order_id, name, value, price)
        rounded[name] = price
    if bracket:
        tp, sl = rounded["take_profit_price"], rounded["stop_loss_price"]
        if (order.side is Side.BUY and not tp > sl) or (order.side is Side.SELL and not tp < sl):
            raise _refuse(InvalidOrder, order, f"bracket take_profit {tp} / stop_loss {sl} are on the wrong sides "
                          f"for a {order.side.value}")
        base, cent = rounded["limit_price"], Decimal("0.01")
        if base is not None and ((order.side is Side.BUY and sl > base - cent)
                                 or (order.side is Side.SELL and sl < base + cent)):
            raise _refuse(InvalidOrder, order, f"bracket stop_loss {sl} must be at least $0.01 "
                          f"{'below' if order.side is Side.BUY else 'above'} the entry limit {base}")
    return dataclasses.replace(order, qty=order.qty if notional_usd is not None else qty, **rounded)
