"""Helpers for the LLM analyst tests (issue #22): the contract's example bodies, a MockTransport client,
a fixed clock. No tests here.

The bodies come from ``shared/contracts/anthropic/examples`` (see its INDEX.md). ``message.tool_use.json``
answers a different tool (``record_news_signal`` with sentiment/confidence/tickers); :func:`tool_body`
keeps its envelope (id, model, stop_reason, usage, the leading text block) and replaces the tool block's
name and input with this analyst's tool and schema. The unmodified example is used as well, to show that
another tool's answer is refused.
"""
from __future__ import annotations

import copy
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import httpx2
import pytest
from anthropic import Anthropic

from hydra_engine.llm.analyst import Headline, NewsAnalyst
from hydra_engine.llm.record import VerdictRecorder
from hydra_engine.llm.schema import TOOL_NAME, LlmSettings

EXAMPLES = Path(os.environ.get("HYDRA_CONTRACTS", Path(__file__).resolve().parents[2] / "shared" / "contracts")) \
    / "anthropic" / "examples"
KEY = "sk-ant-api03-TESTKEY-a1b2c3d4e5f6-DO-NOT-LEAK"
T0 = datetime(2024, 3, 1, 10, 0, tzinfo=UTC)
SYMBOLS = ["BTC/USD", "ETH/USD", "SPY"]


def example(name: str) -> dict:
    path = EXAMPLES / name
    if not path.is_file():
        pytest.skip(f"Anthropic contract examples not found at {EXAMPLES} (set HYDRA_CONTRACTS)")
    return json.loads(path.read_text())


def verdict(symbol: str, action: str, confidence: str = "high", reason: str | None = None) -> dict:
    return {"symbol": symbol, "action": action, "confidence": confidence, "reason": reason or f"{symbol} {action} news"}


def tool_body(tool_input: object, *, name: str = TOOL_NAME, stop_reason: str = "tool_use") -> dict:
    body = copy.deepcopy(example("message.tool_use.json"))
    block = next(b for b in body["content"] if b["type"] == "tool_use")
    block["name"], block["input"] = name, tool_input
    body["stop_reason"] = stop_reason
    return body


def good_body(*actions: tuple[str, str]) -> dict:
    return tool_body({"verdicts": [verdict(s, a) for s, a in actions]})


class Recorder:
    """A MockTransport handler that serves responses in order (the last repeats) and keeps the requests."""

    def __init__(self, *responses):
        self.responses = list(responses)
        self.requests: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        r = self.responses[min(len(self.requests) - 1, len(self.responses) - 1)]
        if isinstance(r, Exception):
            raise r
        if callable(r):
            return r(request)
        return r

    def body(self, i: int = -1) -> dict:
        return json.loads(self.requests[i].content)


def ok(body: dict) -> httpx2.Response:
    return httpx2.Response(200, json=body)


def error(status: int, name: str, headers: dict | None = None) -> httpx2.Response:
    return httpx2.Response(status, json=example(name), headers=headers or {})


def mock_client(handler) -> Anthropic:
    # NOTES.md §3.2: anthropic>=1 needs an httpx2 client; max_retries=0 keeps a mocked 429 from sleeping
    return Anthropic(api_key=KEY, http_client=httpx2.Client(transport=httpx2.MockTransport(handler)), max_retries=0)


def settings(**kw) -> LlmSettings:
    base = dict(enabled=True, symbols=SYMBOLS, max_retries=0, timeout_s=5.0, model="claude-sonnet-4-6")
    return LlmSettings(**{**base, **kw})


def headlines(*symbols: str, title: str | None = None, at: datetime = T0) -> dict[str, list[Headline]]:
    return {s: [Headline(f"id-{s}", s, title or f"{s} news of the day", "summary", "wire", at)] for s in symbols}


class Clock:
    def __init__(self, at: datetime = T0):
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def make_analyst(handler, *, recorder: VerdictRecorder | None = None, book=None, client=..., **kw):
    s = settings(**kw)
    rec = recorder or VerdictRecorder("sqlite://")
    cl = mock_client(handler) if client is ... else client
    return NewsAnalyst(s, cl, rec, book=book, clock=Clock()), rec
