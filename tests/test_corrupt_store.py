"""A database that is not HYDRA's, a damaged saved state, a torn kill switch: each is named, and none of
them keeps `kill` from flattening at the broker or lets a paper session trade on a guess."""
from __future__ import annotations

import sqlite3
from datetime import datetime, timezone

import pytest

from hydra_engine.orderids import is_kill_order_id

from hydra_engine.cli import main
from hydra_engine.config import RiskConfig
from hydra_engine.paper import CONTROL_KEY, Control
from hydra_engine.risk import RiskManager
from hydra_engine.store import Store, StoreError

from .alpaca_double import AlpacaDouble
from .conftest import make_settings
from .test_paper_session import install_market, paper_env  # noqa: F401  (paper_env: fixture)

UTC = timezone.utc
NOW = datetime(2024, 3, 5, 12, tzinfo=UTC)


def write_raw_state(db, key: str, value: str) -> None:
    with sqlite3.connect(db) as c:
        c.execute("insert or replace into engine_state (key, value, updated_at) values (?, ?, ?)",
                  (key, value, NOW.isoformat()))


def test_a_file_that_is_not_a_database_is_refused_at_start_up_naming_it(tmp_path, capsys):
    db = tmp_path / "hydra.db"
    db.write_text("this is not a database\n" * 200)
    with pytest.raises(StoreError, match=f"storage.url sqlite:///{db}: not a usable HYDRA database "
                                         r"\(file is not a database\)"):
        Store(f"sqlite:///{db}")
    cfg = tmp_path / "hydra.toml"
    cfg.write_text(f'[storage]\nurl = "sqlite:///{db}"\n[engine]\nlog_dir = "{tmp_path / "logs"}"\n')
    assert main(["--config", str(cfg), "run", "--no-progress", "--cycles", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: storage.url sqlite:///{db}: not a usable HYDRA database") and "Traceback" not in err


def test_tables_of_another_program_are_refused_before_the_first_cycle(tmp_path):
    """Before, the run went on until its first order and died in the middle of the session."""
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as c:
        c.execute("create table cycles (id integer primary key, session_id text, cycle int)")
    with pytest.raises(StoreError, match="its tables are not HYDRA's .table cycles lacks ts, mode, regime"):
        Store(f"sqlite:///{db}")


def test_a_url_without_a_driver_is_named_without_its_password():
    with pytest.raises(StoreError) as info:
        Store("postgresql://hydra:s3cretPassw0rd@localhost/hydra")
    assert "not a usable HYDRA database" in str(info.value) and "s3cretPassw0rd" not in str(info.value)


def test_an_unreadable_saved_value_names_the_database_and_the_key(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'hydra.db'}")
    write_raw_state(tmp_path / "hydra.db", "engine:paper", '{"risk": {"peak_equity": "1')
    with pytest.raises(StoreError, match=r"hydra.db: stored state 'engine:paper' is not valid JSON"):
        store.load_state("engine:paper")


class _Engine:
    def __init__(self):
        self.risk = RiskManager(RiskConfig())


@pytest.mark.parametrize("torn", ['{"state": "kil', '"killed"', '{"state": "paused", "at": "x"}'])
def test_a_torn_kill_switch_halts_entries_without_guessing_kill_or_resume(tmp_path, torn):
    store = Store(f"sqlite:///{tmp_path / 'hydra.db'}")
    write_raw_state(tmp_path / "hydra.db", CONTROL_KEY, torn)
    control, engine = Control(store), _Engine()
    reason = control.apply(engine, NOW)
    assert reason and reason.startswith("kill/resume switch unreadable") and "`python hydra_engine.py kill`" in reason
    assert engine.risk.kill_requested() is None                      # no flattening on a guess
    store.save_state(CONTROL_KEY, {"state": "killed", "reason": "by hand", "at": NOW.isoformat()}, NOW)
    assert control.apply(engine, NOW) is None and "by hand" in engine.risk.kill_requested()


@pytest.mark.parametrize("damage, said", [
    ('{"risk": {"killed": fal', "'engine:paper' is not valid JSON"),
    ('{"risk": null}', "'engine:paper' has no readable risk section"),
    ("locked", "database is locked"),
])
def test_kill_flattens_at_the_broker_even_when_the_database_fails(paper_env, tmp_path, capsys, damage, said):  # noqa: F811
    Store(f"sqlite:///{tmp_path / 'hydra.db'}")
    lock = None
    if damage == "locked":      # another process holds the database (sqlite: write lock, 5 s busy timeout)
        lock = sqlite3.connect(tmp_path / "hydra.db", isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
    else:
        write_raw_state(tmp_path / "hydra.db", "engine:paper", damage)
    try:
        with AlpacaDouble(now=datetime.now(UTC)) as double:
            double.add_position("BTC/USD", "0.5", "60000")
            code = main(["--config", str(paper_env), "kill", "--reason", "test"])
            out = capsys.readouterr().out
            # issue #16: flattened with HYDRA's own closing order (a kill-marked client order id), not
            # Alpaca's close-all, whose venue-id orders no book can tell from a stranger's
            assert [(b["symbol"], b["side"], b["qty"]) for b in double.order_bodies
                    if is_kill_order_id(b["client_order_id"])] == [("BTC/USD", "sell", "0.5")]
    finally:
        if lock is not None:
            lock.close()
    assert code == 1 and "closing 1 positions" in out
    assert "PROBLEM" in out and said in out


@pytest.mark.parametrize("state", ['{"risk": {"peak_equity": "abc"}}', '{"positions": {"BTC/USD": {"qty": "abc"}}}',
                                   '{"risk": {"peak_equity": "1'])
def test_a_paper_restart_with_an_unreadable_saved_state_refuses_to_trade(paper_env, shared_data, tmp_path,  # noqa: F811
                                                                         capsys, state):
    Store(f"sqlite:///{tmp_path / 'hydra.db'}")
    write_raw_state(tmp_path / "hydra.db", "engine:paper", state)
    now = datetime.now(UTC)
    with AlpacaDouble(now=now) as double:
        install_market(double, shared_data, now)
        code = main(["--config", str(paper_env), "run", "--mode", "paper", "--cycles", "1", "--no-progress"])
        err = capsys.readouterr().err
        assert not any(m == "POST" for m, _ in double.calls)
    assert code == 1 and err.startswith("refusing to trade: the saved engine state ('engine:paper'")
    assert "Nothing was traded" in err and "Traceback" not in err


def test_a_sim_run_is_unaffected(tmp_path):
    """The checks cost one inspection at start-up; a fresh database works as before."""
    settings = make_settings(tmp_path)
    store = Store(settings.storage.url, root=tmp_path)
    store.save_state("x", {"a": 1}, NOW)
    assert Store(settings.storage.url, root=tmp_path).load_state("x") == {"a": 1}
