"""Strategy plugin discovery: the built-in ``strategies`` package and the ``hydra.strategies``
entry-point group (so a third party can ship a plugin as its own package)."""
from __future__ import annotations

import importlib
import inspect
import pkgutil
from importlib.metadata import entry_points
from typing import Mapping

from pydantic import ValidationError

from .strategy import Strategy

ENTRY_POINT_GROUP = "hydra.strategies"


class PluginError(Exception):
    """Unknown plugin, a plugin that fails to load, or bad plugin parameters."""


def available_plugins() -> dict[str, type[Strategy]]:
    found: dict[str, type[Strategy]] = {}
    import strategies as builtin

    for info in pkgutil.iter_modules(builtin.__path__):
        module = importlib.import_module(f"strategies.{info.name}")
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, Strategy) and obj is not Strategy and not inspect.isabstract(obj):
                found.setdefault(obj.name, obj)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in found:
            continue
        try:
            obj = ep.load()
        except Exception as exc:  # a broken third-party plugin must say so, not vanish
            raise PluginError(f"strategy plugin {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
        if not (inspect.isclass(obj) and issubclass(obj, Strategy)):
            raise PluginError(f"entry point {ep.name!r} ({ep.value}) is not a hydra Strategy subclass")
        found[ep.name] = obj
    return found


def build_strategies(enabled: list[str], params: Mapping[str, Mapping]) -> list[Strategy]:
    plugins = available_plugins()
    unknown = [n for n in enabled if n not in plugins]
    if unknown:
        raise PluginError(f"unknown strategy {', '.join(map(repr, unknown))} in strategies.enabled; "
                          f"available plugins: {', '.join(sorted(plugins))}")
    stray = [n for n in params if n not in plugins]
    if stray:
        raise PluginError(f"strategies.params has a section for unknown strategy {stray}; "
                          f"available plugins: {', '.join(sorted(plugins))}")
    out = []
    for name in enabled:
        try:
            out.append(plugins[name](params.get(name, {})))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))} = {e.get('input')!r}: {e['msg']}" for e in exc.errors())
            raise PluginError(f"strategies.params.{name}: {problems}") from None
    return out
