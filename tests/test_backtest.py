"""Backtest command, baselines and walk-forward (issue #6): offline, on real data, a few seconds each."""
from __future__ import annotations

import csv
import json
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pandas as pd
import pytest

from hydra_engine.backtest import (BacktestError, parse_duration, regime_returns, run_walk_forward,
                                   walk_forward_windows)
from hydra_engine.baselines import BuyAndHold, TargetWeightDriver, build_market, rsi, run_baseline
from hydra_engine.brokers.capabilities import DEFAULT_ASSET_SPECS
from hydra_engine.brokers.sim import SimulatedBroker
from hydra_engine.cli import main

from .conftest import SHIPPED_DATA, make_settings


def _config(tmp_path: Path, data_dir: Path = SHIPPED_DATA) -> str:
    path = tmp_path / "bt.toml"
    path.write_text(f'[engine]\nlog_dir = "{tmp_path / "logs"}"\n'
                    '[universe]\nsymbols = ["BTC/USD", "ETH/USD", "SPY"]\ndata_only = ["VIX"]\n'
                    f'[data]\nreplay_dir = "{data_dir}"\n[storage]\nurl = "sqlite:///{tmp_path / "db.sqlite"}"\n')
    return str(path)


def test_command_writes_the_results_folder(tmp_path, capsys):
    out = tmp_path / "bt"
    rc = main(["--config", _config(tmp_path), "backtest", "--start", "2024-03-01", "--end", "2024-03-11",
               "--out", str(out), "--no-progress"])
    assert rc == 0
    names = {p.name for p in out.iterdir()}
    assert {"equity.csv", "equity.png", "metrics.json", "comparison.csv", "comparison.md", "hydra.db"} <= names
    assert any(n.startswith("session-") and n.endswith(".json") for n in names)
    assert any(n.endswith(".cycles.jsonl") for n in names)
    assert {p.name for p in (out / "baselines").iterdir()} == {"buy_and_hold.json", "momentum.json", "mean_reversion.json"}
    rows = list(csv.DictReader(open(out / "comparison.csv")))
    assert [r["strategy"] for r in rows] == ["hydra", "buy_and_hold", "momentum", "mean_reversion"]
    for key in ("total_return", "cagr", "max_drawdown", "sharpe", "sortino", "calmar", "cvar_95", "trades", "fees_usd", "exposure"):
        assert key in rows[0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["metrics"]) == {"hydra", "buy_and_hold", "momentum", "mean_reversion"}
    eq = pd.read_csv(out / "equity.csv")
    assert list(eq.columns) == ["ts", "regime", "hydra", "buy_and_hold", "momentum", "mean_reversion"]
    assert len(eq) == metrics["cycles"] and eq["hydra"].iloc[0] == pytest.approx(100_000, rel=0.01)
    # the session log is a real backtest session over the requested span
    log = json.loads(next(out.glob("session-*.json")).read_text())
    assert log["session"]["mode"] == "backtest" and log["session"]["data_start"].startswith("2024-03-01")
    assert "| hydra |" in capsys.readouterr().out
    # review and explain read a backtest log, and review's numbers are the metrics module's
    log_path = next(out.glob("session-*.json"))
    assert main(["review", str(log_path), "--out", str(tmp_path / "rev")]) == 0
    from hydra_engine.metrics import compute_all
    from hydra_engine.tradelog import load_session
    reviewed = json.loads((tmp_path / "rev" / "metrics.json").read_text())
    direct = compute_all(load_session(log_path))
    assert reviewed["total_return"] == pytest.approx(direct["total_return"], abs=1e-12)
    assert reviewed["max_drawdown"] == pytest.approx(direct["max_drawdown"], abs=1e-12)
    assert main(["explain", str(log_path), "--cycle", "30"]) == 0
    assert "CYCLE 30" in capsys.readouterr().out


def test_no_baselines_lists_only_what_it_wrote(tmp_path, capsys):
    """The "results in" line named a baselines/ folder that --no-baselines does not create."""
    out = tmp_path / "bt"
    rc = main(["--config", _config(tmp_path), "backtest", "--start", "2024-03-01", "--end", "2024-03-04",
               "--out", str(out), "--no-progress", "--no-baselines"])
    assert rc == 0 and not (out / "baselines").exists()
    [line] = [x for x in capsys.readouterr().out.splitlines() if x.startswith("results in ")]
    listed = line.split(": ", 1)[1].split(", ")
    assert "baselines/" not in listed and all((out / name).exists() for name in listed), line


@pytest.mark.parametrize("start,end,needle", [("2024-03-08", "2024-03-01", "--start 2024-03-08 must be before"),
                                              ("2024-03-01", "2024-03-01", "must be before"),
                                              ("2030-01-01", "2030-02-01", "outside the data"),
                                              ("2024-12-31", "2025-01-01", "holds 1 cycle(s) of data"),
                                              ("2024-13-01", "2024-14-01", "--start '2024-13-01' is not a date")])
def test_bad_dates_exit_2_with_a_clear_error(tmp_path, capsys, start, end, needle):
    rc = main(["--config", _config(tmp_path), "backtest", "--start", start, "--end", end,
               "--out", str(tmp_path / "x"), "--no-progress"])
    assert rc == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_bad_walk_forward_spec_exit_2(tmp_path, capsys):
    rc = main(["--config", _config(tmp_path), "backtest", "--start", "2024-01-01", "--end", "2024-03-01",
               "--walk-forward", "12x:3m", "--no-progress", "--out", str(tmp_path / "wf")])
    assert rc == 2 and "TRAIN '12x' is not a positive duration" in capsys.readouterr().err


def test_baselines_pay_exactly_the_configured_fees(tmp_path):
    s = make_settings(tmp_path, start="2024-03-01", end="2024-04-10", broker={"fee_bps": 7.0, "slippage_bps": 3.0})
    doc = run_baseline(BuyAndHold(), s, SHIPPED_DATA)
    assert len(doc["fills"]) >= 4 and doc["fills"][-1]["ts"] >= "2024-04"   # initial buys + April rebalance
    total = Decimal(0)
    for f in doc["fills"]:
        notional = Decimal(f["qty"]) * Decimal(f["price"])
        assert Decimal(f["fee_usd"]) == (notional * Decimal("0.0007")).quantize(Decimal("0.000001"), ROUND_HALF_UP)
        total += Decimal(f["fee_usd"])
    assert Decimal(doc["summary"]["fees_usd"]) == total
    free = run_baseline(BuyAndHold(), make_settings(tmp_path, start="2024-03-01", end="2024-04-10",
                                                    broker={"fee_bps": 0.0}), SHIPPED_DATA)
    assert Decimal(free["summary"]["fees_usd"]) == 0 and float(free["summary"]["final_equity_usd"]) > float(doc["summary"]["final_equity_usd"])


def test_buy_and_hold_holds_equal_weights_after_a_rebalance(tmp_path):
    s = make_settings(tmp_path, start="2024-03-01", end="2024-03-20")
    market = build_market(s, SHIPPED_DATA)
    broker = SimulatedBroker(market, DEFAULT_ASSET_SPECS, starting_cash_usd=100_000, fee_bps=10, slippage_bps=5)
    driver = TargetWeightDriver(BuyAndHold(), market, broker, list(s.universe.symbols))
    for now in market.timeline():
        driver.step(now)
        if len(broker.positions()) == 3 and not broker.open_orders() and driver._targets is None:
            break
    else:
        pytest.fail("the first rebalance never completed")
    acct = broker.account()
    weights = {sym: float(p.qty * broker._mark(sym) / acct.equity_usd) for sym, p in broker.positions().items()}
    for w in weights.values():
        assert w == pytest.approx(driver.invest / 3, abs=0.01)
    assert not driver.rejected


def test_baseline_helpers():
    assert rsi(list(range(1, 40))) == 100.0 and rsi([1.0] * 5) != rsi([1.0] * 5)  # too short: NaN
    eq = pd.Series([100.0, 110.0, 99.0, 99.0])
    got = regime_returns(eq, pd.Series(["A", "B", "A", "B"]))
    assert got["A"] == pytest.approx(0.10) and got["B"] == pytest.approx(-0.10)


@pytest.mark.parametrize("spec,start,end", [("365d:90d", date(2021, 1, 1), date(2023, 1, 1)),
                                            ("12m:3m", date(2021, 1, 31), date(2023, 6, 15)),
                                            ("8w:1w", date(2024, 1, 1), date(2024, 4, 1))])
def test_walk_forward_windows_are_contiguous_and_never_overlap(spec, start, end):
    windows = walk_forward_windows(start, end, spec)
    train = parse_duration(spec.split(":")[0])
    assert windows[0].test_start == (pd.Timestamp(start) + train).date() and windows[-1].test_end == end
    for a, b in zip(windows, windows[1:]):
        assert a.test_end == b.test_start                        # contiguous tests, no gap, no overlap
    for w in windows:
        assert start <= w.train_start < w.train_end == w.test_start < w.test_end <= end
        assert w.train_start == max(start, (pd.Timestamp(w.test_start) - train).date())
    with pytest.raises(BacktestError, match="shorter than one train window"):
        walk_forward_windows(start, (pd.Timestamp(start) + train).date(), spec)


def test_walk_forward_fits_the_regime_model_on_train_data_only(tmp_path, shared_data):
    # detection is re-run every 24 cycles here only to keep the test fast (the HMM's detect is ~1 s)
    # an in-loop refit due every day would replace the window's model with one fitted on all earlier
    # history, and the window's note would no longer say which model traded: it is off inside windows
    s = make_settings(tmp_path, data_dir=shared_data, engine={"regime_refresh_cycles": 24, "regime_refit_days": 1})
    res = run_walk_forward(s, data_dir=shared_data, start=date(2023, 1, 1), end=date(2024, 1, 7), spec="365d:3d",
                           out=tmp_path / "wf", progress=False)
    for journal in (tmp_path / "wf").glob("window-*/session-*.cycles.jsonl"):
        assert '"regime_refit"' not in journal.read_text(), journal
    assert [w["test"] for w in res["windows"]] == [["2024-01-01", "2024-01-04"], ["2024-01-04", "2024-01-07"]]
    for w in res["windows"]:
        assert w["regime_model"].startswith("HMM fitted on"), w["regime_model"]
        trained_to = w["regime_model"].split(" .. ")[1][:10]
        assert trained_to < w["test"][0]                        # the model never saw the test window
        assert w["metrics"]["cycles"] == 72
    assert res["table"][-1]["strategy"] == "combined (out of sample)"
    combined = pd.read_csv(tmp_path / "wf" / "walk_forward_equity.csv")
    assert len(combined) == 144 and combined["ts"].is_monotonic_increasing
    for name in ("walk_forward.json", "walk_forward.csv", "walk_forward.md", "walk_forward_equity.png"):
        assert (tmp_path / "wf" / name).is_file()


def test_a_symbol_whose_data_ends_inside_the_span_is_named_and_does_not_freeze_the_baselines(tmp_path, capsys,
                                                                                          shared_data):
    """The shared equity files end 2024-12-31, crypto goes on. Buy-and-hold's January rebalance sends a
    SPY order no session will ever fill: it expires (listed as refused) instead of blocking every later
    rebalance, BTC is still rebalanced in February, and the command names SPY's data end."""
    out = tmp_path / "bt"
    rc = main(["--config", _config(tmp_path, shared_data), "backtest", "--start", "2024-12-01", "--end", "2025-02-10",
               "--data", str(shared_data), "--out", str(out), "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "note: SPY: its data ends 2024-12-31" in text and "ETH/USD: its data ends" not in text
    bh = json.loads((out / "baselines" / "buy_and_hold.json").read_text())
    assert any(" SPY: expired: no SPY session" in r for r in bh["summary"]["refusals"]), bh["summary"]["refusals"]
    assert any(f["symbol"] == "BTC/USD" and f["ts"] >= "2025-02-01" for f in bh["fills"])


def test_a_walk_forward_window_without_data_is_refused_before_any_window_runs(tmp_path, capsys):
    rc = main(["--config", _config(tmp_path), "backtest", "--start", "2024-06-01", "--end", "2025-03-01",
               "--walk-forward", "3m:2m", "--no-progress", "--out", str(tmp_path / "wf")])
    assert rc == 2   # the shipped data ends 2024-12-31: the third test window (2025) is empty
    assert "walk-forward window #3 (test 2025-01-01 .. 2025-03-01) holds 0 cycle(s)" in capsys.readouterr().err
    assert not (tmp_path / "wf").exists()


def test_a_walk_forward_whose_windows_ran_an_in_sample_model_does_not_call_itself_out_of_sample(tmp_path, capsys):
    """The shipped extract is too short to fit the HMM on a train window: each window falls back to the
    configured model, fitted through 2024-12-31, i.e. on its own test span. The result says so."""
    out = tmp_path / "wf"
    rc = main(["--config", _config(tmp_path), "backtest", "--start", "2024-01-01", "--end", "2024-06-01",
               "--walk-forward", "3m:1m", "--no-progress", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "windows, regimes in-sample in window(s) #1, #2 ===" in text and "(out of sample)" not in text
    assert "note: the regime model of window(s) #1, #2 was fitted on data overlapping" in text
    result = json.loads((out / "walk_forward.json").read_text())
    assert all("IN-SAMPLE" in w["regime_model"] for w in result["windows"])
    assert result["table"][-1]["strategy"].startswith("combined (regimes in-sample")


def test_a_span_whose_refits_all_fail_is_not_called_in_sample_and_says_why_nothing_traded(tmp_path, capsys):
    """Two months of 2021 on the shipped extract: every in-loop refit fails (too few training days), so the
    loaded model -- fitted through 2024 -- is set aside at the first cycle and the regime reads UNKNOWN
    throughout. The note used to call the regimes in-sample, though that model never read one."""
    cfg = Path(_config(tmp_path))
    cfg.write_text(cfg.read_text().replace("[engine]\n", "[engine]\nregime_refit_days = 90\n"))
    out = tmp_path / "bt"
    assert main(["--config", str(cfg), "backtest", "--start", "2021-01-01", "--end", "2021-03-01",
                 "--no-progress", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    result = json.loads((out / "metrics.json").read_text())
    assert result["regime_model"]["initial_trained_to"] is None
    assert not any("in-sample" in n for n in result["notes"]) and "in-sample" not in text
    failed = [n for n in result["notes"] if "in-loop regime refits failed" in n]
    assert len(failed) == 1 and "regime UNKNOWN, which allows no entries, for 100% of the run" in failed[0]
    assert f"note: {failed[0]}" in text
