"""The trained models (issue #21): no look-ahead, purged folds, determinism, and the cycle with and
without the scorer and the classifier — on the shipped real data (Binance perp klines, funding, Bybit OI)."""
from __future__ import annotations

import dataclasses
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from hydra_engine.domain import UTC, Signal
from hydra_engine.ml.features import SCORER_BASE_FEATURES, regime_features, scorer_features
from hydra_engine.ml.labels import CLASSES, regime_label, signal_outcome
from hydra_engine.ml.validation import purged_splits
from hydra_engine.perp import stats as perp_stats

from .conftest import SHIPPED_DATA, make_settings

SYM = "BTCUSDT"
CUT = datetime(2024, 3, 1, tzinfo=UTC)          # data after this is scrambled


@pytest.fixture(autouse=True)
def _rule_labeller_after():
    yield
    perp_stats.set_regime_labeller(perp_stats.RuleRegimeLabeller())   # the labeller is process-global


def _market():
    from hydra_engine.data.replay import ReplayMarketData
    return ReplayMarketData(SHIPPED_DATA, ["BTCUSDT", "ETHUSDT"], history_bars=500)


def _scramble_after(market, cut: datetime, seed: int = 3) -> None:
    """Shuffle every bar and every published point after ``cut`` (in place, this market object only)."""
    rng = np.random.default_rng(seed)
    t = int(cut.timestamp())
    def shuffled(arr, m):
        out = np.array(arr, dtype=float, copy=True)
        out[m] = rng.permutation(out[m]) * rng.uniform(0.5, 1.5)
        return out
    for b in market._bars.values():
        m = b.close_ts > t
        for name in ("o", "h", "l", "c", "v"):
            object.__setattr__(b, name, shuffled(getattr(b, name), m))
    for p in market._points.values():
        object.__setattr__(p, "values", shuffled(p.values, p.ts > t))
    market._series_cache.clear()
    market._clocks = market._group_clocks()   # the clocks hold the newest closes too


def _times(n: int = 12):
    return [CUT - timedelta(hours=7 * k + 1) for k in range(n)]


def test_scrambling_the_future_changes_no_feature_or_label_before_it():
    a, b = _market(), _market()
    _scramble_after(b, CUT)
    assert a.snapshot(CUT + timedelta(days=5)).closes[SYM] != b.snapshot(CUT + timedelta(days=5)).closes[SYM]
    sig = lambda now: Signal(SYM, -0.5, 0.6, "oi_divergence", now, timedelta(hours=12))  # noqa: E731
    for now in _times():
        sa, sb = a.snapshot(now), b.snapshot(now)
        fa, fb = regime_features(sa, SYM), regime_features(sb, SYM)
        assert np.array_equal(np.array(list(fa.values())), np.array(list(fb.values())), equal_nan=True)
        ga, gb = scorer_features(sig(now), sa, now), scorer_features(sig(now), sb, now)
        assert np.array_equal(np.array(list(ga.values())), np.array(list(gb.values())), equal_nan=True)
        assert sum(np.isfinite(list(ga.values()))) > 25        # the real data gives most features
        # labels whose window ends before the cut are the same; the 24 h embargo covers the regime window
        start = now - timedelta(hours=24)
        assert regime_label(sa, SYM, start) == regime_label(sb, SYM, start)
        la = signal_outcome(a.bar_close_at, SYM, -1.0, now - timedelta(hours=24), timedelta(hours=12), 0.002, CUT)
        lb = signal_outcome(b.bar_close_at, SYM, -1.0, now - timedelta(hours=24), timedelta(hours=12), 0.002, CUT)
        assert la == lb and la is not None
    # a label whose holding period runs past the data's end is not made at all
    assert signal_outcome(a.bar_close_at, SYM, 1.0, CUT - timedelta(hours=2), timedelta(hours=12), 0.002, CUT) is None


def test_scrambling_the_future_changes_no_training_row_or_prediction_before_it():
    from hydra_engine.ml.dataset import regime_rows
    from hydra_engine.ml.train import _cls_predict, fit_classifier
    a, b = _market(), _market()
    _scramble_after(b, CUT)
    start, end = date(2024, 2, 1), CUT.date()
    ra = regime_rows(None, [SYM], start, end, progress=False, market=a)
    rb = regime_rows(None, [SYM], start, end, progress=False, market=b)
    assert len(ra.y) > 500 and ra.label_end.max() <= CUT.timestamp()
    assert np.array_equal(ra.X, rb.X, equal_nan=True) and np.array_equal(ra.y, rb.y)
    pa = _cls_predict(fit_classifier(ra.X, ra.y, seed=5), ra.X[-50:])
    pb = _cls_predict(fit_classifier(rb.X, rb.y, seed=5), rb.X[-50:])
    assert np.array_equal(pa, pb)     # and deterministic for a seed


def test_cv_folds_never_share_a_label_window():
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0, 1e7, 3000))
    end = t + rng.uniform(3600, 10 * 86400, len(t))      # holding periods from 1 h to 10 days
    folds, tail = purged_splits(t, end, n_splits=5, holdout_frac=0.15, embargo_s=86400)
    assert len(folds) == 5
    for f in [*folds, tail]:
        assert len(f.train) and len(f.test)
        # every training label window (plus the embargo) ends before the first test row is known
        assert end[f.train].max() + 86400 < t[f.test].min()
        assert not set(f.train) & set(f.test)
    assert tail.test.min() > max(f.test.max() for f in folds)
    with pytest.raises(ValueError, match="sorted"):
        purged_splits(t[::-1], end[::-1])


# --------------------------------------------------------------------------- the scorer in the cycle
class _FixedModel:
    """A scorer model answering one probability (the engine's side of the contract is under test)."""

    def __init__(self, p):
        self.p = p

    def predict(self, base, source):
        return self.p, "scored", 0.1


def _session(tmp_path, scorers):
    from hydra_engine.app import build_sim_session
    s = make_settings(tmp_path, start="2024-01-01", end="2024-02-01", symbols=("BTC/USD", "ETH/USD", "SPY"),
                      perps={"enabled": True}, strategies={"enabled": ["oi_divergence", "liquidation_reversal"]},
                      observation_cycles=5)
    session = build_sim_session(s, mode="backtest", persist=False)
    session.engine.scorers = scorers
    return session


def _run(session):
    reports = []
    for now in session.clock.ticks:
        reports.append(session.engine.run_cycle(now))
    return reports


def test_the_scorer_refuses_below_threshold_and_replaces_confidence_above(tmp_path):
    from signals.ml_scorer import MLSignalScorer
    low = _run(_session(tmp_path / "low", [MLSignalScorer(model=_FixedModel(0.30))]))
    decided = [d for r in low for d in r["decisions"]]
    assert decided and all(d["rule"] == "ml_score_below_threshold" and d["layer"] == "scorer" for d in decided)
    assert "0.300 < threshold 0.45" in decided[0]["reason"]
    scored = [e for r in low for e in r.get("ml_scores", [])]
    assert scored and all(e["ml_score"] == 0.3 and e["inputs"] for e in scored)

    high = _run(_session(tmp_path / "high", [MLSignalScorer(model=_FixedModel(0.80))]))
    props = [p for r in high for p in r["proposals"]]
    assert props and all(p["confidence"] == 0.8 and p["ml_score"] == 0.8 for p in props)
    approved = [d for r in high for d in r["decisions"] if d["approved"]]
    assert approved   # Kelly sized them on the score

    none = _run(_session(tmp_path / "off", []))        # no scorer: today's behaviour, no ml_scores key
    assert all("ml_scores" not in r for r in none)
    assert [p["confidence"] for r in none for p in r["proposals"]] != [0.8] * len(props)


def test_a_scorer_without_a_model_abstains_and_the_cycle_falls_back(tmp_path):
    from signals.ml_scorer import MLSignalScorer
    sc = MLSignalScorer({"model_path": str(tmp_path / "absent.cbm")})
    with_missing = _run(_session(tmp_path / "a", [sc]))
    without = _run(_session(tmp_path / "b", []))
    entries = [e for r in with_missing for e in r.get("ml_scores", [])]
    assert entries and all(e["ml_score"] is None and "no model installed" in e["abstain"] for e in entries)
    key = lambda rs: [(d["strategy"], d["symbol"], d["approved"], d["rule"]) for r in rs for d in r["decisions"]]  # noqa: E731
    assert key(with_missing) == key(without)


def _tiny_scorer_model(tmp_path, sources=("oi_divergence",)):
    """A real CatBoost scorer trained on the real features of a few hundred real snapshots."""
    from hydra_engine.ml.scorer_model import ScorerModel
    from hydra_engine.ml.train import _platt_fit, fit_scorer, save_scorer, scorer_matrix
    from hydra_engine.ml.scorer_model import DissimilarityIndex
    m = _market()
    rows, y = [], []
    for k in range(300):
        now = datetime(2024, 1, 10, tzinfo=UTC) + timedelta(hours=k)
        snap = m.snapshot(now)
        rows.append([scorer_features(Signal(SYM, 0.5, 0.6, sources[0], now, timedelta(hours=6)), snap, now)[f]
                     for f in SCORER_BASE_FEATURES])
        y.append(k % 3 == 0)
    X, names = scorer_matrix(np.asarray(rows), [sources[0]] * len(rows), list(sources))
    y = np.asarray(y, dtype=int)
    model = fit_scorer(X, y, seed=1)
    a, b = _platt_fit(model.predict(X, prediction_type="Probability")[:, 1], y)
    meta = {"features": names, "sources": list(sources), "calibration": {"a": a, "b": b},
            "dissimilarity": DissimilarityIndex.fit(X, seed=1, n_ref=100).to_json()}
    path = tmp_path / "signal_scorer.cbm"
    card = {"data": {}, "folds": [], "holdout": {"name": "t", "train_n": 0, "metrics": {"calibration": []}},
            "baseline": [{"name": "t", "metrics": {"accuracy": 0}}], "coverage": {}, "importance": {}}
    save_scorer(model, meta, card, path)
    return ScorerModel.load(path), path


def test_an_unfamiliar_input_makes_the_scorer_abstain_with_the_reason(tmp_path):
    model, path = _tiny_scorer_model(tmp_path)
    now = datetime(2024, 1, 20, tzinfo=UTC)
    snap = _market().snapshot(now)
    base = scorer_features(Signal(SYM, 0.5, 0.6, "oi_divergence", now, timedelta(hours=6)), snap, now)
    p, why, di = model.predict(base, "oi_divergence")
    assert p is not None and 0 <= p <= 1 and why == "scored"
    weird = {**base, "funding_rate": 0.05, "price_vs_sma_20": 3.0, "rsi_14": 100.0, "atr_14": 0.9}
    p, why, di = model.predict(weird, "oi_divergence")
    assert p is None and why.startswith("unfamiliar input: dissimilarity") and di > model.di.threshold
    p, why, _ = model.predict(base, "never_seen_source")
    assert p is None and "was not in the training data" in why
    # in the cycle: the real plugin with that model abstains on the sources it never saw, reason in the trace
    from signals.ml_scorer import MLSignalScorer
    reports = _run(_session(tmp_path / "s", [MLSignalScorer({"model_path": str(path)})]))
    entries = [e for r in reports for e in r.get("ml_scores", [])]
    assert any(e["ml_score"] is not None for e in entries if e["source"] == "oi_divergence")
    others = [e for e in entries if e["source"] != "oi_divergence"]
    assert others and all(e["ml_score"] is None and "unfamiliar input" in e["abstain"] for e in others)


def test_the_classifier_labels_perp_regimes_when_installed_and_the_rule_when_not(tmp_path):
    from hydra_engine.app import install_regime_labeller
    from hydra_engine.ml.dataset import regime_rows
    from hydra_engine.ml.train import fit_classifier, save_classifier
    rs = regime_rows(None, [SYM], date(2024, 1, 15), date(2024, 2, 15), progress=False, market=_market())
    booster = fit_classifier(rs.X, rs.y, seed=2)
    path = tmp_path / "regime_classifier.json"
    from hydra_engine.ml.features import REGIME_FEATURES
    card = {"data": {}, "folds": [], "holdout": {"name": "t", "train_n": 0, "metrics": {"calibration": []}},
            "baseline": [{"name": "t", "metrics": {"accuracy": 0}}], "coverage": {}, "importance": {}}
    save_classifier(booster, {"features": list(REGIME_FEATURES), "classes": [c.value for c in CLASSES]}, card, path)
    snap = _market().snapshot(datetime(2024, 3, 5, tzinfo=UTC))
    on = make_settings(tmp_path, regime_model={"perp_labeller": "classifier", "model_path": str(path)})
    assert install_regime_labeller(on) == "perp_xgb_classifier_v1"
    regime, conf, why = perp_stats.perp_regime(snap, SYM)
    assert regime in CLASSES and 0 < conf <= 1 and why.startswith("classifier: next-24h")
    missing = make_settings(tmp_path, regime_model={"perp_labeller": "classifier", "model_path": str(tmp_path / "no.json")})
    assert install_regime_labeller(missing) == "perp_rule_v1"
    assert not perp_stats.perp_regime(snap, SYM)[2].startswith("classifier")
    assert install_regime_labeller(make_settings(tmp_path)) == "perp_rule_v1"   # the default: the rule
