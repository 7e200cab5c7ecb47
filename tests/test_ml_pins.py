"""Pinned feature values and model outputs of the trained models (issue #21, the latency work).

``tests/fixtures/ml_pins.json`` holds every regime-classifier and signal-scorer feature, the classifier's
class probabilities and the scorer's calibrated probability and dissimilarity, computed on real shipped
snapshots (Binance perp klines, funding, Bybit open interest, Alpaca bars; ``data/``) at 40 times across
the half-year with the shipped models — captured with the code as it stood BEFORE the speed work
(commit 3cdbcd2). Any optimisation of ``hydra_engine/ml/features.py``, the classifier or the scorer must
reproduce them: features bit for bit (NaN where NaN), probabilities within 1e-12.

Regenerate only when a change is *meant* to change what the models compute (then retrain them):
``python -m tests.test_ml_pins --write``.
"""
from __future__ import annotations

import json
import math
import sys
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from hydra_engine.domain import UTC, Signal
from hydra_engine.ml.features import REGIME_FEATURES, SCORER_BASE_FEATURES, regime_features, scorer_features
from hydra_engine.perp import stats as perp_stats

ROOT = Path(__file__).resolve().parents[1]
PINS = ROOT / "tests" / "fixtures" / "ml_pins.json"
PERPS = ["BTCUSDT", "ETHUSDT"]
SYMBOLS = ["BTC/USD", "ETH/USD", "SPY", "GLD", *PERPS]
START = datetime(2024, 1, 3, 0, 0, tzinfo=UTC)
# 40 times 4 days 5 h 17 min apart: on the hour and between bar closes, every weekday and hour drift
TIMES = [START + k * timedelta(days=4, hours=5, minutes=17) for k in range(40)]
# (symbol, source, score, confidence): every kind of symbol, sources the scorer knows, and one it doesn't
SIGNALS = [("BTCUSDT", "oi_divergence", -0.5, 0.6), ("ETHUSDT", "funding_carry", 0.4, 0.7),
           ("BTC/USD", "risk_state", 0.3, 0.5), ("ETH/USD", "liquidation_reversal", 0.8, 0.9),
           ("SPY", "risk_state", -0.2, 0.4), ("GLD", "gs_ratio", 0.6, 0.55),
           ("BTCUSDT", "crowding_fade", 0.0, 0.3), ("SPY", "not_a_known_source", 0.5, 0.5)]


def _enc(x: float):
    """JSON-safe float: NaN/inf as strings; finite values round-trip exactly (repr)."""
    return x if math.isfinite(x) else repr(x)


def _dec(x) -> float:
    return float(x)


def compute_pins() -> dict:
    from hydra_engine.data.replay import ReplayMarketData
    from hydra_engine.ml.regime_classifier import ClassifierRegimeLabeller
    from hydra_engine.ml.scorer_model import ScorerModel
    market = ReplayMarketData(ROOT / "data", SYMBOLS, history_bars=500)
    clf = ClassifierRegimeLabeller.load(ROOT / "models" / "regime_classifier.json")
    scorer = ScorerModel.load(ROOT / "models" / "signal_scorer.cbm")
    out = {"regime": [], "scorer": []}
    for now in TIMES:
        snap = market.snapshot(now)
        for sym in PERPS:
            f = regime_features(snap, sym)
            row = np.array([f[k] for k in REGIME_FEATURES], dtype=float)
            p = clf.predict_proba(row[None, :])[0]
            lab = clf.label(perp_stats.perp_state(snap, sym), snap)
            out["regime"].append({"t": now.isoformat(), "symbol": sym, "features": [_enc(float(v)) for v in row],
                                  "proba": [float(v) for v in p], "label": lab[0].value if lab[0] else None,
                                  "confidence": float(lab[1]), "why": lab[2]})
        for sym, src, score, conf in SIGNALS:
            sig = Signal(sym, score, conf, src, now - timedelta(minutes=30), timedelta(hours=12))
            base = scorer_features(sig, snap, now)
            p, why, di = scorer.predict(base, src)
            out["scorer"].append({"t": now.isoformat(), "symbol": sym, "source": src,
                                  "features": [_enc(float(base[k])) for k in SCORER_BASE_FEATURES],
                                  "p": None if p is None else float(p), "why": why, "di": _enc(float(di))})
    return out


@pytest.fixture(autouse=True)
def _rule_labeller_after():
    yield
    perp_stats.set_regime_labeller(perp_stats.RuleRegimeLabeller())


def _same_features(got: list, want: list, what: str) -> None:
    g = np.array([_dec(x) for x in got])
    w = np.array([_dec(x) for x in want])
    bad = ~((g == w) | (np.isnan(g) & np.isnan(w)))
    assert not bad.any(), f"{what}: features differ at {np.flatnonzero(bad).tolist()}: {g[bad]} != {w[bad]}"


def test_features_and_predictions_match_the_pins_captured_before_the_speed_work():
    want = json.loads(PINS.read_text())
    got = compute_pins()
    assert len(got["regime"]) == len(want["regime"]) == 80 and len(got["scorer"]) == len(want["scorer"]) == 320
    # the pins are not vacuous: the real data gives most features, the models answer
    assert sum(np.isfinite([_dec(x) for x in want["regime"][-1]["features"]])) >= 18
    assert sum(r["p"] is not None for r in want["scorer"]) > 100
    for g, w in zip(got["regime"], want["regime"]):
        what = f"regime {w['symbol']} {w['t']}"
        _same_features(g["features"], w["features"], what)
        assert np.allclose(g["proba"], w["proba"], rtol=0, atol=1e-12), what
        assert (g["label"], g["why"]) == (w["label"], w["why"]) and abs(g["confidence"] - w["confidence"]) <= 1e-12, what
    for g, w in zip(got["scorer"], want["scorer"]):
        what = f"scorer {w['symbol']} {w['source']} {w['t']}"
        _same_features(g["features"], w["features"], what)
        assert g["why"] == w["why"], what
        assert (g["p"] is None) == (w["p"] is None), what
        if w["p"] is not None:
            assert abs(g["p"] - w["p"]) <= 1e-12, what
        gd, wd = _dec(g["di"]), _dec(w["di"])
        assert (math.isnan(gd) and math.isnan(wd)) or abs(gd - wd) <= 1e-12, what



# --------------------------------------------------------------------------- the fast paths against their definitions
def _scorer():
    from hydra_engine.ml.scorer_model import ScorerModel
    return ScorerModel.load(ROOT / "models" / "signal_scorer.cbm")


def _hard_rows(sm, seed: int = 0) -> np.ndarray:
    """Training-like rows (the DI reference un-standardised), near-duplicates of them, far and NaN-heavy rows,
    huge values and infinities."""
    d, n = sm.di, len(sm.names)
    rng = np.random.default_rng(seed)
    base = np.full((len(d.reference), n), np.nan)
    base[:, d.columns] = d.reference * d.std + d.mean
    noisy = rng.normal(0, 3, (1500, n))
    noisy[rng.random(noisy.shape) < 0.3] = np.nan
    rows = np.vstack([base[::3], base[::7] * (1 + rng.normal(0, 1e-9, (len(base[::7]), n))),
                      base[::5] * (1 + rng.normal(0, 0.1, (len(base[::5]), n))), noisy,
                      rng.normal(0, 1e6, (100, n)), rng.normal(0, 1e40, (20, n))])
    rows[5, d.columns[0]], rows[6, d.columns[1]] = np.inf, -np.inf
    return rows


def test_the_tree_evaluator_is_catboost_bit_for_bit_and_catboost_answers_where_it_is_not(monkeypatch):
    from hydra_engine.ml import scorer_model
    sm = _scorer()
    assert sm.trees is not None and sm.fast_path_note == "exact tree evaluator"
    X = _hard_rows(sm)
    with np.errstate(all="ignore"):
        want = sm.model.predict(X, prediction_type="Probability", thread_count=1)[:, 1]
    got = np.array([sm.raw(x[None, :])[0] for x in X])
    assert np.array_equal(got, want)
    # an evaluator that is off by one ulp anywhere on the load-time check rows is not used
    real = scorer_model.ObliviousTrees.probability
    monkeypatch.setattr(scorer_model.ObliviousTrees, "probability",
                        lambda self, row: np.nextafter(real(self, row), 2.0))
    off = _scorer()
    assert off.trees is None and "differed" in off.fast_path_note
    assert np.array_equal(off.raw(X[:1]), want[:1])


def test_the_pruned_dissimilarity_is_the_direct_sum_bit_for_bit():
    sm = _scorer()
    X = _hard_rows(sm, seed=1)
    with np.errstate(all="ignore"):
        want = np.array([sm.di.di_reference(x) for x in X])
    got = np.array([sm.di.di(x) for x in X])
    assert np.array_equal(got, want)
    assert np.isinf(got[5]) and (got[:500] < sm.di.threshold).mean() > 0.9   # the reference rows are familiar


def test_the_row_by_index_is_vectorise():
    from hydra_engine.ml.features import vectorise
    sm = _scorer()
    for r in json.loads(PINS.read_text())["scorer"][:60]:
        base = dict(zip(SCORER_BASE_FEATURES, [_dec(x) for x in r["features"]]))
        for src in (r["source"], "risk_state", "never_seen"):
            assert np.array_equal(sm.row(base, src), vectorise(base, src, sm.names), equal_nan=True)


def test_mean_and_std_are_numpys_bit_for_bit():
    from hydra_engine.ml.features import _mean, _std
    rng = np.random.default_rng(0)
    for n in [*range(1, 120), 168, 476, 500]:
        for scale in (1e-6, 1.0, 3e4, 1e9):
            x = rng.normal(5, 1, n) * scale
            for v in (x, x[::2], np.log1p(np.abs(x))):
                assert _mean(v) == np.mean(v) and _std(v) == np.std(v), (n, scale)
    assert _mean(np.arange(5)) == np.mean(np.arange(5))          # other dtypes: numpy's own


if __name__ == "__main__":
    if "--write" not in sys.argv:
        raise SystemExit("python -m tests.test_ml_pins --write  (overwrites tests/fixtures/ml_pins.json)")
    PINS.write_text(json.dumps(compute_pins(), separators=(",", ":")) + "\n")
    print(f"wrote {PINS}")
