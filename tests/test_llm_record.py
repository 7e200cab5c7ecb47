"""The verdict record (issue #22): every call stored with what it sent and got, and the replay source
that returns, for a moment, the newest outcome per symbol made at or before it -- never after."""
from __future__ import annotations

import hashlib
import json
import threading
from datetime import UTC, datetime, timedelta

import pytest

from hydra_engine.llm.analyst import build_request, prompt_hash
from hydra_engine.llm.book import VerdictBook
from hydra_engine.llm.record import CallRecord, RecordedVerdicts, VerdictRecorder, parse_stamp, stamp
from hydra_engine.llm.schema import (Action, Confidence, NoVerdict, NoVerdictCause, SymbolVerdict, TimedOutcome)
from tests.test_llm_support import (KEY, T0, Recorder, error, example, good_body, headlines, make_analyst,
                                    ok)


def v(symbol, action, at, reason="r"):
    return TimedOutcome(symbol=symbol, made_at=at, outcome=SymbolVerdict(
        symbol=symbol, action=Action(action), confidence=Confidence.MEDIUM, reason=reason))


def nv(symbol, cause, at):
    return TimedOutcome(symbol=symbol, made_at=at, outcome=NoVerdict(cause=NoVerdictCause(cause), detail="d"))


def test_every_call_is_stored_with_prompt_hash_headlines_response_result_and_cost(tmp_path):
    rec = VerdictRecorder(f"sqlite:///{tmp_path / 'llm.db'}")
    body = good_body(("BTC/USD", "bullish"), ("ETH/USD", "exit"))
    analyst, _ = make_analyst(Recorder(ok(body)), recorder=rec)
    hl = headlines("BTC/USD", "ETH/USD")
    analyst.scan(T0, hl)
    [call] = rec.calls()
    request = build_request(analyst.settings, hl)
    assert call.prompt_hash == prompt_hash(request) == hashlib.sha256(
        json.dumps(request, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert [(h["symbol"], h["id"], h["title"]) for h in json.loads(call.headlines_json)] == \
        [("BTC/USD", "id-BTC/USD", "BTC/USD news of the day"), ("ETH/USD", "id-ETH/USD", "ETH/USD news of the day")]
    assert json.loads(call.response_text) == body                     # the raw body as received
    assert json.loads(call.tool_input_json) == body["content"][1]["input"]
    assert json.loads(call.symbols_json) == ["BTC/USD", "ETH/USD"]
    assert (call.input_tokens, call.output_tokens, call.cost_basis) == (530, 71, "usage") and call.cost_usd > 0
    assert call.model == "claude-sonnet-4-6" and parse_stamp(call.requested_at) == T0
    outs = {o.symbol: o.outcome for o in rec.outcomes()}
    assert outs["BTC/USD"].action is Action.BULLISH and outs["ETH/USD"].action is Action.EXIT
    assert outs["SPY"].cause is NoVerdictCause.NO_NEWS


def test_failed_and_refused_calls_are_stored_with_their_cause():
    analyst, rec = make_analyst(Recorder(error(529, "error.529.overloaded.json")), max_calls_per_hour=1)
    analyst.scan(T0, headlines("BTC/USD"))
    analyst.scan(T0 + timedelta(minutes=1), headlines("BTC/USD"))
    first, second = rec.calls()
    assert first.called and first.cause == "overloaded" and first.http_status == 529
    assert json.loads(first.response_text) == example("error.529.overloaded.json")
    assert not second.called and second.cause == "rate_cap" and second.cost_usd == 0
    assert rec.calls_between(T0 - timedelta(hours=1), T0 + timedelta(hours=1)) == 1


def test_made_at_is_when_the_answer_arrived_not_when_it_was_asked():
    clock_at = T0 + timedelta(seconds=12)
    analyst, rec = make_analyst(Recorder(ok(good_body(("BTC/USD", "bearish")))))
    analyst._clock = lambda: clock_at
    analyst.scan(T0, headlines("BTC/USD"))
    [call] = rec.calls()
    assert parse_stamp(call.requested_at) == T0 and parse_stamp(call.made_at) == clock_at
    book = RecordedVerdicts.load(rec, T0, T0 + timedelta(hours=1), timedelta(hours=1))
    assert book.lookup("BTC/USD", T0 + timedelta(seconds=11)).verdict is None
    assert book.lookup("BTC/USD", clock_at).verdict.outcome.action is Action.BEARISH


def test_lookup_is_the_newest_at_or_before_never_after():
    outs = [v("BTC/USD", "bullish", T0), nv("BTC/USD", "timeout", T0 + timedelta(minutes=30)),
            v("BTC/USD", "bearish", T0 + timedelta(minutes=60)), v("ETH/USD", "hold", T0 + timedelta(minutes=10))]
    book = RecordedVerdicts(reversed(outs), T0, T0 + timedelta(hours=2))      # insertion order does not matter
    at = lambda m: book.lookup("BTC/USD", T0 + timedelta(minutes=m))
    assert at(-1).verdict is None and at(-1).last is None
    assert at(0).verdict.outcome.action is Action.BULLISH
    assert at(45).verdict.outcome.action is Action.BULLISH and at(45).last.outcome.cause is NoVerdictCause.TIMEOUT
    assert at(59).verdict.made_at == T0 and at(60).verdict.outcome.action is Action.BEARISH
    assert book.lookup("SPY", T0).last is None and book.symbols() == ["BTC/USD", "ETH/USD"]


def test_ties_are_broken_by_recorded_order_and_reloading_is_identical(tmp_path):
    rec = VerdictRecorder(f"sqlite:///{tmp_path / 'llm.db'}")
    analyst, _ = make_analyst(Recorder(ok(good_body(("BTC/USD", "bullish"))), ok(good_body(("BTC/USD", "exit")))),
                              recorder=rec)
    analyst.scan(T0, headlines("BTC/USD"))
    analyst.scan(T0, headlines("BTC/USD"))     # a second scan at the same moment (a forced rescan)
    loads = [RecordedVerdicts.load(rec, T0, T0 + timedelta(hours=1), timedelta(0)) for _ in range(3)]
    assert {l.lookup("BTC/USD", T0).verdict.outcome.action for l in loads} == {Action.EXIT}
    assert len({tuple(o.model_dump_json() for o in rec.outcomes()) for _ in range(3)}) == 1


def test_the_recorder_redacts_the_key_whatever_it_is_given(tmp_path):
    db = tmp_path / "llm.db"
    rec = VerdictRecorder(f"sqlite:///{db}", secrets=[KEY])
    rec.record(CallRecord(call_id="c1", requested_at=T0, made_at=T0, model="m", prompt_hash="h", symbols=["X"],
                          headlines=[{"title": KEY}], called=True, response_text=f"echo {KEY}",
                          tool_input={"k": KEY}, detail=f"Authorization: Bearer {KEY}",
                          outcomes=[v("X", "hold", T0, reason=f"r {KEY}"),
                                    TimedOutcome(symbol="Y", made_at=T0, outcome=NoVerdict(
                                        cause=NoVerdictCause.API_ERROR, detail=KEY))]))
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir()).decode("latin-1")
    assert KEY not in raw and "TESTKEY" not in raw
    assert {o.symbol for o in rec.outcomes()} == {"X", "Y"}


def test_spend_and_calls_are_summed_per_window():
    rec = VerdictRecorder("sqlite://")
    for i, (at, cost, called) in enumerate([(T0, 0.5, True), (T0 + timedelta(minutes=30), 0.25, True),
                                            (T0 + timedelta(days=40), 1.0, True), (T0, 0.0, False)]):
        rec.record(CallRecord(call_id=f"c{i}", requested_at=at, made_at=at, model="m", prompt_hash="h",
                              symbols=[], headlines=[], called=called, cost_usd=cost))
    month = datetime(2024, 3, 1, tzinfo=UTC)
    assert rec.spend_between(month, datetime(2024, 3, 31, 23, 59, tzinfo=UTC)) == pytest.approx(0.75)
    assert rec.calls_between(T0, T0 + timedelta(hours=1)) == 2


def test_stamps_are_fixed_width_utc_and_refuse_naive_times():
    assert stamp(T0) == "2024-03-01T10:00:00.000000Z" and parse_stamp(stamp(T0)) == T0
    assert stamp(T0 + timedelta(microseconds=5)) > stamp(T0)
    with pytest.raises(ValueError):
        stamp(datetime(2024, 3, 1, 10))
    with pytest.raises(ValueError):
        TimedOutcome(symbol="X", made_at=datetime(2024, 3, 1), outcome=NoVerdict(cause=NoVerdictCause.NO_NEWS))


def test_the_live_book_can_be_read_while_it_is_written():
    book = VerdictBook(keep=timedelta(hours=2))
    stop, errors = threading.Event(), []

    def reader():
        while not stop.is_set():
            try:
                book.lookup("BTC/USD", T0 + timedelta(days=1))
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    for i in range(500):
        book.add([v("BTC/USD", "hold", T0 + timedelta(minutes=i))])
    stop.set()
    t.join()
    assert not errors
    # live history is trimmed to `keep` behind the newest
    assert len(book) == 121 and book.lookup("BTC/USD", T0 + timedelta(days=1)).verdict.made_at == T0 + timedelta(minutes=499)
