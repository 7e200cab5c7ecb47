"""Recorded regime rows as a training source of the regime classifier (issue #21 items 2 and 5,
hydra_engine/ml/recorded_regime.py): the forecasts the classifier monitor resolved (their features and the
realised window's rule label) read back from the journals, strictly before the retraining time, and trained
on by the paper retrain; and both monitors' state across a restart.

The journals are real: two consecutive sim sessions over the shipped data (Binance perp klines, funding,
Bybit OI; January 2024) with the shipped classifier (models/regime_classifier.json) as the perp labeller."""
from __future__ import annotations

import json
import math
import shutil
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from hydra_engine.domain import UTC
from hydra_engine.ml import loop as L
from hydra_engine.ml.features import REGIME_FEATURES
from hydra_engine.ml.labels import CLASSES
from hydra_engine.ml.recorded_regime import REGIME_FEATURE_SET_ID, merge_regime, recorded_regime_rows
from hydra_engine.perp import stats as perp_stats

from .conftest import SHIPPED_DATA, make_settings
from .test_ml_models import _market

MODEL = Path(__file__).resolve().parents[1] / "models" / "regime_classifier.json"
UNTIL = datetime(2024, 1, 12, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _rule_labeller_after():
    yield
    perp_stats.set_regime_labeller(perp_stats.RuleRegimeLabeller())   # the labeller is process-global


def _settings(root: Path, start: str, end: str, **regime):
    return make_settings(root, start=start, end=end, symbols=("BTC/USD", "ETH/USD", "SPY"), perps={"enabled": True},
                         strategies={"enabled": ["oi_divergence"]}, observation_cycles=5,
                         regime_model={"perp_labeller": "classifier", "model_path": str(MODEL),
                                       "monitor_every_hours": 1, **regime})


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    """Two consecutive real sim sessions (Jan 1-5 and Jan 5-12, 2024) journaled in one log folder."""
    from hydra_engine.app import build_sim_session, run_session
    root = tmp_path_factory.mktemp("recorded_regime")
    journals = []
    for start, end in (("2024-01-01", "2024-01-05"), ("2024-01-05", "2024-01-12")):
        session = build_sim_session(_settings(root, start, end), mode="sim")
        journals.append(Path(run_session(session, progress=False)["journal"]))
    perp_stats.set_regime_labeller(perp_stats.RuleRegimeLabeller())
    return root / "logs", journals


def _records(journal: Path) -> list[dict]:
    return [e for x in journal.read_text().splitlines() if x.strip()
            for e in (json.loads(x).get("ml_regime_monitor") or [])]


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for doc in sorted(src.glob("session-*.json")):
        shutil.copy(doc, dst / doc.name)
        shutil.copy(src / f"{doc.stem}.cycles.jsonl", dst / f"{doc.stem}.cycles.jsonl")
    return dst


def test_each_resolved_forecast_records_its_features_and_the_rows_equal_the_replays(logs):
    from hydra_engine.ml.dataset import regime_rows
    log_dir, journals = logs
    recs = [e for j in journals for e in _records(j)]
    assert len(recs) > 100 and all(e["inputs"]["feature_set"] == REGIME_FEATURE_SET_ID for e in recs)
    rec = recorded_regime_rows(log_dir, UNTIL)
    assert rec.counts["sessions_read"] == 2 and len(rec.rows) > 100
    # each session's first day of forecasts has no record of the window before them (the first session's
    # last day of forecasts was still waiting when it ended): left out, counted
    assert rec.counts["no_previous_window"] >= 2 * 2 * 20
    assert min(r["t"] for r in rec.rows).date() == date(2024, 1, 2)
    assert not any(r["t"].date() == date(2024, 1, 5) for r in rec.rows)
    assert any(r["t"].date() == date(2024, 1, 6) for r in rec.rows)
    # the same rows by the training pipeline's replay (the data folder holds every series the live loop saw)
    rs = regime_rows(SHIPPED_DATA, ["BTCUSDT", "ETHUSDT"], date(2023, 12, 25), UNTIL.date(), progress=False)
    at = {(s, int(t)): k for k, (s, t) in enumerate(zip(rs.symbols, rs.t))}
    for r in rec.rows:
        k = at[(r["symbol"], int(r["t"].timestamp()))]
        row = np.array([r["features"].get(f, math.nan) for f in REGIME_FEATURES])
        assert np.array_equal(row, rs.X[k], equal_nan=True), (r["symbol"], r["t"])
        assert (r["y"], r["y_now"]) == (int(rs.y[k]), int(rs.y_now[k])), (r["symbol"], r["t"])
        assert r["label_end"] == r["t"] + timedelta(hours=24) <= UNTIL


def test_rows_whose_window_ends_after_the_retrain_time_are_left_out(logs):
    log_dir, _ = logs
    full = recorded_regime_rows(log_dir, UNTIL)
    cut = datetime(2024, 1, 8, 6, tzinfo=UTC)
    early = recorded_regime_rows(log_dir, cut)
    assert 0 < len(early.rows) < len(full.rows)
    assert all(r["label_end"] <= cut for r in early.rows)
    assert {(r["symbol"], r["t"]) for r in early.rows} <= {(r["symbol"], r["t"]) for r in full.rows}


def test_other_columns_corrupt_lines_and_a_backtest_give_notes_and_no_crash(logs, tmp_path):
    log_dir, _ = logs
    d = _copy(log_dir, tmp_path / "logs")
    docs = sorted(d.glob("session-*.json"))
    first = d / f"{docs[0].stem}.cycles.jsonl"
    lines = first.read_text().splitlines()
    changed = []
    for x in lines:
        c = json.loads(x)
        for e in c.get("ml_regime_monitor") or []:
            e["inputs"]["feature_set"] = "0123456789ab"
        changed.append(json.dumps(c))
    first.write_text("\n".join(changed + ["{not json", ""]))
    doc = json.loads(docs[1].read_text())
    doc["session"]["mode"] = "backtest"
    docs[1].write_text(json.dumps(doc))
    rec = recorded_regime_rows(d, UNTIL)
    assert rec.rows == [] and rec.counts["sessions_other_columns"] == 1 and rec.counts["sessions_other_mode"] == 1
    assert any("other feature columns" in n for n in rec.notes) and any("corrupt" in n for n in rec.notes)


def test_the_paper_classifier_retrain_trains_on_the_replay_plus_the_recorded_rows(logs, tmp_path):
    from hydra_engine.ml.dataset import regime_rows
    log_dir, _ = logs
    s = _settings(tmp_path, "2024-01-01", "2024-01-12")
    rs = regime_rows(SHIPPED_DATA, ["BTCUSDT", "ETHUSDT"], date(2023, 11, 1), UNTIL.date(), step_h=2, progress=False)
    rec = recorded_regime_rows(log_dir, UNTIL)
    merged, meta = merge_regime(rs, rec)
    assert meta["rows_by_origin"]["recorded"] == len(rec.rows) > 0
    # recorded hourly rows replace the replay's even-hour rows of the same time and add the odd hours
    replaced = meta["replay_rows_replaced_by_recorded"]
    assert 0 < replaced < len(rec.rows) and len(merged.y) == len(rs.y) - replaced + len(rec.rows)
    assert np.all(np.diff(merged.t) >= 0) and set(merged.y) <= set(range(len(CLASSES)))
    labeller, card, path = L.retrain_classifier(s, SHIPPED_DATA, date(2023, 11, 1), UNTIL.date(), seed=3,
                                                save_dir=tmp_path / "models", journals=log_dir)
    assert card["data"]["rows_by_origin"] == meta["rows_by_origin"]
    assert "recorded by the running loop" in card["summary"] and path.is_file()
    assert card["data"]["rows"] == len(merged.y) and labeller.booster is not None
    plain, card0, _ = L.retrain_classifier(s, SHIPPED_DATA, date(2023, 11, 1), UNTIL.date(), seed=3)
    assert "rows_by_origin" not in card0["data"] and card0["data"]["rows"] == len(rs.y)


def test_only_paper_and_live_classifier_retrains_read_the_journals(tmp_path, monkeypatch):
    from hydra_engine import app as A
    seen = []
    monkeypatch.setattr(L, "retrain_classifier", lambda *a, **k: seen.append(k.get("journals")) or (_ for _ in ()).throw(
        ValueError("stop")))
    for mode, expect in (("backtest", None), ("paper", tmp_path / "logs")):
        s = _settings(tmp_path, "2024-01-01", "2024-01-03", retrain_every_days=7)

        class _E:   # the engine's seams attach_ml_loop uses
            scorers, cycle_hooks, cycle_end_hooks, summary_sections, state_sections = [], [], [], {}, {}
            session_log = None
        attached = L.attach_ml_loop(_E(), s, mode=mode, data_dir=SHIPPED_DATA, log_dir=tmp_path / "logs")
        rt = next(a for a in attached if isinstance(a, L.ModelRetrainer))
        assert "ml_regime_monitor" in _E.state_sections and "ml_regime_retrain" in _E.state_sections
        try:
            rt.train(date(2024, 1, 2))
        except ValueError:
            pass
        assert seen[-1] == expect
    assert A is not None


# --------------------------------------------------------------------------- restart: the monitors' state
class _Forecaster:
    """A classifier stand-in with the real deferred-forecast seam: features now, prediction when read."""

    def __init__(self):
        from hydra_engine.ml.regime_classifier import ClassifierRegimeLabeller
        self.real = ClassifierRegimeLabeller.load(MODEL)
        self.booster, self.features = self.real.booster, self.real.features

    def forecast_later(self, market, symbol, state_fn):
        return self.real.forecast_later(market, symbol, state_fn)


def test_the_classifier_monitor_goes_on_across_a_restart_as_if_never_stopped(tmp_path):
    m = _market()
    t0 = datetime(2024, 2, 1, tzinfo=UTC)
    lab = _Forecaster()
    whole = L.ClassifierMonitor(["BTCUSDT", "ETHUSDT"], window=30, labeller_fn=lambda: lab.real)
    first = L.ClassifierMonitor(["BTCUSDT", "ETHUSDT"], window=30, labeller_fn=lambda: lab.real)
    a, b = [], []
    for h in range(70):
        now = t0 + timedelta(hours=h)
        snap = m.snapshot(now)
        ra, rb = {"notes": []}, {"notes": []}
        whole(now, snap, ra)
        if h == 40:   # a restart: a new monitor from the stored state (through JSON, as the store keeps it)
            state = json.loads(json.dumps(first.to_state()))
            first = L.ClassifierMonitor(["BTCUSDT", "ETHUSDT"], window=30, labeller_fn=lambda: lab.real)
            first.load_state(state)
        first(now, snap, rb)
        a.append(ra.get("ml_regime_monitor"))
        b.append(rb.get("ml_regime_monitor"))
    assert sum(len(x or []) for x in a) > 60 and a == b
    assert whole.summary() == first.summary() and first.resolved == whole.resolved > first.window
    assert len(first.pairs) == first.window


def test_the_daily_monitor_records_the_hourly_monitors_midnight_forecasts_on_disjoint_windows():
    """``monitor_every_hours = 24`` (the default): one forecast a day per symbol, at the bar closing 00:00
    UTC; each record is the hourly monitor's record of the same forecast (forecast, realised label,
    inputs), and no two windows of a symbol overlap."""
    m = _market()
    t0 = datetime(2024, 2, 1, 5, tzinfo=UTC)
    lab = _Forecaster()
    hourly = L.ClassifierMonitor(["BTCUSDT", "ETHUSDT"], labeller_fn=lambda: lab.real)
    daily = L.ClassifierMonitor(["BTCUSDT", "ETHUSDT"], labeller_fn=lambda: lab.real, every_hours=24)
    got_h, got_d = [], []
    for h in range(24 * 5):
        now = t0 + timedelta(hours=h)
        snap = m.snapshot(now)
        rh, rd = {"notes": []}, {"notes": []}
        hourly(now, snap, rh)
        daily(now, snap, rd)
        got_h += rh.get("ml_regime_monitor", [])
        got_d += rd.get("ml_regime_monitor", [])
    assert len(got_d) == 2 * 4   # forecasts at Feb 2, 3, 4, 5 00:00 resolved by Feb 6 05:00 (Feb 1 05:00 start)
    assert {datetime.fromisoformat(e["forecast_at"]).hour for e in got_d} == {0}
    keep = ("symbol", "forecast_at", "forecast", "realised", "correct", "inputs")
    by_key = {(e["symbol"], e["forecast_at"]): {k: e.get(k) for k in keep} for e in got_h}
    assert all({k: e.get(k) for k in keep} == by_key[(e["symbol"], e["forecast_at"])] for e in got_d)
    for sym in ("BTCUSDT", "ETHUSDT"):
        starts = sorted(datetime.fromisoformat(e["forecast_at"]) for e in got_d if e["symbol"] == sym)
        assert all(b - a >= timedelta(hours=24) for a, b in zip(starts, starts[1:]))
    assert got_d[-1]["resolved"] == len(got_d) and daily.summary()["resolved"] == len(got_d)
    with pytest.raises(ValueError, match="monitor_every_hours must divide 24"):
        L.ClassifierMonitor(["BTCUSDT"], every_hours=5)


def test_monitor_every_hours_must_divide_a_day(tmp_path):
    with pytest.raises(Exception, match="monitor_every_hours"):
        make_settings(tmp_path, regime_model={"monitor_every_hours": 5})
    assert make_settings(tmp_path).regime_model.monitor_every_hours == 24


def test_the_scorer_monitor_goes_on_across_a_restart(tmp_path):
    t0 = datetime(2024, 2, 1, tzinfo=UTC)
    mon = L.ScorerMonitor(window=5)
    rep = {"proposals": [{"strategy": "s", "symbol": "X", "ml_score": 0.7}],
           "decisions": [{"strategy": "s", "symbol": "X", "approved": True}], "notes": []}
    mon(None, rep, [], t0)
    for i in range(3):
        mon(None, {"notes": []}, [{"strategy": "s", "symbol": "X", "pnl_usd": "1"}], t0 + timedelta(hours=i + 1))
        mon(None, rep, [], t0 + timedelta(hours=i + 1))
    restored = L.ScorerMonitor(window=5)
    restored.load_state(json.loads(json.dumps(mon.to_state())))
    assert restored.pairs == mon.pairs and restored.pending == mon.pending and restored.summary() == mon.summary()
    out_a, out_b = {"notes": []}, {"notes": []}
    close = [{"strategy": "s", "symbol": "X", "pnl_usd": "-2"}]
    mon(None, out_a, close, t0 + timedelta(hours=9))
    restored(None, out_b, close, t0 + timedelta(hours=9))
    assert out_a == out_b and out_a["ml_monitor"][0]["scored_trades"] == 4
