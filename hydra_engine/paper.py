"""Alpaca paper (and, with a double opt-in, live) sessions: wiring, start-up reconciliation, the
shared kill/resume control and the broker status.

The engine is the same one the simulation runs; only the clock (APScheduler), the market data
(Alpaca bars and quotes plus Binance funding and open interest) and the broker (Alpaca) differ.
"""
from __future__ import annotations

import logging
import os
import time
from datetime import datetime, timedelta
from decimal import Decimal


from .app import Session, build_core, build_regime_detector, intraday_symbols  # noqa: F401  (re-exported for tests)
from .clock import LiveClock
from .config import AlpacaKeys, Settings, utc_stamp
from .data.event_feeds import event_feeds_for
from .data.feeds import MarketDataWithFeeds
from .llm.wiring import paper_llm
from .perp.live import paper_perps
from .plugins import build_strategies
from .domain import UTC
from .executor import order_dict
from .restart import adopt_protective_orders, recognise_own_orders, resolve_submitting
from .book import closed_trade_from_dict
from .regime_features import regime_history_days
from .ports import BrokerError
from .reconcile import adopt_broker_state, reconcile
from .store import Store
from .tradelog import last_logged_fills, to_jsonable

log = logging.getLogger(__name__)
from .control import (CONTROL_KEY, Control, LiveTradingRefused, kill, print_broker_status,  # noqa: E402,F401
                      require_live_opt_in, resume, set_control)   # the operator's controls, re-exported

RECONCILE_EVERY = 30
FINAL_FILL_POLLS = 8          # the last cycle's market orders: polled up to 8 times, 0.25 s apart
FINAL_FILL_POLL_S = 0.25


class ReconciliationRefused(RuntimeError):
    """Broker and local books disagree: HYDRA will not trade until they match or --adopt is given."""


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
    crypto.update({s: s for s in settings.perps.symbols} if settings.perps.enabled else {})   # #20: perps' funding/OI
    binance_client = binance_client or BinanceFuturesClient(base_url=binance_url)
    feeds = {}
    if crypto:  # Binance funding/OI only matter for crypto symbols
        feed = BinanceDerivativesFeed(binance_client, crypto)
        feeds["binance"] = TrustedSeriesOnly(feed)
    strategies = build_strategies(settings.strategies.enabled, settings.strategies.params)
    # issue #18: the plugins' 15-minute candles (the macro scalper's) from Alpaca 1-minute bars, as the replay serves them
    alpaca_data.set_intraday(intraday_symbols(strategies))
    llm = paper_llm(settings, now=started)   # issue #22: live gate + analyst off the hot path (off: nothing)
    market = MarketDataWithFeeds(alpaca_data, feeds, event_feeds=event_feeds_for(
        strategies, settings.resolve_path(settings.data.replay_dir), live=True, extra_needs=llm.event_needs))
    # issue #20: perps.enabled puts the perp account (simulated on live data, or Binance's demo) beside Alpaca
    perp = paper_perps(settings, market=market, main_broker=broker, client=binance_client, live=live, log_dir=log_dir)
    alpaca, broker, market = broker, perp.broker, perp.market
    core_kwargs = dict(perp.core_kwargs)
    core_kwargs["gate_rules"] = [*core_kwargs.get("gate_rules", []), *llm.gate_rules]
    engine, session_log, store = build_core(
        settings, market=market, broker=broker, session_id=session_id, mode="live" if live else "paper",
        log_dir=log_dir, metadata={"trading_url": alpaca.trading_url if hasattr(alpaca, "trading_url") else None,
                                   **({"dry_run_clock_start": clock_start.isoformat()} if clock_start else {}),
                                   **llm.metadata, **perp.meta},
        store_batch=1, **core_kwargs)
    llm.attach(engine)
    watch_key = f"fill_watch:{engine.mode}"
    try:
        previous = store.load_state(engine.state_key)
        if previous:
            engine.restore(previous)
        perp.keep_state(previous, engine)   # the simulated perp account lives inside the engine's state
        resume_fill_watch(alpaca, store, started, watch_key)
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
                       known_symbols=[*settings.universe.symbols, *perp.symbols], dust=dust,
                       venue_of=getattr(broker, "venue_name", None))
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

    limiter = getattr(alpaca, "limiter", None)
    every, known = perp.reconcile_every or RECONCILE_EVERY, [*settings.universe.symbols, *perp.symbols]
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
        if hasattr(alpaca, "fills_watched_since"):   # issue #7: where the next process resumes watching
            store.save_state(watch_key, {"since": alpaca.fills_watched_since.isoformat()}, now)
        halt(eng)

    def reconcile_after_fills(eng, report, trades, now):
        """Issue #16: the running check comes after the cycle's fill poll, so an order of the last cycle
        that filled since is booked before the books are compared (it ran before the poll, and trading
        the same symbol in consecutive cycles made that fill look like the same mismatch twice: entries
        halted for a cycle). A disagreement must still be seen twice in a row before entries halt."""
        if eng.cycle and (eng.cycle % every == 0 or suspect or retry):
            try:
                check = reconcile(broker.positions(), broker.open_orders(), eng.positions,
                                  broker.open_orders(), known_symbols=known, dust=dust)
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

