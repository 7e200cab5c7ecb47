"""Alpaca paper (and, with a double opt-in, live) sessions: wiring, start-up reconciliation, the
shared kill/resume control and the broker status.

The engine is the same one the simulation runs; only the clock (APScheduler), the market data
(Alpaca bars and quotes plus Binance funding and open interest) and the broker (Alpaca) differ.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy.exc import SQLAlchemyError

from .app import Session, build_core, build_regime_detector, intraday_symbols  # noqa: F401  (re-exported for tests)
from .clock import LiveClock
from .config import AlpacaKeys, Settings, live_trading_opt_in, utc_stamp
from .data.event_feeds import event_feeds_for
from .data.feeds import MarketDataWithFeeds
from .llm.wiring import paper_llm
from .plugins import build_strategies
from .domain import UTC, Order, OrderStatus, OrderType
from .executor import order_dict
from .orderids import is_hydra_order_id, kill_order_id, new_kill_id
from .restart import adopt_protective_orders, recognise_own_orders, resolve_submitting
from .book import closed_trade_from_dict
from .regime_features import regime_history_days
from .ports import BrokerError
from .reconcile import adopt_broker_state, reconcile
from .store import Store, StoreError
from .tradelog import last_logged_fills, to_jsonable

log = logging.getLogger(__name__)
CONTROL_KEY = "control"
RECONCILE_EVERY = 30
FINAL_FILL_POLLS = 8          # the last cycle's market orders: polled up to 8 times, 0.25 s apart
FINAL_FILL_POLL_S = 0.25


class LiveTradingRefused(ValueError):
    pass


class ReconciliationRefused(RuntimeError):
    """Broker and local books disagree: HYDRA will not trade until they match or --adopt is given."""


def require_live_opt_in(settings: Settings, live: bool) -> None:
    if (live or not settings.broker.paper) and not (live and not settings.broker.paper and live_trading_opt_in()):
        raise LiveTradingRefused(
            "live trading refused: it needs broker.paper = false AND the --live flag AND "
            "HYDRA_ENABLE_LIVE_TRADING=I_UNDERSTAND_REAL_MONEY in the environment; paper is the default")


def build_paper_session(settings: Settings, *, live: bool = False, adopt: bool = False, clock=None,
                        binance_client=None, clock_start: datetime | None = None) -> Session:
    """``clock_start`` (issue #16; tests and dry runs only, refused with ``live``): the engine's clock
    starts at that time instead of the wall clock's, and so do the broker's and the data adapter's."""
    from signals.binance import BASE_URL as BINANCE_URL, BinanceFuturesClient
    from signals.derivatives_feed import BinanceDerivativesFeed
    from .brokers.alpaca import build_alpaca

    require_live_opt_in(settings, live)
    if clock_start is not None and (live or not settings.broker.paper):
        raise LiveTradingRefused("--clock-start is a test and dry-run setting: refused for a live account "
                                 "(a live session runs on the wall clock only)")
    keys = AlpacaKeys()
    wall = datetime.now(UTC)
    # to the millisecond: a restart within the same second must not continue the earlier process's session
    # (its cycle numbers start again at 1). From the wall clock also in a dry run: two dry runs from the
    # same --clock-start are two sessions, whose client order ids must differ
    session_id = f"{'live' if live else 'paper'}-{utc_stamp(wall)[:-1]}{wall.microsecond // 1000:03d}Z"
    clock = clock or LiveClock(settings.engine.cycle_interval_s)
    if clock_start is not None:
        clock.start_at(clock_start)
    started = clock.now()
    log_dir = settings.resolve_path(settings.engine.log_dir)
    broker, alpaca_data = build_alpaca(settings, keys, session_id, clock, live=live,
                                       capability_cache=log_dir / "alpaca_capabilities.json",
                                       regime_history_days=regime_history_days(settings))
    crypto = {s: s.replace("/USD", "USDT").replace("/", "") for s in settings.universe.symbols if "/" in s}
    # issue #7: the Binance base URL is overridable (HYDRA_BINANCE_URL), so the multi-process fault tests can
    # point the feed at a loopback server exactly as APCA_API_BASE_URL / APCA_API_DATA_URL do for Alpaca
    binance_url = os.environ.get("HYDRA_BINANCE_URL", "").strip() or BINANCE_URL
    feeds = {}
    if crypto:  # Binance funding/OI only matter for crypto symbols
        feed = BinanceDerivativesFeed(binance_client or BinanceFuturesClient(base_url=binance_url), crypto)
        feeds["binance"] = TrustedSeriesOnly(feed)
    strategies = build_strategies(settings.strategies.enabled, settings.strategies.params)
    # issue #18: the plugins' 15-minute candles (the macro scalper's) from Alpaca 1-minute bars, as the replay serves them
    alpaca_data.set_intraday(intraday_symbols(strategies))
    llm = paper_llm(settings, now=started)   # issue #22: live gate + analyst off the hot path (off: nothing)
    market = MarketDataWithFeeds(alpaca_data, feeds, event_feeds=event_feeds_for(
        strategies, settings.resolve_path(settings.data.replay_dir), live=True, extra_needs=llm.event_needs))
    engine, session_log, store = build_core(
        settings, market=market, broker=broker, session_id=session_id, mode="live" if live else "paper",
        log_dir=log_dir, metadata={"trading_url": broker.trading_url if hasattr(broker, "trading_url") else None,
                                   **({"dry_run_clock_start": clock_start.isoformat()} if clock_start else {}),
                                   **llm.metadata},
        store_batch=1, gate_rules=llm.gate_rules)
    llm.attach(engine)
    watch_key = f"fill_watch:{engine.mode}"
    try:
        previous = store.load_state(engine.state_key)
        if previous:
            engine.restore(previous)
        resume_fill_watch(broker, store, started, watch_key)
    except (ValueError, KeyError, TypeError, AttributeError, ArithmeticError) as exc:
        # what HYDRA holds and manages comes from this state: trading without it would be a guess
        session_log.close(datetime.now(UTC), {"refused": f"stored state unreadable: {exc}"})
        raise ReconciliationRefused(
            f"the saved engine state ({engine.state_key!r} or {watch_key!r} in {store.url}) cannot be restored: "
            f"{type(exc).__name__}: {exc}. Nothing was traded. Fix or remove that row (or point storage.url at a "
            "new database and restart with --adopt to take the broker's positions).") from exc
    # issue #7: catch up on the fills of our own orders that happened while HYDRA was down *before*
    # reconciling, so they are booked through the normal fill path (and recorded by the first cycle)
    # instead of showing up as a mismatch that only --adopt would clear without any fill on record.
    try:
        caught = broker.poll_fills(started)
    except Exception as exc:  # noqa: BLE001 -- the first cycle polls again; reconciliation still guards
        log.warning("could not catch up on fills at start-up: %s", exc)
        caught = []
    # issue #7: a process killed between a cycle's journal line and its store commit logged that cycle's
    # fills but did not store them, so they come back here: book them in the store (and the engine's
    # state) under the session that logged them, without logging them a second time
    logged_by, logged = last_logged_fills(log_dir, session_log.path, engine.mode)
    engine.fills_known_at = started
    # issue #16: HYDRA's own history is replayed oldest first before anything is judged, each fill against
    # the broker's book as it stood right after it (fills booked later in this start-up count as later)
    rest = [f for f in caught if f.fill_id not in logged]
    recovered = engine.book.replay([f for f in caught if f.fill_id in logged], engine.apply_fill, also_later=rest)
    if recovered:
        trades = [t for _, t in recovered if t]
        for t in trades:           # what the lost cycle's step 9 would have learnt
            engine.weights.update(closed_trade_from_dict(t))
        # the fills and the state they produced in one commit: once stored they count as seen and are
        # never polled again. The other caught-up fills are applied after this state was taken: they are
        # stored (with the state) by the first cycle, and re-polled if it never commits.
        store.save_recovered(logged_by, [to_jsonable(f) for f, _ in recovered], trades,
                             {engine.state_key: engine.state()}, started)
        engine.startup_notes.append(f"{len(recovered)} fill(s) logged by {logged_by} but not stored before it "
                                    f"stopped were booked in the store: {', '.join(f.fill_id for f, _ in recovered)}")
    engine.caught_up_fills = engine.book.replay(rest, engine.apply_fill)
    resolve_submitting(broker, store, engine)
    # the working orders HYDRA recorded (bracket legs, native trailing stops and exits, by client_order_id
    # in its saved state) are its own, and so is every order carrying a HYDRA id (an earlier session's, a
    # kill's) and every leg of a HYDRA bracket; any other working order is a mismatch
    working = broker.open_orders()
    recorded = recognise_own_orders(engine, broker, working)
    dust = {s: engine.dust_below(s) for s in settings.universe.symbols}
    report = reconcile(broker.positions(), working, engine.positions, recorded, now=started,
                       known_symbols=settings.universe.symbols, dust=dust)
    if not report.ok:
        text = "; ".join(report.mismatches)
        if not adopt:
            session_log.close(datetime.now(UTC), {"refused": f"reconciliation mismatch: {text}"})
            raise ReconciliationRefused(
                f"the Alpaca account and HYDRA's records disagree: {text}. Nothing was traded. Inspect with "
                f"`python hydra_engine.py status --broker`, then restart with --adopt to take the broker's "
                f"positions (they get a protective stop) or close them at Alpaca.")
        adopted, _ = adopt_broker_state(report, engine.positions, [], started)
        engine.book.adopt_positions(adopted)
        adopt_protective_orders(engine, report.unknown_orders)   # the legs protect the adopted positions
        log.warning("adopted the broker's book: %s", text)
        # issue #7: persist the adopted book at once; before, it was saved only by the first cycle with an
        # order or a fill, so a crash before that made every later restart refuse (and adopt) again. Not
        # when fills caught up above are in it: they are not stored yet, and a state that holds them would
        # book them twice when they are polled again -- the first cycle stores them and this state together
        if not engine.caught_up_fills:
            store.save_state(engine.state_key, engine.state(), started)
    control = Control(store)
    # issue #16: recorded before it is sent (status "submitting"); resolved by client order id at restart
    engine.executor.write_ahead = lambda order: store.record_orders(
        session_id, [{**order_dict(order), "status": "submitting"}])

    suspect: list[str] = []          # the symbols the last check disagreed about: checked again next cycle
    retry: list[int] = []            # the cycle whose check the broker could not answer
    mismatch: list[str] = []         # why the last reconciliation halted entries (empty: it did not)
    unreadable: list[str] = []       # why the kill/resume switch halts entries (empty: it does not)

    limiter = getattr(broker, "limiter", None)
    seen_faults = {"retries": 0, "rate_limited": 0, "waited_s": 0.0}
    interval_s = getattr(clock, "interval_s", None)
    timing = {"started": 0.0, "last_tick": None}

    def fault_note(eng, when: str) -> str | None:
        """The broker's retries, 429s and rate-limit waits since the last call, counted into the
        summary's faults and said at WARNING; None when there were none."""
        if limiter is None:
            return None
        now_counts = {"retries": limiter.retries, "rate_limited": limiter.rate_limited, "waited_s": limiter.slept_s}
        delta = {k: now_counts[k] - seen_faults[k] for k in now_counts}
        seen_faults.update(now_counts)
        if not (delta["retries"] or delta["rate_limited"] or delta["waited_s"] >= 1.0):
            return None
        for k, v in delta.items():
            eng.faults[k] = eng.faults.get(k, 0) + v
        msg = (f"broker faults {when}: {delta['retries']} retried call(s), {delta['rate_limited']} rate-limit "
               f"answer(s) (429), {delta['waited_s']:.1f} s waited")
        log.warning(msg)
        return msg

    def halt(eng) -> None:           # either reason halts entries; exits, fills and reconciliation go on
        eng.halted = "; ".join([*unreadable, *mismatch]) or None

    def before_cycle(eng, now):
        timing["started"] = time.monotonic()
        last, timing["last_tick"] = timing["last_tick"], now
        if last is not None and interval_s and (now - last).total_seconds() > 2 * interval_s:
            # the loop fell behind (APScheduler coalesces the runs it missed): said in this cycle
            late = (now - last).total_seconds()
            eng.faults["late_cycles"] = eng.faults.get("late_cycles", 0) + 1
            msg = f"the loop fell behind: {late:.1f} s since the last cycle began (interval {interval_s} s)"
            log.warning(msg)
            eng.startup_notes.append(msg)
        why = control.apply(eng, now)
        unreadable[:] = [why] if why else []
        if hasattr(broker, "fills_watched_since"):   # issue #7: where the next process resumes watching
            store.save_state(watch_key, {"since": broker.fills_watched_since.isoformat()}, now)
        halt(eng)

    def reconcile_after_fills(eng, report, trades, now):
        """Issue #16: the running check comes after the cycle's fill poll, so an order of the last cycle
        that filled since is booked before the books are compared (it ran before the poll, and trading
        the same symbol in consecutive cycles made that fill look like the same mismatch twice: entries
        halted for a cycle). A disagreement must still be seen twice in a row before entries halt."""
        if eng.cycle and (eng.cycle % RECONCILE_EVERY == 0 or suspect or retry):
            try:
                check = reconcile(broker.positions(), broker.open_orders(), eng.positions,
                                  broker.open_orders(), known_symbols=settings.universe.symbols, dust=dust)
            except BrokerError as exc:    # the cycle itself still runs (fills, exits); the check, next cycle
                log.warning("reconciliation skipped this cycle: %s", exc)
                report["notes"].append(f"reconciliation skipped this cycle: {exc}")
                retry[:] = [eng.cycle]
            else:
                retry.clear()
                if check.ok:
                    suspect.clear()
                    mismatch.clear()
                else:
                    if check.subjects & set(suspect):
                        mismatch[:] = ["reconciliation mismatch: " + "; ".join(check.mismatches)]
                    suspect[:] = sorted(check.subjects)
        halt(eng)

    def report_faults(eng, report, trades, now) -> None:
        """Issue #16: retries, 429s and rate-limit waits of this cycle go to its notes and to the console at
        WARNING with counts, and add up in the summary's "faults" line; so does a cycle slower than the
        interval (the next one starts late)."""
        msg = fault_note(eng, f"in cycle {eng.cycle}")
        if msg:
            report["notes"].append(msg)
        took = time.monotonic() - timing["started"]
        if interval_s and took > interval_s:
            eng.faults["slow_cycles"] = eng.faults.get("slow_cycles", 0) + 1
            msg = (f"degraded cycle time: cycle {eng.cycle} took {took:.1f} s, longer than its {interval_s} s "
                   "interval (the next cycle starts late)")
            log.warning(msg)
            report["notes"].append(msg)

    def book_final_fills(eng, report, trades, now) -> None:
        """Issue #16: a session ended by --cycles books the fills of its last cycle's market orders before it
        exits (they were left for the next start). It waits, bounded, for those that can fill now (an
        equity order queued for the open cannot), and says which are still working."""
        if not eng.final_cycle:
            return
        sent = {o["client_order_id"]: o for o in report["orders"]
                if o.get("order_type") == "market" and o.get("status") not in ("rejected", "canceled", "filled")}
        if not sent:
            return
        sleep = getattr(broker, "_sleep", time.sleep)     # the adapter's injected sleep (tests: none)
        waiting: list = []
        booked = len(trades)
        for attempt in range(FINAL_FILL_POLLS):
            if attempt:
                sleep(FINAL_FILL_POLL_S)
            eng.poll_and_book_fills(now, report, trades)
            working = [o for o in broker.open_orders() if o.client_order_id in sent]
            waiting = [o for o in working if broker.is_market_open(o.symbol, now)]
            if not waiting:
                break
        for t in trades[booked:]:         # what the next cycle's step 9 would have learnt
            eng.weights.update(closed_trade_from_dict(t))
        if waiting:
            report["notes"].append("still working when the session ended: " + ", ".join(
                o.client_order_id for o in waiting) + "; their fills are booked at the next start")

    if (said := fault_note(engine, "at start-up")):
        engine.startup_notes.append(said)
    engine.after_fills_hooks.append(reconcile_after_fills)
    engine.cycle_end_hooks += [book_final_fills, report_faults]
    return Session(engine, clock, session_log, store, before_cycle=before_cycle, on_close=llm.close)


def resume_fill_watch(broker, store: Store, started: datetime, watch_key: str = "fill_watch:paper") -> None:
    """Issue #7 (crash/restart): without this, a restarted session only watches orders submitted after
    its own start, so a fill of an order sent by the previous (crashed) process -- while it was down, or
    later -- never reached the fills table or any log. Watch from the oldest order the store does not
    know to be complete (or the last paper/live cycle recorded: a crash may have lost the orders of the
    cycle in progress, and the watermark the last process persisted before each cycle: an order adopted
    while working may be older than both), and mark the fills already stored as seen so none is
    reported twice."""
    if not hasattr(broker, "watch_fills"):
        return
    from sqlmodel import Session as DBSession, select
    from .store import CycleRow
    seen: dict[str, tuple[Decimal, Decimal]] = {}        # broker order id -> (cumulative qty, notional)
    filled_by_coid: dict[str, Decimal] = {}
    for f in store.fills():
        oid, sep, total = f.fill_id.rpartition(":")
        filled_by_coid[f.client_order_id] = filled_by_coid.get(f.client_order_id, Decimal(0)) + Decimal(f.qty)
        try:
            total_qty = Decimal(total)
        except ArithmeticError:
            continue                                      # e.g. reconcile-... ids: not a broker fill
        if sep and f.client_order_id and not f.client_order_id.startswith("reconcile-"):
            qty0, notional0 = seen.get(oid, (Decimal(0), Decimal(0)))
            seen[oid] = (max(qty0, total_qty), notional0 + Decimal(f.qty) * Decimal(f.price))
    marks = []
    for o in store.orders():
        if o.session_id.startswith(("paper-", "live-", "kill-")) \
                and o.status in ("new", "accepted", "partially_filled", "unknown", "submitting") \
                and filled_by_coid.get(o.client_order_id, Decimal(0)) < Decimal(o.qty):
            marks.append(o.created_at)
    with DBSession(store.engine) as s:
        last = s.exec(select(CycleRow).where(CycleRow.session_id.like("paper-%") | CycleRow.session_id.like("live-%"))
                      .order_by(CycleRow.id.desc()).limit(1)).first()
    if last is not None:
        marks.append(last.ts)
    persisted = store.load_state(watch_key)
    if persisted and persisted.get("since"):
        marks.append(persisted["since"])
    if not marks:
        return
    since = min(datetime.fromisoformat(str(m).replace("Z", "+00:00")) for m in marks) - timedelta(seconds=1)
    broker.watch_fills(since.astimezone(UTC), {oid: (qty, (notional / qty) if qty else Decimal(0))
                                               for oid, (qty, notional) in seen.items()})
    store.save_state(watch_key, {"since": broker.fills_watched_since.isoformat()}, started)


class TrustedSeriesOnly:
    """Issue #7: a side feed that failed or went stale must make its strategies stand down. The feed
    keeps the series of its last good refresh, and those stay "fresh" for the strategies' own age
    checks (a live open-interest snapshot is good for two hours), so a broken Binance feed went on
    producing liquidation-cascade entries from cached numbers. Serve series only for the symbols the
    feed itself calls healthy; the engine's notes still name the problem (``health``).

    Health is judged ``CLOCK_SKEW`` after the cycle's time: Binance stamps a live snapshot with its own
    clock, a few milliseconds after the cycle began, and a stamp that rounds into the next second must
    not make the open interest look missing (the 15-minute age limit then fails for one cycle)."""

    CLOCK_SKEW = timedelta(seconds=5)

    def __init__(self, feed):
        self.feed = feed

    def refresh(self, now: datetime) -> bool:
        return self.feed.refresh(now)

    def health(self, now: datetime | None = None) -> tuple[bool, str]:
        return self.feed.health(None if now is None else now + self.CLOCK_SKEW)

    def series(self, now: datetime):
        stale = self.feed.stale(now + self.CLOCK_SKEW)
        return {key: s for key, s in self.feed.series(now).items() if key[1] not in stale}


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
    for problem in problems:
        print(f"  PROBLEM: {problem}")
    return 1 if problems else 0


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
