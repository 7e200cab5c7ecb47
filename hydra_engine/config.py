"""Configuration: the shipped ``hydra.toml``, overridden by ``HYDRA_*`` environment variables and
``.env``, validated by pydantic-settings at start-up.

A bad value stops HYDRA before anything runs, with the file (or variable), the key, the value and
what was expected; the value of an unknown or secret-looking key is shown as ``***``. API keys are never
read from the TOML file: only from the environment or ``.env``.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import logging
import math
import os
import re
import tomllib
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from dotenv import dotenv_values
from pydantic import (AliasChoices, BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from .config_sections import (NOTIFY_EVENTS, PERP_EXECUTION_FIELDS, PERP_SYMBOLS, HorizonConfig, LogsConfig,  # noqa: F401
                              ModifiersConfig, RegimeModelConfig, ScorersConfig,
                              NotifyConfig, PerpsConfig, TruthConfig, _Section)
from .llm.schema import LlmSettings

_log = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PROJECT_ROOT / "hydra.toml"

UNIVERSE = ["BTC/USD", "ETH/USD", "SPY", "TLT", "GLD", "SLV", "GDX", "IGV", "CRM", "SHOP", "ADBE",
            "MSFT", "WDAY", "LZ", "HYG"]


class ConfigError(Exception):
    """Start-up configuration problem; the message names where, which key, the value and the rule."""


class EngineConfig(_Section):
    cycle_interval_s: int = Field(60, ge=1, le=3600, description="seconds between live cycles")
    observation_cycles: int = Field(20, ge=0, description="first cycles only observe")
    regime_refresh_cycles: int = Field(10, ge=1, description="re-detect the regime every N cycles")
    history_bars: int = Field(500, ge=50, le=5000, description="bars kept per symbol")
    regime_detector: Literal["hmm", "trend_vol_rule"] = "hmm"
    regime_refit_days: int = Field(0, ge=0, le=3650, description="refit the HMM every N days on the history "
                                   "known at that moment (0 = only by `hydra train`)")
    log_dir: str = "logs"


class UniverseConfig(_Section):
    symbols: list[str] = Field(default_factory=lambda: list(UNIVERSE))
    data_only: list[str] = Field(default_factory=lambda: ["VIX"])

    @field_validator("symbols")
    @classmethod
    def _non_empty_unique(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("the universe needs at least one symbol")
        dupes = sorted({s for s in v if v.count(s) > 1})
        if dupes:
            raise ValueError(f"duplicate symbols {dupes}")
        return v


class StrategiesConfig(_Section):
    enabled: list[str] = Field(default_factory=lambda: ["liquidation_cascade"])
    params: dict[str, dict[str, Any]] = Field(default_factory=dict)


class RiskConfig(_Section):
    """Hard limits from the strategy bible. Config may tighten them, never loosen (checked in risk)."""

    max_position_pct: float = Field(3.0, gt=0)
    max_asset_pct: float = Field(5.0, gt=0)
    max_total_exposure_pct: float = Field(25.0, gt=0)
    max_trades_per_day: int = Field(30, ge=0)
    max_consecutive_losses: int = Field(3, ge=1)
    cooldown_hours: float = Field(4.0, ge=0)
    max_daily_loss_pct: float = Field(5.0, gt=0)
    max_drawdown_pct: float = Field(10.0, gt=0)
    risk_per_trade_pct: float = Field(1.0, gt=0, le=3.0)
    kelly_fraction: float = Field(0.5, gt=0, le=1.0)
    # issue #5 sizing and kill-switch tuning (not hard limits; see hydra_engine/risk.py)
    vol_lookback_bars: int = Field(20, ge=5, le=500, description="bars per realised-vol window")
    vol_mult_min: float = Field(0.25, gt=0, le=1.0, description="smallest volatility size multiplier")
    vol_mult_max: float = Field(1.0, ge=1.0, le=2.0, description="largest; 1 = vol scaling only shrinks")
    corr_lookback_bars: int = Field(60, ge=10, le=1000, description="returns per rolling correlation")
    corr_min_overlap: int = Field(20, ge=5, description="fewer aligned returns: correlation unknown")
    extreme_vol_percentile: float = Field(0.95, gt=0.5, le=1.0,
                                          description="fraction; with a regime break -> kill switch")
    buying_power_buffer_pct: float = Field(5.0, ge=0, lt=100, description="buying power held back, percent")


class BrokerConfig(_Section):
    kind: Literal["sim", "alpaca"] = "sim"
    starting_cash_usd: float = Field(100_000.0, gt=0)
    fee_bps: float = Field(10.0, ge=0, le=500, description="fee per side, basis points of notional")
    slippage_bps: float = Field(5.0, ge=0, le=500)
    paper: bool = True
    trading_url: str | None = None
    data_url: str | None = None
    data_feed: Literal["iex", "sip"] = "iex"


class DataConfig(_Section):
    kind: Literal["replay", "alpaca"] = "replay"
    replay_dir: str = "data"
    start: date | None = None
    end: date | None = None
    crypto_stale_after_s: int = Field(2 * 3600 + 300, ge=60)
    equity_stale_after_s: int = Field(4 * 24 * 3600, ge=3600)

    @model_validator(mode="after")
    def _ordered(self) -> "DataConfig":
        if self.start and self.end and self.start >= self.end:
            raise ValueError(f"data.start {self.start} must be before data.end {self.end}")
        return self


class StorageConfig(_Section):
    url: str = "sqlite:///logs/hydra.db"


class Settings(BaseSettings):
    """The whole configuration. Env overrides use ``HYDRA_SECTION__KEY`` (e.g. ``HYDRA_BROKER__KIND``)."""

    model_config = SettingsConfigDict(env_prefix="HYDRA_", env_nested_delimiter="__", extra="forbid",
                                      env_file=".env", env_file_encoding="utf-8", frozen=True,
                                      dotenv_filtering="match_prefix")  # .env also holds ALPACA_* keys

    engine: EngineConfig = EngineConfig()
    universe: UniverseConfig = UniverseConfig()
    strategies: StrategiesConfig = StrategiesConfig()
    risk: RiskConfig = RiskConfig()
    broker: BrokerConfig = BrokerConfig()
    data: DataConfig = DataConfig()
    storage: StorageConfig = StorageConfig()
    modifiers: ModifiersConfig = ModifiersConfig()
    perps: PerpsConfig = PerpsConfig()
    logs: LogsConfig = LogsConfig()
    notify: NotifyConfig = NotifyConfig()
    llm: LlmSettings = LlmSettings()        # the LLM news gate (issue #22); off by default, needs no key
    truth: TruthConfig = TruthConfig()
    scorers: ScorersConfig = ScorersConfig()
    regime_model: RegimeModelConfig = RegimeModelConfig()
    horizon: HorizonConfig = HorizonConfig()

    _toml_path: Path | None = None

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings) -> tuple[PydanticBaseSettingsSource, ...]:
        # environment beats .env beats the TOML file (passed as init kwargs)
        return env_settings, dotenv_settings, init_settings

    def config_hash(self) -> str:
        """Stable hash of every setting that can change a decision (no secrets live here), recorded in
        each session log. Where logs and the database are written, and where the checkout's data
        folder happens to live, do not count: the same config must hash the same on every machine,
        because the session id (and so every client_order_id) is built from it."""
        data = self.model_dump(mode="json")
        data["engine"].pop("log_dir", None)
        data["data"].pop("replay_dir", None)
        data.pop("storage", None)
        if data.get("modifiers") == {"enabled": [], "params": {}}:
            data.pop("modifiers")   # none enabled: the hash of a config that predates modifiers is unchanged
        if not data["perps"]["enabled"]:   # a disabled module changes no decision: old ids stay valid
            data.pop("perps")
        elif data["perps"].get("execution") == "sim":
            data["perps"].pop("execution")   # the default: hashes made before the setting existed stay valid
        if data.get("perps") and not (self.perps.post_only_entries or self.perps.post_only_exits
                                      or self.perps.twap_volume_share > 0):
            for k in PERP_EXECUTION_FIELDS:   # perp execution off: market orders, the hash perps had before it
                data["perps"].pop(k, None)
        for sec in ("scorers", "regime_model"):   # retraining off (the default): hashes made before it stay valid
            if data[sec]["retrain_every_days"] == 0:
                for k in ("retrain_every_days", "retrain_start", "retrain_seed"):
                    data[sec].pop(k)
            data[sec].pop("monitor_window")   # monitoring changes no decision
            data[sec].pop("monitor_every_hours", None)
        data["scorers"].pop("record_inputs_live")   # recording features changes no decision
        if not data["scorers"]["enabled"]:   # no scorer: its threshold changes no decision
            data.pop("scorers")
        if data["regime_model"]["perp_labeller"] == "rule":   # the rule labeller reads no model file
            data.pop("regime_model")
        data.pop("horizon", None)  # replay scheduling changes no decision (issue #24)
        data.pop("logs", None)     # retention and notifications change no decision
        data.pop("notify", None)
        # the LLM gate counts only when enabled (off, no [llm] value can change a decision, and every
        # existing configuration keeps its hash); where its verdicts are stored does not count, as storage
        if self.llm.enabled:
            data["llm"].pop("verdicts_url", None)
        else:
            data.pop("llm", None)
        payload = json.dumps(data, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def resolve_path(self, value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else PROJECT_ROOT / p


class AlpacaKeys(BaseSettings):
    """Alpaca credentials: environment or ``.env`` only. Both naming conventions are accepted."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    api_key: SecretStr | None = Field(None, validation_alias=AliasChoices("ALPACA_API_KEY", "APCA_API_KEY_ID"))
    secret_key: SecretStr | None = Field(None, validation_alias=AliasChoices("ALPACA_SECRET_KEY", "APCA_API_SECRET_KEY"))

    def missing(self) -> list[str]:
        out = []
        if not self.api_key or not self.api_key.get_secret_value():
            out.append("ALPACA_API_KEY (or APCA_API_KEY_ID)")
        if not self.secret_key or not self.secret_key.get_secret_value():
            out.append("ALPACA_SECRET_KEY (or APCA_API_SECRET_KEY)")
        return out


def _lookup(data: dict, loc: tuple) -> tuple[bool, Any]:
    cur: Any = data
    for part in loc:
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and isinstance(part, int) and part < len(cur):
            cur = cur[part]
        else:
            return False, None
    return True, cur


_SECRET_NAME = re.compile(r"key|secret|token|password", re.IGNORECASE)
_KEYS_HINT = ("API keys are not settings: set ALPACA_API_KEY and ALPACA_SECRET_KEY (or APCA_API_KEY_ID and "
              "APCA_API_SECRET_KEY), and ANTHROPIC_API_KEY for the LLM news gate, in the environment or .env")


def _names_a_secret(key: str, value: Any) -> bool:
    if _SECRET_NAME.search(key):
        return True
    return isinstance(value, dict) and any(_names_a_secret(str(k), v) for k, v in value.items())


def _same(a: Any, b: Any) -> bool:
    """Equal, where a NaN equals a NaN (the file's ``nan`` is the file's, not a variable's)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _variables_for(loc: tuple) -> list[str]:
    """The HYDRA_* variables, set in the environment or .env, that supply the value at ``loc``: the
    variable of the key itself, of an enclosing section (a JSON value), or of keys inside it."""
    names = [name for _, variables in _variable_sources() for name in variables]
    target = "HYDRA_" + "__".join(str(p) for p in loc).upper()
    found: list[str] = []
    for name in names:
        upper = name.upper()
        if (upper == target or target.startswith(upper + "__") or upper.startswith(target + "__")) \
                and upper not in (f.upper() for f in found):
            found.append(name)
    return sorted(found)


# The HYDRA_* variables the project reads itself, outside the settings (each with who reads it). Every
# other HYDRA_* variable must name a setting: pydantic-settings silently skips a name whose section it
# does not know (HYDRA_BROKER_FEE_BPS, one underscore), so load_settings refuses those by name.
PROJECT_VARIABLES = {
    "HYDRA_ENABLE_LIVE_TRADING": "the live-trading opt-in (live_trading_opt_in)",
    "HYDRA_NOTIFY_URLS": "apprise URLs for notifications (notify.py; they hold tokens: never logged)",
    "HYDRA_CHROMIUM": "the Chromium binary the dashboard's browser test drives (tests)",
    "HYDRA_BINANCE_URL": "another Binance endpoint for the derivatives feed (paper.py; the fault tests)",
    "HYDRA_BINANCE_TRADE_URL": "another Binance USD-M trading endpoint for perps.execution binance_* (tests)",
    "HYDRA_SHARED_DATA": "the shared real-data folder (train, tests)",
    "HYDRA_BENCH_PEERS": "the peer benchmark folder (tests)",
    "HYDRA_CONTRACTS": "the recorded Alpaca contracts (tests)",
    "HYDRA_UPDATE_GOLDEN": "rewrite the golden trade logs (tests)",
    "HYDRA_BENCH_OUT": "where benchmarks write their results (bench)",
}


def _variable_sources() -> list[tuple[str, dict[str, str | None]]]:
    """(where, variables) for the environment and the ``.env`` file, as the settings read them."""
    sources: list[tuple[str, dict[str, str | None]]] = [("environment", dict(os.environ))]
    env_file = Path(Settings.model_config.get("env_file") or ".env").expanduser()
    if env_file.is_file():
        sources.append((str(env_file), dict(dotenv_values(env_file,
                                                          encoding=Settings.model_config.get("env_file_encoding")))))
    return sources


def _fold(name: str) -> str:
    """A variable name as the settings match it (lower-cased unless they are case-sensitive)."""
    return name if Settings.model_config.get("case_sensitive") else name.lower()


def _setting_annotation(path: list[str]) -> tuple[bool, Any, bool]:
    """(section known, annotation at ``path``, reached through a dict's values) for a variable's folded
    name split at the delimiter; the annotation is None where the path leaves the settings (pydantic names
    a wrong key itself)."""
    annotation: Any = Settings
    through_dict = False
    for depth, part in enumerate(path):
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            fields = {_fold(name): f.annotation for name, f in annotation.model_fields.items()}
            if part not in fields:
                return depth > 0, None, through_dict
            annotation = fields[part]
        elif get_origin(annotation) is dict:
            annotation, through_dict = get_args(annotation)[1], True
        else:
            return True, None, through_dict
    return True, annotation, through_dict


def _must_be_json(annotation: Any) -> str | None:
    """'a list' or 'an object' when a variable for this annotation must hold JSON (pydantic-settings
    decodes such values as JSON and nothing else), else None."""
    if get_origin(annotation) in (list, tuple, set) or annotation in (list, tuple, set):
        return "a list"
    if get_origin(annotation) is dict or annotation is dict or (
            isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return "an object"
    return None


def _json_example(value: str) -> str:
    """A list variable's value as the JSON it should have been (comma-separated items, quotes dropped)."""
    items = [v.strip().strip("'\"") for v in value.strip("[]").split(",") if v.strip()]
    return json.dumps(items or ["SPY"])


def _check_variables() -> None:
    """Refuse a HYDRA_* variable that is meant for HYDRA but names no setting (nor one of
    :data:`PROJECT_VARIABLES`), and a list or object not written as JSON: the first would be ignored
    without a word, the second fails inside pydantic-settings with a message that names neither the
    variable nor its value. In the environment, a HYDRA_* name that resembles no section or setting is
    another program's (Facebook's hydra reads HYDRA_FULL_ERROR): it is logged as ignored, not refused."""
    config = Settings.model_config
    prefix, delimiter = config.get("env_prefix", ""), config.get("env_nested_delimiter") or "__"
    known = [prefix + name.upper() for name in Settings.model_fields]
    known += [prefix + section.upper() + delimiter + key.upper()
              for section, f in Settings.model_fields.items() for key in f.annotation.model_fields]
    # compared without the prefix, which every candidate shares and would make all look alike
    candidates = {n[len(prefix):]: n for n in known + list(PROJECT_VARIABLES)}
    problems = []
    for where, variables in _variable_sources():
        for name, value in variables.items():
            if not _fold(name).startswith(_fold(prefix)):
                continue
            if name in PROJECT_VARIABLES:
                if where != "environment":   # read with os.environ only: in .env it would do nothing
                    problems.append(f"{where} ({name}): not a setting; {name} is read from the "
                                    "environment only, not from .env")
                continue
            rest = name[len(prefix):]
            section_known, annotation, through_dict = _setting_annotation(_fold(rest).split(delimiter))
            if not section_known:
                nearest = difflib.get_close_matches(rest.upper(), candidates, n=1, cutoff=0.6)
                meant_for_hydra = (where != "environment"      # .env is HYDRA's own file
                                   or any(_fold(rest).startswith(_fold(section) + "_") for section in Settings.model_fields)
                                   or difflib.get_close_matches(rest.upper(), candidates, n=1, cutoff=0.8))
                if not meant_for_hydra:
                    _log.warning("environment variable %s names no HYDRA setting: ignored", name)
                    continue
                hint = (f"did you mean {candidates[nearest[0]]}?" if nearest else
                        f"settings are {prefix}<SECTION>{delimiter}<KEY> (e.g. {prefix}BROKER{delimiter}FEE_BPS)")
                if _SECRET_NAME.search(name):
                    hint += f"; {_KEYS_HINT}"
                problems.append(f"{where} ({name}): not a setting; {hint}")
                continue
            kind = _must_be_json(annotation)
            if kind is None or value is None:
                continue
            if through_dict and kind == "an object":
                # pydantic-settings decodes JSON only down to a section's own fields: a plugin's whole params
                # object is refused even as JSON ("Input should be a valid dictionary")
                parent = name[:name.rindex(delimiter)]
                problems.append(f"{where} ({name}): set its keys one by one ({name}{delimiter}<KEY>=value) or "
                                f"all of {parent} as JSON")
                continue
            try:
                json.loads(value)
            except ValueError:
                if kind == "a list":   # a list of symbols or plugin names: shown, as the example repeats it
                    problems.append(f"{where} ({name}): value {value!r}: a list must be written as JSON, "
                                    f"e.g. {name}='{_json_example(value)}'")
                else:                    # a whole section may hold credentials (a storage URL): never shown
                    problems.append(f"{where} ({name}): an object must be written as JSON, e.g. "
                                    f"{name}='{{\"key\": value}}' (the value is not shown: it may hold credentials)")
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


def _format_errors(err: ValidationError, source: str, file_data: dict) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if p not in ("__root__",))
        key = ".".join(str(p) for p in loc) or "(top level)"
        value = e.get("input")
        in_file, file_value = _lookup(file_data, loc)
        from_file = in_file and _same(file_value, value)  # else a HYDRA_* override holds the bad value
        variables = [] if from_file or not loc else _variables_for(loc)
        # the environment wins over .env: a variable set in both was read from the environment
        in_env = [v in os.environ for v in variables]
        origin = "environment" if all(in_env) else ".env" if not any(in_env) else "environment and .env"
        if not variables:
            where = source
        elif in_file and isinstance(value, dict):  # a section check over keys from both places
            where = f"{source} with {origin} ({', '.join(variables)})"
        else:
            where = f"{origin} ({', '.join(variables)})"
        expected = e["msg"]
        if e["type"] == "extra_forbidden":
            nearest = _nearest_setting(loc)
            expected = (f"no such setting; did you mean '{nearest}'?" if nearest
                        else "no such setting (check the spelling against hydra.toml)")
            if _names_a_secret(key, value):
                expected = f"no such setting; {_KEYS_HINT}"
        # a key we do not know may hold anything, a secret too: its value is never shown
        shown = "***" if e["type"] == "extra_forbidden" or _names_a_secret(key, value) else repr(value)
        lines.append(f"{where}: key '{key}' = {shown}: {expected}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _nearest_setting(loc: tuple) -> str | None:
    """The valid key nearest to an unknown one (``engine.cycle_intervl_s`` -> ``engine.cycle_interval_s``),
    as unknown ``HYDRA_*`` variables get: a section's keys, or the section names at the top level."""
    model: type[BaseModel] = Settings
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    match = difflib.get_close_matches(str(loc[-1]).lower(), list(model.model_fields), n=1, cutoff=0.6) if loc else []
    return ".".join([*map(str, loc[:-1]), match[0]]) if match else None


def load_settings(path: str | Path | None = None) -> Settings:
    """Read and validate the configuration, raising ConfigError with a precise message."""
    cfg_path = Path(path) if path else DEFAULT_CONFIG
    file_data: dict = {}
    if path is not None or cfg_path.exists():
        if not cfg_path.exists():
            raise ConfigError(f"config file not found: {cfg_path}")
        try:
            file_data = tomllib.loads(cfg_path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{cfg_path}: not valid TOML: {exc}") from None
        except UnicodeDecodeError as exc:   # TOML is UTF-8; the codec's message alone does not name the file
            raise ConfigError(f"{cfg_path}: not a UTF-8 text file ({exc})") from None
        except OSError as exc:              # a folder, no permission, ...
            raise ConfigError(f"{cfg_path}: cannot read the config file ({exc.strerror or exc})") from None
    _check_variables()
    try:
        settings = Settings(**file_data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, str(cfg_path), file_data)) from None
    except SettingsError as exc:   # a value pydantic-settings could not decode that _check_variables let by
        raise ConfigError(f"invalid configuration: {exc} (a list or object in a HYDRA_* variable or .env "
                          "must be written as JSON)") from None
    object.__setattr__(settings, "_toml_path", cfg_path)
    return settings


def live_trading_opt_in() -> bool:
    """Live (non-paper) trading needs this environment opt-in as well as the ``--live`` flag."""
    return os.environ.get("HYDRA_ENABLE_LIVE_TRADING", "") == "I_UNDERSTAND_REAL_MONEY"


def utc_stamp(moment: datetime) -> str:
    return moment.strftime("%Y%m%dT%H%M%SZ")
