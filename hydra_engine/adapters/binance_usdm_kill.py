"""`kill` and `status --broker` on a Binance USD-M account (issue #20): the perp venue's half of the
operator's controls, on the same adapter (:class:`~.binance_usdm.BinanceUsdmBroker`) the engine trades with.

The kill, per account:
  0. the venue's exchangeInfo, so each position is closed in the venue's own step size;
  1. a reconciliation: every order an earlier `kill` sent (their ids are in the kill's own id file,
     ``binance_usdm_<execution>.kill.json`` beside the engine's) whose outcome was not known is looked up by
     its id -- never sent again: a re-run of `kill` recognises its own orders;
  2. every working order on the perp symbols is canceled, plain orders (resting entries, exits) and
     conditional algo orders (stops) alike, each by Binance's own id (the engine's ids are hashed, so a
     `kill` need not know them);
  3. every open position is closed with a reduce-only MARKET order whose client order id is the kill's
     (:func:`~hydra_engine.orderids.kill_order_id`, sent as its deterministic Binance form): recorded before
     it is sent (``on_submit``: the store's write-ahead row, and the id file), queried -- never re-sent --
     when Binance's answer is unknown (503, timeout). Reduce-only: even a close that executed twice could only
     shrink the position, never open or flip one;
  4. positions are read back: a symbol still held is NOT DONE, and said so.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from ..domain import UTC, Order, OrderType, Side, TimeInForce
from ..orderids import KILL_STRATEGY, is_kill_order_id, kill_order_id
from ..config import ConfigError
from ..ports import BrokerError, UnknownOrderOutcome
from .binance_usdm_specs import read_venue_specs
from .binance_usdm_http import _dec

KILL_STATE_SUFFIX = ".kill.json"


@dataclass
class UsdmKillReport:
    """What one kill did on one Binance account; per order and per symbol failures are reported, not raised."""

    earlier: dict[str, str] = field(default_factory=dict)          # an earlier kill's order id -> status learnt
    canceled: list[str] = field(default_factory=list)              # the canceled orders (Binance ids)
    cancel_failures: dict[str, str] = field(default_factory=dict)  # Binance id (or "*": the listing) -> reason
    closing_orders: dict[str, str] = field(default_factory=dict)   # symbol -> the kill's closing order id
    sent: dict[str, Order] = field(default_factory=dict)           # symbol -> the closing order as Binance left it
    failures: dict[str, str] = field(default_factory=dict)         # symbol (or "*") -> why it is not closed
    still_held: dict[str, Decimal] = field(default_factory=dict)   # positions read back after the closes
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.cancel_failures and not self.failures and not self.still_held


def kill_state_path(engine_state_path: Path) -> Path:
    """The kill's own id file beside the engine's (two processes never write one file)."""
    return engine_state_path.with_name(engine_state_path.stem + KILL_STATE_SUFFIX)


def _working_rows(broker) -> list[tuple[str, dict]]:
    """("order" | "algo", Binance's row) for every working order on the broker's symbols."""
    rows = [("order", r) for s in broker.symbols for r in broker._get("/fapi/v1/openOrders", {"symbol": s}, symbol=s)]
    algo = broker._get("/fapi/v1/openAlgoOrders", {})
    rows += [("algo", r) for r in (algo if isinstance(algo, list) else algo.get("orders", []))]
    return [(k, r) for k, r in rows if r.get("symbol") in broker.symbols]


def flatten_usdm(broker, kill_id: str, *, now: datetime | None = None, on_submit=None) -> UsdmKillReport:
    """Cancel every working order and close every position of ``broker``'s symbols (see the module)."""
    now = now or datetime.now(UTC)
    rep = UsdmKillReport()
    try:
        broker.sync_time()
    except BrokerError as exc:
        rep.failures["*"] = f"read the account: {exc}"
        return rep
    try:   # the venue's step sizes: a position is closed in its own increments, not the shipped ones
        rep.notes += read_venue_specs(broker)
    except (BrokerError, ConfigError) as exc:
        rep.notes.append(f"the venue's specs not read ({exc}); the shipped ones are used")
    broker.refused.clear()                # a kill closes whatever is held, TRADING or not: Binance answers
    try:
        rec = broker.reconcile()          # resolves an earlier kill's unknown closes by their ids
    except BrokerError as exc:
        rep.failures["*"] = f"read the account: {exc}"
        return rep
    rep.earlier = {c: s for c, s in rec.resolved.items() if is_kill_order_id(c)}
    # an earlier kill's order that could not be looked up now: said, and looked up again next time
    rep.notes += [p for p in rec.problems if "HYDRA did not send" not in p]
    try:
        working = _working_rows(broker)
    except BrokerError as exc:
        working = []
        rep.cancel_failures["*"] = f"list working orders: {exc}"
    for kind, row in working:
        bid = row.get("clientAlgoId") if kind == "algo" else row.get("clientOrderId")
        try:
            if kind == "algo":
                broker._delete("/fapi/v1/algoOrder", {"clientAlgoId": bid}, symbol=row["symbol"])
            else:
                broker._delete("/fapi/v1/order", {"symbol": row["symbol"], "orderId": row["orderId"]},
                               symbol=row["symbol"])
            rep.canceled.append(str(bid))
            if bid in broker._ids:
                broker._ids[bid]["status"] = "canceled"
        except BrokerError as exc:
            rep.cancel_failures[str(bid)] = f"cancel {row['symbol']} {kind} {bid}: {exc}"
    broker._save_state()
    try:
        held = broker.positions()
    except BrokerError as exc:
        rep.failures["*"] = f"read positions: {exc}"
        return rep
    for symbol, pos in sorted(held.items()):
        coid = kill_order_id(kill_id, symbol)
        order = Order(coid, symbol, Side.SELL if pos.qty > 0 else Side.BUY, abs(pos.qty), OrderType.MARKET,
                      TimeInForce.GTC, now, KILL_STRATEGY, purpose="exit", reduce_only=True)
        if on_submit is not None:
            on_submit(order)              # on record before it is sent
        rep.closing_orders[symbol] = coid
        try:
            rep.sent[symbol] = broker.submit(order)
        except UnknownOrderOutcome as exc:
            rep.failures[symbol] = (f"close {symbol} with {coid}: outcome unknown ({exc}); it is looked up by its "
                                    "id by the running engine and by the next `kill`, never sent again")
        except BrokerError as exc:
            rep.failures[symbol] = f"close {symbol} with {coid}: {exc}"
    try:
        after = broker.positions()
    except BrokerError as exc:
        rep.failures.setdefault("*", f"read positions back: {exc}")
        return rep
    rep.still_held = {s: p.qty for s, p in after.items()}
    for s in list(rep.failures):
        if s != "*" and s not in after and "outcome unknown" not in rep.failures[s]:
            rep.failures.pop(s)          # e.g. -2022: a running engine's own kill exit closed it first
    return rep


def print_usdm_book(broker, label: str) -> None:
    """`status --broker` for a Binance account: balance, positions (with liquidation price and leverage),
    working orders (plain and conditional)."""
    a = broker._get("/fapi/v2/account", {})
    print(f"{label}  wallet {_dec(a.get('totalWalletBalance')):,.2f} USDT  margin balance "
          f"{_dec(a.get('totalMarginBalance')):,.2f} USDT  available {_dec(a.get('availableBalance')):,.2f} USDT  "
          f"unrealised {_dec(a.get('totalUnrealizedProfit')):,.2f} USDT")
    rows = [r for r in broker._get("/fapi/v2/positionRisk", {}) if _dec(r.get("positionAmt")) != 0]
    print("  positions   " + (", ".join(
        f"{r['symbol']} {_dec(r['positionAmt'])} @ {_dec(r.get('entryPrice')):,.2f} (mark {_dec(r.get('markPrice')):,.2f}, "
        f"liq. {_dec(r.get('liquidationPrice')):,.2f}, {r.get('leverage', '?')}x {r.get('marginType', '')})"
        for r in rows) or "none"))
    working = _working_rows(broker)
    print("  open orders " + (", ".join(
        f"{broker._hydra_id(r.get('clientAlgoId') if k == 'algo' else r.get('clientOrderId'))} {r['side'].lower()} "
        f"{r.get('quantity') or r.get('origQty')} {r['symbol']} {(r.get('orderType') if k == 'algo' else r.get('type'))}"
        f"{' reduce-only' if str(r.get('reduceOnly')).lower() == 'true' else ''}"
        for k, r in working) or "none"))
