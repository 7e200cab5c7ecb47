"""LlmNewsGate (issue #22): the specification's table per symbol and side, verdict age, the configured
meaning of "no verdict", exit requests, and the replay path that never calls the API."""
from __future__ import annotations

import socket
from datetime import timedelta

import pytest

from hydra_engine.domain import Side
from hydra_engine.gate import GateContext, GateRule, GateState
from hydra_engine.llm.gate_rule import NO_RECORDS, LlmNewsGate
from hydra_engine.llm.record import VerdictRecorder
from tests.test_llm_support import SYMBOLS, T0, Recorder, error, good_body, headlines, make_analyst, ok, settings

A, R = GateState.ALLOW, GateState.RESTRICT


def ctx(at=T0):
    return GateContext(now=at, market=None, regime=None)


def live(**kw):
    s = settings(**kw)
    return LlmNewsGate.live(s)


def scanned(gate, *actions, at=T0, response=None):
    h = Recorder(response or ok(good_body(*actions)))
    analyst, rec = make_analyst(h, book=gate.book, **{k: getattr(gate.settings, k) for k in
                                                      ("no_verdict_means", "exit_requests_enabled")})
    analyst.scan(at, headlines(*SYMBOLS))
    return rec


def test_is_a_symbol_scope_gate_rule():
    g = live()
    assert isinstance(g, GateRule) and g.scope == "symbol" and g.name == "llm_news"


@pytest.mark.parametrize("action, long_state, short_state", [
    ("bullish", A, R), ("bearish", R, A), ("hold", R, R), ("exit", R, R)])
def test_a_valid_verdict_set_gates_as_the_table_says(action, long_state, short_state):
    g = live()
    scanned(g, ("BTC/USD", action), ("ETH/USD", "bullish"), ("SPY", "bearish"))
    later = ctx(T0 + timedelta(minutes=5))
    buy, sell = g.check(later, "BTC/USD", Side.BUY), g.check(later, "BTC/USD", Side.SELL)
    assert (buy.state, sell.state) == (long_state, short_state)
    # the verdict's reason is in the decision trace, with the rule's name
    assert buy.rule == "llm_news" and "BTC/USD " + action + " news" in buy.reason and f"LLM {action}" in buy.reason
    # per symbol: the other symbols' verdicts are their own
    assert g.check(later, "ETH/USD", Side.SELL).state is R and g.check(later, "ETH/USD", Side.BUY).state is A
    assert g.check(later, "SPY", Side.BUY).state is R and g.check(later, "SPY", Side.SELL).state is A


def test_side_strings_and_no_side():
    g = live()
    scanned(g, ("BTC/USD", "bearish"), ("ETH/USD", "hold"), ("SPY", "bullish"))
    assert g.check(ctx(), "BTC/USD", "buy").state is R and g.check(ctx(), "BTC/USD", "short").state is A
    assert g.check(ctx(), "ETH/USD", None).state is R          # hold blocks any entry
    assert g.check(ctx(), "SPY", None).state is A


def test_a_verdict_older_than_its_age_counts_as_none():
    g = live(verdict_max_age_minutes=45)
    scanned(g, ("BTC/USD", "bearish"), ("ETH/USD", "hold"), ("SPY", "hold"))
    assert g.check(ctx(T0 + timedelta(minutes=45)), "BTC/USD", Side.BUY).state is R
    v = g.check(ctx(T0 + timedelta(minutes=46)), "BTC/USD", Side.BUY)
    assert v.state is A and "46 min old" in v.reason and "no_verdict_means=allow" in v.reason
    hold = live(verdict_max_age_minutes=45, no_verdict_means="hold")
    scanned(hold, ("BTC/USD", "bullish"), ("ETH/USD", "hold"), ("SPY", "hold"))
    assert hold.check(ctx(T0 + timedelta(minutes=46)), "BTC/USD", Side.BUY).state is R


def test_a_verdict_made_after_now_is_not_seen():
    g = live()
    scanned(g, ("BTC/USD", "bearish"), ("ETH/USD", "hold"), ("SPY", "hold"), at=T0 + timedelta(minutes=10))
    v = g.check(ctx(T0 + timedelta(minutes=5)), "BTC/USD", Side.BUY)
    assert v.state is A and "no LLM verdict yet" in v.reason


@pytest.mark.parametrize("means, state", [("allow", A), ("hold", R)])
@pytest.mark.parametrize("response, cause", [
    (lambda r: error(529, "error.529.overloaded.json"), "overloaded"),
    (lambda r: error(429, "error.429.rate_limit.json"), "rate_limited"),
    (lambda r: ok({"foo": 1}), "invalid_response"),
])
def test_no_verdict_follows_the_configured_behaviour_and_names_its_cause(means, state, response, cause):
    g = live(no_verdict_means=means)
    scanned(g, response=Recorder(response).responses[0])
    for side in (Side.BUY, Side.SELL):
        v = g.check(ctx(T0 + timedelta(minutes=1)), "BTC/USD", side)
        assert v.state is state and cause in v.reason and f"no_verdict_means={means}" in v.reason


def test_a_failed_scan_does_not_erase_a_verdict_still_within_its_age():
    g = live()
    scanned(g, ("BTC/USD", "bearish"), ("ETH/USD", "hold"), ("SPY", "hold"))
    scanned(g, at=T0 + timedelta(minutes=30), response=error(529, "error.529.overloaded.json"))
    v = g.check(ctx(T0 + timedelta(minutes=31)), "BTC/USD", Side.BUY)
    assert v.state is R and "LLM bearish" in v.reason
    # once the verdict has aged out, the newer failure is what the trace names
    v = g.check(ctx(T0 + timedelta(minutes=61)), "BTC/USD", Side.BUY)
    assert v.state is A and "overloaded" in v.reason


def test_unwatched_symbols_and_book_checks_get_nothing():
    g = live()
    assert g.check(ctx(), "DOGE/USD", Side.BUY) is None and g.check(ctx(), None, None) is None


def test_exit_requests_only_when_enabled():
    off = live()
    scanned(off, ("BTC/USD", "exit"), ("ETH/USD", "bullish"), ("SPY", "exit"))
    assert off.exit_requests(T0) == [] and "exit requested" not in off.check(ctx(), "BTC/USD", Side.BUY).reason
    assert off.check(ctx(), "BTC/USD", Side.SELL).state is R
    on = live(exit_requests_enabled=True)
    scanned(on, ("BTC/USD", "exit"), ("ETH/USD", "bullish"), ("SPY", "exit"))
    assert [r.symbol for r in on.exit_requests(T0 + timedelta(minutes=1))] == ["BTC/USD", "SPY"]
    assert "exit requested" in on.check(ctx(), "BTC/USD", Side.BUY).reason
    assert on.exit_requests(T0 + timedelta(minutes=61)) == []     # an aged exit asks nothing


# -- replay ---------------------------------------------------------------------------------------

@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a replay opened a network connection")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_replay_uses_recorded_verdicts_and_never_the_network(tmp_path, no_network):
    url = f"sqlite:///{tmp_path / 'llm.db'}"
    rec = VerdictRecorder(url)
    g_live = live()
    h = Recorder(ok(good_body(("BTC/USD", "bearish"), ("ETH/USD", "bullish"), ("SPY", "hold"))),
                 ok(good_body(("BTC/USD", "bullish"), ("ETH/USD", "bullish"), ("SPY", "exit"))))
    analyst, _ = make_analyst(h, recorder=rec, book=g_live.book)
    analyst.scan(T0, headlines(*SYMBOLS))
    analyst.scan(T0 + timedelta(minutes=30), headlines(*SYMBOLS))
    replay = LlmNewsGate.for_replay(settings(), VerdictRecorder(url), T0, T0 + timedelta(hours=2))
    assert not replay.no_records
    grid = [T0 + timedelta(minutes=m) for m in range(-5, 120, 5)]
    for t in grid:
        for s in SYMBOLS:
            for side in (Side.BUY, Side.SELL):
                a, b = g_live.check(ctx(t), s, side), replay.check(ctx(t), s, side)
                assert (a.state, a.reason) == (b.state, b.reason), (t, s, side)
    assert replay.check(ctx(T0 + timedelta(minutes=29)), "BTC/USD", Side.BUY).state is R
    assert replay.check(ctx(T0 + timedelta(minutes=30)), "BTC/USD", Side.BUY).state is A


def test_replay_of_a_span_without_records_reports_it(tmp_path, no_network):
    g = LlmNewsGate.for_replay(settings(no_verdict_means="hold"), VerdictRecorder(f"sqlite:///{tmp_path / 'e.db'}"),
                               T0, T0 + timedelta(days=1))
    v = g.check(ctx(), "BTC/USD", Side.BUY)
    assert g.no_records and v.state is A and v.reason == NO_RECORDS
    assert g.exit_requests(T0) == []


def test_replay_sees_a_verdict_in_force_when_the_span_opens_but_nothing_after_it(tmp_path):
    rec = VerdictRecorder(f"sqlite:///{tmp_path / 'llm.db'}")
    analyst, _ = make_analyst(Recorder(ok(good_body(("BTC/USD", "bearish")))), recorder=rec)
    analyst.scan(T0 - timedelta(minutes=20), headlines("BTC/USD"))
    analyst.scan(T0 + timedelta(days=2), headlines("BTC/USD"))
    g = LlmNewsGate.for_replay(settings(), rec, T0, T0 + timedelta(hours=1))
    assert g.check(ctx(T0), "BTC/USD", Side.BUY).state is R
    assert len(g.book) == len(SYMBOLS)            # the later scan is outside the span: not even loaded


def test_same_stored_verdicts_give_the_same_decisions(tmp_path):
    rec = VerdictRecorder(f"sqlite:///{tmp_path / 'llm.db'}")
    bodies = [ok(good_body(("BTC/USD", a), ("ETH/USD", b), ("SPY", c)))
              for a, b, c in [("bullish", "hold", "exit"), ("bearish", "bullish", "hold"), ("hold", "exit", "bullish")]]
    analyst, _ = make_analyst(Recorder(*bodies, error(529, "error.529.overloaded.json")), recorder=rec)
    for i in range(5):
        analyst.scan(T0 + timedelta(minutes=30 * i), headlines(*SYMBOLS))

    def decisions():
        g = LlmNewsGate.for_replay(settings(), rec, T0, T0 + timedelta(hours=4))
        return [(g.check(ctx(T0 + timedelta(minutes=m)), s, side).state, g.check(ctx(T0 + timedelta(minutes=m)), s, side).reason)
                for m in range(0, 240, 7) for s in SYMBOLS for side in (Side.BUY, Side.SELL)]

    first = decisions()
    assert first == decisions() and len({d[0] for d in first}) == 2
