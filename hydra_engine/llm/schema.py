"""The LLM news analyst's vocabulary (issue #22): what the model must answer, what "no verdict" means,
and the analyst's settings.

The model answers through one forced tool call whose ``input_schema`` is derived from
:class:`VerdictSet`, so the schema the model sees and the validator we apply are the same object:
a field added here reaches both, and nothing is parsed that the schema does not allow. Confidence is
an enum (high/medium/low), as the model specification's ``PairAnalysis`` defines it, not a float: a
float invites false precision from a language model and cannot be validated against anything.
"""
from __future__ import annotations

import copy
import enum
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ..domain import require_utc

TOOL_NAME = "record_news_verdicts"
REASON_MAX_CHARS = 200      # "a one-line reason": long enough for a sentence, short enough for a trace line
SYMBOL_MAX_CHARS = 32


class Action(str, enum.Enum):
    BULLISH = "bullish"
    BEARISH = "bearish"
    HOLD = "hold"
    EXIT = "exit"


class Confidence(str, enum.Enum):
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


class SymbolVerdict(BaseModel):
    """One symbol's verdict, exactly as the tool call must carry it: no extra keys, the enums' exact
    values ("Bullish" or " bullish" is a violation, not something to fold into "bullish"), a string
    where a string is due (pydantic 2 never turns a number into a string)."""

    # the docstring is for us; the model reads this description (json_schema_extra replaces the docstring)
    model_config = ConfigDict(extra="forbid", frozen=True,
                              json_schema_extra={"description": "The news verdict for one symbol."})

    symbol: str = Field(min_length=1, max_length=SYMBOL_MAX_CHARS,
                        description="the symbol exactly as listed in the request")
    action: Action = Field(description="bullish, bearish, hold or exit")
    confidence: Confidence = Field(description="high, medium or low")
    reason: str = Field(min_length=1, max_length=REASON_MAX_CHARS, pattern=r"^[^\r\n]+$",
                        description=f"one line, at most {REASON_MAX_CHARS} characters, citing the headline(s)")


class VerdictSet(BaseModel):
    """The tool call's whole input: one verdict per symbol asked about."""

    model_config = ConfigDict(extra="forbid", frozen=True,
                              json_schema_extra={"description": "One verdict per symbol in the request."})

    verdicts: list[SymbolVerdict] = Field(description="one entry per symbol in the request")


def _inline_refs(schema: dict) -> dict:
    """``schema`` with every ``$ref`` to ``#/$defs/...`` replaced by the definition itself: the tool's
    input schema is then self-contained, whatever subset of JSON Schema the API accepts for tools."""
    defs = schema.get("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                merged = {**walk(copy.deepcopy(defs[ref.removeprefix("#/$defs/")])),
                          **{k: walk(v) for k, v in node.items() if k != "$ref"}}
                return merged
            return {k: walk(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


def tool_input_schema() -> dict:
    """The JSON schema of :class:`VerdictSet`, self-contained, for the tool's ``input_schema``."""
    return _inline_refs(VerdictSet.model_json_schema())


def tool_definition() -> dict:
    return {"name": TOOL_NAME,
            "description": "Record exactly one news verdict for each symbol listed in the request.",
            "input_schema": tool_input_schema()}


class NoVerdictCause(str, enum.Enum):
    """Why a symbol has no verdict. Each is recorded; none is ever repaired into a verdict."""

    NO_KEY = "no_key"                      # ANTHROPIC_API_KEY absent: no client, no call
    DISABLED = "disabled"                  # llm.enabled is false
    NO_NEWS = "no_news"                    # no headline for the symbol in the lookback window: not asked
    RATE_CAP = "rate_cap"                  # our max_calls_per_hour reached: not called
    SPEND_CAP = "spend_cap"                # our monthly cap would be exceeded: not called
    SPEND_LIMIT = "spend_limit"            # the API's own enforced spend limit (429): no calls until month end
    TIMEOUT = "timeout"
    CONNECTION = "connection_error"
    RATE_LIMITED = "rate_limited"          # HTTP 429 after the SDK's retries
    OVERLOADED = "overloaded"              # HTTP 529 after the SDK's retries
    API_ERROR = "api_error"                # any other HTTP error status
    REFUSAL = "refusal"                    # stop_reason "refusal"
    MAX_TOKENS = "max_tokens"              # stop_reason "max_tokens": the output may be cut, never read
    INVALID_RESPONSE = "invalid_response"  # the body is not JSON, or not a Messages API message
    NO_TOOL_CALL = "no_tool_call"          # the model did not answer through the forced tool
    SCHEMA_VIOLATION = "schema_violation"  # the tool input does not validate against VerdictSet
    UNKNOWN_SYMBOL = "unknown_symbol"      # the answer named symbols not asked about, and not this one
    DUPLICATE_SYMBOL = "duplicate_symbol"  # the answer gave this symbol twice
    MISSING = "missing"                    # the answer left this symbol out
    INTERNAL_ERROR = "internal_error"      # a bug of ours: recorded, never raised into the trading loop


class NoVerdict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    cause: NoVerdictCause
    detail: str = ""    # redacted before it is built: never holds the API key

    def describe(self) -> str:
        return self.cause.value + (f": {self.detail}" if self.detail else "")


Outcome = SymbolVerdict | NoVerdict


class TimedOutcome(BaseModel):
    """A symbol's outcome with the moment it became known (the response's arrival, so a replay at an
    earlier moment cannot see it)."""

    model_config = ConfigDict(frozen=True)

    symbol: str
    made_at: datetime
    outcome: SymbolVerdict | NoVerdict
    call_id: str = ""

    @field_validator("made_at")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        return require_utc(v, "TimedOutcome.made_at")

    @property
    def is_verdict(self) -> bool:
        return isinstance(self.outcome, SymbolVerdict)


class LlmSettings(BaseModel):
    """The ``[llm]`` section of ``hydra.toml`` (``Settings.llm``; it behaves as ``config._Section``).

    The API key is not a setting: ``ANTHROPIC_API_KEY`` from the environment only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    model: str = Field("claude-sonnet-4-6", min_length=1)
    scan_interval_minutes: int = Field(30, ge=1, le=1440)
    symbols: list[str] = Field(default_factory=list, description="empty: the universe's symbols")
    timeout_s: float = Field(20.0, gt=0, le=120, description="per HTTP attempt")
    max_retries: int = Field(2, ge=0, le=5, description="the SDK's own retries (408/409/429/5xx/timeouts)")
    max_tokens: int = Field(1024, ge=64, le=8192)
    max_calls_per_hour: int = Field(10, ge=0, le=120, description="calls in any rolling hour")
    monthly_spend_cap_usd: float = Field(20.0, ge=0, description="estimated spend per UTC calendar month")
    verdict_max_age_minutes: int = Field(60, ge=1, le=1440)
    no_verdict_means: Literal["allow", "hold"] = "allow"
    exit_requests_enabled: bool = False
    news_lookback_minutes: int = Field(120, ge=1, le=7 * 1440)
    max_headlines_per_symbol: int = Field(8, ge=1, le=50)
    summary_max_chars: int = Field(300, ge=0, le=2000)
    input_usd_per_mtok: float = Field(3.0, ge=0, description="price per million input tokens")
    output_usd_per_mtok: float = Field(15.0, ge=0, description="price per million output tokens")
    # where every call and verdict is recorded (paper, `hydra llm record`) and replayed from (backtest, sim):
    # its own database, so a backtest (which writes its store into --out) still finds the recorded verdicts
    verdicts_url: str = Field("sqlite:///logs/llm_verdicts.db", min_length=1,
                              description="SQLAlchemy URL; a relative sqlite path is under the project")

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, v: Any, info: ValidationInfo) -> Any:
        # as config._Section: `timeout_s = true` must not read as 1.0
        if isinstance(v, bool) and cls.model_fields[info.field_name].annotation in (int, float):
            raise ValueError("expected a number, not true/false")
        return v

    @field_validator("symbols")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        dupes = sorted({s for s in v if v.count(s) > 1})
        if dupes:
            raise ValueError(f"duplicate symbols {dupes}")
        return v

    @model_validator(mode="after")
    def _age_covers_interval(self) -> "LlmSettings":
        # a verdict that expires before the next scan can replace it leaves every symbol without one
        # for part of each interval: a gate that flickers on a schedule
        if self.verdict_max_age_minutes < self.scan_interval_minutes:
            raise ValueError(f"verdict_max_age_minutes {self.verdict_max_age_minutes} must be at least "
                             f"scan_interval_minutes {self.scan_interval_minutes}")
        return self

    def cost_usd(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_usd_per_mtok + output_tokens * self.output_usd_per_mtok) / 1e6
