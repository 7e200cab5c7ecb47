"""Configuration sections added with the strategy families and the tools around them (signal modifiers,
perpetual futures, log retention, notifications, backtest truth), and ``_Section``, the base every
section shares. ``config.py`` assembles them into :class:`~hydra_engine.config.Settings`."""
from __future__ import annotations

from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, v: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode would read `fee_bps = true` as 1.0; a number must be written as one
        if isinstance(v, bool) and cls.model_fields[info.field_name].annotation in (int, float):
            raise ValueError("expected a number, not true/false")
        return v


class ModifiersConfig(_Section):
    """Signal modifiers (plugin kind ``modifiers``) run on every cycle's signals, in this order."""

    enabled: list[str] = Field(default_factory=list)
    params: dict[str, dict[str, Any]] = Field(default_factory=dict)


PERP_SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT")


class PerpsConfig(_Section):
    """The perpetual-futures module (issue #20): a simulated Binance USD-M account beside the Alpaca
    book (``hydra_engine/perp/``). Off unless ``enabled``; ``hydra.toml`` turns it on."""

    enabled: bool = False
    symbols: list[str] = Field(default_factory=lambda: ["BTCUSDT", "ETHUSDT"],
                               description="USDT-margined perpetuals (Binance names)")
    starting_balance_usdt: float = Field(10_000.0, gt=0, description="the perp account's USDT wallet")
    base_leverage: float = Field(5.0, ge=1, le=20, description="layer spec BASE_LEVERAGE")
    max_leverage: int = Field(10, ge=1, le=20, description="leverage cap (also below each bracket's cap)")
    liquidation_buffer: float = Field(0.5, gt=0, le=0.9,
                                      description="a stop may use at most this share of the distance to liquidation")
    taker_fee_bps: float = Field(5.0, ge=0, le=100)
    maker_fee_bps: float = Field(2.0, ge=0, le=100)
    slippage_bps: float = Field(5.0, ge=0, le=500)
    kill_switches: bool = Field(True, description="the perp kill switches join the risk lists")
    # execution (issue #20 (g), hydra_engine/perp/execution.py); off: market entries and reduce-only market exits
    post_only_entries: bool = Field(False, description="entries as post-only limits at the touch, canceled after the timeout")
    post_only_exits: bool = Field(False, description="non-stop exits as reduce-only post-only limits, market after the timeout")
    post_only_timeout_minutes: float = Field(60.0, gt=0, le=1440, description="how long a post-only order works")
    twap_volume_share: float = Field(0.0, ge=0, le=1,
                                     description="slice an order above this share of recent bar volume (0: never)")
    twap_slices: int = Field(4, ge=2, le=100, description="child orders of a TWAP, one per bar")
    twap_volume_bars: int = Field(24, ge=1, le=1000, description="bars whose mean volume is 'recent volume'")
    # paper/live sessions only (backtest and sim always simulate): "sim" = the simulated account marked with
    # live public Binance prices and funding; "binance_demo" = the Binance USD-M demo account (needs
    # BINANCE_API_KEY/BINANCE_API_SECRET); "binance_live" = the real exchange, which also needs --live and
    # HYDRA_ENABLE_LIVE_TRADING (the same three-part opt-in as Alpaca's)
    execution: Literal["sim", "binance_demo", "binance_live"] = "sim"

    @field_validator("symbols")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        unknown = [s for s in v if s not in PERP_SYMBOLS]
        if unknown:
            raise ValueError(f"perps.symbols {unknown} are not supported; known: {list(PERP_SYMBOLS)}")
        if not v:
            raise ValueError("perps.symbols is empty")
        return v


PERP_EXECUTION_FIELDS = ("post_only_entries", "post_only_exits", "post_only_timeout_minutes", "twap_volume_share",
                         "twap_slices", "twap_volume_bars")


class LogsConfig(_Section):
    """Session-log retention (``hydra logs prune``; also applied when a ``run`` starts)."""
    retention_days: int = Field(0, ge=0, le=36500, description="delete session logs older than N days; 0 keeps all")
    keep_last: int = Field(20, ge=1, description="the newest N sessions are always kept, whatever their age")


NOTIFY_EVENTS = ("fill", "exit", "kill", "error", "daily_summary")


class NotifyConfig(_Section):
    """Notifications (apprise). The service URLs hold tokens: they come from ``HYDRA_NOTIFY_URLS`` in the
    environment or ``.env`` only, never from this file."""
    events: list[str] = Field(default_factory=lambda: list(NOTIFY_EVENTS), description="what is sent")
    timeout_s: float = Field(10.0, gt=0, le=120, description="per-message timeout of the sending thread")

    @field_validator("events")
    @classmethod
    def _known_events(cls, v: list[str]) -> list[str]:
        unknown = [e for e in v if e not in NOTIFY_EVENTS]
        if unknown:
            raise ValueError(f"unknown event(s) {unknown}; known: {list(NOTIFY_EVENTS)}")
        return v


class TruthConfig(_Section):
    """Issue #17: what a run may not pass over in silence."""
    regime_max_age_days: float = Field(4.0, gt=0, le=365, description="a regime reading whose inputs end more "
                                       "than this many days before now is UNKNOWN (stale): no entries")
    backtest_auto_resume_days: float = Field(0.0, ge=0, le=3650, description="backtests only: resume a kill "
                                             "this many days after it fired (0: never, as in paper)")


class ScorersConfig(_Section):
    """Signal scorers (plugin kind ``scorers``, issue #21): each signal's probability of paying its costs;
    it replaces the proposing plugin's confidence in ranking and Kelly sizing, and a proposal whose score
    is below ``threshold`` is refused (rule ``ml_score_below_threshold``). Off unless enabled."""

    enabled: list[str] = Field(default_factory=list)
    threshold: float = Field(0.45, ge=0.0, le=1.0, description="the specification's ML_SCORE_THRESHOLD")
    params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # scheduled retraining and monitoring (hydra_engine/ml/loop.py): 0 = the model changes only by `train`
    retrain_every_days: int = Field(0, ge=0, le=3650, description="retrain ml_signal_scorer every N days on the "
                                    "data before the cycle (paper: on a background thread; backtest: per window)")
    retrain_start: date = Field(date(2021, 1, 1), description="first day of a retrain's training replay")
    retrain_seed: int = 7
    monitor_window: int = Field(50, ge=1, description="scored trades in the rolling accuracy/calibration")
    record_inputs_live: bool = Field(True, description="paper/live with ml_signal_scorer not enabled: record each "
                                     "new signal's features in the journal anyway (no score) for later retraining")


class RegimeModelConfig(_Section):
    """The trained perp regime classifier (issue #21): ``classifier`` uses models/regime_classifier.json
    when it is installed (else the rule labeller, logged at start-up); ``rule`` (the default) keeps the
    rule labeller."""

    perp_labeller: Literal["classifier", "rule"] = "rule"
    model_path: str = "models/regime_classifier.json"
    retrain_every_days: int = Field(0, ge=0, le=3650, description="retrain the classifier every N days on the "
                                    "data before the cycle (0 = only by `train`)")
    retrain_start: date = Field(date(2021, 1, 1), description="first day of a retrain's training rows")
    retrain_seed: int = 7
    monitor_window: int = Field(50, ge=1, description="resolved forecasts in the rolling accuracy")
    monitor_every_hours: Literal[1, 2, 3, 4, 6, 8, 12, 24] = Field(
        24, description="the monitor forecasts at the perp bars closing on UTC multiples of this many hours "
        "(24: one disjoint 24 h window a day per symbol; 1: every hourly bar, overlapping windows)")


class HorizonConfig(_Section):
    """Event-horizon replay (issue #24, README "Event-horizon replay"): in a replay, skip the ticks on which
    no component could act and catch them up exactly. Changes no decision (not in the config hash); paper
    trading never skips. Environment: ``HYDRA_HORIZON__ENABLED=false``, ``HYDRA_HORIZON__CHECK=true``."""

    enabled: bool = True
    check: bool = Field(False, description="run every tick and verify each promise (debug; HorizonBroken on a violation)")
