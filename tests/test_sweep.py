"""Parameter sweeps on dask.distributed (issue #24): parameters, equivalence with `hydra backtest`, failures
and resume, data read once per worker, a LocalCluster, and a real scheduler with two worker processes on
127.0.0.1 (`dask scheduler` / `dask worker`). Real shipped data, short spans, the rule-based detector."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from hydra_engine import sweep as S
from hydra_engine.backtest import run_backtest, run_walk_forward, walk_forward_windows
from hydra_engine.cli import main

from .conftest import PROJECT_ROOT, SHIPPED_DATA, make_settings

FAST = {"engine": {"regime_detector": "trend_vol_rule", "regime_refit_days": 0}}


def _settings(tmp_path, **kw):
    return make_settings(tmp_path, **{**FAST, **kw})


def _config(tmp_path: Path) -> str:
    path = tmp_path / "sweep.toml"
    path.write_text(f'[engine]\nlog_dir = "{tmp_path / "logs"}"\nregime_detector = "trend_vol_rule"\n'
                    'regime_refit_days = 0\n'
                    '[universe]\nsymbols = ["BTC/USD", "ETH/USD", "SPY"]\ndata_only = ["VIX"]\n'
                    f'[data]\nreplay_dir = "{SHIPPED_DATA}"\n[storage]\nurl = "sqlite:///{tmp_path / "db.sqlite"}"\n')
    return str(path)


# ------------------------------------------------------------------ parameters
def test_parameters_values_ranges_and_short_plugin_names():
    assert S.parse_param("risk.max_position_pct=1,2.5,3") == ("risk.max_position_pct", {"values": [1, 2.5, 3]})
    assert S.parse_param("liquidation_cascade.stop_pct=1.0:2.0:0.5") == (
        "strategies.params.liquidation_cascade.stop_pct", {"values": [1.0, 1.5, 2.0]})
    assert S.parse_param("risk.max_trades_per_day=10:30:10")[1] == {"values": [10, 20, 30]}
    assert S.parse_param("risk.kelly_fraction=0.1..0.5")[1] == {"low": 0.1, "high": 0.5}
    for bad, why in [("risk.max_position_pct", "NAME=VALUES"), ("stop_pct=1", "SECTION.KEY"),
                     ("risk.x=3:1:1", "HIGH >= LOW"), ("risk.x=1:2", "LOW:HIGH:STEP"), ("risk.x=2..1", "LOW <= HIGH")]:
        with pytest.raises(S.SweepError, match=why):
            S.parse_param(bad)
    params = dict([S.parse_param("risk.a=1,2"), S.parse_param("risk.b=x,y,z")])
    assert S.grid(params) == [{"risk.a": a, "risk.b": b} for a in (1, 2) for b in "xyz"]
    with pytest.raises(S.SweepError, match="needs --search random"):
        S.grid(dict([S.parse_param("risk.a=1..2")]))
    rnd = dict([S.parse_param("risk.a=1..9"), S.parse_param("risk.b=0.0..1.0")])
    draws = S.random_configs(rnd, 30, seed=7)
    assert draws == S.random_configs(rnd, 30, seed=7) != S.random_configs(rnd, 30, seed=8)
    assert all(isinstance(d["risk.a"], int) and 1 <= d["risk.a"] <= 9 and 0 <= d["risk.b"] <= 1 for d in draws)


def test_a_configuration_is_validated_before_anything_runs(tmp_path):
    s = _settings(tmp_path)
    t = S.settings_with(s, {"risk.max_position_pct": 2.0, "strategies.params.liquidation_cascade.stop_pct": 1.5})
    assert t.risk.max_position_pct == 2.0 and t.strategies.params["liquidation_cascade"]["stop_pct"] == 1.5
    assert t.config_hash() != s.config_hash() and s.risk.max_position_pct == 3.0   # the base is unchanged
    with pytest.raises(S.SweepError, match="'max_positon_pct' is not a key of \\[risk\\]"):
        S.settings_with(s, {"risk.max_positon_pct": 2.0})
    with pytest.raises(S.SweepError, match="risk_per_trade_pct"):
        S.settings_with(s, {"risk.risk_per_trade_pct": 9.0})          # pydantic's bound (le=3)
    with pytest.raises(S.SweepError, match="max_position_pct"):       # the risk layer: never looser
        S.make_tasks(s, [{"risk.max_position_pct": 6.0}], data_dir=SHIPPED_DATA, start=date(2024, 3, 1),
                     end=date(2024, 3, 8))
    with pytest.raises(S.SweepError, match="no_such_param"):          # the plugin refuses its unknown parameter
        S.make_tasks(s, [{"strategies.params.liquidation_cascade.no_such_param": 1}], data_dir=SHIPPED_DATA,
                     start=date(2024, 3, 1), end=date(2024, 3, 8))


# ------------------------------------------------------------------ the same engine, the same numbers
def test_a_sweep_row_equals_the_backtest_of_that_configuration(tmp_path):
    """Persistence off and in memory (the sweep) gives exactly the metrics `hydra backtest` reads back from its
    session log and journal for the same configuration and span."""
    from hydra_engine.config import load_settings
    base = S.settings_with(load_settings(), {   # the shipped configuration: every plugin, perps, 15 symbols
        "engine.regime_detector": "trend_vol_rule", "engine.regime_refit_days": 0,
        "engine.log_dir": str(tmp_path / "logs"), "storage.url": f"sqlite:///{tmp_path / 'db.sqlite'}"})
    overrides = {"strategies.params.liquidation_cascade.stop_pct": 1.5, "risk.max_position_pct": 2.0}
    s = S.settings_with(base, overrides)
    start, end = date(2024, 3, 4), date(2024, 3, 14)
    bt = run_backtest(s, data_dir=SHIPPED_DATA, start=start, end=end, out=tmp_path / "bt", progress=False,
                      baselines=False)
    [task] = S.make_tasks(base, [overrides], data_dir=SHIPPED_DATA, start=start, end=end, keep_doc=True)
    res = S.run_task(task)
    assert res["status"] == "ok", res.get("traceback")
    hydra = bt["metrics"]["hydra"]
    assert res["metrics"] == hydra                                    # every metric, vetoes by rule included
    assert hydra["trades"]["trades"] > 0 and hydra["vetoes_by_rule"]   # the span trades and refuses something
    row = bt["comparison"][0]
    assert res["metrics_row"] == {k: row[k] for k in S.METRICS}
    assert res["config_hash"] == s.model_copy(update={"data": s.data.model_copy(
        update={"start": start, "end": end})}).config_hash()
    assert not (tmp_path / "logs").exists()                           # the sweep run wrote nothing


def test_data_files_are_read_once_per_worker_process(tmp_path):
    base = _settings(tmp_path)
    tasks = S.make_tasks(base, [{"risk.max_position_pct": 2.0}, {"risk.max_position_pct": 2.5}],
                         data_dir=SHIPPED_DATA, start=date(2024, 3, 1), end=date(2024, 3, 4))
    S._FILES.clear()
    before = dict(S.FILE_READS)
    assert S.run_task(tasks[0])["status"] == "ok"
    read = S.FILE_READS["disk"] - before["disk"]
    assert read >= 4                                                  # 3 symbols + VIX (+ their point files)
    assert S.run_task(tasks[1])["status"] == "ok"
    assert S.FILE_READS["disk"] - before["disk"] == read              # the second task read nothing from disk
    assert S.FILE_READS["cached"] - before["cached"] >= read
    from hydra_engine.data import replay
    assert not hasattr(replay.read_bars, "__wrapped__")               # outside a task, the plain reader


# ------------------------------------------------------------------ failures, resume, outputs
def test_a_failed_task_is_a_row_and_resume_runs_only_what_is_missing(tmp_path, capsys, monkeypatch):
    real = S._run

    def flaky(task):
        if task["params"]["risk.max_position_pct"] == 2.5:
            raise RuntimeError("boom in this configuration")
        return real(task)
    monkeypatch.setattr(S, "_run", flaky)
    out = tmp_path / "sw"
    argv = ["--config", _config(tmp_path), "sweep", "--start", "2024-03-01", "--end", "2024-03-05",
            "--param", "risk.max_position_pct=2,2.5,3", "--param", "liquidation_cascade.stop_pct=1.5,2",
            "--workers", "0", "--out", str(out), "--no-progress", "--metric", "total_return"]
    assert main(argv) == 1                                             # failures are reported, not fatal
    text = capsys.readouterr()
    assert "6 tasks (6 run, 0 already done) on in-process" in text.out
    assert text.err.count("FAILED") == 2 and "boom in this configuration" in text.err
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 6 and (table["status"] == "failed").sum() == 2
    assert set(table.columns) >= {"config_hash", "seed", "risk.max_position_pct",
                                  "strategies.params.liquidation_cascade.stop_pct", "sharpe", "total_return"}
    assert table["config_hash"].nunique() == 6 and (table["seed"] == 0).all()
    assert pd.read_parquet(out / "results.parquet")["key"].tolist() == table["key"].tolist()
    page = (out / "heatmap.html").read_text()
    assert "total_return" in page and "liquidation_cascade.stop_pct" in page
    assert page.count("<td") == 4                                      # the failed configurations have no cell
    assert main(argv) == 2 and "pass --resume" in capsys.readouterr().err   # never overwritten silently
    monkeypatch.setattr(S, "_run", real)
    assert main([*argv, "--resume"]) == 0
    assert "6 tasks (2 run, 4 already done)" in capsys.readouterr().out
    table = pd.read_csv(out / "results.csv")
    assert (table["status"] == "ok").all() and len(table) == 6
    assert (out / "heatmap.html").read_text().count("<td") == 6
    assert main([*argv, "--resume"]) == 0 and "(0 run, 6 already done)" in capsys.readouterr().out


def test_bad_arguments_are_refused_with_their_name(tmp_path, capsys):
    base = ["--config", _config(tmp_path), "sweep", "--start", "2024-03-01", "--end", "2024-03-05",
            "--workers", "0", "--out", str(tmp_path / "x"), "--no-progress"]
    assert main(base) == 2 and "no --param given" in capsys.readouterr().err
    assert main([*base, "--param", "risk.max_positon_pct=1,2"]) == 2
    assert "'max_positon_pct' is not a key of [risk]" in capsys.readouterr().err
    assert main([*base, "--param", "risk.max_position_pct=1,2", "--metric", "luck"]) == 2
    assert "--metric 'luck'" in capsys.readouterr().err
    assert main([*base, "--param", "risk.max_position_pct=1,2", "--scheduler", "127.0.0.1:1"]) == 2
    assert "must be an address like tcp://" in capsys.readouterr().err


# ------------------------------------------------------------------ dask
def test_a_sweep_on_a_local_cluster_gives_the_in_process_numbers(tmp_path):
    s = _settings(tmp_path)
    kw = dict(data_dir=SHIPPED_DATA, start=date(2024, 3, 1), end=date(2024, 3, 5),
              params=dict([S.parse_param("risk.max_position_pct=2,3")]), progress=False)
    inline = S.run_sweep(s, out=tmp_path / "a", workers=0, **kw)
    local = S.run_sweep(s, out=tmp_path / "b", workers=2, **kw)
    assert local["executor"] == "LocalCluster of 2 worker processes" and local["workers"] == 2
    assert {r["worker"] for r in local["rows"]} - {"in-process"} == {r["worker"] for r in local["rows"]}
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("runtime_s", "worker")} for r in rows]  # noqa
    assert strip(local["rows"]) == strip(inline["rows"]) and all(r["status"] == "ok" for r in local["rows"])


@pytest.fixture(scope="module")
def loopback_cluster(tmp_path_factory):
    """`dask scheduler` and two `dask worker` processes on 127.0.0.1, as on a real cluster."""
    dask = Path(sys.executable).with_name("dask")
    if not dask.exists():
        pytest.skip("the dask command is not installed")
    tmp = tmp_path_factory.mktemp("cluster")
    sched_file = tmp / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    procs = [subprocess.Popen([str(dask), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", str(sched_file)], cwd=tmp, env=env,
                              stdout=subprocess.DEVNULL, stderr=open(tmp / "scheduler.log", "w"))]
    try:
        deadline = time.monotonic() + 60
        while not sched_file.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sched_file.is_file(), (tmp / "scheduler.log").read_text()
        time.sleep(0.3)
        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        for name in ("w1", "w2"):
            procs.append(subprocess.Popen([str(dask), "worker", address, "--name", name, "--nthreads", "1",
                                           "--nworkers", "1", "--no-dashboard", "--host", "127.0.0.1"],
                                          cwd=tmp, env=env, stdout=subprocess.DEVNULL,
                                          stderr=open(tmp / f"{name}.log", "w")))
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def test_a_sweep_through_scheduler_runs_on_both_worker_processes(tmp_path, capsys, loopback_cluster):
    out = tmp_path / "sw"
    rc = main(["--config", _config(tmp_path), "sweep", "--start", "2024-03-01", "--end", "2024-03-05",
               "--param", "risk.max_position_pct=2,2.5,3", "--param", "liquidation_cascade.stop_pct=1.5,2",
               "--scheduler", loopback_cluster, "--wait-workers", "2", "--out", str(out), "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert f"on scheduler {loopback_cluster}" in text
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 6 and (table["status"] == "ok").all()
    assert set(table["worker"]) == {"w1", "w2"}                        # two processes, through the scheduler
    inline = S.run_sweep(_settings(tmp_path), data_dir=SHIPPED_DATA, start=date(2024, 3, 1), end=date(2024, 3, 5),
                         params=dict([S.parse_param("risk.max_position_pct=2,2.5,3"),
                                      S.parse_param("liquidation_cascade.stop_pct=1.5,2")]),
                         out=tmp_path / "inline", workers=0, progress=False)
    assert inline["executor"] == "in-process"
    mine = pd.read_csv(tmp_path / "inline" / "results.csv")
    cols = ["key", "config_hash", "risk.max_position_pct", *S.METRICS, "cycles"]
    pd.testing.assert_frame_equal(table[cols], mine[cols])             # the same numbers as in this process


def test_walk_forward_windows_through_scheduler_equal_the_in_process_ones(tmp_path, loopback_cluster):
    s = _settings(tmp_path, start="2024-01-01", end="2024-03-01")
    kw = dict(data_dir=SHIPPED_DATA, start=date(2024, 1, 1), end=date(2024, 3, 1), spec="30d:14d", progress=False)
    here = run_walk_forward(s, out=tmp_path / "here", **kw)
    there = run_walk_forward(s, out=tmp_path / "there", scheduler=loopback_cluster, **kw)
    assert len(walk_forward_windows(date(2024, 1, 1), date(2024, 3, 1), "30d:14d")) == len(here["windows"]) == 3
    assert there["table"] == here["table"] and there["combined"] == here["combined"]
    assert [w["metrics"] for w in there["windows"]] == [w["metrics"] for w in here["windows"]]
    assert list((tmp_path / "here").glob("window-*/session-*.json"))   # in-process windows keep their logs
    assert not list((tmp_path / "there").glob("window-*"))            # remote workers write nothing here
