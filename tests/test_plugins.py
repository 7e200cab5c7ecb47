"""Strategy plugin discovery (issue #2): built-in ``strategies`` package plus the ``hydra.strategies``
entry-point group; unknown names, broken plugins and bad parameters fail at start-up with a message
naming the plugin, the config section and the key."""
from __future__ import annotations

import os
from importlib.metadata import EntryPoint
from typing import Mapping

import pytest
from pydantic import Field

import hydra_engine.plugins as plugins
from hydra_engine.cli import main
from hydra_engine.config import DEFAULT_CONFIG
from hydra_engine.domain import Regime, Signal, TradeProposal
from hydra_engine.plugins import ENTRY_POINT_GROUP, PluginError, available_plugins, build_strategies
from hydra_engine.strategy import CombinedSignal, ExitRequest, Strategy, StrategyContext, StrategyParams
from strategies.liquidation_cascade import LiquidationCascadeHunter


# --------------------------------------------------------------------------- a third-party plugin
class EchoParams(StrategyParams):
    lookback: int = Field(10, ge=1)


class ThirdPartyEcho(Strategy):
    """A plugin as an outside package would ship it: defined here, found only through an entry point."""

    name = "third_party_echo"
    interface_version = 1
    regimes = frozenset({Regime.TRENDING_UP})
    assets = ("SPY",)
    data_needs = ()
    Params = EchoParams

    def generate_signals(self, ctx: StrategyContext) -> list[Signal]:
        return []

    def propose(self, ctx: StrategyContext, combined: Mapping[str, CombinedSignal]) -> list[TradeProposal | ExitRequest]:
        return []


class NotAStrategy:
    pass


def ep(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)


@pytest.fixture
def fake_entry_points(monkeypatch):
    """Replace the installed entry points of the group with the list the test sets."""
    installed: list[EntryPoint] = []

    def entry_points(*, group: str):
        assert group == ENTRY_POINT_GROUP
        return list(installed)

    monkeypatch.setattr(plugins, "entry_points", entry_points)
    return installed


# --------------------------------------------------------------------------- built-in discovery
def test_builtin_liquidation_cascade_is_available_from_the_strategies_package(fake_entry_points):
    found = available_plugins()  # no entry points at all: the built-in package alone
    assert found["liquidation_cascade"] is LiquidationCascadeHunter
    assert LiquidationCascadeHunter.__module__ == "strategies.liquidation_cascade"
    assert all(issubclass(cls, Strategy) and cls is not Strategy for cls in found.values())
    assert all(cls.name == name for name, cls in found.items())


def test_real_installed_entry_points_load_without_error():
    # the package's own pyproject registers liquidation_cascade under hydra.strategies as well;
    # the built-in copy wins and nothing is loaded twice or fails
    found = available_plugins()
    assert found["liquidation_cascade"] is LiquidationCascadeHunter


def test_build_strategies_uses_config_params():
    [hunter] = build_strategies(["liquidation_cascade"], {"liquidation_cascade": {"stop_pct": 3.0}})
    assert isinstance(hunter, LiquidationCascadeHunter)
    assert hunter.params.stop_pct == 3.0
    assert hunter.params.reward_risk == 2.0  # defaults for the rest


# --------------------------------------------------------------------------- unknown names
def test_unknown_strategy_lists_the_available_plugins():
    with pytest.raises(PluginError) as err:
        build_strategies(["liquidation_cascade", "moon_shot"], {})
    msg = str(err.value)
    assert "'moon_shot'" in msg and "strategies.enabled" in msg
    assert "available plugins:" in msg and "liquidation_cascade" in msg.split("available plugins:")[1]


def test_params_section_for_an_unknown_strategy_is_refused():
    with pytest.raises(PluginError) as err:
        build_strategies(["liquidation_cascade"], {"liquidation_cascde": {"stop_pct": 2.0}})
    assert "liquidation_cascde" in str(err.value) and "liquidation_cascade" in str(err.value)


# --------------------------------------------------------------------------- bad params
@pytest.mark.parametrize("params,key,fragment", [
    ({"stop_pct": -1}, "stop_pct", "greater than 0"),
    ({"stop_pct": 75}, "stop_pct", "less than 50"),
    ({"stop_pcnt": 2.0}, "stop_pcnt", "Extra inputs are not permitted"),
    ({"max_holding_hours": "a day"}, "max_holding_hours", "valid number"),
])
def test_bad_plugin_params_name_the_section_and_the_key(params, key, fragment):
    with pytest.raises(PluginError) as err:
        build_strategies(["liquidation_cascade"], {"liquidation_cascade": params})
    msg = str(err.value)
    assert msg.startswith("strategies.params.liquidation_cascade:")
    assert f"{key} = {params[key]!r}" in msg
    assert fragment in msg


def test_bad_plugin_params_stop_the_cli_with_exit_code_2(tmp_path, monkeypatch, capsys):
    for name in list(os.environ):
        if name.upper().startswith("HYDRA_"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    text = DEFAULT_CONFIG.read_text(encoding="utf-8").replace("stop_pct = 2.0", "stop_pct = -1", 1)
    text = text.replace('log_dir = "logs"', f'log_dir = "{tmp_path / "logs"}"')
    text = text.replace('url = "sqlite:///logs/hydra.db"', f'url = "sqlite:///{tmp_path / "hydra.db"}"')
    text = text.replace('"SPY", "TLT", "GLD", "SLV", "GDX", "IGV",', '"SPY",', 1)
    text = text.replace('"CRM", "SHOP", "ADBE", "MSFT", "WDAY", "LZ", "HYG"]', ']', 1)  # load less data
    cfg = tmp_path / "hydra.toml"
    cfg.write_text(text, encoding="utf-8")
    assert main(["--config", str(cfg), "run", "--cycles", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "strategies.params.liquidation_cascade" in err and "stop_pct = -1" in err


# --------------------------------------------------------------------------- entry points
def test_third_party_plugin_is_discovered_through_the_entry_point_group(fake_entry_points):
    fake_entry_points.append(ep("third_party_echo", f"{__name__}:ThirdPartyEcho"))
    found = available_plugins()
    assert found["third_party_echo"] is ThirdPartyEcho
    assert found["liquidation_cascade"] is LiquidationCascadeHunter
    hunter, echo = build_strategies(["liquidation_cascade", "third_party_echo"],
                                    {"third_party_echo": {"lookback": 3}})
    assert isinstance(echo, ThirdPartyEcho) and echo.params.lookback == 3
    assert isinstance(hunter, LiquidationCascadeHunter)


def test_third_party_plugin_params_are_validated_too(fake_entry_points):
    fake_entry_points.append(ep("third_party_echo", f"{__name__}:ThirdPartyEcho"))
    with pytest.raises(PluginError, match=r"strategies\.params\.third_party_echo: lookback = 0"):
        build_strategies(["third_party_echo"], {"third_party_echo": {"lookback": 0}})


def test_entry_point_cannot_shadow_a_builtin(fake_entry_points):
    fake_entry_points.append(ep("liquidation_cascade", f"{__name__}:ThirdPartyEcho"))
    assert available_plugins()["liquidation_cascade"] is LiquidationCascadeHunter


@pytest.mark.parametrize("value,fragment", [
    ("hydra_no_such_package.plugin:Thing", "failed to load"),
    (f"{__name__}:MissingClass", "failed to load"),
    (f"{__name__}:NotAStrategy", "is not a hydra Strategy subclass"),
], ids=["missing_module", "missing_attribute", "not_a_strategy"])
def test_broken_entry_point_raises_plugin_error_naming_it(fake_entry_points, value, fragment):
    fake_entry_points.append(ep("broken_plugin", value))
    with pytest.raises(PluginError) as err:
        available_plugins()
    msg = str(err.value)
    assert "'broken_plugin'" in msg and value in msg and fragment in msg
    with pytest.raises(PluginError, match="broken_plugin"):
        build_strategies(["liquidation_cascade"], {})  # a broken plugin is loud, never silently skipped
