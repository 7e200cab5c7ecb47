"""`kill` and `status --broker` for the perp venue (issue #20), called by :mod:`hydra_engine.control` after
the Alpaca half when ``[perps] enabled``.

``perps.execution``:
  * ``binance_demo`` / ``binance_live`` -- the command reaches the Binance USD-M account itself
    (:mod:`hydra_engine.adapters.binance_usdm_kill`): cancels every working order, closes every position
    with reduce-only market orders under the kill's own ids (recorded write-ahead in the store like the
    Alpaca closes, and in the kill's id file), and puts the closes in the kill switch's state so the running
    engine (or the next start) books their fills as exits with reason ``kill``. ``binance_live`` needs the
    three-part opt-in (``perps.execution = "binance_live"``, ``--live``, ``HYDRA_ENABLE_LIVE_TRADING``).
    Without ``BINANCE_API_KEY`` / ``BINANCE_API_SECRET``: "NO BINANCE CONTACT", NOT DONE.
  * ``sim`` -- the simulated paper account lives inside the running engine (its state is saved with the
    engine's): no other process can trade it. The command records the kill (as for Alpaca); a running engine
    reads it within one cycle and closes every perp position (exit reason ``kill``); with no engine running
    the saved account keeps its positions until the next start, whose engine restores the kill with the
    state and sends their closes in its first cycle (checked by a test: never resurrected). The command says
    this, and lists what the saved account holds.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from ..config import ConfigError, live_trading_opt_in
from ..ports import BrokerError

SIM_STATE_KEYS = ("engine:paper", "engine:live")


@dataclass
class VenueOutcome:
    """One venue's line in the kill's summary. ``handed``: not flat yet, but nothing is left for the command
    to do -- the simulated perp account is closed by its engine (the kill is recorded for it)."""

    venue: str
    done: bool
    detail: str
    handed: bool = False

    def line(self) -> str:
        said = "HANDED TO THE ENGINE" if self.handed else "DONE" if self.done else "NOT DONE"
        return f"  {self.venue}: {said} ({self.detail})"


def require_perp_live_opt_in(settings, live: bool) -> None:
    """Live Binance needs ``perps.execution = "binance_live"`` AND ``--live`` AND the environment opt-in."""
    from ..control import LiveTradingRefused
    if settings.perps.execution == "binance_live" and not (live and live_trading_opt_in()):
        raise LiveTradingRefused("live Binance trading refused: it needs perps.execution = \"binance_live\" AND the "
                                 "--live flag AND HYDRA_ENABLE_LIVE_TRADING=I_UNDERSTAND_REAL_MONEY in the environment")


def _engine_state_path(settings) -> Path:
    return settings.resolve_path(settings.engine.log_dir) / f"binance_usdm_{settings.perps.execution}.json"


def _usdm_broker(settings, *, live: bool, kill: bool, session=None):
    """The Binance adapter for a one-off command, or a ``str`` saying why there is none."""
    from ..adapters.binance_usdm import BinanceKeys, build_binance_usdm
    from ..adapters.binance_usdm_kill import kill_state_path
    require_perp_live_opt_in(settings, live)
    keys = BinanceKeys()
    missing = keys.missing()
    if missing:
        return (f"NO BINANCE CONTACT: no {' / '.join(missing)} in the environment or .env, so nothing was read from "
                f"or done at the Binance USD-M {_kind(settings)} account")
    path = _engine_state_path(settings)    # status only reads it (HYDRA's ids for Binance's); kill has its own
    try:
        return build_binance_usdm(settings, live=settings.perps.execution == "binance_live", keys=keys, session=session,
                                  state_path=kill_state_path(path) if kill else path)
    except ConfigError as exc:
        return f"the Binance adapter could not be built: {exc}"


def _kind(settings) -> str:
    return "LIVE" if settings.perps.execution == "binance_live" else "demo"


def _saved_sim_accounts(store) -> dict[str, dict]:
    """engine state key -> the simulated perp account saved in it (as ``SimulatedPerpVenue.to_state``)."""
    out = {}
    for key in SIM_STATE_KEYS:
        state = store.load_state(key) if store is not None else None
        if isinstance(state, dict) and isinstance(state.get("perp_venue"), dict):
            out[key] = state["perp_venue"]
    return out


def kill_perps(settings, kill_id: str, now: datetime, *, live: bool, store, kill_saved: bool, write_ahead,
               session=None) -> VenueOutcome | None:
    """The perp venue's part of `kill` (see the module); ``None`` when ``[perps]`` is off."""
    p = settings.perps
    if not p.enabled:
        return None
    if p.execution == "sim":
        return _kill_sim(store, kill_saved)
    from ..control import LiveTradingRefused
    venue = f"perp (Binance USD-M {_kind(settings)})"
    print(f"{venue}:")
    try:
        broker = _usdm_broker(settings, live=live, kill=True, session=session)
    except LiveTradingRefused as exc:
        print(f"  NOT DONE: {exc}; the Binance account was not touched")
        return VenueOutcome(venue, False, "live opt-in missing")
    if isinstance(broker, str):
        print(f"  {broker}")
        return VenueOutcome(venue, False, "no Binance contact")
    from ..adapters.binance_usdm_kill import flatten_usdm
    rep = flatten_usdm(broker, kill_id, now=now, on_submit=write_ahead)
    for coid, status in sorted(rep.earlier.items()):
        print(f"  an earlier kill's close {coid}: {status} (found at Binance by its id, not sent again)")
    print(f"  canceled {len(rep.canceled)} orders, closing {len(rep.closing_orders)} positions")
    for symbol, coid in sorted(rep.closing_orders.items()):
        sent = rep.sent.get(symbol)
        print(f"  closing {symbol} with {coid} (reduce-only market" + (f", {sent.status.value}" if sent else "") + ")")
    for why in rep.cancel_failures.values():
        print(f"  NOT DONE: {why}")
    for symbol, why in rep.failures.items():
        print(f"  NOT DONE: {why}")
    for symbol, qty in sorted(rep.still_held.items()):
        if symbol not in rep.failures:
            print(f"  NOT DONE: {symbol} still held ({qty}) after its close")
    for note in rep.notes:
        print(f"  note: {note}")
    if store is not None:
        _record(store, kill_id, now, rep)
    detail = ("every perp order canceled, every perp position closed" if rep.ok else
              "see the NOT DONE lines above; run `kill` again (it looks its own orders up first)")
    return VenueOutcome(venue, rep.ok, detail)


def _record(store, kill_id: str, now: datetime, rep) -> None:
    """The closes' outcomes in the orders table and in the kill switch's state (merged with Alpaca's), so
    the running engine (or the next start) books their fills as exits with reason ``kill``."""
    from ..control import CONTROL_KEY
    from ..domain import OrderStatus
    from ..executor import order_dict
    rows = [order_dict(o) for o in rep.sent.values()]
    rows += [{"client_order_id": coid, "status": OrderStatus.REJECTED.value, "reject_reason": rep.failures[s]}
             for s, coid in rep.closing_orders.items() if s in rep.failures and "outcome unknown" not in rep.failures[s]]
    if rows:
        known = {r.client_order_id: r for r in store.orders(kill_id)}
        full = []
        for r in rows:
            base = known.get(r["client_order_id"])
            full.append({**({k: getattr(base, k) for k in type(base).model_fields if k != "session_id"} if base else {}),
                         **r})
        store.record_orders(kill_id, [r for r in full if "symbol" in r])
    control = store.load_state(CONTROL_KEY) or {}
    if control.get("kill_id") == kill_id and rep.closing_orders:
        control["orders"] = {**control.get("orders", {}), **rep.closing_orders}
        failed = {s: w for s, w in rep.failures.items() if s != "*"}
        if failed:
            control["failed"] = {**control.get("failed", {}), **failed}
        store.save_state(CONTROL_KEY, control, now)


def _kill_sim(store, kill_saved: bool) -> VenueOutcome:
    venue = "perp (simulated USD-M paper account)"
    print(f"{venue}: not traded by this command -- the account lives inside the engine (saved with its state).")
    print("  A running engine reads this kill within one cycle and closes every perp position (exit reason kill).")
    print("  With no engine running, the saved account keeps its positions until the next `run --mode paper`:")
    print("  that engine restores the kill with its state and sends their closes in its first cycle (filled at the")
    print("  next bar's open; funding settled and liquidation checked for the time between, as the account catches up).")
    print("  A `resume` before that start clears the kill: the positions are then kept and managed as before.")
    try:
        saved = _saved_sim_accounts(store)
    except Exception as exc:  # noqa: BLE001 -- a damaged row: said, the kill itself is recorded or not above
        saved, held = {}, None
        print(f"  the saved perp account could not be read: {type(exc).__name__}: {exc}")
    held = {s: Decimal(str(pos.get("qty", "0"))) for acct in saved.values()
            for s, pos in (acct.get("positions") or {}).items() if Decimal(str(pos.get("qty", "0"))) != 0}
    print("  saved account holds: " + (", ".join(f"{s} {q}" for s, q in sorted(held.items())) or "no perp position"))
    if not kill_saved:
        return VenueOutcome(venue, not held, "the kill state was NOT saved: no engine will close the perp positions"
                            if held else "nothing held in the saved account")
    if held:
        return VenueOutcome(venue, True, "not flat yet: the kill is recorded and the engine closes "
                            + ", ".join(sorted(held)) + " (above)", handed=True)
    return VenueOutcome(venue, True, "nothing held in the saved account; the kill is recorded for the engine")


def print_perp_status(settings, *, live: bool = False, session=None) -> int:
    """The perp venue's part of `status --broker`; 0 when it could be read."""
    p = settings.perps
    if not p.enabled:
        return 0
    if p.execution == "sim":
        from ..store import Store
        store = Store(settings.storage.url, root=settings.resolve_path("."))
        saved = _saved_sim_accounts(store)
        if not saved:
            print("perp (simulated USD-M paper account)  no saved account yet (no paper session has run with perps)")
        for key, acct in saved.items():
            positions = acct.get("positions") or {}
            print(f"perp (simulated USD-M paper account, {key}, as saved by the engine)  wallet "
                  f"{Decimal(acct.get('cash_usdt', '0')):,.2f} USDT  fees paid {Decimal(acct.get('fees_paid_usdt', '0')):,.2f} USDT")
            print("  positions   " + (", ".join(f"{s} {x['qty']} @ {Decimal(x['entry_price']):,.2f} ({x['leverage']}x)"
                                                for s, x in positions.items()) or "none"))
        return 0
    from ..control import LiveTradingRefused
    try:
        broker = _usdm_broker(settings, live=live, kill=False, session=session)
    except LiveTradingRefused as exc:
        print(f"error: {exc}", flush=True)
        return 2
    if isinstance(broker, str):
        print(broker)
        return 1
    from ..adapters.binance_usdm_kill import print_usdm_book
    try:
        print_usdm_book(broker, f"perp (Binance USD-M {_kind(settings)}, {broker.base_url})")
    except BrokerError as exc:
        print(f"error: the Binance account could not be read ({exc.describe()})")
        return 1
    return 0
