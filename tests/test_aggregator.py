"""Signal aggregator: Beta-binomial reliability, decay, modifiers, bounds and persistence."""
from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings, strategies as st

from hydra_engine.aggregator import SignalAggregator
from hydra_engine.domain import UTC, Signal

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def sig(source: str, score: float, conf: float = 1.0, age_h: float = 0.0, half_life_h: float = 4.0,
        symbol: str = "BTC/USD") -> Signal:
    return Signal(symbol, score, conf, source, T0 - timedelta(hours=age_h), timedelta(hours=half_life_h))


signals_st = st.lists(st.builds(
    sig, source=st.sampled_from(["funding", "oi", "graph", "news"]),
    score=st.floats(-1, 1), conf=st.floats(0, 1), age_h=st.floats(-2, 200), half_life_h=st.floats(0.01, 48),
    symbol=st.sampled_from(["BTC/USD", "SPY"])), min_size=1, max_size=12)
outcomes_st = st.lists(st.tuples(st.sampled_from(["funding", "oi", "graph", "news"]), st.booleans()), max_size=40)


def test_new_source_is_neutral_and_posterior_mean_is_beta_binomial():
    agg = SignalAggregator()
    assert agg.reliability("never_seen") == 0.5
    for hit in [True] * 8 + [False] * 2:
        agg.record_outcome("funding", hit)
    assert agg.reliability("funding") == pytest.approx((2 + 8) / (4 + 10))


def test_combined_score_is_the_reliability_confidence_decay_weighted_mean():
    agg = SignalAggregator()
    for _ in range(6):
        agg.record_outcome("good", True)          # reliability (2+6)/(4+6) = 0.8
    agg.record_outcome("bad", False)              # reliability 2/5 = 0.4
    out = agg.combine([sig("good", 0.5, conf=1.0), sig("bad", -1.0, conf=0.5, age_h=4.0)], T0)["BTC/USD"]
    w_good, w_bad = 0.8 * 1.0 * 1.0, 0.4 * 0.5 * 0.5
    assert out.score == pytest.approx((0.5 * w_good - 1.0 * w_bad) / (w_good + w_bad))
    by_source = {c["source"]: c for c in out.contributors}
    assert by_source["bad"]["decay"] == pytest.approx(0.5)
    assert by_source["bad"]["reliability"] == pytest.approx(0.4)
    assert by_source["good"]["weight"] == pytest.approx(w_good)
    assert set(by_source["good"]) == {"source", "score", "confidence", "decay", "reliability", "modifier", "weight"}


def test_conflicting_equal_signals_cancel_with_zero_confidence():
    out = SignalAggregator().combine([sig("a", 0.8), sig("b", -0.8)], T0)["BTC/USD"]
    assert out.score == pytest.approx(0.0) and out.confidence == pytest.approx(0.0)


def test_future_signals_count_nothing():
    out = SignalAggregator().combine([sig("a", 0.9, age_h=-1.0)], T0)["BTC/USD"]
    assert out.score == 0.0 and out.confidence == 0.0


def test_modifier_dampens_and_amplifies_other_sources():
    agg = SignalAggregator()
    base = agg.combine([sig("equity_momo", 0.8), sig("credit", -0.4)], T0)["BTC/USD"].score

    def credit_stress(symbol, signals, now):   # the cross-asset graph: credit stress damps longs
        return {"equity_momo": 0.0, "credit": 2.0}

    agg.add_modifier(credit_stress)
    out = agg.combine([sig("equity_momo", 0.8), sig("credit", -0.4)], T0)["BTC/USD"]
    assert out.score == pytest.approx(-0.4) and out.score < base
    assert {c["source"]: c["modifier"] for c in out.contributors} == {"equity_momo": 0.0, "credit": 2.0}


def test_a_broken_or_wild_modifier_is_contained():
    agg = SignalAggregator()
    agg.add_modifier(lambda symbol, signals, now: 1 / 0)
    agg.add_modifier(lambda symbol, signals, now: {"a": 1e9, "b": float("nan")})
    out = agg.combine([sig("a", 1.0), sig("b", -1.0)], T0)["BTC/USD"]
    mods = {c["source"]: c["modifier"] for c in out.contributors}
    assert mods == {"a": 3.0, "b": 1.0}
    assert out.score == pytest.approx(0.5)


def test_state_round_trip():
    agg = SignalAggregator(forget=0.99)
    for src, hit in [("a", True), ("a", False), ("b", True)]:
        agg.record_outcome(src, hit)
    again = SignalAggregator(forget=0.99)
    again.load_state(agg.to_state())
    assert again.to_state() == agg.to_state()
    assert again.reliability("a") == agg.reliability("a")
    fresh = SignalAggregator()
    fresh.load_state({"kind": "confidence_weighted_mean"})   # the interim aggregator's state: ignored
    assert fresh.reliability("a") == 0.5


@settings(max_examples=200, deadline=None)
@given(signals_st, outcomes_st, st.floats(0, 5))
def test_scores_stay_in_bounds(signals, outcomes, amp):
    agg = SignalAggregator()
    for src, hit in outcomes:
        agg.record_outcome(src, hit)
    agg.add_modifier(lambda symbol, sigs, now: {"graph": amp})
    for c in agg.combine(signals, T0).values():
        assert -1.0 <= c.score <= 1.0
        assert 0.0 <= c.confidence <= 1.0


@settings(max_examples=200, deadline=None)
@given(signals_st, st.floats(0, 500), st.floats(0, 500))
def test_influence_never_grows_with_age(signals, dt1, dt2):
    """From the moment a signal exists (before that it counts 0), its weight only shrinks."""
    agg = SignalAggregator()
    for s in signals:
        early = max(T0, s.created_at) + timedelta(hours=min(dt1, dt2))
        late = max(T0, s.created_at) + timedelta(hours=max(dt1, dt2))
        w1 = agg.combine([s], early)[s.symbol].contributors[0]["weight"]
        w2 = agg.combine([s], late)[s.symbol].contributors[0]["weight"]
        assert w2 <= w1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans()), max_size=60), st.sampled_from([1.0, 0.97, 0.8]))
def test_more_hits_never_lower_reliability(pairs, forget):
    """Source B has the same outcome history as A except that some of A's misses were hits."""
    agg = SignalAggregator(forget=forget)
    for hit, flip in pairs:
        agg.record_outcome("A", hit)
        agg.record_outcome("B", hit or flip)
    assert agg.reliability("B") >= agg.reliability("A") - 1e-12


@settings(max_examples=100, deadline=None)
@given(st.lists(st.booleans(), max_size=60), st.integers(1, 10))
def test_extra_hits_never_lower_reliability_without_forgetting(history, extra):
    agg = SignalAggregator()
    for h in history:
        agg.record_outcome("A", h)
        agg.record_outcome("B", h)
    for _ in range(extra):
        agg.record_outcome("B", True)
    assert agg.reliability("B") > agg.reliability("A")


def test_a_future_signal_does_not_dilute_the_confidence_of_the_ones_that_count():
    agg = SignalAggregator()
    alone = agg.combine([sig("a", 0.6)], T0)["BTC/USD"]
    both = agg.combine([sig("a", 0.6), sig("b", -0.9, age_h=-1.0)], T0)["BTC/USD"]
    assert (both.score, both.confidence) == (alone.score, alone.confidence) and alone.confidence > 0.5
    assert [c["source"] for c in both.contributors] == ["a"]


@pytest.mark.parametrize("factors", [{"a": None}, {"a": "high"}, ["a"]])
def test_a_modifier_returning_something_unreadable_is_ignored_like_one_that_raises(factors):
    agg = SignalAggregator()
    plain = agg.combine([sig("a", 0.6)], T0)["BTC/USD"]
    agg.add_modifier(lambda symbol, signals, now: factors)
    assert agg.combine([sig("a", 0.6)], T0)["BTC/USD"] == plain


def test_saved_reliability_that_is_not_a_count_starts_from_the_prior():
    agg = SignalAggregator()
    agg.load_state({"kind": agg.name, "sources": {"nan": {"hits": float("nan"), "misses": 1.0},
                                                  "neg": {"hits": -3.0, "misses": 1.0},
                                                  "ok": {"hits": 3.0, "misses": 1.0}}})
    fresh = SignalAggregator()
    assert agg.reliability("nan") == agg.reliability("neg") == fresh.reliability("nan")
    assert agg.reliability("ok") > fresh.reliability("ok")
