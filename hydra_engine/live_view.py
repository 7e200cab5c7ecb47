"""Watching a running session: the terminal live view, the one-line-per-cycle log, notifications.

``run_session`` hands every finished cycle to its *watchers* (:func:`watchers_for`). A watcher only reads
(the engine's book, risk state and the cycle report); one that fails is switched off with a warning and
never stops a cycle.

* :class:`LiveView` — stdout is a terminal: a ``rich`` layout redrawn every cycle (paper/live) or a few
  times a second (replays, which run thousands of cycles a second): mode, session, cycle and the time
  to the next one, regime, equity / day P&L / drawdown / exposure against the risk limits, open positions
  per venue, this cycle's proposals with the approving or vetoing rule, orders and fills, errors and
  notes, kill and cooldown state.
* :class:`LineView` — stdout is not a terminal (a service, a pipe): one compact line per cycle in paper
  and live; in a replay a line for every cycle that did something (an order, a fill, an exit, an error, a
  kill) and one every ``heartbeat`` cycles, so a five-year backtest does not write 43,848 lines.
* :class:`~hydra_engine.notify.Notifier` — apprise notifications (``HYDRA_NOTIFY_URLS``).
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from .live_pace import Pace, _duration, pace_text  # noqa: F401  (re-exported: the views' pace)

log = logging.getLogger(__name__)
REPLAY_MODES = ("sim", "backtest")


# ---------------------------------------------------------------- what one frame shows
@dataclass(frozen=True)
class PositionRow:
    venue: str
    symbol: str
    strategy: str
    qty: Decimal
    entry: Decimal
    mark: float | None
    stop: float
    target: float
    trail: str
    unrealised_usd: float | None
    age: timedelta


@dataclass(frozen=True)
class Frame:
    """One immutable picture of the session after a cycle (what the live view draws, what tests read)."""
    mode: str
    session_id: str
    cycle: int
    total_cycles: int | None
    ts: str
    interval_s: int | None                 # live clocks: seconds between cycles
    cycle_done_at: float                   # time.monotonic() when the cycle ended
    cycle_mode: str                        # observe | trade | blocked | killed
    regime: str
    regime_confidence: float
    equity_usd: Decimal | None
    day_pnl_usd: Decimal | None
    drawdown_pct: float | None
    exposure_pct: float | None
    limits: dict[str, float]
    positions: list[PositionRow]
    decisions: list[dict]
    orders: list[dict]
    fills: list[dict]
    exits: list[dict]
    errors: list[str]
    notes: list[str]
    kill: str | None
    cooldown_until: str | None
    halted: str | None
    closed_trades: int
    extra: dict = field(default_factory=dict)

    def seconds_to_next(self) -> float | None:
        if not self.interval_s:
            return None
        return max(0.0, self.interval_s - (time.monotonic() - self.cycle_done_at))


def _venue(broker, symbol: str) -> str:
    try:
        if hasattr(broker, "venue_name"):
            return broker.venue_name(symbol)
        return broker.capabilities_for(symbol).name
    except Exception:  # noqa: BLE001 -- a label only
        return "?"


def capture(engine, report: dict, *, total: int | None = None, interval_s: int | None = None) -> Frame:
    """Read the engine after a cycle; nothing is changed."""
    now = engine_now = report.get("ts")
    prices = report.get("prices") or {}
    equity = Decimal(str(report["equity_usd"])) if report.get("equity_usd") is not None else None
    risk = engine.risk.state
    day_pnl = equity - risk.day_start_equity if equity is not None and risk.day_start_equity > 0 else None
    dd = float(equity / risk.peak_equity - 1) * 100 if equity is not None and risk.peak_equity > 0 else None
    try:
        moment = datetime.fromisoformat(str(engine_now).replace("Z", "+00:00"))
    except ValueError:
        moment = None
    rows, gross = [], 0.0
    for sym, p in sorted(engine.book.positions.items()):
        mark = prices.get(sym)
        unreal = float(p.qty) * (mark - float(p.avg_entry_price)) if mark is not None else None
        if mark is not None:
            gross += abs(float(p.qty) * mark)
        trail = []
        if p.trailing_stop_pct:
            trail.append(f"{p.trailing_stop_pct:g}%")
        if p.trailing_atr_mult:
            trail.append(f"{p.trailing_atr_mult:g}ATR")
        if sym in engine.book.native_stops:
            trail.append("at venue")
        rows.append(PositionRow(_venue(engine.broker, sym), sym, p.strategy, p.qty, p.avg_entry_price, mark,
                                p.stop_price, p.target_price, " ".join(trail) or "-", unreal,
                                (moment - p.opened_at) if moment else timedelta(0)))
    cfg = engine.settings.risk
    return Frame(
        mode=engine.mode, session_id=engine.session_id, cycle=engine.cycle, total_cycles=total, ts=str(now),
        interval_s=interval_s, cycle_done_at=time.monotonic(), cycle_mode=report.get("mode", "?"),
        regime=(report.get("regime") or {}).get("regime", "?"),
        regime_confidence=float((report.get("regime") or {}).get("confidence") or 0.0),
        equity_usd=equity, day_pnl_usd=day_pnl, drawdown_pct=dd,
        exposure_pct=100 * gross / float(equity) if equity else None,
        limits={"daily_loss_pct": cfg.max_daily_loss_pct, "drawdown_pct": cfg.max_drawdown_pct,
                "exposure_pct": cfg.max_total_exposure_pct},
        positions=rows, decisions=list(report.get("decisions") or []), orders=list(report.get("orders") or []),
        fills=list(report.get("fills") or []), exits=list(report.get("exits") or []),
        errors=list(report.get("errors") or []), notes=list(report.get("notes") or []),
        kill=engine.risk.kill_requested(),
        cooldown_until=risk.cooldown_until.isoformat() if risk.cooldown_until and moment and risk.cooldown_until > moment
        else None,
        halted=engine.halted, closed_trades=len(engine.closed_trades))


# ---------------------------------------------------------------- rate and ETA of a replay
def _usd(x) -> str:
    if x is None:
        return "n/a"
    x = round(float(x), 2)
    return f"{'-' if x < 0 else ''}${abs(x):,.2f}"


def _age(d: timedelta) -> str:
    s = int(d.total_seconds())
    return f"{s // 86400}d{s % 86400 // 3600:02d}h" if s >= 86400 else f"{s // 3600}h{s % 3600 // 60:02d}m"


def _decision_text(d: dict) -> str:
    verdict = "APPROVED" if d.get("approved") else f"VETO {d.get('rule')}"
    return f"{d.get('strategy')} {d.get('symbol')}: {verdict}"


def line(frame: Frame) -> str:
    """The compact one-line form of a frame (the non-terminal view)."""
    parts = [f"{frame.ts}", f"{frame.mode}", f"#{frame.cycle}", frame.cycle_mode,
             f"{frame.regime}({frame.regime_confidence:.2f})", f"equity {_usd(frame.equity_usd)}"]
    if frame.day_pnl_usd is not None:
        parts.append(f"day {_usd(frame.day_pnl_usd)}")
    if frame.drawdown_pct is not None:
        parts.append(f"dd {frame.drawdown_pct:.2f}%")
    if frame.exposure_pct is not None:
        parts.append(f"exp {frame.exposure_pct:.1f}%")
    parts.append(f"pos {len(frame.positions)}")
    paced = pace_text(frame.extra)
    if paced:
        parts.append(f"[{paced}]")
    if frame.decisions:
        parts.append("decisions [" + "; ".join(_decision_text(d) for d in frame.decisions) + "]")
    if frame.orders:
        parts.append(f"orders {len(frame.orders)}")
    if frame.fills:
        parts.append(f"fills {len(frame.fills)}")
    if frame.exits:
        parts.append("exits [" + ", ".join(f"{e.get('symbol')} {e.get('reason')}" for e in frame.exits) + "]")
    if frame.kill:
        parts.append(f"KILLED ({frame.kill})")
    elif frame.cooldown_until:
        parts.append(f"cooldown until {frame.cooldown_until}")
    if frame.halted:
        parts.append(f"HALTED ({frame.halted})")
    if frame.errors:
        parts.append("errors [" + " | ".join(frame.errors) + "]")
    return " ".join(parts)


def render(frame: Frame):
    """The ``rich`` layout of one frame."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    head = Table.grid(expand=True, padding=(0, 2))
    for _ in range(3):
        head.add_column(ratio=1)
    progress = f"cycle {frame.cycle}" + (f" / {frame.total_cycles}" if frame.total_cycles else "")
    paced = pace_text(frame.extra)
    if paced:
        progress += f"  ({paced})"
    nxt = frame.seconds_to_next()
    when = f"next cycle in {nxt:.0f} s" if nxt is not None else f"at {frame.ts}"
    state = Text("KILLED: " + frame.kill, style="bold red") if frame.kill else (
        Text(f"cooldown until {frame.cooldown_until}", style="yellow") if frame.cooldown_until else
        Text("kill switch armed (not killed)", style="green"))
    if frame.halted:
        state.append(f"  HALTED: {frame.halted}", style="bold red")
    head.add_row(Text(f"HYDRA {frame.mode}  {frame.session_id}", style="bold"), Text(f"{progress}  {when}"),
                 Text(f"{frame.ts}  [{frame.cycle_mode}]"))
    lim = frame.limits

    def vs(value, limit, neg=False):
        if value is None:
            return Text("n/a")
        used = abs(value) if (value < 0 or not neg) else 0.0
        style = "red" if used >= 0.8 * limit else "yellow" if used >= 0.5 * limit else "green"
        return Text(f"{value:+.2f}% (limit {limit:g}%)" if neg else f"{value:.1f}% (limit {limit:g}%)", style=style)

    day_pct = (float(frame.day_pnl_usd / (frame.equity_usd - frame.day_pnl_usd)) * 100
               if frame.day_pnl_usd is not None and frame.equity_usd and frame.equity_usd != frame.day_pnl_usd else None)
    head.add_row(Text(f"regime {frame.regime} (confidence {frame.regime_confidence:.2f})", style="cyan"),
                 Text(f"equity {_usd(frame.equity_usd)}  day {_usd(frame.day_pnl_usd)}"), state)
    risk_row = Table.grid(padding=(0, 2))
    risk_row.add_row("day P&L", vs(day_pct, lim["daily_loss_pct"], neg=True),
                     "drawdown", vs(frame.drawdown_pct, lim["drawdown_pct"], neg=True),
                     "exposure", vs(frame.exposure_pct, lim["exposure_pct"]))

    pos = Table(title=f"open positions ({len(frame.positions)})", expand=True, title_justify="left")
    for col in ("venue", "symbol", "strategy", "qty", "entry", "mark", "stop", "target", "trail", "unrealised", "age"):
        pos.add_column(col, justify="left" if col in ("venue", "symbol", "strategy", "trail") else "right",
                       no_wrap=True)
    for p in frame.positions:
        u = p.unrealised_usd
        pos.add_row(p.venue, p.symbol, p.strategy, f"{p.qty:f}", f"{p.entry:,.2f}",
                    "n/a" if p.mark is None else f"{p.mark:,.2f}", f"{p.stop:,.2f}", f"{p.target:,.2f}", p.trail,
                    Text(_usd(u), style="green" if (u or 0) >= 0 else "red"), _age(p.age))

    dec = Table(title="this cycle's proposals", expand=True, title_justify="left")
    for col in ("strategy", "symbol", "verdict", "rule", "qty", "reason"):
        dec.add_column(col, overflow="fold")
    for d in frame.decisions:
        dec.add_row(str(d.get("strategy")), str(d.get("symbol")),
                    Text("APPROVED", style="green") if d.get("approved") else Text("VETO", style="red"),
                    str(d.get("rule") or ""), str(d.get("qty") or ""), str(d.get("reason") or ""))

    act = Table(title="orders, fills, exits", expand=True, title_justify="left")
    act.add_column("kind")
    act.add_column("what", overflow="fold")
    for o in frame.orders:
        act.add_row("order", f"{o.get('purpose')} {o.get('side')} {o.get('qty')} {o.get('symbol')} "
                             f"{o.get('order_type')} [{o.get('status')}]"
                             + (f" {o.get('reject_reason')}" if o.get("reject_reason") else ""))
    for f in frame.fills:
        act.add_row("fill", f"{f.get('side')} {f.get('qty')} {f.get('symbol')} @ {f.get('price')} fee {f.get('fee_usd')}")
    for e in frame.exits:
        act.add_row("exit", f"{e.get('symbol')} {e.get('reason')} {e.get('detail') or ''}")

    msgs = Text()
    for e in frame.errors:
        msgs.append(f"error: {e}\n", style="bold red")
    for n in frame.notes:
        msgs.append(f"note: {n}\n", style="yellow")
    parts: list[Any] = [Panel(Group(head, risk_row), title="HYDRA live", border_style="blue"), pos]
    if frame.decisions:
        parts.append(dec)
    if frame.orders or frame.fills or frame.exits:
        parts.append(act)
    if msgs.plain:
        parts.append(Panel(msgs, title="errors and notes", border_style="red" if frame.errors else "yellow"))
    parts.append(Text(f"closed trades {frame.closed_trades}   Ctrl-C ends the session with its summary",
                      style="dim"))
    return Group(*parts)


class _Ticking:
    """What the ``rich.live.Live`` thread draws: the current frame, re-rendered at each refresh so the
    countdown to the next cycle moves between cycles."""

    def __init__(self):
        self.frame: Frame | None = None

    def __rich__(self):
        from rich.text import Text
        return render(self.frame) if self.frame is not None else Text("HYDRA: waiting for the first cycle …")


# ---------------------------------------------------------------- watchers
class Watcher:
    def start(self) -> None: ...

    def on_cycle(self, engine, report: dict, now: datetime) -> None: ...

    def stop(self, summary: dict | None = None) -> None: ...


class LiveView(Watcher):
    """The terminal view. ``console`` defaults to one on stdout; tests pass a recording console."""

    def __init__(self, *, mode: str, total: int | None = None, interval_s: int | None = None, console=None,
                 min_redraw_s: float = 0.25):
        self.console = console or terminal_console()
        self.replay = mode in REPLAY_MODES
        self.total, self.interval_s = total, interval_s
        self.min_redraw_s = min_redraw_s if self.replay else 0.0
        self._ticking = _Ticking()
        self._live = None
        self._last = 0.0
        self.frames = 0
        self.pace = Pace(total) if self.replay else None

    @property
    def frame(self) -> Frame | None:
        return self._ticking.frame

    def start(self) -> None:
        if self.pace is not None:
            self.pace.start()
        from rich.live import Live
        self._live = Live(self._ticking, console=self.console, refresh_per_second=4, transient=False,
                          redirect_stdout=False, redirect_stderr=False)
        self._live.start()

    def on_cycle(self, engine, report: dict, now: datetime) -> None:
        if self.pace is not None:
            self.pace.on_cycle()   # every cycle, drawn or not
        t = time.monotonic()
        last = self.total is not None and engine.cycle >= self.total
        busy = bool(report.get("orders") or report.get("fills") or report.get("exits") or report.get("errors"))
        if self.replay and not last and not busy and t - self._last < self.min_redraw_s:
            return    # a replay runs thousands of cycles a second: a few frames a second are what a person sees
        self._last = t
        self._ticking.frame = capture(engine, report, total=self.total,
                                      interval_s=None if self.replay else self.interval_s)
        if self.pace is not None:
            self._ticking.frame.extra.update(self.pace.fields())
        self.frames += 1
        if self._live is not None:
            self._live.refresh()

    def stop(self, summary: dict | None = None) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


class LineView(Watcher):
    """One compact line per cycle (paper/live), per busy cycle and every ``heartbeat`` cycles (replays)."""

    def __init__(self, *, mode: str, stream=None, heartbeat: int = 500, total: int | None = None):
        self.stream = stream or sys.stdout
        self.replay = mode in REPLAY_MODES
        self.heartbeat, self.total = heartbeat, total
        self.lines = 0
        self.pace = Pace(total) if self.replay else None

    def start(self) -> None:
        if self.pace is not None:
            self.pace.start()

    def on_cycle(self, engine, report: dict, now: datetime) -> None:
        if self.pace is not None:
            self.pace.on_cycle()
        if self.replay:
            busy = (report.get("orders") or report.get("fills") or report.get("exits") or report.get("errors")
                    or report.get("mode") == "killed")
            if not (busy or engine.cycle == 1 or engine.cycle % self.heartbeat == 0
                    or (self.total is not None and engine.cycle >= self.total)):
                return
        try:
            frame = capture(engine, report)
            if self.pace is not None:
                frame.extra.update(self.pace.fields())
            print(line(frame), file=self.stream, flush=True)
            self.lines += 1
        except BrokenPipeError:
            # the reader went away: the session goes on (a position must still be managed); main() ends quietly
            self.on_cycle = lambda *a, **k: None  # type: ignore[method-assign]


class Guarded(Watcher):
    """A watcher whose failure is logged once and switches it off: watching never breaks a cycle."""

    def __init__(self, inner: Watcher):
        self.inner = inner
        self.failed: str | None = None

    def _call(self, what: str, *args) -> None:
        if self.failed:
            return
        try:
            getattr(self.inner, what)(*args)
        except Exception as exc:  # noqa: BLE001
            self.failed = f"{type(self.inner).__name__}.{what}: {type(exc).__name__}: {exc}"
            log.warning("watcher switched off: %s", self.failed)

    def start(self) -> None:
        self._call("start")

    def on_cycle(self, engine, report: dict, now: datetime) -> None:
        self._call("on_cycle", engine, report, now)

    def stop(self, summary: dict | None = None) -> None:
        self._call("stop", summary)


def terminal_console():
    """The console the live view draws on (stdout); tests replace it with a recording one."""
    from rich.console import Console
    return Console()


def stdout_is_terminal(stream) -> bool:
    return hasattr(stream, "isatty") and stream.isatty()


def watchers_for(session, *, progress: bool, total: int | None, stream=None) -> list[Watcher]:
    """The watchers of one ``run_session``: a view when ``progress`` (live on a terminal, lines otherwise)
    and, when ``HYDRA_NOTIFY_URLS`` names services and the session is persisted, the notifier."""
    engine = session.engine
    stream = stream or sys.stdout
    interval = getattr(session.clock, "interval_s", None)
    out: list[Watcher] = []
    if progress:
        tty = stdout_is_terminal(stream)
        out.append(LiveView(mode=engine.mode, total=total, interval_s=interval) if tty
                   else LineView(mode=engine.mode, stream=stream, total=total))
    if session.session_log is not None:
        from .notify import notifier_from_env
        notifier = notifier_from_env(engine.settings, mode=engine.mode, label=engine.mode)
        if notifier is not None:
            out.append(notifier)
    return [Guarded(w) for w in out]


__all__ = ["Frame", "PositionRow", "Pace", "pace_text", "capture", "line", "render", "LiveView", "LineView", "Guarded", "Watcher",
           "watchers_for"]
