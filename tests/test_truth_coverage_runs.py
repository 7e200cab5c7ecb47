"""Issue #17, remaining parts: the coverage table before a sim run (``run``, the offline default) and once
before a walk-forward, not only before ``backtest``. On the shipped data extract."""
from __future__ import annotations

from datetime import date

from hydra_engine.backtest import run_walk_forward

from .conftest import make_settings
from .test_cli import call, isolate, write_config


def test_a_sim_run_prints_the_coverage_table_before_its_first_cycle(tmp_path, monkeypatch):
    isolate(monkeypatch, tmp_path)
    cfg = write_config(tmp_path)   # BTC/USD, ETH/USD, SPY + VIX, 2024-03-04 .. 2024-03-08
    code, out, err = call(["--config", str(cfg), "run", "--cycles", "30", "--no-progress"])
    assert code == 0, err
    assert "data coverage" not in err
    head, summary = out.split("=== HYDRA session summary ===")
    lines = head.strip().splitlines()
    # 30 hourly cycles from 2024-03-04 00:00Z: the table names the days the run covers
    assert lines[0] == "data coverage 2024-03-04 .. 2024-03-06 (end exclusive):"
    rows = {tuple(line.split()[:2]): line for line in lines[2:] if not line.strip().startswith("strategy ")}
    assert ("BTC/USD", "bars") in rows and ("SPY", "bars") in rows and ("VIX", "bars") in rows
    assert ("BTC/USD", "funding_rate") in rows
    assert "2024-03-04 2024-03-05" in rows[("SPY", "bars")]       # Monday's and Tuesday's sessions
    assert any(line.strip().startswith("strategy ") for line in lines)
    assert "data coverage" not in summary                          # said once, before the run


def test_walk_forward_says_the_coverage_once_for_all_its_windows(tmp_path):
    said: list[str] = []
    s = make_settings(tmp_path, start="2024-03-01", end="2024-03-15")
    res = run_walk_forward(s, data_dir=s.resolve_path(s.data.replay_dir), start=date(2024, 3, 1),
                           end=date(2024, 3, 15), spec="3d:5d", out=tmp_path / "wf", progress=False,
                           say=said.append)
    assert [w["test"] for w in res["windows"]] == [["2024-03-04", "2024-03-09"], ["2024-03-09", "2024-03-14"],
                                                   ["2024-03-14", "2024-03-15"]]
    tables = [t for t in said if t.startswith("data coverage")]
    assert tables == [said[0]]                                     # once, before the first window ran
    assert said[0].startswith("data coverage 2024-03-04 .. 2024-03-15 (end exclusive):")
    assert res["coverage"]["span"] == ["2024-03-04", "2024-03-15"]
    spy = next(r for r in res["coverage"]["rows"] if r["symbol"] == "SPY" and r["kind"] == "bars")
    assert (spy["from"], spy["to"], spy["status"]) == ("2024-03-04", "2024-03-14", "full")
    import json
    assert json.loads((tmp_path / "wf" / "walk_forward.json").read_text())["coverage"]["rows"]
