"""Plugin discovery, one function for every kind (:func:`discover`): the project's own built-ins plus an
entry-point group per kind, so a third party can ship a plugin as its own package.

Kinds (see :mod:`hydra_engine.plugin_kinds` for the interfaces and ``docs/ARCHITECTURE.md``):
``strategies`` (``hydra.strategies``), ``modifiers`` (``hydra.modifiers``), ``regime_detectors``
(``hydra.regime_detectors``), ``scorers`` (``hydra.scorers``) and ``gates`` (``hydra.gates``).

Every plugin declares the interface version it was written for (``interface_version``); a missing or
different version is a :class:`PluginError` at discovery, i.e. at start-up, naming the plugin, its kind,
the declared and the expected version -- never a surprise in the middle of a session. A built-in wins
over an entry point of the same name (an installed package cannot shadow it).
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Callable, Mapping

from pydantic import ValidationError

from . import plugin_kinds
from .plugin_kinds import SignalModifier, SignalScorer
from .strategy import Strategy

ENTRY_POINT_GROUP = "hydra.strategies"   # the strategies' group (kept: tests and plugin authors import it)


class PluginError(Exception):
    """Unknown plugin, a plugin that fails to load, a wrong interface version, or bad plugin parameters."""


def _subclass_of(base: type) -> Callable[[object], bool]:
    return lambda obj: inspect.isclass(obj) and issubclass(obj, base) and obj is not base and not inspect.isabstract(obj)


def _has_method(method: str) -> Callable[[object], bool]:
    # protocol kinds (regime detectors, gate rules) have no base class to subclass: the class must at
    # least carry the method the engine calls
    return lambda obj: inspect.isclass(obj) and callable(getattr(obj, method, None))


@dataclass(frozen=True)
class PluginKind:
    key: str                          # discover()'s argument
    label: str                        # how messages name one plugin of the kind
    group: str                        # the entry-point group
    interface_version: int            # the version this HYDRA provides
    is_plugin: Callable[[object], bool]
    what: str                         # what an entry point must name ("a hydra Strategy subclass")
    packages: tuple[str, ...] = ()    # project packages scanned for built-ins (classes passing is_plugin)
    builtins: tuple[str, ...] = ()    # built-ins named explicitly ("module:Class"): for protocol kinds,
    #                                   where scanning a module for "anything with a detect method" would guess


KINDS: dict[str, PluginKind] = {k.key: k for k in (
    PluginKind("strategies", "strategy", ENTRY_POINT_GROUP, Strategy.INTERFACE_VERSION, _subclass_of(Strategy),
               "a hydra Strategy subclass", packages=("strategies",)),
    PluginKind("modifiers", "signal modifier", "hydra.modifiers", SignalModifier.INTERFACE_VERSION,
               _subclass_of(SignalModifier), "a hydra SignalModifier subclass", packages=("signals",)),
    PluginKind("regime_detectors", "regime detector", "hydra.regime_detectors",
               plugin_kinds.REGIME_DETECTOR_INTERFACE_VERSION, _has_method("detect"),
               "a regime detector class (with detect(market))",
               builtins=("hydra_engine.regime:TrendVolRule", "hydra_engine.regime:HMMRegimeDetector")),
    PluginKind("scorers", "signal scorer", "hydra.scorers", SignalScorer.INTERFACE_VERSION,
               _subclass_of(SignalScorer), "a hydra SignalScorer subclass", packages=("signals",)),
    # built-in gate rules are added to builtins here (or registered under hydra.gates) once they exist
    PluginKind("gates", "gate rule", "hydra.gates", plugin_kinds.GATE_RULE_INTERFACE_VERSION,
               _has_method("check"), "a gate rule class (with name, scope and check(ctx, symbol, side))"),
)}


def _kind(kind: str) -> PluginKind:
    try:
        return KINDS[kind]
    except KeyError:
        raise PluginError(f"unknown plugin kind {kind!r}; the kinds are {', '.join(KINDS)}") from None


def check_plugin(cls: type, kind: str, name: str, origin: str) -> None:
    """Raise :class:`PluginError` unless ``cls`` is written for this HYDRA's interface of ``kind``."""
    spec = _kind(kind)
    expected = spec.interface_version
    declared = getattr(cls, "interface_version", None)
    where = f"{spec.label} plugin {name!r} ({origin})"
    if declared is None:
        raise PluginError(f"{where} declares no interface_version; this HYDRA's {spec.label} interface is "
                          f"version {expected}: once the plugin is written against it, declare "
                          f"`interface_version = {expected}` on the class")
    if type(declared) is not int or declared != expected:
        raise PluginError(f"{where} was written for {spec.label} interface version {declared!r}, but this HYDRA "
                          f"provides version {expected} (entry-point group {spec.group}): update the plugin, or run "
                          f"it with a HYDRA that provides version {declared!r}")
    declared_name = inspect.getattr_static(cls, "name", None)
    if isinstance(declared_name, str) and declared_name != name:
        # the configuration refers to plugins by name: an entry point under another name would make the
        # plugin answer to two names (its reports say one, the config the other)
        raise PluginError(f"{where} declares name {declared_name!r}; register it under that name")
    if kind == "gates":
        scope = inspect.getattr_static(cls, "scope", None)
        if isinstance(scope, str) and scope not in plugin_kinds.GATE_SCOPES:
            raise PluginError(f"{where} has scope {scope!r}; a gate rule's scope is one of {plugin_kinds.GATE_SCOPES}")


def _builtins(spec: PluginKind) -> dict[str, tuple[type, str]]:
    found: dict[str, tuple[type, str]] = {}
    for package in spec.packages:
        pkg = importlib.import_module(package)
        for info in pkgutil.iter_modules(pkg.__path__):
            module = importlib.import_module(f"{package}.{info.name}")
            for _, obj in inspect.getmembers(module, spec.is_plugin):
                if obj.__module__ == module.__name__:   # defined here, not imported from another module
                    found.setdefault(obj.name, (obj, f"{obj.__module__}:{obj.__qualname__}"))
    for ref in spec.builtins:
        module, _, attr = ref.partition(":")
        obj = getattr(importlib.import_module(module), attr)
        found.setdefault(inspect.getattr_static(obj, "name"), (obj, ref))
    return found


def discover(kind: str) -> dict[str, type]:
    """Every plugin of ``kind`` (see :data:`KINDS`), name -> class: the project's built-ins, then the
    kind's entry-point group. Raises :class:`PluginError` naming the plugin when one fails to load, is not
    of the kind, or declares another interface version than this HYDRA provides."""
    spec = _kind(kind)
    found: dict[str, type] = {}
    for name, (obj, origin) in _builtins(spec).items():
        check_plugin(obj, kind, name, origin)
        found[name] = obj
    for ep in entry_points(group=spec.group):
        if ep.name in found:
            continue      # a built-in wins: an installed package cannot replace it
        try:
            obj = ep.load()
        except Exception as exc:  # a broken third-party plugin must say so, not vanish
            raise PluginError(f"{spec.label} plugin {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
        if not spec.is_plugin(obj):
            raise PluginError(f"entry point {ep.name!r} ({ep.value}) is not {spec.what}")
        check_plugin(obj, kind, ep.name, ep.value)
        found[ep.name] = obj
    return found


def discover_all() -> dict[str, dict[str, type]]:
    """:func:`discover` for every kind: call it once at start-up so that any plugin installed with a wrong
    interface version stops the session before its first cycle."""
    return {kind: discover(kind) for kind in KINDS}


def available_plugins() -> dict[str, type[Strategy]]:
    """The strategy plugins (``discover("strategies")``)."""
    return discover("strategies")


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
    return _instantiate(plugins, enabled, params, "strategies")


def build_modifiers(enabled: list[str], params: Mapping[str, Mapping]) -> list[SignalModifier]:
    """The enabled signal modifiers (``[modifiers] enabled`` in hydra.toml), in order, with their params."""
    return _build_kind("modifiers", "signal modifier", enabled, params)


def build_scorers(enabled: list[str], params: Mapping[str, Mapping]) -> list[SignalScorer]:
    """The enabled signal scorers (``[scorers] enabled`` in hydra.toml), in order, with their params."""
    return _build_kind("scorers", "signal scorer", enabled, params)


def _build_kind(kind: str, noun: str, enabled: list[str], params: Mapping[str, Mapping]) -> list:
    plugins = discover(kind)
    unknown = [n for n in [*enabled, *params] if n not in plugins]
    if unknown:
        raise PluginError(f"unknown {noun} {', '.join(map(repr, unknown))} in {kind}.enabled/params; "
                          f"available: {', '.join(sorted(plugins)) or 'none'}")
    return _instantiate(plugins, enabled, params, kind)


def _instantiate(plugins: Mapping[str, type], enabled: list[str], params: Mapping[str, Mapping], section: str) -> list:
    """The enabled plugins, in order, each with its params; bad params name ``<section>.params.<plugin>``."""
    out = []
    for name in enabled:
        try:
            out.append(plugins[name](params.get(name, {})))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))} = {e.get('input')!r}: {e['msg']}" for e in exc.errors())
            raise PluginError(f"{section}.params.{name}: {problems}") from None
    return out
