"""Notifications through apprise (one library, many services: Telegram, Discord, Slack, e-mail, …).

Configured by ``HYDRA_NOTIFY_URLS`` in the environment: apprise URLs separated by spaces or commas, e.g.
``tgram://BOT_TOKEN/CHAT_ID discord://WEBHOOK_ID/TOKEN``. Those URLs hold tokens, so HYDRA never prints
or logs one: a service is named by its position and scheme only ("service 2 (discord)"). ``[notify]
events`` picks what is sent: ``fill``, ``exit`` (a closed trade, with its reason and P&L), ``kill`` (a kill
switch fired or the manual kill arrived), ``error`` (a cycle's errors), ``daily_summary`` (when the UTC day
turns, and once when the session ends).

Sending never blocks or breaks a cycle: messages go into a bounded queue that one daemon thread sends
with a per-message timeout; a full queue drops the message and counts it; a failed send is logged as a
warning (no URL) and counted. Paper and live sessions only: a replay runs years of days in seconds.
"""
from __future__ import annotations

import logging
import os
import queue
import re
import threading
from datetime import datetime
from decimal import Decimal

from .live_view import Watcher

log = logging.getLogger(__name__)
ENV_VAR = "HYDRA_NOTIFY_URLS"
NOTIFY_MODES = ("paper", "live")
_STOP = object()


def parse_urls(text: str) -> list[str]:
    return [u for u in re.split(r"[\s,]+", text.strip()) if u]


def _scheme(url: str) -> str:
    return url.split("://", 1)[0] if "://" in url else "?"


class Notifier(Watcher):
    """Turns cycle reports into messages and sends them in the background."""

    def __init__(self, urls: list[str], *, events=("fill", "exit", "kill", "error", "daily_summary"),
                 timeout_s: float = 10.0, max_queue: int = 200, session_label: str = ""):
        import apprise
        # apprise's own log lines may carry the URL's host and path parts: keep them out of HYDRA's log
        logging.getLogger("apprise").setLevel(logging.CRITICAL)
        self.events = set(events)
        self.timeout_s = timeout_s
        self.services: list[tuple[str, object]] = []    # (label, apprise.Apprise holding one URL)
        self.problems: list[str] = []
        for i, url in enumerate(urls, 1):
            ap = apprise.Apprise()
            label = f"service {i} ({_scheme(url)})"
            if ap.add(url):
                self.services.append((label, ap))
            else:
                self.problems.append(f"{label}: not a URL apprise understands; skipped")
                log.warning("notifications: %s: not a URL apprise understands; skipped", label)
        self.label = session_label
        self.sent = self.failed = self.dropped = 0
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._trades_seen = 0
        self._day: str | None = None
        self._day_start_equity: Decimal | None = None
        self._day_trades = 0
        self._day_pnl = Decimal(0)
        self._killed: str | None = None
        self._last_equity: Decimal | None = None

    # ------------------------------------------------------------ sending (the background thread)
    def start(self) -> None:
        if self._thread is None and self.services:
            self._thread = threading.Thread(target=self._run, name="hydra-notify", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            title, body, kind = item
            for label, ap in self.services:
                try:
                    ok = ap.notify(body=body, title=title, notify_type=kind)
                except Exception as exc:  # noqa: BLE001 -- a plugin's bug must not end the thread
                    ok = False
                    why = type(exc).__name__
                else:
                    why = "the service refused or did not answer"
                if ok:
                    self.sent += 1
                else:
                    self.failed += 1
                    log.warning("notification not delivered to %s: %s", label, why)

    def send(self, title: str, body: str, kind: str = "info") -> None:
        """Queue one message; never blocks (a full queue drops it and counts it)."""
        if not self.services:
            return
        try:
            self._queue.put_nowait((f"HYDRA {self.label}: {title}".strip(), body, kind))
        except queue.Full:
            self.dropped += 1
            log.warning("notification queue full: %r dropped", title)

    def stop(self, summary: dict | None = None) -> None:
        if "daily_summary" in self.events and summary:
            self.send("session ended", f"equity ${Decimal(str(summary['final_equity_usd'])):,.2f} "
                      f"({summary['return_pct']:+.2f}%), {summary['closed_trades']} closed trades, "
                      f"{summary['orders']} orders, {summary.get('errors', 0)} errors")
        if self._thread is not None:
            try:
                self._queue.put(_STOP, timeout=1)
            except queue.Full:
                pass
            # give the last messages (the summary) their chance, bounded: a dead service must not hold the exit
            self._thread.join(timeout=self.timeout_s)
            self._thread = None

    # ------------------------------------------------------------ what a cycle means
    def on_cycle(self, engine, report: dict, now: datetime) -> None:
        equity = Decimal(str(report["equity_usd"])) if report.get("equity_usd") is not None else None
        day = now.date().isoformat()
        if self._day is None:
            self._day, self._day_start_equity = day, equity
        elif day != self._day:
            if "daily_summary" in self.events:
                self._daily(self._day, self._last_equity)
            self._day, self._day_start_equity, self._day_trades, self._day_pnl = day, self._last_equity, 0, Decimal(0)
        if equity is not None:
            self._last_equity = equity
        if "fill" in self.events:
            for f in report.get("fills") or []:
                self.send(f"fill {f.get('symbol')}", f"{f.get('side')} {f.get('qty')} {f.get('symbol')} @ "
                          f"{f.get('price')} (fee ${f.get('fee_usd')}) at {f.get('ts')}")
        new_trades = engine.closed_trades[self._trades_seen:]
        self._trades_seen = len(engine.closed_trades)
        for t in new_trades:
            pnl = Decimal(str(t["pnl_usd"]))
            self._day_trades += 1
            self._day_pnl += pnl
            if "exit" in self.events:
                self.send(f"exit {t['symbol']} ({t['exit_reason']})",
                          f"{t['strategy']} {t['symbol']} closed by {t['exit_reason']}: entry {t['entry_price']} -> "
                          f"exit {t['exit_price']}, P&L {'-' if pnl < 0 else ''}${abs(pnl):,.2f}",
                          "success" if pnl > 0 else "warning")
        kill = engine.risk.kill_requested()
        if kill and kill != self._killed and "kill" in self.events:
            self.send("KILL SWITCH", f"{kill}: every position is being closed and entries are blocked until "
                      "`hydra resume`", "failure")
        self._killed = kill
        if "error" in self.events and report.get("errors"):
            self.send(f"errors in cycle {report.get('cycle')}", "\n".join(map(str, report["errors"])), "failure")

    def _daily(self, day: str, equity: Decimal | None) -> None:
        change = (equity - self._day_start_equity) if equity is not None and self._day_start_equity else None
        body = (f"equity ${equity:,.2f}" if equity is not None else "equity n/a")
        if change is not None:
            body += f", day {'-' if change < 0 else '+'}${abs(change):,.2f}"
        body += (f", {self._day_trades} closed trades, realised {'-' if self._day_pnl < 0 else ''}"
                 f"${abs(self._day_pnl):,.2f}")
        self.send(f"daily summary {day}", body)


def notifier_from_env(settings, environ=None, *, mode: str = "paper", label: str = "") -> Notifier | None:
    """The session's notifier, or None when ``HYDRA_NOTIFY_URLS`` is unset or the session is a replay."""
    if mode not in NOTIFY_MODES:
        return None
    urls = parse_urls((environ if environ is not None else os.environ).get(ENV_VAR, ""))
    if not urls:
        return None
    return Notifier(urls, events=settings.notify.events, timeout_s=settings.notify.timeout_s,
                    session_label=label)


__all__ = ["Notifier", "notifier_from_env", "parse_urls", "ENV_VAR"]
