"""Watching a session: the rich live view (a rendered frame captured), the one-line-per-cycle mode when
piped, and notifications through apprise to an HTTP double -- all on a paper run against the loopback
Alpaca double with the real 2023-10-23 squeeze market (tests/test_fault_injection.py's ``double_env``)."""
from __future__ import annotations

import io
import json
import re
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from rich.console import Console

import hydra_engine.live_view as lv
from hydra_engine.cli import main

from .test_fault_injection import FastClock, double_env, paper_config, session_doc  # noqa: F401

UTC = timezone.utc


def run_paper_watched(cfg, monkeypatch, double, *, cycles: int, args=(), kill_at: int | None = None) -> int:
    """`run --mode paper` through the CLI *with* its view (no --no-progress); the double's exchange fills
    what is working between cycles; ``kill_at``: the manual kill arrives before that cycle."""
    import hydra_engine.paper as paper
    from signals.binance import BinanceFuturesClient
    original = paper.build_paper_session

    def build(settings, **kw):
        kw["clock"] = FastClock(1)
        kw.setdefault("binance_client", BinanceFuturesClient(sleep=lambda s: None))
        session = original(settings, **kw)
        session.engine.broker._sleep = lambda s: None
        hook = session.before_cycle

        def before(engine, t):
            double.now = datetime.now(UTC)
            for o in list(double._all_orders()):
                if o["status"] in ("accepted", "pending_new", "new") and o["type"] == "market":
                    double.fill(o["client_order_id"], str(double.bars[o["symbol"]][-1]["c"]))
            if kill_at is not None and engine.cycle + 1 == kill_at:
                paper.set_control(session.store, "killed", "test kill", t)
            hook(engine, t)
        session.before_cycle = before
        return session

    monkeypatch.setattr(paper, "build_paper_session", build)
    return main(["--config", str(cfg), "run", "--mode", "paper", "--cycles", str(cycles), *args])


def test_the_live_view_draws_the_session_on_a_terminal(tmp_path, monkeypatch, double_env, capsys):  # noqa: F811
    double, _ = double_env
    screen = Console(file=io.StringIO(), force_terminal=True, width=160, record=True)
    monkeypatch.setattr(lv, "terminal_console", lambda: screen)
    monkeypatch.setattr(lv, "stdout_is_terminal", lambda stream: True)
    views = []
    real_init = lv.LiveView.__init__

    def keep(self, **kw):
        real_init(self, **kw)
        views.append(self)
    monkeypatch.setattr(lv.LiveView, "__init__", keep)

    assert run_paper_watched(paper_config(tmp_path), monkeypatch, double, cycles=3) == 0
    out = capsys.readouterr().out
    assert "=== HYDRA session summary ===" in out            # the live view stops before the summary
    drawn = screen.export_text()
    doc = session_doc(tmp_path)
    entry = next(o for o in doc["orders"] if o["purpose"] == "entry")
    # what a person sees: the session, each cycle, the regime, the limits, the approved proposal, the order,
    # the fill, and the open position with its stop and target
    assert "HYDRA paper" in drawn and doc["session"]["session_id"] in drawn
    for n in (1, 2, 3):
        assert f"cycle {n} / 3" in drawn
    assert "next cycle in" in drawn and "(limit 5%)" in drawn and "(limit 10%)" in drawn and "(limit 25%)" in drawn
    assert "APPROVED" in drawn and "liquidation_cascade" in drawn
    assert f"entry buy {entry['qty']} {entry['symbol']}" in drawn
    assert "open positions (1)" in drawn and entry["symbol"] in drawn and "kill switch armed" in drawn
    frame = views[0].frame                                   # the last frame, as data
    assert frame.cycle == 3 and [p.symbol for p in frame.positions] == [entry["symbol"]]
    pos = frame.positions[0]
    assert pos.venue == "alpaca" and pos.stop < float(pos.entry) < pos.target and pos.unrealised_usd is not None
    assert frame.regime == doc["cycle_details"][2]["regime"]["regime"]


def test_piped_output_is_one_line_per_cycle(tmp_path, monkeypatch, double_env, capsys):  # noqa: F811
    double, _ = double_env
    assert run_paper_watched(paper_config(tmp_path), monkeypatch, double, cycles=4, kill_at=3) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if re.match(r"^\d{4}-\d\d-\d\dT\S+Z paper #\d+ ", ln)]
    assert [int(re.search(r"#(\d+)", ln).group(1)) for ln in lines] == [1, 2, 3, 4]
    assert "APPROVED" in lines[0] and "orders 1" in lines[0]
    assert "fills 1" in lines[1] and "pos 1" in lines[1]
    assert "KILLED (manual: test kill)" in lines[2] and "exits [" in lines[2] and "kill]" in lines[2]
    assert "pos 0" in lines[3]
    assert "\x1b[" not in out                                 # no terminal codes in a pipe
    assert out.index(lines[-1]) < out.index("=== HYDRA session summary ===")


def test_a_replay_piped_prints_busy_cycles_and_a_heartbeat():
    view = lv.LineView(mode="sim", stream=io.StringIO(), heartbeat=3, total=7)

    class Risk:
        state = type("S", (), {"day_start_equity": 0, "peak_equity": 0, "cooldown_until": None})()

        def kill_requested(self):
            return None

    class Engine:
        mode, session_id, halted, closed_trades, broker = "sim", "s", None, [], None
        risk = Risk()
        book = type("B", (), {"positions": {}, "native_stops": set()})()
        settings = type("C", (), {"risk": type("R", (), {"max_daily_loss_pct": 5, "max_drawdown_pct": 10,
                                                         "max_total_exposure_pct": 25})()})()
        cycle = 0

    eng = Engine()
    for n in range(1, 8):
        eng.cycle = n
        report = {"cycle": n, "ts": f"2024-01-01T0{n}:00:00Z", "mode": "trade", "equity_usd": "100000.00",
                  "regime": {"regime": "TRENDING_UP", "confidence": 0.9}, "fills": [{}] if n == 5 else []}
        view.on_cycle(eng, report, datetime(2024, 1, 1, n, tzinfo=UTC))
    shown = [int(re.search(r"#(\d+)", ln).group(1)) for ln in view.stream.getvalue().splitlines()]
    assert shown == [1, 3, 5, 6, 7]      # first, heartbeats (3, 6), the busy cycle 5, the last


def test_a_watcher_that_fails_is_switched_off_and_the_session_goes_on(caplog):
    class Broken(lv.Watcher):
        calls = 0

        def on_cycle(self, engine, report, now):
            Broken.calls += 1
            raise RuntimeError("boom")

    w = lv.Guarded(Broken())
    w.on_cycle(None, {}, None)
    w.on_cycle(None, {}, None)
    assert Broken.calls == 1 and "boom" in w.failed and "watcher switched off" in caplog.text


# ---------------------------------------------------------------- notifications
class Inbox(BaseHTTPRequestHandler):
    received: list = []
    delay_s = 0.0

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        time.sleep(self.delay_s)
        type(self).received.append({"path": self.path, **json.loads(body)})
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture()
def inbox():
    handler = type("InboxHandler", (Inbox,), {"received": [], "delay_s": 0.0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, handler
    server.shutdown()


def test_notifications_reach_an_http_double_and_a_dead_service_never_shows_its_token(
        tmp_path, monkeypatch, double_env, inbox, capsys, caplog):  # noqa: F811
    double, _ = double_env
    server, handler = inbox
    port = server.server_address[1]
    double.mock.add_passthru(f"http://127.0.0.1:{port}")
    double.mock.add_passthru("http://127.0.0.1:9")
    # the second service is dead (the discard port) and its URL carries a token that must never be shown
    monkeypatch.setenv("HYDRA_NOTIFY_URLS", f"json://127.0.0.1:{port}/hook, json://127.0.0.1:9/SECRET-TOKEN-42")
    assert run_paper_watched(paper_config(tmp_path), monkeypatch, double, cycles=4, kill_at=3,
                             args=["--no-progress"]) == 0
    titles = [m["title"] for m in handler.received]
    doc = session_doc(tmp_path)
    trade = doc["trades"][0]
    assert all(m["path"] == "/hook" for m in handler.received)
    assert sum(t.startswith("HYDRA paper: fill ") for t in titles) == len(doc["fills"]) == 2
    assert "HYDRA paper: KILL SWITCH" in titles
    exit_msg = next(m for m in handler.received if m["title"].startswith("HYDRA paper: exit "))
    assert exit_msg["title"] == f"HYDRA paper: exit {trade['symbol']} (kill)"
    assert f"closed by kill: entry {trade['entry_price']} -> exit {trade['exit_price']}" in exit_msg["message"]
    assert titles[-1] == "HYDRA paper: session ended" and "1 closed trades" in handler.received[-1]["message"]
    out = capsys.readouterr()
    shown = out.out + out.err + caplog.text + "".join(p.read_text() for p in (tmp_path / "logs").glob("session-*"))
    assert "notification not delivered to service 2 (json)" in caplog.text
    assert "SECRET-TOKEN-42" not in shown


def test_sending_never_blocks_a_cycle(inbox):
    from hydra_engine.notify import Notifier
    server, handler = inbox
    handler.delay_s = 2.0                      # a slow service
    n = Notifier([f"json://127.0.0.1:{server.server_address[1]}/slow"], max_queue=2, timeout_s=0.1)
    n.start()
    t0 = time.monotonic()
    for i in range(5):
        n.send(f"m{i}", "body")
    assert time.monotonic() - t0 < 0.5       # queued, not sent in the caller's thread
    assert n.dropped >= 2                    # the bounded queue dropped (and counted) the overflow
    n.stop()                                 # bounded by timeout_s: a slow service does not hold the exit
    assert time.monotonic() - t0 < 1.5


def test_an_unknown_url_is_skipped_by_position_and_scheme_only(caplog):
    from hydra_engine.notify import Notifier
    n = Notifier(["notaservice://abc/SECRET-TOKEN-7"])
    assert n.services == [] and n.problems == ["service 1 (notaservice): not a URL apprise understands; skipped"]
    assert "SECRET-TOKEN-7" not in caplog.text
