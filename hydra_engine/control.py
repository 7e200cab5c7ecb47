"""The operator's controls: the kill switch and resume (recorded in the store, picked up by a running
engine within one cycle), the live opt-in check, and the broker status. Paper sessions read the control
state each cycle through :class:`Control`."""
from __future__ import annotations

import json
import logging
import sys
from datetime import datetime
from decimal import Decimal

from sqlalchemy.exc import SQLAlchemyError

from .config import AlpacaKeys, Settings, live_trading_opt_in, utc_stamp
from .domain import UTC, Order, OrderStatus, OrderType
from .executor import order_dict
from .orderids import is_hydra_order_id, kill_order_id, new_kill_id
from .ports import BrokerError
from .store import Store, StoreError

log = logging.getLogger(__name__)
CONTROL_KEY = "control"


class LiveTradingRefused(ValueError):
    pass


def require_live_opt_in(settings: Settings, live: bool) -> None:
    if (live or not settings.broker.paper) and not (live and not settings.broker.paper and live_trading_opt_in()):
        raise LiveTradingRefused(
            "live trading refused: it needs broker.paper = false AND the --live flag AND "
            "HYDRA_ENABLE_LIVE_TRADING=I_UNDERSTAND_REAL_MONEY in the environment; paper is the default")


class Control:
    """The kill/resume switch shared by the `kill`/`resume` commands and a running loop (via the store)."""

    def __init__(self, store: Store):
        self.store = store
        self.seen_at: str | None = None
        self.unreadable: str | None = None
        self.kill_orders_seen: set[str] = set()

    def _adopt_kill_orders(self, engine, state: dict) -> None:
        """Issue #16: the kill's closing orders are the engine's exits with reason ``kill``: it waits for
        them (never cancels them, never sends a second close) and books their fills; they go into the
        next cycle's orders so the session log shows the kill's exits."""
        orders = state.get("orders") or {}
        new = [coid for coid in orders.values() if coid not in self.kill_orders_seen]
        if not new:
            return
        for coid in new:
            engine.book.track_exit(coid, "kill")
            self.kill_orders_seen.add(coid)
        adopt = getattr(engine.broker, "adopt_orders", None)   # a venue that maps ids (Binance) learns the kill's
        if adopt is not None:
            adopt(new)
        rows = {o.client_order_id: o for o in self.store.orders(state.get("kill_id"))}
        engine.startup_orders += [{k: getattr(rows[c], k) for k in type(rows[c]).model_fields if k != "session_id"}
                                  for c in new if c in rows]
        engine.startup_notes.append(f"kill {state.get('kill_id', '')}: closing order(s) {', '.join(new)} booked "
                                    "as the kill's exits" + (f"; queued for the open: {', '.join(state['queued'])}"
                                                             if state.get("queued") else ""))

    def apply(self, engine, now: datetime) -> str | None:
        """Apply a kill/resume written by the commands. Returns why entries must halt when the stored
        switch cannot be read (a torn write, a hand edit): neither kill nor resume is guessed from it --
        exits go on, and `kill` or `resume` rewrites it."""
        try:
            state = self.store.load_state(CONTROL_KEY)
            if state is not None and (not isinstance(state, dict) or state.get("state") not in ("killed", "resumed")):
                raise ValueError(f"unexpected value {json.dumps(state)[:80]}")
        except ValueError as exc:
            reason = (f"kill/resume switch unreadable ({exc}): entries halted until `python hydra_engine.py kill` "
                      "or `resume` rewrites it")
            if reason != self.unreadable:
                log.error(reason)
            self.unreadable = reason
            return reason
        self.unreadable = None
        if state and state.get("at") != self.seen_at:
            self.seen_at = state.get("at")
            if state["state"] == "killed":
                engine.risk.kill(state.get("reason", "manual kill"), now)
                self._adopt_kill_orders(engine, state)
            elif state["state"] == "resumed":
                engine.risk.resume(now)
        elif state and state.get("state") == "killed" and state.get("orders", {}).keys() - self.kill_orders_seen:
            self._adopt_kill_orders(engine, state)    # the kill command recorded its orders after its switch
        if engine.risk.kill_requested() and (not state or state.get("state") != "killed"):
            set_control(self.store, "killed", engine.risk.kill_requested(), now)  # survives restarts
            self.seen_at = self.store.load_state(CONTROL_KEY)["at"]
        return None


def set_control(store: Store, state: str, reason: str, now: datetime, *, kill_id: str | None = None) -> list[str]:
    """Write the switch, and the kill flag into each saved engine state so a restart restores it.
    Returns the saved states that could not be read (and so were left as they are)."""
    store.save_state(CONTROL_KEY, {"state": state, "reason": reason, "at": now.isoformat(),
                                   **({"kill_id": kill_id} if kill_id else {})}, now)
    unreadable = []
    for key in ("engine:paper", "engine:live"):
        try:
            engine_state = store.load_state(key)
            if not engine_state:
                continue
            risk = engine_state.setdefault("risk", {}) if isinstance(engine_state, dict) else None
            if not isinstance(risk, dict):
                raise StoreError(f"{store.url}: stored state {key!r} has no readable risk section")
            risk["killed"] = state == "killed"
            risk["kill_reason"] = reason if state == "killed" else ""
            store.save_state(key, engine_state, now)
        except (StoreError, SQLAlchemyError) as exc:
            unreadable.append(str(exc))
    return unreadable


def kill(settings: Settings, reason: str = "manual kill", *, live: bool = False) -> int:
    """Persist the kill (no entries until `resume`), then cancel every order and close every position
    with HYDRA's own closing orders, whose ids mark them as this kill's (issue #16): a running engine
    picks them up within a cycle and books their fills with exit reason ``kill``; a stopped one books
    them at its next start. Outside market hours an equity close is queued for the open. A database
    that cannot be written or read does not stop the flattening: it is reported after it."""
    now = datetime.now(UTC)
    kill_id = new_kill_id(now)
    problems: list[str] = []
    store = None
    try:
        store = Store(settings.storage.url, root=settings.resolve_path("."))
        problems += set_control(store, "killed", reason, now, kill_id=kill_id)
        print(f"kill state set ({reason}): no new entries until `python hydra_engine.py resume`")
    except Exception as exc:  # noqa: BLE001 -- locked, read-only, full or damaged: flatten all the same
        problems.append(f"kill state NOT saved, a running HYDRA will not see it: {type(exc).__name__}: {exc}")
        store = None
    before = len(problems)
    if settings.perps.enabled:
        print("alpaca:")
    code = _kill_alpaca(settings, kill_id, reason, now, store, problems, live=live)
    venues = _kill_perps(settings, kill_id, now, store, problems, live=live,
                         alpaca_ok=code == 0 and len(problems) == before)
    if venues:    # more than one venue: each says whether it is flat (issue #20)
        print("per venue:")
        for outcome in venues:
            print(outcome.line())
    for problem in problems:
        print(f"  PROBLEM: {problem}")
    return code if code else 1 if problems else 0


def _kill_perps(settings, kill_id: str, now: datetime, store, problems: list[str], *, live: bool,
                alpaca_ok: bool) -> list:
    """The perp venue's part (issue #20; :mod:`hydra_engine.perp.control`); [] when ``[perps]`` is off."""
    if not settings.perps.enabled:
        return []
    from .perp.control import VenueOutcome, kill_perps

    def write_ahead(order: Order) -> None:
        if store is not None:
            try:
                store.record_orders(kill_id, [{**order_dict(order), "status": "submitting"}])
            except Exception as exc:  # noqa: BLE001 -- the close matters more than its record
                problems.append(f"order {order.client_order_id} not recorded: {type(exc).__name__}: {exc}")
    try:
        perp = kill_perps(settings, kill_id, now, live=live, store=store, kill_saved=store is not None,
                          write_ahead=write_ahead)
    except Exception as exc:  # noqa: BLE001 -- never a traceback mid-kill: said, and NOT DONE
        perp = VenueOutcome("perp", False, f"{type(exc).__name__}: {exc}")
        print(f"  NOT DONE: perp venue: {type(exc).__name__}: {exc}")
    if not perp.done:
        problems.append(f"the {perp.venue} venue is not flat (above)")
    return [VenueOutcome("alpaca", alpaca_ok, "every order canceled, every position closed or closing" if alpaca_ok
                         else "see the Alpaca lines above"), perp]


def _kill_alpaca(settings, kill_id: str, reason: str, now: datetime, store, problems: list[str], *,
                 live: bool) -> int:
    try:
        broker = _alpaca_broker(settings, "kill", live=live)
    except LiveTradingRefused as exc:   # the switch is set (entries stay blocked); the account is not touched
        print(f"error: {exc}; nothing was canceled or closed", file=sys.stderr)
        return 2
    if broker is None:   # not "nothing to flatten": nobody was asked, whatever Alpaca holds is still there
        print("NO BROKER CONTACTED: without Alpaca keys no order was canceled and no position closed at Alpaca")
        problems.append("the broker was not contacted (set the Alpaca keys and run `kill` again to flatten)")
    else:
        def write_ahead(order: Order) -> None:   # on record before it is sent (a kill can be killed too)
            if store is not None:
                try:
                    store.record_orders(kill_id, [{**order_dict(order), "status": "submitting"}])
                except Exception as exc:  # noqa: BLE001 -- the close matters more than its record
                    problems.append(f"order {order.client_order_id} not recorded: {type(exc).__name__}: {exc}")
        result = broker.flatten_all(close_id=lambda symbol: kill_order_id(kill_id, symbol), on_submit=write_ahead)
        print(f"canceled {len(result.canceled_order_ids)} orders, closing {len(result.closing_orders)} positions")
        for symbol, coid in sorted(result.closing_orders.items()):
            queued = " (market closed: queued for the open)" if symbol in result.queued else ""
            print(f"  closing {symbol} with {coid}{queued}")
        # "*" is the whole call failing (its reason names it: "cancel all orders: ..."); else one order or symbol
        for order_id, why in result.cancel_failures.items():
            print(f"  NOT DONE: {why if order_id == '*' else f'cancel order {order_id}: {why}'}")
        # issue #16: a running engine that read the kill first may have sent its own kill exit after the
        # cancel above; this kill's close of that symbol is then refused (the shares are held by that exit),
        # but the position is being closed: said as such, not as NOT DONE
        elsewhere = {**result.already_closing,
                     **_exits_already_working(broker, [s for s in result.failures if s != "*"])}
        for symbol, coid in sorted(elsewhere.items()):
            print(f"  already closing {symbol}: HYDRA's exit {coid} (sent by the running engine) is working; "
                  "this kill's own close was not needed")
        flat = _no_longer_held(broker, [s for s in result.failures if s != "*" and s not in elsewhere])
        for symbol in flat:     # e.g. that exit filled while the kill confirmed its cancel
            print(f"  already closed {symbol}: the broker holds no position ({result.failures[symbol]})")
        not_done = {s: why for s, why in result.failures.items() if s not in elsewhere and s not in flat}
        for symbol, why in not_done.items():
            print(f"  NOT DONE: {why if symbol == '*' else f'close {symbol}: {why}'}")
        if result.cancel_failures or not_done:
            problems.append("the broker did not cancel or close everything (above)")
        if store is not None:
            try:
                _record_kill(store, kill_id, reason, now, result)
            except Exception as exc:  # noqa: BLE001
                problems.append(f"the kill's orders NOT recorded: {type(exc).__name__}: {exc}")
    return 0


def _exits_already_working(broker, symbols: list[str]) -> dict[str, str]:
    """symbol -> the working HYDRA market order (an engine's exit, an earlier kill's close) on it."""
    if not symbols:
        return {}
    try:
        working = broker.open_orders()
    except BrokerError:
        return {}
    found: dict[str, str] = {}
    for o in working:
        if o.symbol in symbols and o.order_type is OrderType.MARKET and is_hydra_order_id(o.client_order_id):
            found.setdefault(o.symbol, o.client_order_id)
    return found


def _no_longer_held(broker, symbols: list[str]) -> list[str]:
    if not symbols:
        return []
    try:
        held = broker.positions()
    except BrokerError:
        return []
    return [s for s in symbols if s not in held or not held[s].qty]


def _record_kill(store: Store, kill_id: str, reason: str, now: datetime, result) -> None:
    """The kill's orders (sent, or refused) in the orders table, and in the kill switch's state: the
    running engine (or the next start) takes them as its exits with reason ``kill``."""
    rows = [order_dict(o) for o in result.sent.values()]
    rows += [{**r, "status": OrderStatus.REJECTED.value, "reject_reason": result.failures[r["symbol"]]}
             for r in (store_row_dict(o) for o in store.orders(kill_id)) if r["status"] == "submitting"
             and r["symbol"] in result.failures]
    if rows:
        store.record_orders(kill_id, rows)
    control = store.load_state(CONTROL_KEY) or {}
    if control.get("kill_id") == kill_id:       # not when a `resume` came in meanwhile
        control.update(orders=dict(result.closing_orders), queued=list(result.queued),
                       failed=dict(result.failures))
        store.save_state(CONTROL_KEY, control, now)


def store_row_dict(row) -> dict:
    return {k: getattr(row, k) for k in type(row).model_fields if k != "session_id"}


def resume(settings: Settings) -> int:
    now = datetime.now(UTC)
    store = Store(settings.storage.url, root=settings.resolve_path("."))
    unreadable = set_control(store, "resumed", "", now)
    print("kill state cleared: entries allowed again (risk limits still apply)")
    for problem in unreadable:
        print(f"  PROBLEM: {problem} (its kill flag was left as it is)")
    return 0


def _alpaca_broker(settings: Settings, purpose: str, *, live: bool = False):
    """An Alpaca broker for a one-off command, or None (saying why) when no keys are configured. A live
    account (``broker.paper = false``) is reached only with the same three-part opt-in as `run`:
    the configuration, ``--live`` and the environment; otherwise :class:`LiveTradingRefused`."""
    if live or not settings.broker.paper:
        require_live_opt_in(settings, live)
    missing = AlpacaKeys().missing()
    if missing:
        print("no Alpaca keys in the environment or .env (" + ", ".join(missing) + ")")
        return None
    from .brokers.alpaca import build_alpaca
    from .clock import LiveClock
    broker, _ = build_alpaca(settings, AlpacaKeys(), f"{purpose}-{utc_stamp(datetime.now(UTC))}", LiveClock(),
                             live=live)
    return broker


def print_broker_status(settings: Settings, *, live: bool = False) -> int:
    """Each configured venue's account, positions and working orders: Alpaca, then the perp venue when
    ``[perps]`` is on (issue #20). The exit status is the worst of them."""
    code = _print_alpaca_status(settings, live=live)
    if settings.perps.enabled:
        from .perp.control import print_perp_status
        try:
            code = max(code, print_perp_status(settings, live=live))
        except Exception as exc:  # noqa: BLE001 -- a status is never a traceback
            print(f"error: the perp venue could not be read ({type(exc).__name__}: {exc})", file=sys.stderr)
            code = max(code, 1)
    return code


def _print_alpaca_status(settings: Settings, *, live: bool = False) -> int:
    try:
        broker = _alpaca_broker(settings, "status", live=live)
    except LiveTradingRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if broker is None:
        return 1
    try:
        _print_broker_book(broker, settings)
    except BrokerError as exc:   # nothing is traded here: say what could not be read, not "refusing to trade"
        print(f"error: the broker status could not be read ({exc.describe()})", file=sys.stderr)
        return 1
    return 0


def _print_broker_book(broker, settings: Settings) -> None:
    acct = broker.account()
    print(f"account       equity ${acct.equity_usd:,.2f}  cash ${acct.cash_usd:,.2f}  "
          f"buying power ${acct.buying_power_usd:,.2f}  ({'paper' if settings.broker.paper else 'LIVE'})")
    positions = broker.positions()
    print("broker pos.   " + (", ".join(f"{s} {p.qty} @ {Decimal(p.avg_entry_price):,.2f}" for s, p in positions.items()) or "none"))
    orders = broker.open_orders()
    print("open orders   " + (", ".join(f"{o.client_order_id} {o.side.value} {o.qty} {o.symbol} {o.order_type.value}"
                                        for o in orders) or "none"))
