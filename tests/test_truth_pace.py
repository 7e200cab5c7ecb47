"""Issue #17: progress that tells the truth from the first second. The live view's rate and ETA are measured
from the end of the first cycle, whose one-off work (the regime refit on the history before the span) would
otherwise make a one-minute replay promise many minutes."""
from __future__ import annotations

import io
import re
from datetime import datetime, timezone

import pytest

import hydra_engine.live_view as lv

UTC = timezone.utc


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_the_eta_ignores_the_first_cycles_one_off_work():
    clock = FakeClock()
    pace = lv.Pace(1001, clock=clock)
    pace.start()
    clock.t += 30.0                      # cycle 1: a 30 s regime refit
    pace.on_cycle()
    assert pace.fields() == {"rate_cycles_s": None, "eta_s": None, "first_cycle_s": 30.0}
    assert lv.pace_text(pace.fields()).startswith("first cycle (one-off setup, e.g. the regime refit) took 30.0 s")
    for _ in range(100):                 # cycles 2..101: 10 ms each
        clock.t += 0.01
        pace.on_cycle()
    assert pace.rate() == pytest.approx(100.0)
    assert pace.eta_s() == pytest.approx(9.0)          # 900 cycles left at 100 a second
    naive = (1001 - 101) / (101 / 31.0)                 # counted from the start: ~276 s for 9 s of work
    assert naive > 25 * pace.eta_s()
    assert lv.pace_text(pace.fields()) == "100 cycles/s, ETA 9s"
    for _ in range(900):
        clock.t += 0.01
        pace.on_cycle()
    assert pace.eta_s() == 0


def _stub_engine():
    class Risk:
        state = type("S", (), {"day_start_equity": 0, "peak_equity": 0, "cooldown_until": None})()

        def kill_requested(self):
            return None

    class Engine:
        mode, session_id, halted, closed_trades, broker = "backtest", "s", None, [], None
        risk = Risk()
        book = type("B", (), {"positions": {}, "native_stops": set()})()
        settings = type("C", (), {"risk": type("R", (), {"max_daily_loss_pct": 5, "max_drawdown_pct": 10,
                                                         "max_total_exposure_pct": 25})()})()
        cycle = 0
    return Engine()


@pytest.mark.parametrize("view_kind", ["line", "live"])
def test_both_views_show_the_rate_from_the_second_cycle_on(view_kind):
    from rich.console import Console
    clock = FakeClock()
    if view_kind == "line":
        view = lv.LineView(mode="backtest", stream=io.StringIO(), heartbeat=50, total=201)
    else:
        view = lv.LiveView(mode="backtest", total=201, console=Console(file=io.StringIO(), width=200), min_redraw_s=0)
    view.pace = lv.Pace(201, clock=clock)
    eng = _stub_engine()
    view.start()
    etas = []
    for n in range(1, 202):
        clock.t += 20.0 if n == 1 else 0.005
        eng.cycle = n
        report = {"cycle": n, "ts": "2024-01-01T00:00:00Z", "mode": "trade", "equity_usd": "100000.00",
                  "regime": {"regime": "TRENDING_UP", "confidence": 0.9}}
        view.on_cycle(eng, report, datetime(2024, 1, 1, tzinfo=UTC))
        if view_kind == "live":
            etas.append(view.frame.extra["eta_s"])
    view.stop()
    if view_kind == "line":
        lines = view.stream.getvalue().splitlines()
        assert "first cycle (one-off setup, e.g. the regime refit) took 20.0 s" in lines[0]
        m = re.search(r"\[(\d+) cycles/s, ETA (\S+)\]", lines[1])     # cycle 50
        assert m and m.groups() == ("200", "1s"), lines[1]            # 151 left at 200/s, not ~63 s
    else:
        assert etas[0] is None
        assert etas[49] == pytest.approx(151 / 200)
        assert lv.pace_text(view.frame.extra) == "200 cycles/s, ETA 0s"


def test_a_paper_view_has_no_pace():
    assert lv.LineView(mode="paper", stream=io.StringIO()).pace is None
    assert lv.LiveView(mode="paper", console=object()).pace is None
