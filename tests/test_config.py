"""Configuration (issue #2): the shipped hydra.toml loads, and a bad value stops HYDRA at start-up with
the file (or the HYDRA_* variable), the key, the value and what was expected — both from
``load_settings`` (ConfigError) and from the CLI (exit code 2, message on stderr).

Every test runs from an empty temporary working directory, so no project ``.env`` is picked up, and
with every HYDRA_/Alpaca variable removed from the environment.
"""
from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import pytest

from hydra_engine.cli import EXIT_USAGE, main
from hydra_engine.config import DEFAULT_CONFIG, AlpacaKeys, ConfigError, Settings, load_settings

SHIPPED = DEFAULT_CONFIG.read_text(encoding="utf-8")
KEY_VARS = ("ALPACA_API_KEY", "ALPACA_SECRET_KEY", "APCA_API_KEY_ID", "APCA_API_SECRET_KEY")


@pytest.fixture(autouse=True)
def clean_env(tmp_path, monkeypatch):
    for name in list(os.environ):
        if name.upper().startswith("HYDRA_") or name in KEY_VARS:
            monkeypatch.delenv(name, raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def write_config(tmp_path: Path, text: str, name: str = "hydra.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def shipped_with(old: str, new: str) -> str:
    assert old in SHIPPED, f"test fixture out of date: {old!r} is not in hydra.toml"
    return SHIPPED.replace(old, new, 1)


# --------------------------------------------------------------------------- the shipped file
def test_shipped_hydra_toml_loads_with_its_documented_values():
    s = load_settings(DEFAULT_CONFIG)
    assert isinstance(s, Settings)
    assert s.engine.cycle_interval_s == 60 and s.engine.observation_cycles == 20
    assert s.broker.kind == "sim" and s.broker.fee_bps == 10.0 and s.broker.slippage_bps == 5.0
    assert s.data.kind == "replay" and s.data.start == date(2024, 1, 1) and s.data.end == date(2024, 7, 1)
    assert s.universe.symbols[:3] == ["BTC/USD", "ETH/USD", "SPY"] and len(s.universe.symbols) == 15
    assert s.strategies.enabled == ["liquidation_cascade", "macro_events", "metals_margin", "ai_disruption",
                                    "cross_asset", "funding_squeeze", "liquidation_reversal", "oi_divergence",
                                    "crowding_fade", "funding_carry"]   # every strategy the mission names (#18-#20)
    assert s.modifiers.enabled == ["cross_asset"]   # #19 ships the graph modifier on
    assert s.perps.enabled and s.perps.symbols == ["BTCUSDT", "ETHUSDT"] and s.perps.starting_balance_usdt == 10000.0
    assert s.strategies.params["liquidation_cascade"]["stop_pct"] == 2.0
    # the default (no path) is the shipped file, and the hash is stable
    assert load_settings().config_hash() == s.config_hash()


def test_config_hash_ignores_where_the_checkout_lives_but_not_decisions():
    """The session id, and so every client_order_id and the golden hashes, is built from this hash:
    two machines with the checkout in different folders must agree."""
    s = load_settings(DEFAULT_CONFIG)
    moved = s.model_copy(update={
        "data": s.data.model_copy(update={"replay_dir": "/somewhere/else/shared/data"}),
        "engine": s.engine.model_copy(update={"log_dir": "/elsewhere/logs"})})
    assert moved.config_hash() == s.config_hash()
    tighter = s.model_copy(update={"broker": s.broker.model_copy(update={"fee_bps": 25.0})})
    assert tighter.config_hash() != s.config_hash()


def test_missing_config_file_is_named(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="config file not found") as err:
        load_settings(missing)
    assert str(missing) in str(err.value)


# --------------------------------------------------------------------------- bad values in the file
BAD_VALUES = [
    # (id, old text, new text, fragments the message must contain)
    ("negative_interval", "cycle_interval_s = 60", "cycle_interval_s = -5",
     ["engine.cycle_interval_s", "-5", "greater than or equal to 1"]),
    ("unknown_broker", 'kind = "sim"', 'kind = "ib"',
     ["broker.kind", "'ib'", "'sim' or 'alpaca'"]),
    ("start_after_end", "start = 2024-01-01", "start = 2024-08-01",
     ["data", "data.start 2024-08-01 must be before data.end 2024-07-01"]),
    ("typo_key", "cycle_interval_s = 60", "cycle_intervl_s = 60",
     ["engine.cycle_intervl_s", "= ***", "no such setting"]),  # an unknown key's value may be a secret
    ("typo_section", "[broker]", "[brokr]", ["'brokr'", "no such setting"]),
    ("risk_limit_too_loose", "risk_per_trade_pct = 1.0", "risk_per_trade_pct = 7.5",
     ["risk.risk_per_trade_pct", "7.5", "less than or equal to 3"]),
    ("wrong_type", "history_bars = 500", 'history_bars = "lots"',
     ["engine.history_bars", "'lots'", "valid integer"]),
    ("duplicate_symbol", 'symbols = ["BTC/USD", "ETH/USD",', 'symbols = ["BTC/USD", "BTC/USD", "ETH/USD",',
     ["universe.symbols", "duplicate symbols ['BTC/USD']"]),
]


@pytest.mark.parametrize("old,new,fragments", [b[1:] for b in BAD_VALUES], ids=[b[0] for b in BAD_VALUES])
def test_bad_value_in_file_names_file_key_value_and_rule(tmp_path, old, new, fragments):
    path = write_config(tmp_path, shipped_with(old, new))
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    msg = str(err.value)
    assert str(path) in msg, msg
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} missing from:\n{msg}"
    assert "environment" not in msg  # the file is to blame, not a variable


@pytest.mark.parametrize("old,new,fragments", [b[1:] for b in BAD_VALUES[:4]], ids=[b[0] for b in BAD_VALUES[:4]])
def test_cli_refuses_a_bad_config_with_exit_code_2_and_the_message_on_stderr(tmp_path, capsys, old, new, fragments):
    path = write_config(tmp_path, shipped_with(old, new).replace('log_dir = "logs"', f'log_dir = "{tmp_path / "logs"}"'))
    code = main(["--config", str(path), "run", "--cycles", "1", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == EXIT_USAGE == 2
    assert err.startswith("error: invalid configuration")
    assert str(path) in err
    for fragment in fragments:
        assert fragment in err
    assert "session summary" not in out
    assert not (tmp_path / "logs").exists()  # nothing ran


def test_invalid_toml_names_the_file_and_the_position(tmp_path, capsys):
    path = write_config(tmp_path, SHIPPED + "\n[engine\nfoo = 1\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: not valid TOML")
    assert "line" in msg
    assert main(["--config", str(path), "run"]) == 2
    assert str(path) in capsys.readouterr().err


@pytest.mark.parametrize("kind, message", [("folder", "cannot read the config file (Is a directory)"),
                                            ("latin1", "not a UTF-8 text file")])
def test_unreadable_config_names_the_file(tmp_path, capsys, kind, message):
    path = tmp_path / "hydra.toml"
    if kind == "folder":
        path.mkdir()                    # was an IsADirectoryError traceback
    else:
        path.write_bytes('[engine]\nlog_dir = "caf\xe9"\n'.encode("latin-1"))  # was the codec's message alone
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert str(err.value).startswith(f"{path}: {message}")
    assert main(["--config", str(path), "run"]) == 2
    assert f"error: {path}: {message}" in capsys.readouterr().err


def test_a_minimal_file_falls_back_to_defaults(tmp_path):
    s = load_settings(write_config(tmp_path, '[broker]\nfee_bps = 2.5\n'))
    assert s.broker.fee_bps == 2.5
    assert s.engine == Settings().engine  # untouched sections keep the defaults


# --------------------------------------------------------------------------- environment overrides
def test_env_override_beats_the_file(tmp_path, monkeypatch):
    path = write_config(tmp_path, SHIPPED)
    assert load_settings(path).broker.fee_bps == 10.0
    monkeypatch.setenv("HYDRA_BROKER__FEE_BPS", "3.5")
    monkeypatch.setenv("HYDRA_ENGINE__CYCLE_INTERVAL_S", "15")
    s = load_settings(path)
    assert s.broker.fee_bps == 3.5
    assert s.engine.cycle_interval_s == 15
    # the other keys of the overridden sections still come from the file (deep merge, not replace)
    assert s.broker.slippage_bps == 5.0 and s.broker.starting_cash_usd == 100_000.0
    assert s.engine.observation_cycles == 20


def test_dotenv_override_beats_the_file_but_loses_to_the_environment(tmp_path, clean_env, monkeypatch):
    path = write_config(tmp_path, SHIPPED)
    (clean_env / ".env").write_text("HYDRA_BROKER__FEE_BPS=4\n", encoding="utf-8")
    assert load_settings(path).broker.fee_bps == 4.0
    monkeypatch.setenv("HYDRA_BROKER__FEE_BPS", "6")
    assert load_settings(path).broker.fee_bps == 6.0


@pytest.mark.parametrize("in_file", [False, True], ids=["key_not_in_file", "key_also_in_file"])
def test_bad_env_value_names_the_hydra_variable(tmp_path, monkeypatch, in_file):
    # the shipped file sets broker.fee_bps itself: the message must still blame the variable, not the file
    text = SHIPPED if in_file else "[engine]\ncycle_interval_s = 30\n"
    path = write_config(tmp_path, text)
    monkeypatch.setenv("HYDRA_BROKER__FEE_BPS", "abc")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    msg = str(err.value)
    assert "HYDRA_BROKER__FEE_BPS" in msg, msg
    assert "broker.fee_bps" in msg and "'abc'" in msg and "valid number" in msg
    assert str(path) not in msg, f"the file is blamed for an environment value:\n{msg}"


def test_out_of_range_env_value_names_the_variable(tmp_path, monkeypatch, capsys):
    path = write_config(tmp_path, SHIPPED)
    monkeypatch.setenv("HYDRA_ENGINE__CYCLE_INTERVAL_S", "-5")
    assert main(["--config", str(path), "run", "--cycles", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "HYDRA_ENGINE__CYCLE_INTERVAL_S" in err and "'-5'" in err and "greater than or equal to 1" in err


def test_misspelt_env_variable_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("HYDRA_BROKER__FEE_BPZ", "3")
    with pytest.raises(ConfigError) as err:
        load_settings(write_config(tmp_path, SHIPPED))
    assert "HYDRA_BROKER__FEE_BPZ" in str(err.value) and "no such setting" in str(err.value)


@pytest.mark.parametrize("name,nearest", [
    ("HYDRA_BROKER_FEE_BPS", "HYDRA_BROKER__FEE_BPS"),                 # one underscore: no section
    ("HYDRA_ENGNE__CYCLE_INTERVAL_S", "HYDRA_ENGINE__CYCLE_INTERVAL_S"),  # misspelt section
    ("HYDRA_SHARED_DAT", "HYDRA_SHARED_DATA"),                          # near a project variable
    ("HYDRA_BROKER_QQQ_ZZZZZZ", None)])                               # a section's name, then no setting
def test_a_variable_naming_no_section_is_refused_with_the_nearest_name(tmp_path, monkeypatch, capsys,
                                                                       name, nearest):
    """pydantic-settings skips a HYDRA_* name whose section it does not know: the run went on with
    fee_bps 10 and not a word about HYDRA_BROKER_FEE_BPS=50."""
    monkeypatch.setenv(name, "50")
    with pytest.raises(ConfigError) as err:
        load_settings(write_config(tmp_path, SHIPPED))
    msg = str(err.value)
    assert f"environment ({name}): not a setting" in msg, msg
    assert (f"did you mean {nearest}?" in msg) if nearest else "HYDRA_<SECTION>__<KEY>" in msg, msg
    assert "'50'" not in msg  # an unknown variable may hold anything: its value is not shown
    assert main(["run", "--cycles", "1", "--no-progress"]) == EXIT_USAGE
    assert name in capsys.readouterr().err


def test_a_misspelt_variable_in_dotenv_is_refused_like_one_in_the_environment(clean_env):
    (clean_env / ".env").write_text("HYDRA_BROKER_FEE_BPS=50\nHYDRA_BROKER__FEE_BPS=7\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_settings(DEFAULT_CONFIG)
    assert ".env (HYDRA_BROKER_FEE_BPS): not a setting; did you mean HYDRA_BROKER__FEE_BPS?" in str(err.value)


def test_settings_variables_keep_the_case_and_nesting_rules_and_project_variables_pass(monkeypatch, clean_env):
    from hydra_engine.config import PROJECT_VARIABLES
    monkeypatch.setenv("hydra_broker__fee_bps", "7")          # the settings are case-insensitive
    monkeypatch.setenv("HYDRA_STRATEGIES__PARAMS__LIQUIDATION_CASCADE__STOP_PCT", "3")  # a dict nests deeper
    monkeypatch.setenv("HYDRA_DATA", '{"start": "2024-02-01", "end": "2024-03-01"}')  # a whole section
    for name in PROJECT_VARIABLES:
        monkeypatch.setenv(name, "x")
    s = load_settings(DEFAULT_CONFIG)
    assert s.broker.fee_bps == 7.0 and s.data.start == date(2024, 2, 1)
    assert float(s.strategies.params["liquidation_cascade"]["stop_pct"]) == 3.0
    # read with os.environ only: in .env such a variable would do nothing, so it is refused there
    (clean_env / ".env").write_text("HYDRA_ENABLE_LIVE_TRADING=I_UNDERSTAND_REAL_MONEY\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\.env \(HYDRA_ENABLE_LIVE_TRADING\): .*environment only"):
        load_settings(DEFAULT_CONFIG)


def test_every_hydra_variable_the_project_reads_is_a_setting_or_listed():
    """The check above refuses any HYDRA_* name that is not a setting: a variable the code reads itself
    must be named in PROJECT_VARIABLES, or setting it would stop HYDRA."""
    import re
    from hydra_engine.config import PROJECT_VARIABLES
    root = Path(__file__).resolve().parents[1]
    read = re.compile(r"""(?:environ\.get|getenv|environ\[|setenv)\(?\s*["'](HYDRA_[A-Z0-9_]+)["']""")
    found = {m.group(1) for folder in ("hydra_engine", "tests", "bench") for path in (root / folder).rglob("*.py")
             for m in read.finditer(path.read_text(encoding="utf-8"))}
    settings_like = {n for n in found if "__" in n or n.removeprefix("HYDRA_").lower() in Settings.model_fields}
    assert {"HYDRA_SHARED_DATA", "HYDRA_ENABLE_LIVE_TRADING", "HYDRA_BENCH_OUT"} <= found  # the scan works
    assert found - settings_like <= set(PROJECT_VARIABLES), found - settings_like - set(PROJECT_VARIABLES)


@pytest.mark.parametrize("name,value,kind,example", [
    ("HYDRA_UNIVERSE__SYMBOLS", "SPY", "a list", '["SPY"]'),
    ("HYDRA_UNIVERSE__SYMBOLS", "SPY,TLT", "a list", '["SPY", "TLT"]')])
def test_a_list_or_object_not_written_as_json_names_the_variable_and_the_value(tmp_path, monkeypatch, capsys,
                                                                            name, value, kind, example):
    """pydantic-settings said only 'error parsing value for field "universe" from source
    "EnvSettingsSource"'."""
    monkeypatch.setenv(name, value)
    assert main(["--config", str(write_config(tmp_path, SHIPPED)), "run", "--cycles", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"environment ({name}): value {value!r}: {kind} must be written as JSON, e.g. {name}='{example}'" in err, err
    monkeypatch.setenv("HYDRA_UNIVERSE__SYMBOLS", '["SPY"]')  # as JSON it is read
    monkeypatch.delenv("HYDRA_BROKER", raising=False)
    assert load_settings(write_config(tmp_path, SHIPPED)).universe.symbols == ["SPY"]


def test_nan_in_the_file_blames_the_file_not_a_variable(tmp_path):
    # nan != nan: the file's own value must still be recognised as the file's
    path = write_config(tmp_path, "[broker]\nfee_bps = nan\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    msg = str(err.value)
    assert f"{path}: key 'broker.fee_bps' = nan" in msg, msg
    assert "environment" not in msg and "HYDRA_" not in msg, msg


def test_a_section_check_names_the_variables_actually_set(tmp_path, monkeypatch):
    # data.start from the file, data.end from a variable: there is no HYDRA_DATA variable to blame
    path = write_config(tmp_path, "[data]\nstart = 2024-05-01\nend = 2024-07-01\n")
    monkeypatch.setenv("HYDRA_DATA__END", "2024-03-01")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    msg = str(err.value)
    assert "(HYDRA_DATA__END)" in msg and str(path) in msg, msg
    assert "HYDRA_DATA)" not in msg, msg
    assert "data.start 2024-05-01 must be before data.end 2024-03-01" in msg
    # both ends from the file: the file alone is named
    monkeypatch.delenv("HYDRA_DATA__END")
    path = write_config(tmp_path, "[data]\nstart = 2024-05-01\nend = 2024-03-01\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert str(err.value).startswith(f"invalid configuration:\n  {path}: key 'data'"), str(err.value)
    assert "environment" not in str(err.value)


@pytest.mark.parametrize("section,key,text,number", [("broker", "fee_bps", "12", 12.0),
                                                     ("risk", "kelly_fraction", "0.25", 0.25),
                                                     ("engine", "history_bars", "600", 600),
                                                     ("data", "crypto_stale_after_s", "3600", 3600)])
def test_a_boolean_is_not_a_number(tmp_path, capsys, monkeypatch, section, key, text, number):
    # pydantic's lax mode would read `fee_bps = true` as 1.0 bps
    path = write_config(tmp_path, f"[{section}]\n{key} = true\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    msg = str(err.value)
    assert f"{path}: key '{section}.{key}' = True" in msg and "not true/false" in msg, msg
    assert main(["--config", str(path), "status"]) == 2
    assert f"{section}.{key}" in capsys.readouterr().err
    # numbers from variables arrive as text and still parse; a real boolean stays one
    monkeypatch.setenv(f"HYDRA_{section.upper()}__{key.upper()}", text)
    monkeypatch.setenv("HYDRA_BROKER__PAPER", "true")
    s = load_settings(write_config(tmp_path, SHIPPED))
    assert getattr(getattr(s, section), key) == number and s.broker.paper is True


# --------------------------------------------------------------------------- Alpaca keys
def test_alpaca_keys_missing_names_both_variables():
    keys = AlpacaKeys()
    assert keys.missing() == ["ALPACA_API_KEY (or APCA_API_KEY_ID)", "ALPACA_SECRET_KEY (or APCA_API_SECRET_KEY)"]


@pytest.mark.parametrize("key_var,secret_var", [("ALPACA_API_KEY", "ALPACA_SECRET_KEY"),
                                                ("APCA_API_KEY_ID", "APCA_API_SECRET_KEY")])
def test_alpaca_keys_accept_both_naming_conventions(monkeypatch, key_var, secret_var):
    monkeypatch.setenv(key_var, "PKTEST123")
    monkeypatch.setenv(secret_var, "s3cret")
    keys = AlpacaKeys()
    assert keys.missing() == []
    assert keys.api_key.get_secret_value() == "PKTEST123"
    assert keys.secret_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(keys)  # a secret never shows in a repr or log line


def test_alpaca_keys_half_set_reports_only_the_missing_one(monkeypatch):
    monkeypatch.setenv("APCA_API_KEY_ID", "PKTEST123")
    assert AlpacaKeys().missing() == ["ALPACA_SECRET_KEY (or APCA_API_SECRET_KEY)"]
    monkeypatch.setenv("ALPACA_SECRET_KEY", "")
    assert AlpacaKeys().missing() == ["ALPACA_SECRET_KEY (or APCA_API_SECRET_KEY)"]  # empty is missing


def test_alpaca_keys_in_dotenv_are_read_and_do_not_break_the_settings(clean_env):
    # The documented place for the keys is the environment *or .env*. The same .env is read by the
    # Settings too, which must not mistake the Alpaca variables for misspelt HYDRA settings.
    (clean_env / ".env").write_text("ALPACA_API_KEY=PKTEST123\nALPACA_SECRET_KEY=s3cret\n", encoding="utf-8")
    assert AlpacaKeys().missing() == []
    s = load_settings(DEFAULT_CONFIG)
    assert s.broker.kind == "sim"


def test_api_keys_are_never_read_from_the_toml_file(tmp_path):
    path = write_config(tmp_path, SHIPPED + '\n[alpaca]\napi_key = "PKTEST123"\n')
    with pytest.raises(ConfigError, match="alpaca"):
        load_settings(path)
    assert AlpacaKeys().missing()  # still missing: the file is not a source of keys


def test_misspelt_hydra_variable_in_dotenv_is_still_refused(clean_env):
    (clean_env / ".env").write_text("ALPACA_API_KEY=PKTEST123\nHYDRA_BROKER__FEE_BPZ=3\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_settings(DEFAULT_CONFIG)
    msg = str(err.value)
    assert "fee_bpz" in msg.lower() and "no such setting" in msg
    assert "PKTEST123" not in msg  # the Alpaca key is neither a setting nor echoed in the error


def test_another_programs_hydra_variable_is_ignored_with_a_warning(tmp_path, monkeypatch, caplog):
    """Facebook's hydra reads HYDRA_FULL_ERROR, often exported in a shell profile: refusing every unknown
    HYDRA_* name stopped every command. A name that resembles no section or setting is logged and ignored."""
    foreign = "HYDRA_FULL_ERROR"        # (not a literal in setenv: the scan below lists what HYDRA reads)
    monkeypatch.setenv(foreign, "1")
    with caplog.at_level("WARNING", logger="hydra_engine.config"):
        settings = load_settings(write_config(tmp_path, SHIPPED))
    assert settings.broker.fee_bps == 10.0
    assert "environment variable HYDRA_FULL_ERROR names no HYDRA setting: ignored" in caplog.text


def test_a_section_not_written_as_json_is_refused_without_showing_its_value(tmp_path, monkeypatch, capsys):
    """A whole section can hold credentials (HYDRA_STORAGE set to a database URL instead of
    HYDRA_STORAGE__URL): the message names the variable and the form, never the value."""
    monkeypatch.setenv("HYDRA_STORAGE", "postgresql+psycopg://hydra:s3cretPW@db.internal/hydra")
    assert main(["--config", str(write_config(tmp_path, SHIPPED)), "status"]) == 2
    err = capsys.readouterr().err
    assert "environment (HYDRA_STORAGE): an object must be written as JSON" in err, err
    assert "s3cretPW" not in err and "db.internal" not in err


@pytest.mark.parametrize("value", ["stop_pct=3", '{"stop_pct": 3}'])
def test_a_plugins_whole_params_object_points_to_its_keys(tmp_path, monkeypatch, value):
    """pydantic-settings decodes JSON only down to a section's fields: the advice to write a plugin's params
    as JSON could not work (it then failed with "Input should be a valid dictionary")."""
    monkeypatch.setenv("HYDRA_STRATEGIES__PARAMS__LIQUIDATION_CASCADE", value)
    with pytest.raises(ConfigError) as err:
        load_settings(write_config(tmp_path, SHIPPED))
    assert ("set its keys one by one (HYDRA_STRATEGIES__PARAMS__LIQUIDATION_CASCADE__<KEY>=value) or all of "
            "HYDRA_STRATEGIES__PARAMS as JSON") in str(err.value)
    monkeypatch.delenv("HYDRA_STRATEGIES__PARAMS__LIQUIDATION_CASCADE")
    monkeypatch.setenv("HYDRA_STRATEGIES__PARAMS__LIQUIDATION_CASCADE__STOP_PCT", "3")
    assert float(load_settings(write_config(tmp_path, SHIPPED)).strategies.params["liquidation_cascade"]["stop_pct"]) == 3


def test_a_bad_value_from_dotenv_is_blamed_on_dotenv(clean_env, monkeypatch):
    """A bad value read from .env was reported as coming from the environment, where the user finds nothing."""
    (clean_env / ".env").write_text("HYDRA_BROKER__FEE_BPS=-3\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_settings(DEFAULT_CONFIG)
    assert ".env (HYDRA_BROKER__FEE_BPS): key 'broker.fee_bps' = '-3'" in str(err.value), str(err.value)
    monkeypatch.setenv("HYDRA_BROKER__FEE_BPS", "-4")     # the environment wins, and is named
    with pytest.raises(ConfigError) as err:
        load_settings(DEFAULT_CONFIG)
    assert "environment (HYDRA_BROKER__FEE_BPS): key 'broker.fee_bps' = '-4'" in str(err.value), str(err.value)
