"""Small things a new user hit (#23 item 5): the bare command takes run's options, `kill` without keys
says no broker was contacted, a TOML key typo gets the nearest name, session-log retention, and the
weights report's column names are not cut."""
from __future__ import annotations

import os
import re
from datetime import datetime, timedelta, timezone

import pytest

from hydra_engine.cli import bare_command_argv, build_parser, main
from hydra_engine.config import ConfigError, load_settings

UTC = timezone.utc


@pytest.mark.parametrize("argv, expected", [
    ([], ["run"]),
    (["--no-progress"], ["run", "--no-progress"]),
    (["--cycles", "5"], ["run", "--cycles", "5"]),
    (["-v", "--config", "x.toml", "--cycles", "5"], ["-v", "run", "--config", "x.toml", "--cycles", "5"]),
    (["--help"], ["--help", "run"]),
])
def test_the_bare_command_takes_runs_options(argv, expected):
    assert bare_command_argv(argv) == expected
    if "--help" not in argv:
        args = build_parser().parse_args(expected)
        assert args.command == "run" and args.mode == "sim"


def test_the_bare_command_runs_with_cycles_and_no_progress(tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "hydra.toml"
    cfg.write_text(f'[engine]\nlog_dir = "{tmp_path / "logs"}"\n[storage]\nurl = "sqlite:///{tmp_path / "h.db"}"\n'
                   f'[data]\nstart = 2024-01-01\nend = 2024-02-01\n')
    monkeypatch.chdir(tmp_path)
    assert main(["--config", str(cfg), "--no-progress", "--cycles", "5"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^cycles\s+5$", out, re.M) and "sim #" not in out   # --no-progress: no cycle lines


def test_kill_without_keys_says_no_broker_was_contacted(tmp_path, monkeypatch, capsys):
    for var in ("ALPACA_API_KEY", "ALPACA_SECRET_KEY", "APCA_API_KEY_ID", "APCA_API_SECRET_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)   # no .env
    cfg = tmp_path / "hydra.toml"
    cfg.write_text(f'[storage]\nurl = "sqlite:///{tmp_path / "h.db"}"\n')
    code = main(["--config", str(cfg), "kill"])
    out = capsys.readouterr().out
    assert code == 1
    assert "NO BROKER CONTACTED" in out and "nothing to flatten" not in out
    assert "kill state set" in out        # the switch is still recorded for a running session


def test_a_toml_key_typo_gets_the_nearest_name(tmp_path):
    cfg = tmp_path / "hydra.toml"
    cfg.write_text('[engine]\ncycle_intervl_s = 5\n[brokr]\nfee_bps = 1\n[risk]\nzzz = 1\n')
    with pytest.raises(ConfigError) as exc:
        load_settings(cfg)
    msg = str(exc.value)
    assert "key 'engine.cycle_intervl_s' = ***: no such setting; did you mean 'engine.cycle_interval_s'?" in msg
    assert "key 'brokr' = ***: no such setting; did you mean 'broker'?" in msg
    assert "key 'risk.zzz' = ***: no such setting (check the spelling against hydra.toml)" in msg


def _session(log_dir, stamp: str, age_days: float, now: datetime, review: bool = False):
    doc = log_dir / f"session-{stamp}.json"
    journal = log_dir / f"session-{stamp}.cycles.jsonl"
    for p in (doc, journal):
        p.write_text("{}")
        t = (now - timedelta(days=age_days)).timestamp()
        os.utime(p, (t, t))
    if review:
        (log_dir / f"session-{stamp}-review").mkdir()
        (log_dir / f"session-{stamp}-review" / "report.html").write_text("x")
    return doc


def test_logs_prune_deletes_old_sessions_and_keeps_the_newest(tmp_path, capsys):
    from hydra_engine.commands.logs import prune
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    (log_dir / "backtest-20200101T000000Z").mkdir()          # results folders are not touched
    now = datetime.now(UTC)
    _session(log_dir, "20200101T000000Z", 40, now, review=True)
    _session(log_dir, "20200201T000000Z", 35, now)
    _session(log_dir, "20200301T000000Z", 31, now)
    _session(log_dir, "20200401T000000Z", 1, now)
    cfg = tmp_path / "hydra.toml"
    cfg.write_text(f'[engine]\nlog_dir = "{log_dir}"\n[storage]\nurl = "sqlite:///{tmp_path / "h.db"}"\n'
                   '[logs]\nretention_days = 30\nkeep_last = 2\n')
    assert main(["--config", str(cfg), "logs", "prune", "--dry-run"]) == 0
    assert "would delete 2 session(s)" in capsys.readouterr().out and len(list(log_dir.iterdir())) == 10
    assert main(["--config", str(cfg), "logs", "prune"]) == 0
    left = sorted(p.name for p in log_dir.iterdir())
    assert left == ["backtest-20200101T000000Z", "session-20200301T000000Z.cycles.jsonl",
                    "session-20200301T000000Z.json", "session-20200401T000000Z.cycles.jsonl",
                    "session-20200401T000000Z.json"]   # 31 days old but one of the newest two: kept
    assert prune(log_dir, days=0, keep_last=0) == []   # 0 days: keep everything


def test_the_weights_report_does_not_cut_strategy_names(tmp_path, capsys):
    import json
    log = tmp_path / "session-x.json"
    long_name = "a_strategy_with_a_long_name"
    trade = {"strategy": long_name, "symbol": "SPY", "side": "buy", "qty": "1", "entry_time": "2024-01-02T15:00:00Z",
             "entry_price": "100", "exit_time": "2024-01-03T15:00:00Z", "exit_price": "101", "pnl_usd": "1",
             "fees_usd": "0", "r_multiple": 0.5, "regime_at_entry": "TRENDING_UP", "exit_reason": "target"}
    log.write_text(json.dumps({"schema_version": 1, "session": {"strategies": [long_name, "sma_crossover"]},
                               "orders": [], "fills": [], "trades": [trade], "cycles": [], "summary": {}}))
    assert main(["weights", "--log", str(log), "--out", str(tmp_path / "w")]) == 0
    out = capsys.readouterr().out
    header = next(ln for ln in out.splitlines() if ln.startswith("time"))
    assert long_name in header.split() and "sma_crossover" in header.split()


def test_a_run_applies_the_retention_when_it_starts(tmp_path, monkeypatch, capsys):
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    now = datetime.now(UTC)
    _session(log_dir, "20200101T000000Z", 400, now)
    _session(log_dir, "20200201T000000Z", 1, now)
    cfg = tmp_path / "hydra.toml"
    cfg.write_text(f'[engine]\nlog_dir = "{log_dir}"\nregime_detector = "trend_vol_rule"\n'
                   f'[storage]\nurl = "sqlite:///{tmp_path / "h.db"}"\n[logs]\nretention_days = 30\nkeep_last = 1\n')
    monkeypatch.chdir(tmp_path)
    assert main(["--config", str(cfg), "run", "--cycles", "2", "--no-progress"]) == 0
    assert "pruned 1 session log(s) older than 30 days" in capsys.readouterr().err
    names = {p.name for p in log_dir.iterdir()}
    assert "session-20200101T000000Z.json" not in names and "session-20200201T000000Z.json" in names
