"""Security (issue #7): API keys never leave the process, and live trading cannot be switched on by
configuration alone.

The paper session runs as a real subprocess (`python hydra_engine.py run --mode paper`) against the
loopback server double, with recognisable fake keys; the server is also scripted to *echo* the key
in an error body (as a misbehaving proxy might), so redaction is exercised, not just assumed. Then
every byte HYDRA wrote -- session documents, journals, the capability cache, the SQLite database and
its WAL, stdout and stderr (including a start-up failure's traceback) -- is searched for the keys,
and every table of the database is dumped and searched as text.
"""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from hydra_engine.cli import main

from .alpaca_server import AlpacaServer
from .test_fault_injection import ROOT, clean_env, paper_config

KEY_ID = "PKLEAKCANARY7Q2Z9XW4"
SECRET = "sEcReT-CaNaRy-0123456789-abcdefghij-KLMNOP"
PARTS = (KEY_ID, SECRET, SECRET[:16], SECRET[-16:])   # fragments too: no partial leak either


def run_cli(tmp_path: Path, server: AlpacaServer, cfg: Path, *args: str, tag: str) -> tuple[int, str, str]:
    env = clean_env(**server.env())
    env.update(APCA_API_KEY_ID=KEY_ID, APCA_API_SECRET_KEY=SECRET)
    proc = subprocess.run([sys.executable, str(ROOT / "hydra_engine.py"), "--config", str(cfg), *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    (tmp_path / f"{tag}.stdout").write_text(proc.stdout)
    (tmp_path / f"{tag}.stderr").write_text(proc.stderr)
    return proc.returncode, proc.stdout, proc.stderr


def leaks(blob: bytes | str) -> list[str]:
    text = blob.decode("utf-8", "replace") if isinstance(blob, bytes) else blob
    return [p for p in PARTS if p in text]


def test_keys_appear_in_no_log_file_database_row_or_error_text(tmp_path, shared_data):
    cfg = paper_config(tmp_path)
    with AlpacaServer(shared_data, fill_delay_s=0.0) as server:
        # an error body that quotes the key: the adapter must redact it before it is logged or journaled
        server.double.fail("POST", r"/v2/orders$", times=1, status=403,
                           body={"code": 40310000, "message": f"forbidden: key {KEY_ID} secret {SECRET} not allowed"})
        code, out, err = run_cli(tmp_path, server, cfg, "run", "--mode", "paper", "--cycles", "3", "--no-progress",
                                 tag="session")
        assert code == 0, err[-3000:]
        assert server.post_answers, "the session must have tried to trade"
        # a start-up failure with a traceback: every account call answers 401 quoting the key
        server.double.fail("GET", r"/v2/account$", times=50, status=401,
                           body={"code": 40110000, "message": f"access key verification failed for {KEY_ID}"})
        server.double.fail("GET", r"/v2/positions$", times=50, status=401,
                           body={"code": 40110000, "message": f"unauthorized: {KEY_ID}:{SECRET}"})
        code2, out2, err2 = run_cli(tmp_path, server, cfg, "run", "--mode", "paper", "--cycles", "1", "--no-progress",
                                    tag="failure")
        assert code2 != 0 and ("401" in err2 or "Auth" in err2), err2[-3000:]
        code3, out3, err3 = run_cli(tmp_path, server, cfg, "status", "--broker", tag="status")
        assert code3 == 1 and "the broker status could not be read (AuthError" in err3, err3[-3000:]
        assert "check APCA_API_KEY_ID / APCA_API_SECRET_KEY" in err3 and "refusing to trade" not in err3
        # the market-data API quoting the key (its own client and error path, redacted separately)
        server.double.faults.clear()
        server.double.fail("GET", r"/v1beta3/crypto/us/bars", times=50, status=401,
                           body={"code": 40110000, "message": f"data: bad key {KEY_ID}:{SECRET}"})
        code4, out4, err4 = run_cli(tmp_path, server, cfg, "run", "--mode", "paper", "--cycles", "1", "--no-progress",
                                    tag="data")
        assert code4 == 0, err4[-3000:]

    # the journal really contains the refusal (so the check below looks at the text that quoted the key)
    journal = "".join(p.read_text() for p in (tmp_path / "logs").glob("session-*.cycles.jsonl"))
    assert "forbidden: key *** secret *** not allowed" in journal, journal[-2000:]
    assert "data: bad key ***:***" in journal, journal[-2000:]

    for text in (out, err, out2, err2, out3, err3, out4, err4):
        assert not leaks(text), leaks(text)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".jsonl" for p in written) and any(p.name == "hydra.db" for p in written)
    for path in written:
        assert not leaks(path.read_bytes()), (path, leaks(path.read_bytes()))

    con = sqlite3.connect(tmp_path / "hydra.db")
    try:
        tables = [r[0] for r in con.execute("select name from sqlite_master where type = 'table'")]
        assert {"orders", "fills", "cycles", "engine_state"} <= set(tables)
        dump = "\n".join(repr(row) for t in tables for row in con.execute(f'select * from "{t}"'))
        assert "forbidden: key ***" in dump                     # the refused order's row, redacted
        assert not leaks(dump), leaks(dump)
        assert not leaks("\n".join(con.iterdump()))
    finally:
        con.close()


# --------------------------------------------------------------------------- the live opt-in
LIVE_CASES = {
    "toml paper=false, no flag, no env": (dict(toml=True), [], None),
    "env paper=false, no flag, no env": (dict(env=True), [], None),
    "toml paper=false + env opt-in, no flag": (dict(toml=True), [], "I_UNDERSTAND_REAL_MONEY"),
    "toml paper=false + flag, no env": (dict(toml=True), ["--live"], None),
    "toml paper=false + flag + wrong env value": (dict(toml=True), ["--live"], "yes"),
    "flag + env opt-in but paper=true": (dict(), ["--live"], "I_UNDERSTAND_REAL_MONEY"),
}


@pytest.mark.parametrize("case", list(LIVE_CASES))
def test_live_trading_cannot_be_enabled_by_configuration_alone(case, tmp_path, monkeypatch, capsys):
    how, flags, opt_in = LIVE_CASES[case]
    cfg = paper_config(tmp_path, extra="")
    if how.get("toml"):
        cfg.write_text(cfg.read_text().replace('[broker]\nkind = "alpaca"', '[broker]\nkind = "alpaca"\npaper = false'))
        assert "paper = false" in cfg.read_text()
    monkeypatch.chdir(tmp_path)
    with AlpacaServer(None) as server:
        for k, v in server.env().items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("APCA_API_KEY_ID", KEY_ID)
        monkeypatch.setenv("APCA_API_SECRET_KEY", SECRET)
        if how.get("env"):
            monkeypatch.setenv("HYDRA_BROKER__PAPER", "false")
        else:
            monkeypatch.delenv("HYDRA_BROKER__PAPER", raising=False)
        if opt_in is None:
            monkeypatch.delenv("HYDRA_ENABLE_LIVE_TRADING", raising=False)
        else:
            monkeypatch.setenv("HYDRA_ENABLE_LIVE_TRADING", opt_in)
        code = main(["--config", str(cfg), "run", "--mode", "paper", "--cycles", "1", "--no-progress", *flags])
        err = capsys.readouterr().err
        assert code == 2 and "live trading refused" in err, (code, err[-2000:])
        assert server.requests == [], server.requests          # nothing reached the (loopback) broker
    assert not list((tmp_path / "logs").glob("session-*.json")) if (tmp_path / "logs").exists() else True


# --------------------------------------------------------------------------- keys in the configuration
FILE_KEY, FILE_SECRET = "PKFILECANARY4T8R1M6Q", "fIlE-sEcReT-CaNaRy-9876543210"
ENV_KEY, ENV_TOKEN = "PKENVCANARY2H5J7K3L", "eNv-ToKeN-CaNaRy-1357924680"
STRAY = "StRaY-vAlUe-CaNaRy-24680"          # an unknown key whose name says nothing: shown as *** too


def test_keys_in_the_config_file_or_a_hydra_variable_are_refused_without_being_echoed(tmp_path, monkeypatch, capsys):
    for name in list(os.environ):
        if name.upper().startswith(("HYDRA_", "ALPACA_", "APCA_")):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "hydra.toml"
    cfg.write_text(f'[broker]\napi_key = "{FILE_KEY}"\nsecret_key = "{FILE_SECRET}"\n'
                   f'[engine]\ncycle_intervl_s = "{STRAY}"\n', encoding="utf-8")
    monkeypatch.setenv("HYDRA_BROKER__API_KEY", ENV_KEY)
    monkeypatch.setenv("HYDRA_BROKER__AUTH_TOKEN", ENV_TOKEN)
    code = main(["--config", str(cfg), "status"])
    out, err = capsys.readouterr()
    assert code == 2 and err.startswith("error: invalid configuration"), (code, err)
    for text in (out, err):
        for canary in (FILE_KEY, FILE_SECRET, ENV_KEY, ENV_TOKEN, STRAY):
            assert canary not in text and canary[:10] not in text, (canary, text)
    # still refused by name and source, with where the keys belong
    assert f"{cfg}: key 'broker.secret_key' = ***" in err, err
    assert "environment (HYDRA_BROKER__API_KEY): key 'broker.api_key' = ***" in err, err
    assert "environment (HYDRA_BROKER__AUTH_TOKEN)" in err and "key 'engine.cycle_intervl_s' = ***" in err, err
    assert "ALPACA_API_KEY" in err and "APCA_API_SECRET_KEY" in err and ".env" in err, err


@pytest.mark.parametrize("paper,live,opt_in,allowed", [
    (False, True, "I_UNDERSTAND_REAL_MONEY", True),
    (False, True, None, False), (False, True, "yes", False), (False, False, "I_UNDERSTAND_REAL_MONEY", False),
    (True, True, "I_UNDERSTAND_REAL_MONEY", False), (True, False, None, True)])
def test_the_session_builders_own_opt_in_check_needs_all_three(paper, live, opt_in, allowed, monkeypatch):
    """The session builder refuses on its own, before the broker adapter's second check is reached."""
    from hydra_engine.config import Settings
    from hydra_engine.paper import LiveTradingRefused, require_live_opt_in

    if opt_in is None:
        monkeypatch.delenv("HYDRA_ENABLE_LIVE_TRADING", raising=False)
    else:
        monkeypatch.setenv("HYDRA_ENABLE_LIVE_TRADING", opt_in)
    settings = Settings(broker={"kind": "alpaca", "paper": paper})
    if allowed:
        require_live_opt_in(settings, live)
    else:
        with pytest.raises(LiveTradingRefused, match="broker.paper = false AND the --live flag"):
            require_live_opt_in(settings, live)
