"""Event-horizon replay (issue #24, item 1): in a replay, jump the clock over ticks on which nothing can happen.

Every component keeps deciding exactly as in a plain replay. After each cycle the driver asks every
component for a **promise**: the earliest time at which it could next act. A component without a promise
(no ``horizon_*`` method, or one that answers None) forces the next tick -- the default. The driver jumps
to the first tick at or after the earliest promise; the ticks in between are **caught up exactly**
(:func:`catch_up`): cycle counter, run statistics, regime refreshes (run for real at their cycles),
high-water marks, the broker's marks, the fill clock, and -- when a session log or store is attached --
every skipped cycle's report, built by the same code the quiet cycle uses and written as one journal
*span record* (:meth:`~hydra_engine.tradelog.SessionLog.record_span`) that ``load_session`` expands.

The promises (each an upper bound on "nothing can happen before"; a wrong one would change results, so
each is computed with a margin and, when in doubt, not given):

* engine: no cycle hooks, nothing recorded at start-up, not halted, the observation phase over, the last
  cycle a clean "trade" cycle (no orders, exits, notes or errors; fills only once booked and settled) or a
  clean "killed" / "blocked" cycle of a flat book without fills (its one note the gate's reason; each
  skipped cycle's mode and note are the gate's book verdict asked at its tick, ``Engine._book_mode``), the
  regime reading not stale, no blocking symbol rule while positions are held;
* broker: no working order, no unreported fill; a venue that settles funding promises through
  ``horizon_until(now)`` (:func:`venue_horizon`; the perp venue: while it holds no position, order or fill);
  the book: no plan, exit or unresolved order waiting;
* kill log: a backtest's automatic resume (``KillLog.horizon_until``);
* plugins: ``Strategy.horizon_next_wake(market)`` -> the earliest time ``wants_cycle`` could be True
  (``(market, data=<the replay source>)`` where the plugin sets ``horizon_reads_data``: it reads the
  arrival times of future points, e.g. liquidation_cascade's funding and open-interest points);
* positions (:func:`position_horizon`): the close of the first bar whose range (with the percent trail
  ratcheted as far as the bars could take it, and a 1e-6 relative margin) could reach the stop or the
  target, and the time limit; an ATR trail or a broker-held trail does not promise;
* regime: the next refresh cycle unless the detector promises its label
  (``detector.horizon_regime_until(market)``, or ``(market, data=<the replay source>)`` where the detector
  sets ``horizon_reads_data``: the HMM detector, until its daily key can change); the day the reading's
  inputs go stale; with a regime refitter, the earliest time a refit could be due
  (``refitter.horizon_until(detector, now)``; without one, no skipping);
* risk: ``risk.horizon_inert`` (a risk layer whose equity, market and block checks never change state
  or fire: the benchmark's), or ``risk.horizon_until(engine, now)`` with ``risk.horizon_catch_up``: the
  shipped :class:`~hydra_engine.risk.RiskManager` promises while the book is flat, not killed and not
  blocked (its state over the span is caught up by its last tick's ``on_equity`` / ``on_market``).

Paper trading never uses this driver (it runs on the live clock). ``[horizon] enabled = false`` or
``HYDRA_HORIZON__ENABLED=false`` turns skipping off; ``[horizon] check = true`` (``HYDRA_HORIZON__CHECK=true``) runs every
tick and verifies each promise against what the cycles then did (:class:`HorizonBroken` on a violation).
:func:`compare` runs a run both ways (tick by tick and skipping) and lists what differs.
"""
from __future__ import annotations

import bisect
import math
from datetime import datetime, timedelta

from .cycle_report import format_report, new_report
from .domain import UTC
from .gate import GateContext
from .horizon_positions import FAR, _ts, _walk_positions, position_horizon
from .regime_freshness import input_day, is_stale

SPAN_MAX = 1000       # cycles per journal span record (the reports are held until it is written)


class HorizonBroken(RuntimeError):
    """A promise did not hold (a bug in a component's promise): the run stops rather than go on wrong."""


def mode_from(settings) -> str:
    """"off", "on" or "check" from ``[horizon]`` (environment: ``HYDRA_HORIZON__ENABLED=false``,
    ``HYDRA_HORIZON__CHECK=true``, as every setting)."""
    section = getattr(settings, "horizon", None)
    if section is None:
        return "on"
    if not section.enabled:
        return "off"
    return "check" if section.check else "on"


# ============================================================================ promises
def _bars_closed(market, bars: dict[str, int], nxt: datetime) -> datetime:
    """A plugin's promise given as {symbol: open time (epoch s) of its next bar that could wake it}: the
    earliest close of those bars in the replay (one second after its open where the data cannot say).
    Bars are converted earliest open first, and only while they could still be the earliest close."""
    best_s = FAR.timestamp()
    nxt_s = nxt.timestamp()
    bars_of = getattr(market, "_bars", None)
    for open_s, symbol in sorted((o, s) for s, o in bars.items()):
        if open_s + 1 >= best_s:
            break
        t = open_s + 1
        b = bars_of.get(symbol) if bars_of is not None else None
        if b is not None:
            k = int(b.open_ts.searchsorted(open_s, "left"))
            if k < len(b.open_ts) and int(b.open_ts[k]) == open_s:
                t = max(t, int(b.close_ts[k]))
        best_s = min(best_s, t)
        if best_s <= nxt_s:
            break
    return FAR if best_s >= FAR.timestamp() else _ts(best_s)


def regime_horizon(engine, now: datetime) -> tuple[datetime, int | None] | None:
    """(time limit, last cycle that may be skipped or None): the day the reading's inputs go stale, and
    the detector's own promise of its label -- without one, the cycle before its next scheduled refresh."""
    reading = engine.regime
    if is_stale(reading):
        return None
    best = FAR
    day = input_day(reading)
    if day is not None:   # freshen() turns it UNKNOWN once now.date() - day > max_age_days
        max_age = engine.settings.truth.regime_max_age_days
        best = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=math.floor(max_age) + 1)
    refitter = engine.regime_refitter
    if refitter is not None:   # a refit replaces the detector: the span ends before it could be due
        schedule = getattr(refitter, "horizon_until", None)
        try:
            due = schedule(engine.regime_detector, now) if schedule is not None else None
        except Exception:  # noqa: BLE001 -- a broken promise promises nothing
            due = None
        if due is None:
            return None
        best = min(best, due)
    detector = engine.regime_detector
    promise = getattr(detector, "horizon_regime_until", None)
    until = None
    if promise is not None:
        try:
            until = (promise(engine.market_now, data=engine.market) if getattr(detector, "horizon_reads_data", False)
                     else promise(engine.market_now))
        except Exception:  # noqa: BLE001 -- a broken promise promises nothing
            until = None
    if until is None:
        every = engine.settings.engine.regime_refresh_cycles
        return best, (engine.cycle // every + 1) * every - 1
    return min(best, until), None


def risk_horizon(engine, now: datetime) -> datetime | None:
    """The risk layer's promise: FAR for an inert one (``horizon_inert``: its checks never change state or
    fire), else its ``horizon_until(engine, now)`` (a layer without one, or one that raises: no promise).
    A non-inert layer that promises must also have ``horizon_catch_up(engine, last_tick, snapshot)``."""
    risk = engine.risk
    if getattr(risk, "horizon_inert", False):
        return FAR
    promise = getattr(risk, "horizon_until", None)
    if promise is None or getattr(risk, "horizon_catch_up", None) is None:
        return None
    try:
        return promise(engine, now)
    except Exception:  # noqa: BLE001 -- a broken promise promises nothing
        return None


def venue_horizon(engine, now: datetime) -> datetime | None:
    """The broker's promise where it settles funding (a perp venue: funding payments and liquidations
    happen without an order): its ``horizon_until(now)`` (the perp venue: FAR while it holds nothing);
    a broker that settles none: FAR."""
    broker = engine.broker
    if not broker.capabilities.settles_funding:
        return FAR
    promise = getattr(broker, "horizon_until", None)
    if promise is None:
        return None
    try:
        return promise(now)
    except Exception:  # noqa: BLE001 -- a broken promise promises nothing
        return None


def kill_log_horizon(engine) -> datetime | None:
    """The kill log's promise (``KillLog.horizon_until``): a backtest's automatic resume is due."""
    promise = getattr(engine.kill_log, "horizon_until", None)
    return promise(engine) if promise is not None else None


def engine_quiet(engine) -> bool:
    """The engine-level conditions for any skipping (module docstring)."""
    if (engine.cycle_hooks or engine.after_fills_hooks or engine.cycle_end_hooks or engine.caught_up_fills
            or engine.startup_notes or engine.startup_orders or engine.halted or engine.final_cycle):
        return False
    if engine.cycle < engine.settings.engine.observation_cycles:
        return False
    if engine.store is not None and engine.store_batch == 1:
        return False   # every committed cycle carries the engine state (paper-like persistence)
    rep = engine._last_report
    # a cycle that only booked fills may promise (issue #24 item 2): its orders are done (no working order,
    # below), the book waits on nothing (no plan, exit or unresolved order, below), the fills' trades have
    # adapted the weights and reached the risk layer in that cycle, so the next cycle would be a quiet one
    if rep is None or rep["orders"] or rep["exits"] or rep["errors"] or rep.get("decisions"):
        return False
    mode = rep.get("mode")
    book = engine.book
    if mode == "trade":
        if rep["notes"]:
            return False
    elif mode in ("killed", "blocked"):   # a flat book the gate refuses entries: its one note is the gate's
        if rep["fills"] or len(rep["notes"]) != 1 or book.positions:
            return False
    else:
        return False
    broker = engine.broker
    if broker.open_orders():
        return False
    if book.plans or book.exit_reasons or book.unresolved:
        return False
    if book.positions and engine.gate._blockers:
        return False
    if getattr(engine, "market_now", None) is None:
        return False
    return True


def horizon(engine, now: datetime, nxt: datetime | None = None) -> tuple[datetime, int | None] | None:
    """(earliest promised time, last cycle number that may be skipped or None) after the cycle at ``now``,
    or None when the next tick must be visited (as soon as a promise is at or before ``nxt``, the next
    tick: nothing could be skipped)."""
    nxt = nxt or now
    if not engine_quiet(engine):
        return None
    market = engine.market_now
    best = FAR
    # the cheap promises first (the order changes nothing: every one must hold, the earliest wins)
    for t in (venue_horizon(engine, now), kill_log_horizon(engine)):
        if t is None or t <= nxt:
            return None
        best = min(best, t)
    promises = [getattr(strat, "horizon_next_wake", None) for strat in engine.strategies]
    if None in promises:   # a plugin without a promise: no other plugin's (possibly costly) promise is asked
        return None
    for strat, promise in zip(engine.strategies, promises):
        try:
            t = promise(market, data=engine.market) if getattr(strat, "horizon_reads_data", False) else promise(market)
            if isinstance(t, dict):
                t = _bars_closed(engine.market, t, nxt)
        except Exception:  # noqa: BLE001
            return None
        if t is None or t <= nxt:
            return None
        best = min(best, t)
    t = position_horizon(engine, now)
    if t is None or t <= nxt:
        return None
    best = min(best, t)
    t = risk_horizon(engine, now)
    if t is None or t <= nxt:
        return None
    best = min(best, t)
    r = regime_horizon(engine, now)
    if r is None:
        return None
    t, max_cycle = r
    if t <= now or (max_cycle is not None and max_cycle <= engine.cycle):
        return None
    return min(best, t), max_cycle


# ============================================================================ catch-up
def catch_up(engine, ticks: list[datetime]) -> None:
    """Account for the quiet cycles at ``ticks`` exactly as running them would have."""
    if not ticks:
        return
    reporting = engine.session_log is not None or engine.store is not None
    if reporting and len(ticks) > SPAN_MAX:   # bounded memory: one span record per SPAN_MAX cycles
        for k in range(0, len(ticks), SPAN_MAX):
            catch_up(engine, ticks[k:k + SPAN_MAX])
        return
    every = engine.settings.engine.regime_refresh_cycles
    market = engine.market
    label = (engine.regime.regime, engine.regime.confidence, engine.regime.detector)
    reports: list[dict] = []
    first = engine.cycle + 1
    # the span's refresh cycles (cycle 1 and every multiple of ``every``), by arithmetic: a span is up to
    # the whole replay long, and a Python pass over its ticks would cost what skipping them saved
    refresh = list(range(-first % every, len(ticks), every))
    if first == 1 and (not refresh or refresh[0] != 0):
        refresh.insert(0, 0)
    if not reporting and refresh and getattr(engine.regime_detector, "horizon_stateless", False):
        refresh = refresh[-1:]   # a detector without state: only the last reading of the span is kept
    refresh_set = set(refresh)
    last = len(ticks) - 1
    lean_snap = None
    if not reporting:   # the marks first: the last cycle's report reads the account
        lean_snap = _lean_marks(engine, ticks)   # the last tick's snapshot, reused below (a pure read)
    for k in range(len(ticks)) if reporting else sorted(refresh_set | {last}):
        now = ticks[k]
        cycle = first + k
        snap = last_snap = lean_snap if k == last and lean_snap is not None else market.snapshot(now)
        report = None
        if reporting or k == last:   # without a log or store only the last cycle's report is kept (last_report)
            report = new_report(cycle, now)
            prices = snap.prices()
            if engine._update_marks is not None:
                engine._update_marks(prices)
            report["prices"] = prices
            report["stale_symbols"] = dict(snap.stale)
            for feed, why in snap.feed_problems.items():
                report["notes"].append(f"data feed {feed} unhealthy: {why}")
        if k in refresh_set:   # the scheduled regime refresh: run for real
            scratch = report if report is not None else new_report(cycle, now)
            said = len(scratch["errors"]) + len(scratch["notes"])
            engine.cycle = cycle            # the detector step reads the cycle number
            engine._detect_regime(snap, now, scratch)
            reading = engine.regime
            if (reading.regime, reading.confidence, reading.detector) != label \
                    or len(scratch["errors"]) + len(scratch["notes"]) != said:
                raise HorizonBroken(f"regime changed inside a promised span at cycle {cycle} ({now}): "
                                    f"{label} -> {reading.regime}, {scratch['errors'] + scratch['notes']}")
        elif report is not None:
            report["regime"] = engine.regime   # as _detect_regime leaves it; format_report converts it
        if report is not None:
            # the entry gate's book verdict, as the cycle asks it: a killed or blocked flat book's mode and note
            engine._book_mode(GateContext(now, snap, engine.regime, cycle, {}, None), report)
            if engine._gating[0] is not engine.regime:
                regime = engine.regime.regime
                engine._gating = (engine.regime, [s.name for s in engine.strategies if s.trades_in(regime)],
                                  [s.name for s in engine.strategies if not s.trades_in(regime)])
            report["strategies_run"], report["strategies_gated"] = engine._gating[1][:], engine._gating[2][:]
            report["weights"] = engine.weights.as_dict()
            report["equity_usd"] = report["cash_usd"] = engine.broker.account()
            if reporting:
                format_report(report)
            reports.append(report)
    if not getattr(engine.risk, "horizon_inert", False):   # its on_equity / on_market over the span
        why = engine.risk.horizon_catch_up(engine, ticks[-1], last_snap)
        if why:
            raise HorizonBroken(f"risk kill switch fired inside a promised span ({ticks[-1]}): {why}")
    n = len(ticks)
    engine.cycle = first + n - 1
    engine.stats.cycles += n
    engine.stats.quiet_cycles += n
    engine.book.fills_known_at = ticks[-1]
    _walk_positions(engine, ticks[-1])
    if not reporting:   # the last skipped cycle's report, formatted when read (as the engine's own)
        engine._last_report = engine._unformatted = reports[-1]
    else:
        engine._last_report, engine._unformatted = reports[-1], None
        if engine.session_log is not None:
            engine.session_log.record_span(reports)
        if engine.store is not None:
            for rep in reports:
                engine.store.save_cycle(engine.session_id, rep, [], [], [], None, batch=engine.store_batch)


def _lean_marks(engine, ticks: list[datetime]):
    """Without reports: the broker's marks as the last tick leaves them (each symbol's latest valid price).
    High-water marks and trails are not touched: the position manager's walk over the bars closed since
    its last walk moves them bar by bar at the next visited cycle, as it would have tick by tick (the
    promise guarantees no bar in between fires and every close lies inside its bar's range, so the
    per-cycle mark update is a no-op then). Returns the last tick's snapshot (None without marks)."""
    if engine._update_marks is None:
        return None
    market = engine.market
    snap = market.snapshot(ticks[-1])
    last = snap.prices()
    if all(0 < p < math.inf for p in last.values()):
        engine._update_marks(last)
    else:   # a price missing at the end: the marks tick by tick
        for now in ticks:
            engine._update_marks(market.snapshot(now).prices())
    return snap


# ============================================================================ the driver
def run(engine, clock, max_ticks: int | None = None, before=None, after=None, mode: str | None = None,
        mark_final: bool = False) -> int:
    """Drive ``engine`` over ``clock``'s ticks (a SimulatedClock), skipping what the promises allow.

    ``before(now)`` runs before each *visited* cycle and may return False to stop; ``after(now)`` runs
    after it. The last tick is always visited; ``mark_final`` sets ``engine.final_cycle`` on the cycle that
    ``max_ticks`` ends the run with (as ``run_session`` does).
    Returns the number of ticks accounted for (visited and caught up), as ``SimulatedClock.run`` does."""
    mode = mode or mode_from(engine.settings)
    ticks = clock.ticks[: max_ticks if max_ticks is not None else len(clock.ticks)]
    n = len(ticks)
    i = 0
    advance = engine.advance
    promised: tuple[int, tuple] | None = None   # check mode: (tick index the promise ends at, regime label)
    while i < n:
        now = ticks[i]
        clock._now = now
        if mark_final:
            engine.final_cycle = max_ticks is not None and i + 1 >= max_ticks
        if before is not None and before(now) is False:
            return i + 1
        quiet_before = engine.stats.quiet_cycles
        advance(now)
        if after is not None:
            after(now)
        if promised is not None and i < promised[0]:
            _verify_quiet(engine, now, quiet_before, promised[1])
        if mode == "off" or i >= n - 2:
            i += 1
            continue
        h = horizon(engine, now, ticks[i + 1])
        if h is None:
            i += 1
            continue
        t, max_cycle = h
        j = bisect.bisect_left(ticks, t, lo=i + 1)
        if max_cycle is not None:
            j = min(j, i + 1 + (max_cycle - engine.cycle))
        j = min(j, n - 1)                      # the last tick is always visited
        if j <= i + 1:
            i += 1
            continue
        if mode == "check":
            if promised is None or i >= promised[0]:
                promised = (j, (engine.regime.regime, engine.regime.confidence))
            i += 1
            continue
        catch_up(engine, ticks[i + 1:j])
        i = j
    return n


def _verify_quiet(engine, now: datetime, quiet_before: int, label: tuple) -> None:
    """Check mode: a cycle inside a promised span must have been quiet."""
    rep = engine._last_report
    problems = []
    if (engine.regime.regime, engine.regime.confidence) != label:
        problems.append(f"regime {label} -> {engine.regime.regime}")
    if engine.stats.quiet_cycles != quiet_before + 1:
        problems.append("a plugin woke")
    for key in ("orders", "fills", "exits", "errors", "decisions"):
        if rep.get(key):
            problems.append(f"{key}: {rep[key]!r:.200}")
    mode = rep.get("mode")
    if mode == "trade" and rep.get("notes") or mode in ("killed", "blocked") and len(rep.get("notes", ())) != 1:
        problems.append(f"notes: {rep.get('notes')!r:.200}")
    if mode not in ("trade", "killed", "blocked"):
        problems.append(f"mode {mode}")
    elif mode != "trade" and engine.book.positions:
        problems.append(f"mode {mode} with positions held")
    if problems:
        raise HorizonBroken(f"cycle {engine.cycle} at {now} was promised quiet but: " + "; ".join(problems))


# ============================================================================ the both-ways diff (debug)
def outcome(engine) -> dict:
    """What a run decided and left, JSON-ready: for comparing a run with skipping against one without."""
    from .tradelog import to_jsonable
    account = engine.broker.account()
    orders = getattr(engine.broker, "_orders", None)
    return {"cycle": engine.cycle, "stats": to_jsonable(engine.stats), "trades": engine.closed_trades,
            "orders": [to_jsonable(o) for o in orders.values()] if orders is not None else None,
            "equity_usd": str(account.equity_usd), "cash_usd": str(account.cash_usd),
            "positions": {s: (str(p.qty), p.high_water_mark, p.stop_price) for s, p in engine.positions.items()},
            "regime": to_jsonable(engine.regime), "summary": engine.summary(), "last_report": engine.last_report}


def compare(build, max_ticks: int | None = None) -> list[str]:
    """Debug: run ``build()`` (a fresh ``(engine, clock)`` each call, no log or store) tick by tick and
    with skipping; return what differs (empty: identical orders, trades, equity, positions, statistics,
    summary and last report)."""
    runs = []
    for mode in ("off", "on"):
        engine, clock = build()
        run(engine, clock, max_ticks=max_ticks, mode=mode)
        runs.append(outcome(engine))
    off, on = runs
    return [f"{key}: every tick {str(off[key])[:300]} != skipping {str(on[key])[:300]}"
            for key in off if off[key] != on[key]]
