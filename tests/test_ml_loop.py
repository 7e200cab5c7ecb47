"""The trained models inside the loop (issue #21, hydra_engine/ml/loop.py): live monitoring of predictions
against outcomes in the cycle report / journal / summary, and scheduled retraining on data strictly
before the cycle — on the shipped real data (Binance perp klines, funding, Bybit OI)."""
from __future__ import annotations

import json
import threading
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from hydra_engine.domain import UTC
from hydra_engine.ml import loop as L
from hydra_engine.perp import stats as perp_stats

from .conftest import SHIPPED_DATA, make_settings
from .test_ml_models import SYM, _FixedModel, _market, _scramble_after


@pytest.fixture(autouse=True)
def _rule_labeller_after():
    yield
    perp_stats.set_regime_labeller(perp_stats.RuleRegimeLabeller())   # the labeller is process-global


class _DatedModel(_FixedModel):
    """A fixed-probability model that says, as a real sidecar does, the span it was trained on."""

    def __init__(self, p, end: date):
        super().__init__(p)
        self.meta = {"trained": {"start": "2021-01-01", "end": end.isoformat()}}


# --------------------------------------------------------------------------- monitoring
def _report(proposals=(), decisions=()):
    return {"proposals": list(proposals), "decisions": list(decisions), "notes": []}


def test_a_closed_scored_trade_records_prediction_outcome_and_rolling_figures_with_drift_alerts():
    mon = L.ScorerMonitor(window=50)
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    for k in range(12):   # each: entered scored 0.85 one cycle, closed the next; only every 4th one wins
        sym = f"S{k}"
        mon(None, _report([{"strategy": "a", "symbol": sym, "ml_score": 0.85}],
                          [{"strategy": "a", "symbol": sym, "approved": True}]), [], t0 + timedelta(hours=2 * k))
        closed = _report()
        mon(None, closed, [{"strategy": "a", "symbol": sym, "pnl_usd": "5" if k % 4 == 0 else "-3",
                            "entry_time": (t0 + timedelta(hours=2 * k)).isoformat()}], t0 + timedelta(hours=2 * k + 1))
        rec = closed["ml_monitor"][0]
        assert rec["ml_score"] == 0.85 and rec["predicted_win"] is True and rec["won"] is (k % 4 == 0)
        assert rec["scored_trades"] == k + 1 and rec["accuracy"] == round(sum(j % 4 == 0 for j in range(k + 1)) / (k + 1), 4)
    # 12 trades, accuracy 0.25 < 0.60; the 0.8-0.9 bucket (12 > 10 trades) observed 0.25 vs 0.85
    assert [b for b in rec["buckets"] if b["bucket"] == "0.8-0.9"] == [{"bucket": "0.8-0.9", "n": 12, "observed": 0.25}]
    assert any("accuracy 0.25" in n for n in closed["notes"]) and any("calibration drift in 0.8-0.9" in n for n in closed["notes"])
    assert mon.summary()["scored_trades"] == 12
    # an unscored or refused entry, and a close without a scored entry, record nothing
    other = _report([{"strategy": "b", "symbol": "X"}], [{"strategy": "b", "symbol": "X", "approved": True}])
    mon(None, other, [{"strategy": "c", "symbol": "Y", "pnl_usd": "1"}], t0 + timedelta(days=2))
    assert "ml_monitor" not in other and mon.pending.get(("b", "X")) is None


def test_the_classifier_monitor_compares_forecasts_with_the_rule_label_of_the_closed_window():
    from hydra_engine.ml.labels import regime_label
    from hydra_engine.perp.stats import PerpRegime

    class Forecaster:
        booster = object()

        def label(self, state, market):
            return PerpRegime.RANGING, 0.7, "classifier: next-24h ranging p=0.70"

    mon = L.ClassifierMonitor([SYM], labeller_fn=lambda: Forecaster())
    m = _market()
    t0 = datetime(2024, 2, 1, tzinfo=UTC)
    reports = []
    for h in range(60):
        now = t0 + timedelta(hours=h)
        r = _report()
        mon(now, m.snapshot(now), r)
        reports.append((now, r))
    resolved = [e for _, r in reports for e in r.get("ml_regime_monitor", [])]
    assert len(resolved) >= 30           # each forecast resolves once its 24 h window has closed, not before
    for now, r in reports:
        for e in r.get("ml_regime_monitor", []):
            at = datetime.fromisoformat(e["forecast_at"])
            assert at + timedelta(hours=24) <= now
            assert e["realised"] == regime_label(m.snapshot(now), SYM, at).value and e["forecast"] == "RANGING"
    assert resolved[-1]["resolved"] == len(resolved)
    assert resolved[-1]["accuracy"] == round(np.mean([e["correct"] for e in resolved[-50:]]), 4)
    # the rule labeller is not a forecast: nothing is recorded
    quiet = L.ClassifierMonitor([SYM], labeller_fn=perp_stats.RuleRegimeLabeller)
    r = _report()
    quiet(t0, m.snapshot(t0), r)
    assert not quiet.forecasts and "ml_regime_monitor" not in r


def _scorer_settings(tmp_path, **scorers):
    return make_settings(tmp_path, start="2024-01-01", end="2024-02-01", symbols=("BTC/USD", "ETH/USD", "SPY"),
                         perps={"enabled": True}, strategies={"enabled": ["oi_divergence", "liquidation_reversal"]},
                         observation_cycles=5,
                         scorers={"enabled": ["ml_signal_scorer"], "params": {"ml_signal_scorer": {
                             "model_path": str(tmp_path / "absent.cbm")}}, **scorers})


def test_the_session_log_and_summary_carry_the_scorer_monitoring(tmp_path):
    from hydra_engine.app import build_sim_session, run_session
    session = build_sim_session(_scorer_settings(tmp_path), mode="backtest")
    scorer = session.engine.scorers[0]
    scorer.model = _FixedModel(0.8)
    summary = run_session(session, progress=False)
    lines = [json.loads(x) for x in Path(summary["journal"]).read_text().splitlines()]
    records = [e for c in lines for e in (c.get("ml_monitor") or [])]
    assert summary["closed_trades"] > 0 and records
    assert len(records) == summary["ml_scorer_monitor"]["scored_trades"]
    last = records[-1]
    assert last["ml_score"] == 0.8 and last["predicted_win"] is True and isinstance(last["won"], bool)
    assert summary["ml_scorer_monitor"]["accuracy"] == last["accuracy"]


# --------------------------------------------------------------------------- the retraining schedule
def _retrainer(model_box, trained, fail_on=(), background=False, gate=None):
    def train(end):
        trained.append(end)
        if gate is not None:
            gate.wait(5)
        if end in fail_on:
            raise ValueError(f"no rows before {end}")
        return _DatedModel(0.6 + len(trained) / 100, end), {"holdout": {"metrics": {"accuracy": 0.5}},
                                                           "data": {"span": f"x .. {end}", "rows": 10}}
    def install(m):
        model_box[0] = m
    def aside(why):
        model_box[0] = None
    return L.ModelRetrainer("signal_scorer", timedelta(days=7), lambda: model_box[0], train, install, aside,
                            background=background)


def test_the_schedule_fires_at_the_first_cycle_then_every_period_on_data_before_the_cycle():
    box = [_DatedModel(0.5, date(2025, 1, 1))]   # the shipped model: trained past this backtest's start
    trained: list[date] = []
    rt = _retrainer(box, trained)
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    notes = []
    for h in range(0, 24 * 22, 6):
        now = t0 + timedelta(hours=h)
        r = _report()
        rt(now, None, r)
        notes += r["notes"]
        assert trained[-1] <= now.date()                  # never data of the cycle's day or later
        assert box[0].meta["trained"]["end"] <= now.date().isoformat()
    assert trained == [date(2024, 1, 1), date(2024, 1, 8), date(2024, 1, 15), date(2024, 1, 22)]
    assert notes[0].startswith("signal_scorer retrained on x .. 2024-01-01") and "held-out tail accuracy 0.5" in notes[0]
    assert [h["ok"] for h in rt.history] == [True] * 4


def test_a_failed_retrain_keeps_the_old_model_or_sets_aside_one_trained_on_the_future():
    past = _DatedModel(0.5, date(2023, 6, 1))
    box, trained = [past], []
    rt = _retrainer(box, trained, fail_on={date(2024, 1, 1)})
    r = _report()
    rt(datetime(2024, 1, 1, tzinfo=UTC), None, r)
    assert box[0] is past and r["ml_retrain"][0]["ok"] is False
    assert r["notes"] == ["signal_scorer retrain failed (ValueError: no rows before 2024-01-01): keeping the current model"]
    future = _DatedModel(0.5, date(2025, 1, 1))
    box, trained = [future], []
    rt = _retrainer(box, trained, fail_on={date(2024, 1, 1)})
    r = _report()
    rt(datetime(2024, 1, 1, 3, tzinfo=UTC), None, r)
    assert box[0] is None and r["ml_retrain"][0]["set_aside"] is True and "set aside" in r["notes"][0]
    rt(datetime(2024, 1, 1, 9, tzinfo=UTC), None, _report())
    assert trained == [date(2024, 1, 1)]                  # tried again the next day, not every cycle
    rt(datetime(2024, 1, 2, 0, tzinfo=UTC), None, r2 := _report())
    assert trained == [date(2024, 1, 1), date(2024, 1, 2)] and box[0].meta["trained"]["end"] == "2024-01-02"
    assert "retrained" in r2["notes"][0]


def test_in_paper_the_retrain_runs_on_a_thread_and_is_swapped_in_between_cycles():
    old = _DatedModel(0.5, date(2023, 12, 1))
    box, trained, gate = [old], [], threading.Event()
    rt = _retrainer(box, trained, background=True, gate=gate)
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    r = _report()
    rt(t0, None, r)                                       # due (31 days old): started, the cycle goes on
    assert box[0] is old and "started in the background" in r["notes"][0]
    rt(t0 + timedelta(minutes=1), None, r := _report())
    assert box[0] is old and not r["notes"]               # still training: the old model scores
    gate.set()
    rt.wait(5)
    assert box[0] is old                                  # finished, but nothing swaps mid-cycle
    rt(t0 + timedelta(minutes=2), None, r := _report())
    assert box[0] is not old and box[0].meta["trained"]["end"] == "2024-01-01"
    assert r["ml_retrain"][0]["ok"] and "retrained" in r["notes"][0]


def test_in_a_backtest_the_scorer_is_retrained_in_the_loop_and_its_scores_change(tmp_path, monkeypatch):
    from hydra_engine.app import build_sim_session
    calls: list[tuple[date, date]] = []

    def fake(settings, data_dir, start, end, **kw):
        calls.append((start, end))
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return _DatedModel(0.5 + len(calls) / 20, end), {"holdout": {"metrics": {"accuracy": 0.6}},
                                                         "data": {"span": f"{start} .. {end}", "rows": 99}}, None
    monkeypatch.setattr(L, "retrain_scorer", fake)
    session = build_sim_session(_scorer_settings(tmp_path, retrain_every_days=10, retrain_start="2023-06-01"),
                                mode="backtest")
    session.engine.scorers[0].model = _DatedModel(0.9, date(2025, 1, 1))
    seen = []
    for now in session.clock.ticks:
        rep = session.engine.run_cycle(now)
        seen += [(now, e["ml_score"]) for e in rep.get("ml_scores", []) if e["ml_score"] is not None]
    summary = session.engine.summary()
    assert calls == [(date(2023, 6, 1), date(2024, 1, 1)), (date(2023, 6, 1), date(2024, 1, 11)),
                     (date(2023, 6, 1), date(2024, 1, 21)), (date(2023, 6, 1), date(2024, 1, 31))]
    assert [r["ok"] for r in summary["ml_scorer_retrains"]] == [True, True, False, True]
    assert 0.9 not in {p for _, p in seen}                 # the future-trained model never scored a signal
    assert {round(p, 2) for now, p in seen if now < datetime(2024, 1, 11, tzinfo=UTC)} == {0.55}
    assert {round(p, 2) for now, p in seen if datetime(2024, 1, 11, tzinfo=UTC) <= now < datetime(2024, 1, 31, tzinfo=UTC)} == {0.6}
    assert {round(p, 2) for now, p in seen if now >= datetime(2024, 1, 31, tzinfo=UTC)} <= {0.7}


def test_a_retrained_scorer_cannot_see_data_after_the_retraining_time(tmp_path, monkeypatch):
    """The real pipeline (a replay, labels, CV, CatBoost, calibration): scrambling every bar and published
    point after the retraining time leaves the retrained model's predictions identical."""
    from hydra_engine.config import PROJECT_ROOT, load_settings
    from hydra_engine.data import replay as R
    cut = datetime(2024, 2, 15, tzinfo=UTC)
    settings = load_settings(PROJECT_ROOT / "hydra.toml")   # every shipped plugin: enough signals of both outcomes
    mine = perp_stats.RuleRegimeLabeller()
    perp_stats.set_regime_labeller(mine)
    clean, _, _ = L.retrain_scorer(settings, SHIPPED_DATA, date(2024, 1, 1), cut.date(), seed=3)
    assert perp_stats._LABELLER is mine and not L.in_training_replay()   # the session's labeller, untouched
    real_close = _market().snapshot(cut + timedelta(days=5)).closes[SYM]
    real_init = R.ReplayMarketData.__init__

    def scrambled_init(self, *a, **kw):
        real_init(self, *a, **kw)
        _scramble_after(self, cut)
    monkeypatch.setattr(R.ReplayMarketData, "__init__", scrambled_init)
    probe = R.ReplayMarketData(SHIPPED_DATA, [SYM], history_bars=500)
    assert probe.snapshot(cut + timedelta(days=5)).closes[SYM] != real_close
    dirty, _, _ = L.retrain_scorer(settings, SHIPPED_DATA, date(2024, 1, 1), cut.date(), seed=3)
    assert clean.meta["trained"] == dirty.meta["trained"] and clean.meta["trained"]["rows"] > 100
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, len(clean.names)))
    assert np.array_equal(clean.calibrated(X), dirty.calibrated(X))
    assert clean.meta["calibration"] == dirty.meta["calibration"]


def test_the_classifier_is_retrained_in_the_loop_installed_as_the_labeller_and_monitored(tmp_path, monkeypatch):
    from hydra_engine.app import build_sim_session
    from hydra_engine.perp.stats import PerpRegime
    calls: list[date] = []

    class Forecaster:
        booster = object()

        def __init__(self, end):
            self.meta = {"trained": {"end": end.isoformat()}}

        def label(self, state, market):
            return PerpRegime.RANGING, 0.6, "classifier: next-24h RANGING p=0.60"

    def fake(settings, data_dir, start, end, **kw):
        calls.append(end)
        return Forecaster(end), {"holdout": {"metrics": {"accuracy": 0.5}}, "data": {"span": f"{start} .. {end}"}}, None
    monkeypatch.setattr(L, "retrain_classifier", fake)
    s = make_settings(tmp_path, start="2024-01-01", end="2024-01-20", perps={"enabled": True},
                      strategies={"enabled": ["oi_divergence"]}, observation_cycles=5,
                      regime_model={"perp_labeller": "classifier", "model_path": str(tmp_path / "none.json"),
                                    "retrain_every_days": 7})
    session = build_sim_session(s, mode="backtest")
    assert getattr(perp_stats._LABELLER, "booster", None) is None     # no model file: the rule labels
    reports = [session.engine.run_cycle(now) for now in session.clock.ticks]
    assert calls == [date(2024, 1, 1), date(2024, 1, 8), date(2024, 1, 15)]
    assert isinstance(perp_stats._LABELLER, Forecaster) and perp_stats._LABELLER.meta["trained"]["end"] == "2024-01-15"
    resolved = [e for r in reports for e in r.get("ml_regime_monitor", [])]
    assert resolved and all(e["forecast"] == "RANGING" for e in resolved)
    summary = session.engine.summary()
    assert summary["ml_regime_monitor"]["resolved"] == len(resolved)
    assert [r["ok"] for r in summary["ml_regime_retrains"]] == [True, True, True]


def test_a_failed_retrain_of_a_future_trained_scorer_falls_back_to_no_scorer(tmp_path, monkeypatch):
    """Both ways: the scorer set aside abstains on every signal, with the reason, and every decision is the
    one the engine makes without a scorer; the schedule tries again the next day, not every cycle."""
    from hydra_engine.app import build_sim_session
    calls: list[date] = []

    def failing(settings, data_dir, start, end, **kw):
        calls.append(end)
        raise ValueError("no labelled signals")
    monkeypatch.setattr(L, "retrain_scorer", failing)
    on = build_sim_session(_scorer_settings(tmp_path / "on", retrain_every_days=7), mode="backtest")
    on.engine.scorers[0].model = _DatedModel(0.9, date(2025, 1, 1))
    with_failed = [on.engine.run_cycle(now) for now in on.clock.ticks]
    off = build_sim_session(make_settings(tmp_path / "off", start="2024-01-01", end="2024-02-01",
                                          perps={"enabled": True},
                                          strategies={"enabled": ["oi_divergence", "liquidation_reversal"]},
                                          observation_cycles=5), mode="backtest")
    without = [off.engine.run_cycle(now) for now in off.clock.ticks]
    scored = [e for r in with_failed for e in r.get("ml_scores", [])]
    assert scored and all(e["ml_score"] is None and "retrain failed (ValueError: no labelled signals)" in e["abstain"]
                          for e in scored)
    key = lambda rs: [(d["strategy"], d["symbol"], d["approved"], d["rule"]) for r in rs for d in r["decisions"]]
    assert key(with_failed) == key(without)
    assert calls == [date(2024, 1, 1) + timedelta(days=k) for k in range(31)]   # once a day
    assert "set aside" in with_failed[0]["notes"][-1] or any("set aside" in n for n in with_failed[0]["notes"])


def test_a_restart_resumes_on_the_retrained_model_and_the_schedule(tmp_path, monkeypatch):
    from hydra_engine.app import build_sim_session

    from .test_ml_models import _tiny_scorer_model
    tiny, path = _tiny_scorer_model(tmp_path)

    def fake(settings, data_dir, start, end, **kw):
        return tiny, {"holdout": {"metrics": {"accuracy": 0.5}}, "data": {"span": f"{start} .. {end}"}}, path
    monkeypatch.setattr(L, "retrain_scorer", fake)
    s = _scorer_settings(tmp_path, retrain_every_days=7)
    first = build_sim_session(s, mode="backtest")
    for now in first.clock.ticks[:30]:
        first.engine.run_cycle(now)
    state = first.engine.state()
    assert state["sections"]["ml_scorer_retrain"] == {"last_attempt": first.clock.ticks[0].isoformat(),
                                                      "model_path": str(path)}
    second = build_sim_session(s, mode="backtest")
    scorer = second.engine.scorers[0]
    assert scorer.model is None                        # the configured file is absent
    second.engine.restore(json.loads(json.dumps(state)))
    assert scorer.model is not None and scorer.model.meta == tiny.meta
    rt = second.engine.state_sections["ml_scorer_retrain"]
    assert rt.last_attempt == first.clock.ticks[0] and rt.due(first.clock.ticks[29]) is None   # not retrained again
    # a state naming a file that is gone: no crash, retrained when due
    third = build_sim_session(s, mode="backtest")
    third.engine.restore({"sections": {"ml_scorer_retrain": {"last_attempt": state["sections"]["ml_scorer_retrain"]
                                                             ["last_attempt"], "model_path": str(tmp_path / "gone.cbm")}}})
    assert third.engine.scorers[0].model is None and third.engine.state_sections["ml_scorer_retrain"].last_attempt is None
