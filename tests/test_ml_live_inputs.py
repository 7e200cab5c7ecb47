"""Issue #21 item 2: a paper session records every new signal's features from the first day (the live-only
ones included once a feed publishes them), even with the ML scorer not enabled, and they change no decision.

Through the real code against the HTTP Alpaca double (see tests/test_paper_stale_regime.py).
"""
from __future__ import annotations

from hydra_engine.ml.features import FEATURE_SET_ID, SCORER_BASE_FEATURES

from .test_fault_injection import double_env  # noqa: F401  (fixture)
from .test_paper_stale_regime import _run


def test_paper_records_signal_features_without_the_scorer_and_decides_the_same(tmp_path, monkeypatch, double_env):
    double, _ = double_env
    doc = _run(tmp_path, monkeypatch, double, spy_days_behind=0)
    first = doc["cycle_details"][0]
    scores = first["ml_scores"]
    assert [s["symbol"] for s in scores] == ["BTC/USD"]
    entry = scores[0]
    assert entry.get("ml_score") is None and "recording inputs only" in entry["abstain"]
    inputs = entry["inputs"]
    assert inputs["feature_set"] == FEATURE_SET_ID
    assert set(inputs) - {"feature_set"} <= set(SCORER_BASE_FEATURES) and "rsi_14" in inputs
    # the probe's signal is a new one each cycle (created now): each is recorded, none is scored
    later = [s for c in doc["cycle_details"][1:] for s in c.get("ml_scores", [])]
    assert len(later) == 2 and all(s["inputs"]["feature_set"] == FEATURE_SET_ID and s["ml_score"] is None
                                   for s in later)
    # no score, so the decision is the plugin's own (the stale-regime test's control buys the same way)
    assert [o["symbol"] for o in doc["orders"] if o["purpose"] == "entry"] == ["BTC/USD"]


def test_the_recorder_can_be_turned_off_and_the_config_hash_ignores_it(tmp_path, monkeypatch, double_env):
    from hydra_engine.config import Settings
    assert Settings().config_hash() == Settings(scorers={"record_inputs_live": False}).config_hash()
    double, _ = double_env
    monkeypatch.setenv("HYDRA_SCORERS__RECORD_INPUTS_LIVE", "false")
    doc = _run(tmp_path, monkeypatch, double, spy_days_behind=0)
    assert not any(c.get("ml_scores") for c in doc["cycle_details"])
