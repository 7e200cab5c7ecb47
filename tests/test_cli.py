"""The command line (issue #2: the whole loop, offline by default).

A short ``run`` over the shipped real data writes the JSON session log, the cycle journal and the
SQLite database and prints the summary; ``status`` reads the last cycle back; paper mode without
Alpaca keys refuses to start and writes nothing; every subcommand has a working ``--help``; and the
``hydra_engine.py`` script entry point works in a fresh interpreter.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from hydra_engine import __version__
from hydra_engine.cli import EXIT_ERROR, EXIT_OK, build_parser, main
from hydra_engine.tradelog import load_session

PROJECT_ROOT = Path(__file__).resolve().parents[1]
KEY_VARS = ("ALPACA_API_KEY", "ALPACA_SECRET_KEY", "APCA_API_KEY_ID", "APCA_API_SECRET_KEY")


def write_config(folder: Path) -> Path:
    """A small config over the shipped data; every output (logs, database) goes under ``folder``."""
    path = folder / "hydra-test.toml"
    path.write_text(f"""
[engine]
log_dir = "{folder / 'logs'}"

[universe]
symbols = ["BTC/USD", "ETH/USD", "SPY"]
data_only = ["VIX"]

[data]
replay_dir = "data"          # relative: resolved against the project, not the working directory
start = 2024-03-04
end = 2024-03-08

[storage]
url = "sqlite:///{folder / 'hydra.db'}"
""", encoding="utf-8")
    return path


def isolate(mp: pytest.MonkeyPatch, cwd: Path) -> None:
    for name in list(os.environ):
        if name.upper().startswith("HYDRA_") or name in KEY_VARS:
            mp.delenv(name, raising=False)
    mp.chdir(cwd)  # no project .env


def call(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """``run --cycles 30 --no-progress`` once, then ``status``; shared by the tests that inspect it."""
    folder = tmp_path_factory.mktemp("cli_run")
    cfg = write_config(folder)
    with pytest.MonkeyPatch.context() as mp:
        isolate(mp, folder)
        run = call(["--config", str(cfg), "run", "--cycles", "30", "--no-progress"])
        status = call(["--config", str(cfg), "status"])
    return {"folder": folder, "cfg": cfg, "run": run, "status": status}


# --------------------------------------------------------------------------- a short offline run
def test_run_prints_the_summary(short_run):
    code, out, err = short_run["run"]
    assert code == EXIT_OK, err
    assert "=== HYDRA session summary ===" in out
    assert re.search(r"^cycles\s+30$", out, re.M)
    assert re.search(r"^equity\s+\$100,000\.00 -> \$[\d,]+\.\d\d", out, re.M)
    assert "HYDRA sim" not in err  # --no-progress: no progress bar


def test_run_writes_log_journal_and_database_where_the_config_says(short_run):
    folder, out = short_run["folder"], short_run["run"][1]
    logs = sorted((folder / "logs").iterdir())
    docs = [p for p in logs if p.name.endswith(".json")]
    journals = [p for p in logs if p.name.endswith(".cycles.jsonl")]
    assert len(docs) == 1 and len(journals) == 1, logs
    assert not [p for p in logs if p.suffix == ".tmp"]
    assert f"trade log         {docs[0]}" in out
    assert f"cycle journal     {journals[0]}" in out
    assert f"database          sqlite:///{folder / 'hydra.db'}" in out

    doc = load_session(docs[0])
    assert doc["session"]["mode"] == "sim" and doc["session"]["ended_at"] is not None
    assert doc["session"]["symbols"] == ["BTC/USD", "ETH/USD", "SPY"]
    assert doc["session"]["data_start"].startswith("2024-03-04")
    assert doc["journal"] == journals[0].name
    assert [c["cycle"] for c in doc["cycles"]] == list(range(1, 31))
    assert doc["summary"]["cycles"] == 30
    assert "recovered_from_journal" not in doc  # a clean shutdown leaves nothing to recover
    lines = [json.loads(line) for line in journals[0].read_text(encoding="utf-8").splitlines()]
    # one line per cycle, or one span record for a run of quiet cycles (event-horizon replay): every cycle once
    assert [c for r in lines for c in range(r["cycle"], r["cycle"] + r.get("span", {}).get("cycles", 1))] \
        == list(range(1, 31))

    db = folder / "hydra.db"
    assert db.is_file()
    with contextlib.closing(sqlite3.connect(db)) as con:
        tables = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
        assert {"orders", "fills", "trades", "cycles", "engine_state"} <= tables
        cycles = [r[0] for r in con.execute("select cycle from cycles order by id")]
        assert cycles == list(range(1, 31))
        states = [json.loads(v) for k, v in con.execute("select key, value from engine_state") if k.startswith("engine")]
        assert any(isinstance(st, dict) and st.get("engine", {}).get("cycle") == 30 for st in states), states
    # nothing leaked into the project tree's own logs/ (this config points elsewhere)
    assert not any(p.name == docs[0].name for p in (PROJECT_ROOT / "logs").glob("session-*.json"))


def test_status_reports_the_last_cycle(short_run):
    code, out, err = short_run["status"]
    assert code == EXIT_OK, err
    journal = next((short_run["folder"] / "logs").glob("*.cycles.jsonl"))
    last = json.loads(journal.read_text(encoding="utf-8").splitlines()[-1])
    assert last["cycle"] == 30
    line = next(ln for ln in out.splitlines() if ln.startswith("last cycle"))
    assert "#30 " in line and last["ts"] in line and f"({last['mode']})" in line
    assert f"regime {last['regime']['regime']}" in line and f"equity ${float(last['equity_usd']):,.2f}" in line
    assert "kill state    armed (not killed)" in out
    assert f"sqlite:///{short_run['folder'] / 'hydra.db'}" in out


def test_no_command_runs_the_offline_simulation(tmp_path, monkeypatch):
    isolate(monkeypatch, tmp_path)
    cfg = write_config(tmp_path)
    code, out, err = call(["--config", str(cfg)])  # no subcommand: the whole span, offline
    assert code == EXIT_OK, err
    m = re.search(r"^cycles\s+(\d+)$", out, re.M)
    assert m and int(m.group(1)) > 30  # 4 days of hourly crypto bars
    assert len(list((tmp_path / "logs").glob("session-*.json"))) == 1


@pytest.mark.parametrize("old,new,fragment", [
    ("start = 2024-03-04\nend = 2024-03-08", "start = 2031-01-01\nend = 2031-01-02", "no data between 2031-01-01"),
    ('replay_dir = "data"', 'replay_dir = "no_such_folder"', "replay data folder not found"),
], ids=["empty_span", "missing_data_folder"])
def test_unusable_data_stops_with_exit_code_2(tmp_path, monkeypatch, old, new, fragment):
    isolate(monkeypatch, tmp_path)
    cfg = write_config(tmp_path)
    text = cfg.read_text(encoding="utf-8")
    assert old in text
    cfg.write_text(text.replace(old, new), encoding="utf-8")
    code, out, err = call(["--config", str(cfg), "run", "--cycles", "3", "--no-progress"])
    assert code == 2
    assert err.startswith("error: ") and fragment in err
    assert "session summary" not in out


# --------------------------------------------------------------------------- paper mode without keys
def test_paper_without_keys_names_the_missing_variables_and_writes_nothing(tmp_path, monkeypatch):
    isolate(monkeypatch, tmp_path)
    cfg = write_config(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = call(["--config", str(cfg), "run", "--mode", "paper", "--cycles", "1", "--no-progress"])
    assert code == EXIT_ERROR != 0
    for var in ("ALPACA_API_KEY", "ALPACA_SECRET_KEY", "APCA_API_KEY_ID", "APCA_API_SECRET_KEY"):
        assert var in err
    assert "session summary" not in out
    assert sorted(p.name for p in tmp_path.iterdir()) == before == ["hydra-test.toml"]  # no logs/, no hydra.db


def test_paper_with_only_one_key_names_only_the_other(tmp_path, monkeypatch):
    isolate(monkeypatch, tmp_path)
    monkeypatch.setenv("APCA_API_KEY_ID", "PKTEST123")
    cfg = write_config(tmp_path)
    code, _, err = call(["--config", str(cfg), "run", "--mode", "paper"])
    assert code == EXIT_ERROR
    assert "ALPACA_SECRET_KEY" in err and "ALPACA_API_KEY (" not in err
    assert not (tmp_path / "logs").exists() and not (tmp_path / "hydra.db").exists()


# --------------------------------------------------------------------------- version and help
def test_version(capsys):
    assert main(["version"]) == EXIT_OK
    assert capsys.readouterr().out.strip() == f"hydra-engine {__version__}"


def subcommands() -> list[str]:
    parser = build_parser()
    return sorted(parser._subparsers._group_actions[0].choices)


def test_the_core_subcommands_exist():
    assert {"run", "status", "version"} <= set(subcommands())


@pytest.mark.parametrize("argv", [["--help"]] + [[name, "--help"] for name in subcommands()],
                         ids=lambda a: " ".join(a))
def test_help_exits_zero(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: hydra")
    if argv[0] != "--help":
        assert f"hydra {argv[0]}" in out


# every command that reads the configuration, with the arguments it requires
CONFIG_COMMANDS = {"run": [], "status": [], "backtest": ["--start", "2024-03-04", "--end", "2024-03-06"],
                   "kill": [], "resume": [], "train": [], "weights": []}


@pytest.mark.parametrize("name", sorted(CONFIG_COMMANDS))
def test_config_is_accepted_before_and_after_every_command_that_reads_it(name, capsys):
    """README: "--config FILE as everywhere"; `backtest --config hydra.toml ...` was "unrecognized arguments"."""
    parser, extra = build_parser(), CONFIG_COMMANDS[name]
    assert parser.parse_args(["--config", "before.toml", name, *extra]).config == "before.toml"
    assert parser.parse_args([name, "--config", "after.toml", *extra]).config == "after.toml"
    assert parser.parse_args([name, *extra]).config is None             # the shipped file
    with pytest.raises(SystemExit):
        parser.parse_args([name, "--help"])
    assert "--config FILE" in capsys.readouterr().out


def test_config_after_the_command_is_the_one_read(short_run, monkeypatch):
    isolate(monkeypatch, short_run["folder"])
    code, out, err = call(["status", "--config", str(short_run["cfg"])])
    assert (code, out) == short_run["status"][:2], err


def test_unknown_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--cycels", "3"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --cycels" in capsys.readouterr().err


@pytest.mark.parametrize("cycles, message", [("-5", "-5 is not a positive number"), ("0", "0 is not a positive number"),
                                             ("2.5", "'2.5' is not a whole number")])
def test_cycles_must_be_a_positive_whole_number(capsys, cycles, message):
    with pytest.raises(SystemExit) as exc:   # -5 used to run all but the last 5 ticks without a word
        main(["run", "--cycles", cycles])
    assert exc.value.code == 2
    assert f"argument --cycles: {message}" in capsys.readouterr().err


def test_a_log_dir_that_is_a_file_is_an_error_not_a_traceback(tmp_path, capsys):
    (tmp_path / "logs").write_text("not a folder")
    cfg = tmp_path / "hydra.toml"
    cfg.write_text(f'[engine]\nlog_dir = "{tmp_path / "logs"}"\n[storage]\nurl = "sqlite:///{tmp_path / "h.db"}"\n')
    assert main(["--config", str(cfg), "run", "--cycles", "1", "--no-progress"]) == 2   # was FileExistsError
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path / "logs") in err and "Traceback" not in err


def test_script_entry_point_in_a_fresh_interpreter(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("HYDRA_") and k not in KEY_VARS}
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "hydra_engine.py"), "version"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"hydra-engine {__version__}"


def test_the_run_summary_writes_a_loss_as_minus_dollars(capsys):
    from hydra_engine.cli import _print_summary

    _print_summary({"cycles": 4368, "starting_equity_usd": "100000", "final_equity_usd": "99917.16", "return_pct": -0.08,
                    "fees_usd": "7.92", "proposals": 2, "approved": 2, "vetoes_by_rule": {}, "orders": 4,
                    "orders_refused": 0, "closed_trades": 2, "open_positions": {}, "sizing_bound_by": {},
                    "per_strategy": {"liquidation_cascade": {"trades": 2, "wins": 0, "pnl_usd": "-82.84"}},
                    "exit_reasons": {"stop": 1, "strategy": 1}, "log": "l.json", "journal": "l.cycles.jsonl",
                    "database": "sqlite:///h.db"})
    out = capsys.readouterr().out
    assert "P&L -$82.84" in out and "$-" not in out


def test_a_shortened_run_keeps_the_full_replays_rows(tmp_path, monkeypatch):
    """`run --cycles 3` after a full replay used to count as the same session (configuration and first
    day) and deleted the full run's rows from the database."""
    cfg = write_config(tmp_path)
    isolate(monkeypatch, tmp_path)
    assert call(["--config", str(cfg), "run", "--no-progress"])[0] == EXIT_OK
    assert call(["--config", str(cfg), "run", "--cycles", "3", "--no-progress"])[0] == EXIT_OK
    with sqlite3.connect(tmp_path / "hydra.db") as db:
        counts = dict(db.execute("SELECT session_id, COUNT(*) FROM cycles GROUP BY session_id").fetchall())
    (full_id, full), (short_id, short) = sorted(counts.items())
    assert short_id == f"{full_id}-3c" and short == 3 and full > 3


# --------------------------------------------------------------------------- a reader that went away
def run_into_a_closed_pipe(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``hydra_engine.py ARGS | head -0``, deterministically: the pipe's reader is gone before HYDRA
    writes a byte, so its first write to stdout meets a broken pipe."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("HYDRA_") and k not in KEY_VARS}
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, str(PROJECT_ROOT / "hydra_engine.py"), *args], cwd=cwd, env=env,
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("command", ["explain", "weights", "review", "version"])
def test_a_closed_pipe_ends_a_command_quietly(tmp_path, command):
    """`explain LOG --cycle 42 | head -1` printed `error: [Errno 32] Broken pipe` and exited 2."""
    from tests.fixtures.build import SMALL
    argv = {"explain": ["explain", str(SMALL), "--cycle", "2"],
            "weights": ["weights", "--log", str(SMALL), "--out", str(tmp_path / "w")],
            "review": ["review", str(SMALL), "--out", str(tmp_path / "r")], "version": ["version"]}[command]
    proc = run_into_a_closed_pipe(tmp_path, *argv)
    assert (proc.returncode, proc.stderr) == (141, "")


def test_a_run_whose_stdout_is_closed_still_closes_its_session(tmp_path):
    cfg = write_config(tmp_path)
    proc = run_into_a_closed_pipe(tmp_path, "--config", str(cfg), "run", "--cycles", "12", "--no-progress")
    assert (proc.returncode, proc.stderr) == (141, "")
    [log] = (tmp_path / "logs").glob("session-*.json")
    doc = load_session(log)
    assert doc["session"]["ended_at"] and doc["summary"]["cycles"] == 12 and len(doc["cycle_details"]) == 12
    with sqlite3.connect(tmp_path / "hydra.db") as con:
        assert con.execute("select count(*) from cycles").fetchone() == (12,)
        assert con.execute("select count(*) from engine_state where key = 'engine:sim'").fetchone() == (1,)


def test_a_sim_run_with_alpaca_kinds_says_what_it_uses_and_logs_it(tmp_path, monkeypatch):
    """broker.kind/data.kind = "alpaca" were silently ignored by `run --mode sim`, and the session log then
    named the Alpaca broker for a simulated run."""
    cfg = write_config(tmp_path)
    cfg.write_text(cfg.read_text() + '\n[broker]\nkind = "alpaca"\n')
    isolate(monkeypatch, tmp_path)
    code, out, err = call(["--config", str(cfg), "run", "--cycles", "1", "--no-progress"])
    assert code == EXIT_OK, err
    assert 'note: broker.kind = "alpaca" applies to --mode paper' in err and "simulated broker on replayed data" in err
    log = re.search(r"trade log\s+(\S+)", out).group(1)
    session = load_session(log)["session"]
    assert (session["broker"], session["data"]) == ("sim", "replay")
    assert "vetoes by rule    none (no proposals)" in out     # one observing cycle proposes nothing
