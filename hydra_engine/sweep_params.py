"""A sweep's parameter space: parsing `--param`, grid and seeded random configurations, settings with
overrides (validated up front), and the tasks a sweep or a walk-forward runs."""
from __future__ import annotations

import itertools
import json
import math
import random
from datetime import date
from pathlib import Path
from typing import Any, Iterable

from .config import Settings

# the columns of the results table, after the parameters: comparison_row's metrics

class SweepError(ValueError):
    """A bad sweep argument; the message names the argument, the value and what is allowed."""


# ================================================================== parameters
def _literal(text: str) -> Any:
    """``3`` → 3, ``2.5`` → 2.5, ``true`` → True, ``"x"``/``x`` → "x", ``[1,2]`` (JSON) → [1, 2]."""
    text = text.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _range(text: str, name: str) -> list:
    """``LOW:HIGH:STEP`` → LOW, LOW+STEP, ... up to HIGH inclusive (ints stay ints)."""
    parts = [_literal(p) for p in text.split(":")]
    if len(parts) != 3 or not all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in parts):
        raise SweepError(f"--param {name}={text!r}: a range is LOW:HIGH:STEP with three numbers")
    low, high, step = parts
    if step <= 0 or high < low:
        raise SweepError(f"--param {name}={text!r}: STEP must be > 0 and HIGH >= LOW")
    n = int(math.floor((high - low) / step + 1e-9)) + 1
    if n > 10_000:
        raise SweepError(f"--param {name}={text!r} gives {n} values (at most 10,000)")
    if all(isinstance(p, int) for p in parts):
        return [low + k * step for k in range(n)]
    decimals = max(len(repr(float(p)).split(".")[1]) for p in parts)
    return [round(low + k * step, decimals) for k in range(n)]


def parse_param(spec: str, sections: Iterable[str] = ()) -> tuple[str, dict]:
    """``NAME=V1,V2,...`` (values), ``NAME=LOW:HIGH:STEP`` (a grid range) or ``NAME=LOW..HIGH`` (a continuous
    range, random search only). NAME is a dotted settings path (``risk.max_position_pct``) or
    ``PLUGIN.KEY``, short for ``strategies.params.PLUGIN.KEY``. Returns (full path, {"values": [...]} or
    {"low": x, "high": y})."""
    if "=" not in spec:
        raise SweepError(f"--param {spec!r} must be NAME=VALUES, e.g. risk.max_position_pct=1,2,3 or "
                         "liquidation_cascade.stop_pct=1.0:3.0:0.5")
    name, text = (s.strip() for s in spec.split("=", 1))
    parts = name.split(".")
    if len(parts) < 2 or not all(parts):
        raise SweepError(f"--param {name!r}: NAME is SECTION.KEY (e.g. risk.max_position_pct) or PLUGIN.KEY "
                         "(e.g. liquidation_cascade.stop_pct)")
    sections = set(sections) or set(Settings.model_fields)
    if parts[0] not in sections:
        parts = ["strategies", "params", *parts]
    full = ".".join(parts)
    if not text:
        raise SweepError(f"--param {name}: no values")
    if ".." in text and ":" not in text:
        low, high = (_literal(p) for p in text.split("..", 1))
        if not all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in (low, high)) or high < low:
            raise SweepError(f"--param {name}={text!r}: a continuous range is LOW..HIGH with LOW <= HIGH")
        return full, {"low": low, "high": high}
    if ":" in text and not text.startswith(("[", "{", '"')):
        return full, {"values": _range(text, name)}
    return full, {"values": [_literal(v) for v in text.split(",")]}


def grid(params: dict[str, dict]) -> list[dict]:
    """Every combination of the parameters' values, in the order given (the last parameter varies fastest)."""
    for name, p in params.items():
        if "values" not in p:
            raise SweepError(f"--param {name}: a LOW..HIGH range needs --search random (a grid needs values)")
    names = list(params)
    return [dict(zip(names, combo)) for combo in itertools.product(*(params[n]["values"] for n in names))]


def random_configs(params: dict[str, dict], samples: int, seed: int) -> list[dict]:
    """``samples`` draws (seeded): a value list is drawn from uniformly, a LOW..HIGH range uniformly (whole
    numbers when both ends are whole). Duplicated draws are kept once."""
    if samples < 1:
        raise SweepError(f"--samples {samples} must be >= 1")
    rng = random.Random(seed)
    out, seen = [], set()
    for _ in range(samples):
        draw = {}
        for name, p in params.items():
            if "values" in p:
                draw[name] = rng.choice(p["values"])
            elif isinstance(p["low"], int) and isinstance(p["high"], int):
                draw[name] = rng.randint(p["low"], p["high"])
            else:
                draw[name] = round(rng.uniform(p["low"], p["high"]), 6)
        key = json.dumps(draw, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(draw)
    return out


def settings_with(settings: Settings, overrides: dict[str, Any]) -> Settings:
    """The settings with each dotted path replaced, validated as a whole (so a bad value is refused with
    the field's own message). A path must exist, except below ``strategies.params.PLUGIN`` (a plugin's
    parameters are its own: the plugin refuses an unknown one when it is built)."""
    from pydantic import ValidationError
    data = settings.model_dump(mode="json")
    for path, value in overrides.items():
        node, parts = data, path.split(".")
        for k, part in enumerate(parts[:-1]):
            if part not in node:
                if parts[:2] == ["strategies", "params"] and k >= 2:
                    node[part] = {}
                else:
                    raise SweepError(f"--param {path}: {'.'.join(parts[:k + 1])} is not a setting")
            node = node[part]
            if not isinstance(node, dict):
                raise SweepError(f"--param {path}: {'.'.join(parts[:k + 1])} is a value, not a section")
        if parts[-1] not in node and parts[:2] != ["strategies", "params"]:
            raise SweepError(f"--param {path}: {parts[-1]!r} is not a key of [{'.'.join(parts[:-1])}] "
                             f"(keys: {', '.join(sorted(node))})")
        node[parts[-1]] = value
    try:
        out = Settings.model_validate(data)
    except ValidationError as exc:
        raise SweepError(f"configuration {overrides}: {exc}") from None
    object.__setattr__(out, "_toml_path", getattr(settings, "_toml_path", None))
    return out


def check_configuration(settings: Settings, overrides: dict) -> None:
    """Refuse, before anything runs, what a run would refuse at its start: unknown plugins or plugin
    parameters, and risk limits looser than the hard ones."""
    from .plugins import PluginError, build_strategies
    from .risk import RiskConfigError, RiskManager
    try:
        build_strategies(settings.strategies.enabled, settings.strategies.params)
        RiskManager(settings.risk)
    except (PluginError, RiskConfigError, ValueError, TypeError) as exc:
        raise SweepError(f"configuration {overrides}: {exc}") from None


def sweep_hash(settings: Settings) -> str:
    """The configuration's hash as every session log records it (``Settings.config_hash``)."""
    return settings.config_hash()


# ================================================================== tasks
def make_tasks(settings: Settings, configs: list[dict], *, data_dir: Path, start: date, end: date,
               windows: list | None = None, seed: int = 0, keep_doc: bool = False,
               log_dirs: list[Path | None] | None = None) -> list[dict]:
    """One task per configuration (× walk-forward window). Every configuration is validated here."""
    tasks = []
    for cfg_index, overrides in enumerate(configs):
        s = settings_with(settings, overrides)
        check_configuration(s, overrides)
        # the span is part of the hash a session log records: hash the configuration over the whole sweep span
        spanned = s.model_copy(update={"data": s.data.model_copy(update={"start": start, "end": end})})
        config_hash = sweep_hash(spanned)
        spans = ([(None, None, start, end)] if not windows else
                 [(w.index, (str(w.train_start), str(w.train_end)), w.test_start, w.test_end) for w in windows])
        for k, (index, train, a, b) in enumerate(spans):
            key = f"{config_hash}-{'span' if index is None else f'w{index:02d}'}-{a}-{b}-s{seed}"
            tasks.append({"key": key, "config_index": cfg_index, "config": s.model_dump(mode="json"),
                          "config_hash": config_hash, "params": dict(overrides), "data_dir": str(data_dir),
                          "sweep_span": [str(start), str(end)], "start": str(a), "end": str(b), "window": index,
                          "train": train, "seed": seed, "keep_doc": keep_doc,
                          "log_dir": str(log_dirs[k]) if log_dirs and log_dirs[k] is not None else None})
    return tasks
