"""The LLM news gate wired into sessions (issue #22): the ``news`` event kind, the ``[llm]`` settings, the
replay gate built by the composition root from recorded verdicts, ``hydra llm record`` through a mocked
API, and the end-to-end promise: a backtest over a span with recorded verdicts gives the same trades
twice without any network, a bearish verdict refuses the long it would otherwise take, and a span
without records says so."""
from __future__ import annotations

import json
import socket
from datetime import UTC, datetime, timedelta

import httpx2
import pytest

from hydra_engine.adapters.news_feeds import NewsFeeds, news_live_feed
from hydra_engine.app import build_sim_session, run_session
from hydra_engine.config import Settings
from hydra_engine.data.event_feeds import ReplayEventFeed, build_event_feeds
from hydra_engine.gate import GateContext, GateState
from hydra_engine.llm.gate_rule import NO_RECORDS, LlmNewsGate
from hydra_engine.llm.record import VerdictRecorder
from hydra_engine.llm.recording import record_span
from hydra_engine.llm.wiring import NEWS_NEED, VerdictTrace, paper_llm
from tests.conftest import SHIPPED_DATA, make_settings
from tests.test_llm_support import KEY, mock_client, ok, tool_body, verdict

START, END = "2024-04-01", "2024-04-15"
T_START, T_END = datetime(2024, 4, 1, tzinfo=UTC), datetime(2024, 4, 15, tzinfo=UTC)


# ------------------------------------------------------------------ the news event kind
def test_news_kind_replay_feed_reads_the_shipped_headlines_point_in_time():
    [feed] = build_event_feeds([NEWS_NEED], SHIPPED_DATA)
    assert isinstance(feed, ReplayEventFeed) and feed.kinds == ("news",)
    at = datetime(2024, 4, 4, 12, tzinfo=UTC)
    known = feed.events(at)
    assert known and all(e.known_at <= at for e in known)
    assert len(feed.events(at + timedelta(days=1))) > len(known)          # later headlines appear later
    btc = [e for e in feed.all_events if e.subject == "BTC/USD"]
    assert btc and all("bitcoin" in e.payload["title"] or "btc" in e.payload["title"] for e in btc)


def test_news_kind_live_feed_shares_one_deduper_and_needs_no_key():
    alone = news_live_feed(environ={})
    assert isinstance(alone, NewsFeeds) and [f.name for f in alone.feeds] == ["news_cryptocompare"]
    assert "CRYPTOPANIC_AUTH_TOKEN is not set" in alone.health(datetime.now(UTC))[1]
    both = news_live_feed(environ={"CRYPTOPANIC_AUTH_TOKEN": "tok", "CRYPTOCOMPARE_API_KEY": "k"})
    assert [f.name for f in both.feeds] == ["news_cryptocompare", "news_cryptopanic"]
    assert both.feeds[0].deduper is both.feeds[1].deduper
    assert "tok" not in repr(both.feeds[1].client)


# ------------------------------------------------------------------ settings
def test_llm_section_defaults_off_and_is_hashed_only_when_enabled(tmp_path):
    base = Settings()
    assert base.llm.enabled is False
    assert Settings(llm={"model": "another-model"}).config_hash() == base.config_hash()     # off: changes nothing
    on = Settings(llm={"enabled": True})
    assert on.config_hash() != base.config_hash()
    assert Settings(llm={"enabled": True, "model": "m2"}).config_hash() != on.config_hash()
    assert Settings(llm={"enabled": True, "verdicts_url": "sqlite:///x.db"}).config_hash() == on.config_hash()
    with pytest.raises(Exception, match="timeout_s"):
        Settings(llm={"timeout_s": True})


def test_the_shipped_config_has_the_llm_section_off():
    from hydra_engine.config import load_settings
    s = load_settings()
    assert s.llm.enabled is False and s.llm.symbols == ["BTC/USD", "ETH/USD"]


# ------------------------------------------------------------------ recording through a mocked API
def answer_bearish_btc(request: httpx2.Request) -> httpx2.Response:
    """Every call: BTC/USD bearish, any other symbol asked about bullish (the symbols are read from the request)."""
    text = json.loads(request.content)["messages"][0]["content"]
    symbols = json.loads(text.split("\n", 1)[0].removeprefix("SYMBOLS: "))
    return ok(tool_body({"verdicts": [verdict(s, "bearish" if s == "BTC/USD" else "bullish",
                                              reason=f"{s}: test verdict") for s in symbols]}))


def llm_settings(tmp_path, db, **llm):
    # a long lookback and verdict age: a headline keeps BTC/USD under verdicts for up to three days (the test's
    # headlines are days apart); sma_crossover on hourly BTC gives longs to refuse
    return make_settings(tmp_path, start=START, end=END, symbols=("BTC/USD", "ETH/USD"),
                         strategies={"enabled": ["sma_crossover"],
                                     "params": {"sma_crossover": {"symbols": ["BTC/USD"], "fast": 5, "slow": 20}}},
                         llm={"enabled": True, "symbols": ["BTC/USD", "ETH/USD"], "verdicts_url": f"sqlite:///{db}",
                              "scan_interval_minutes": 60, "news_lookback_minutes": 2880,
                              "verdict_max_age_minutes": 1440, "max_retries": 0, **llm})


def run(settings, tmp_path, name):
    session = build_sim_session(settings, log_dir=tmp_path / name)
    summary = run_session(session, progress=False)
    journal = [json.loads(line) for line in open(summary["journal"], encoding="utf-8")]
    return session.engine, journal


def trade_keys(engine):
    return [(t["symbol"], t["side"], t["entry_time"], t["exit_time"], t["pnl_usd"]) for t in engine.closed_trades]


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a replay opened a network connection")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Verdicts recorded over the span by `record_span` (the `hydra llm record` path) through a mocked API."""
    tmp = tmp_path_factory.mktemp("llmrec")
    db = tmp / "verdicts.db"
    s = llm_settings(tmp, db)
    client = mock_client(answer_bearish_btc)
    res = record_span(s, T_START, T_END, SHIPPED_DATA, client, VerdictRecorder(f"sqlite:///{db}"), max_usd=5.0,
                      say=lambda _m: None)
    return tmp, db, res


def test_record_span_records_every_scan_with_its_calls(recorded):
    _, db, res = recorded
    rec = VerdictRecorder(f"sqlite:///{db}")
    calls = rec.calls()
    assert res["scans"] == 14 * 24 == len(calls) and res["stopped_at"] is None
    assert 0 < res["calls"] == sum(c.called for c in calls) < len(calls)     # scans without news call nothing
    assert res["verdicts"] > 0 and res["spent_usd"] > 0
    assert KEY not in db.read_bytes().decode("latin-1")
    # each verdict is dated after its scan's moment (the call's latency), never before
    by_call = {c.call_id: c.requested_at for c in calls}
    assert all(o.made_at >= datetime.fromisoformat(by_call[o.call_id].replace("Z", "+00:00"))
               for o in rec.outcomes())


def test_record_span_resumes_after_what_is_recorded_and_honours_the_budget(tmp_path):
    db = tmp_path / "v.db"
    s = llm_settings(tmp_path, db)
    rec = VerdictRecorder(f"sqlite:///{db}")
    stopped = record_span(s, T_START, T_END, SHIPPED_DATA, mock_client(answer_bearish_btc), rec, max_usd=0.0,
                          say=lambda _m: None)
    assert stopped["stopped_at"] is not None and stopped["calls"] == 0      # the first call with news is refused
    first = stopped["scans"]
    again = record_span(s, T_START, T_END, SHIPPED_DATA, mock_client(answer_bearish_btc), rec,
                        max_usd=1.0, say=lambda _m: None)
    assert again["resumed_after"] == T_START + timedelta(hours=first - 1) == stopped["stopped_at"] - timedelta(hours=1)
    assert again["stopped_at"] is None and again["calls"] > 0
    assert len({c.requested_at for c in rec.calls()}) == len(rec.calls())  # no moment recorded twice


def test_llm_record_without_a_key_refuses_naming_it(monkeypatch, tmp_path, capsys):
    from hydra_engine.cli import main
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)                           # no .env here
    assert main(["llm", "record", "--start", START, "--end", END]) == 2
    assert "ANTHROPIC_API_KEY is not set" in capsys.readouterr().err


# ------------------------------------------------------------------ the backtest, end to end
def test_backtest_with_recorded_verdicts_is_reproducible_offline_and_refuses_bearish_longs(
        recorded, tmp_path, no_network):
    _, db, _ = recorded
    s = llm_settings(tmp_path, db)
    first, journal = run(s, tmp_path, "a")
    second, journal2 = run(s, tmp_path, "b")
    assert trade_keys(first) and trade_keys(first) == trade_keys(second)
    fills = lambda j: [f for c in j for f in c["fills"]]  # noqa: E731
    assert fills(journal) and fills(journal) == fills(journal2)
    refused = [d for c in journal for d in c["decisions"] if d["rule"] == "llm_news"]
    assert refused and all(d["symbol"] == "BTC/USD" and not d["approved"] for d in refused)
    assert all(d["gate"] == {"state": "RESTRICT", "rule": "llm_news"} for d in refused)
    assert all("LLM bearish" in d["reason"] and "blocks longs" in d["reason"] and "BTC/USD: test verdict"
               in d["reason"] for d in refused)
    # the verdicts the gate saw are in the journal, each once
    traced = [v for c in journal for v in c.get("llm_verdicts", [])]
    assert traced and len({(v["call_id"], v["symbol"]) for v in traced}) == len(traced)
    assert "replaying" in " ".join(journal[0]["notes"])

    # without the gate the same span takes those longs: the verdicts changed the trades
    plain, _ = run(s.model_copy(update={"llm": s.llm.model_copy(update={"enabled": False})}), tmp_path, "plain")
    assert trade_keys(plain) != trade_keys(first)


def test_backtest_over_a_span_without_records_says_so(tmp_path, no_network):
    s = llm_settings(tmp_path, tmp_path / "empty.db")
    engine, journal = run(s, tmp_path, "none")
    assert any(NO_RECORDS in n for n in journal[0]["notes"])
    assert not [d for c in journal for d in c["decisions"] if d["rule"] == "llm_news"]
    assert engine.closed_trades                           # the gate allowed every entry


# ------------------------------------------------------------------ exits and the paper wiring
def test_an_exit_verdict_flattens_only_when_exit_requests_are_enabled(tmp_path):
    from hydra_engine.gate import EntryGate
    from tests.test_llm_support import Recorder, good_body, headlines, make_analyst
    t0 = datetime(2024, 3, 1, 10, tzinfo=UTC)
    for enabled, closes in ((False, set()), (True, {"BTC/USD"})):
        s = llm_settings(tmp_path, tmp_path / f"x{enabled}.db", exit_requests_enabled=enabled).llm
        gate = LlmNewsGate.live(s)
        analyst, _ = make_analyst(Recorder(ok(good_body(("BTC/USD", "exit"), ("ETH/USD", "hold")))), book=gate.book,
                                  symbols=["BTC/USD", "ETH/USD"], exit_requests_enabled=enabled)
        analyst.scan(t0, headlines("BTC/USD", "ETH/USD"))
        entry = EntryGate([], [gate])
        ctx = GateContext(t0 + timedelta(minutes=1), None, None)
        assert set(entry.flatten(ctx, ["BTC/USD", "ETH/USD"])) == closes
        assert entry.for_symbol(ctx, "BTC/USD", "buy").verdict.state is (GateState.BLOCK if enabled else
                                                                         GateState.RESTRICT)


def test_paper_wiring_polls_the_analyst_off_the_loop_and_traces_its_verdicts(tmp_path):
    from hydra_engine.events import Event
    from hydra_engine.ports import MarketSnapshot
    s = llm_settings(tmp_path, tmp_path / "paper.db")
    now = datetime.now(UTC).replace(microsecond=0)
    news = Event(kind="news", subject="BTC/USD", happened_at=now - timedelta(minutes=5),
                 known_at=now - timedelta(minutes=5), payload={"title": "bitcoin slides", "id": "n1"}, source="t")
    wiring = paper_llm(s, environ={"ANTHROPIC_API_KEY": KEY},
                       transport=httpx2.MockTransport(answer_bearish_btc))
    try:
        [hook] = wiring.hooks
        report: dict = {}
        hook(now, MarketSnapshot(now=now, events=(news,)), report)       # starts the scan, returns at once
        wiring.runner._running.result(timeout=30)
        later = now + timedelta(minutes=1)
        hook(later, MarketSnapshot(now=later, events=(news,)), report)
        assert [(v["symbol"], v.get("action")) for v in report["llm_verdicts"].jsonable()] == [("BTC/USD", "bearish"),
                                                                                    ("ETH/USD", None)]
        verdict_now = wiring.gate.check(GateContext(later, None, None), "BTC/USD", "buy")
        assert verdict_now.state is GateState.RESTRICT and "LLM bearish" in verdict_now.reason
    finally:
        wiring.close()
    assert paper_llm(s.model_copy(update={"llm": s.llm.model_copy(update={"enabled": False})})).hooks == []


def test_verdict_trace_reports_each_outcome_once_as_it_becomes_known():
    from hydra_engine.llm.book import VerdictBook
    from hydra_engine.llm.schema import Action, Confidence, SymbolVerdict, TimedOutcome
    t0 = datetime(2024, 3, 1, tzinfo=UTC)

    def out(minutes, symbol="BTC/USD"):
        return TimedOutcome(symbol=symbol, made_at=t0 + timedelta(minutes=minutes), call_id=f"c{minutes}",
                            outcome=SymbolVerdict(symbol=symbol, action=Action.HOLD, confidence=Confidence.LOW,
                                                  reason="r"))
    book = VerdictBook([out(0), out(30), out(90)])
    for trace in (VerdictTrace(book, fixed=True), VerdictTrace(book)):      # replay and live
        seen = []
        for m in (10, 60, 60, 120):
            report: dict = {}
            trace(t0 + timedelta(minutes=m), None, report)
            traced = report.get("llm_verdicts", [])
            seen.append([v["call_id"] for v in (traced.jsonable() if hasattr(traced, "jsonable") else traced)])
        assert seen == [["c0"], ["c30"], [], ["c90"]]
    book.add([out(125)])                       # a live add replaces the tuple: only the new one is reported
    report = {}
    trace(t0 + timedelta(minutes=130), None, report)
    assert [v["call_id"] for v in report["llm_verdicts"].jsonable()] == ["c125"]


# ------------------------------------------------------------------ review
def test_review_reports_blocks_with_their_returns_and_the_agreement(recorded, tmp_path):
    from hydra_engine.llm.review import agreement, blocked_trades
    from hydra_engine.review import build_review
    from hydra_engine.tradelog import load_session
    _, db, _ = recorded
    s = llm_settings(tmp_path, db)
    summary = run_session(build_sim_session(s, log_dir=tmp_path / "r"), progress=False)
    doc = load_session(summary["log"])
    review = build_review(doc)
    titles = [t.title for t in review.tables]
    assert "LLM news gate: blocked entries (what they would have returned)" in titles
    blocks = blocked_trades(doc["cycle_details"])
    assert blocks and all(b["symbol"] == "BTC/USD" and b["side"] == "buy" for b in blocks)
    assert all(b["return"] is not None and b["ended"] in ("stop", "target", "time", "end of log") for b in blocks)
    agr = agreement(doc["cycle_details"])
    assert agr["measured"] > 0 and 0 <= agr["agreement"] <= 1 and review.metrics["llm"]["agreement"] == agr
    # every measured BTC verdict is bearish: its agreement is exactly the share of down moves
    btc = agr["per_symbol"]["BTC/USD"]["agreement"]
    assert 0 <= btc <= 1
    assert any("model trained later" in n for n in review.notes)


def test_review_states_agreement_unmeasured_without_records(tmp_path):
    from hydra_engine.review import build_review
    from hydra_engine.tradelog import load_session
    s = llm_settings(tmp_path, tmp_path / "empty.db")
    summary = run_session(build_sim_session(s, log_dir=tmp_path / "n"), progress=False)
    review = build_review(load_session(summary["log"]))
    assert any(NO_RECORDS in n and "unmeasured" in n for n in review.notes)
    [agr] = [t for t in review.tables if t.title.startswith("LLM agreement")]
    assert agr.rows == [] and agr.note.startswith("unmeasured")


def test_agreement_is_computed_against_the_move_that_followed():
    from hydra_engine.llm.review import agreement
    t0 = datetime(2024, 3, 1, tzinfo=UTC)
    closes = [100, 101, 102, 103, 104, 105, 104, 103, 102, 101, 100]       # up for 5 h, then down
    details = [{"ts": (t0 + timedelta(hours=h)).isoformat(), "prices": {"BTC/USD": p}} for h, p in enumerate(closes)]
    details[0]["llm_verdicts"] = [{"symbol": "BTC/USD", "made_at": t0.isoformat(), "action": "bullish"}]
    details[5]["llm_verdicts"] = [{"symbol": "BTC/USD", "made_at": (t0 + timedelta(hours=5)).isoformat(),
                                   "action": "bullish"},
                                  {"symbol": "BTC/USD", "made_at": (t0 + timedelta(hours=5)).isoformat(),
                                   "action": "hold"}]
    agr = agreement(details, horizon_h=4)
    assert (agr["verdicts"], agr["measured"], agr["agreement"], agr["base_rate_up"]) == (3, 2, 0.5, 0.5)
