"""Scheduled regime refit inside the loop (issue #4): when it is due, that it only ever sees the past,
that a failure keeps the current model, and that a restart resumes on the refitted model."""
from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from hydra_engine.app import build_sim_session, run_session
from hydra_engine.domain import UTC, Regime
from hydra_engine.ports import MarketSnapshot
from hydra_engine.regime import HMMRegimeDetector
from hydra_engine.regime_refit import RegimeRefitter, history_closes

from .conftest import SHIPPED_DATA, make_settings
from .test_regime_hmm import real_snapshot


class Fitted:
    def __init__(self, trained_to: str):
        self.params = {"training": {"end": trained_to}}


def at(day: str) -> datetime:
    return datetime.fromisoformat(day).replace(hour=15, tzinfo=UTC)


def test_when_a_refit_is_due():
    r = RegimeRefitter(every=timedelta(days=30), history_dir=None, save_dir=None)
    assert "on or after today" in r.due(Fitted("2024-12-31"), at("2024-03-01"))     # a model from the future
    assert r.due(Fitted("2024-02-15"), at("2024-03-01")) is None                     # 15 days old: fine
    assert "30+ days old" in r.due(Fitted("2024-01-15"), at("2024-03-01"))
    assert r.due(object(), at("2024-03-01")) == "no fitted regime model loaded"
    r.last_attempt = at("2024-03-01")          # after an attempt (even a failed one) the period counts from it
    assert r.due(Fitted("2020-01-01"), at("2024-03-20")) is None
    assert r.due(Fitted("2020-01-01"), at("2024-03-31")) is not None
    # ... but never for a model from the future: a restart reloads the configured one after it was set aside
    assert "on or after today" in r.due(Fitted("2024-12-31"), at("2024-03-02"))


def test_history_is_strictly_before_the_refit_day_and_extends_the_folder_with_the_snapshot(shared_data):
    now = at("2024-12-16")
    snap = real_snapshot(shared_data, now)               # daily ETF/VIX bars up to 2024-12-13, BTC hourly
    closes = history_closes(SHIPPED_DATA, snap, now.date())
    cut = pd.Timestamp("2024-12-16", tz="UTC")
    assert all(s.index.max() < cut for s in closes.values())
    spy = closes["SPY"]
    assert spy.index.is_monotonic_increasing and not spy.index.duplicated().any()
    assert spy.index.min() < pd.Timestamp("2021-01-01", tz="UTC")        # the shipped folder's history ...
    assert spy.index.max() >= pd.Timestamp("2024-12-12", tz="UTC")       # ... extended by the snapshot's days
    # a refit day inside the folder's span cuts the folder too: nothing from that day on
    early = history_closes(SHIPPED_DATA, MarketSnapshot(now=at("2022-06-01")), date(2022, 6, 1))
    assert all(s.index.max() < pd.Timestamp("2022-06-01", tz="UTC") for s in early.values())


def folder_until(tmp_path, last_day: str):
    """The shipped data's daily ETF and VIX files cut after ``last_day`` (the "shipped files" of a
    paper session run months after they were made)."""
    from hydra_engine.regime_features import EQUITY_DIRS, VIX_FILES
    root = tmp_path / "shipped-until"
    for sym in ("SPY", "TLT", "HYG", "GLD"):
        src = SHIPPED_DATA / EQUITY_DIRS[1] / f"{sym}.csv.gz"
        df = pd.read_csv(src)
        (root / EQUITY_DIRS[1]).mkdir(parents=True, exist_ok=True)
        df[df["Date"] <= last_day].to_csv(root / EQUITY_DIRS[1] / f"{sym}.csv.gz", index=False)
    vix = pd.read_csv(SHIPPED_DATA / VIX_FILES[1])
    (root / VIX_FILES[1]).parent.mkdir(parents=True, exist_ok=True)
    vix[vix.iloc[:, 0] <= last_day].to_csv(root / VIX_FILES[1], index=False)
    return root


def test_paper_style_refit_extends_old_files_with_the_live_snapshot_and_leaves_out_what_the_feed_lacks(
        tmp_path, shared_data):
    """Paper trading: files end 2024-06, the live snapshot (Alpaca: no VIX) brings the days since."""
    folder = folder_until(tmp_path, "2024-06-28")
    now = at("2024-12-16")
    live = real_snapshot(shared_data, now)
    live = MarketSnapshot(now=now, bars={k: v for k, v in live.bars.items() if k != "VIX"})
    closes = history_closes(folder, live, now.date())
    assert closes["SPY"].index.min() == pd.Timestamp("2020-07-27", tz="UTC")      # the files' history ...
    assert closes["SPY"].index.max() >= pd.Timestamp("2024-12-12", tz="UTC")      # ... extended by the snapshot
    assert closes["VIX"].index.max() < pd.Timestamp("2024-07-01", tz="UTC")
    r = RegimeRefitter(every=timedelta(days=30), history_dir=folder, save_dir=None)
    fresh, record = r.refit(HMMRegimeDetector.load(), live, now, "test")
    assert record["ok"] and record["trained_to"] >= "2024-12-12"
    assert record["features_left_out"] == ["vix_log", "vix_chg5"]
    assert "vix_log" not in fresh.params["features"]
    assert fresh.detect(live).regime is not Regime.UNKNOWN
    # files and snapshot with a hole of more than a month between them: only the part after the hole
    short = real_snapshot(shared_data, now, days=90)
    closes = history_closes(folder, short, now.date())
    assert closes["SPY"].index.min() > pd.Timestamp("2024-07-31", tz="UTC")


def refit_settings(tmp_path, data_dir, refit_days=45, **engine):
    return make_settings(tmp_path, data_dir=data_dir, start="2022-01-01", end="2022-07-01", symbols=("SPY",),
                         data_only=("VIX", "TLT", "HYG", "GLD"), observation_cycles=0,
                         engine={"regime_refit_days": refit_days, "regime_refresh_cycles": 1, **engine})


def test_backtest_refits_on_schedule_and_never_reads_regimes_from_the_future(tmp_path, shared_data):
    """The shipped model is fitted through 2024: in a 2022 run it is replaced at the first cycle by one
    fitted on days before the run, then refitted every 45 days; every reading of the run comes from a
    model whose last training day is before the cycle's day, and the 2022 bear market is still seen."""
    session = build_sim_session(refit_settings(tmp_path, shared_data), mode="backtest", data_dir=shared_data)
    assert date.fromisoformat(session.engine.regime_detector.params["training"]["end"]) >= date(2022, 1, 1)
    summary = run_session(session, progress=False)
    refits = session.engine.regime_refits
    assert [r["ok"] for r in refits] == [True] * len(refits) and len(refits) == 4
    assert "on or after today" in refits[0]["why"] and refits[0]["trained_to"] < "2022-01-01"
    gaps = [(datetime.fromisoformat(b["at"]) - datetime.fromisoformat(a["at"])).days for a, b in zip(refits, refits[1:])]
    assert all(45 <= g <= 48 for g in gaps)          # daily cycles: the first refresh 45+ days later
    for r in refits:
        assert r["trained_to"] < r["history_before"] == r["at"][:10]
        assert Path(r["model_path"]).parent == tmp_path / "logs" / "models" and Path(r["model_path"]).is_file()
    cycles = [json.loads(line) for line in Path(summary["log"]).with_suffix(".cycles.jsonl").open()]
    assert len(cycles) > 100
    for c in cycles:
        assert c["regime"]["detector"] == "hmm_regime" and c["regime"]["regime"] != "UNKNOWN"
        assert c["regime"]["details"]["model_trained_to"] < c["ts"][:10]
    bear = [c["regime"]["regime"] for c in cycles]
    assert sum(r in (Regime.TRENDING_DOWN.value, Regime.HIGH_VOL.value, Regime.CRASH.value) for r in bear) > 0.5 * len(bear)
    assert sum("regime model refitted" in n for c in cycles for n in c["notes"]) == 4
    assert sum("regime_refit" in c for c in cycles) == 4


def test_a_failed_refit_sets_a_model_from_the_future_aside_and_tries_again_the_next_day(tmp_path, shared_data):
    """The shipped model is fitted through 2024; in a 2022 run whose refit fails, keeping it would read
    regimes learnt from the run's own future. It is set aside: UNKNOWN (no entries), fit retried daily."""
    empty = tmp_path / "no-history"
    empty.mkdir()
    s = refit_settings(tmp_path, shared_data, refit_days=30, history_bars=60)
    session = build_sim_session(s, mode="backtest", data_dir=shared_data)
    engine = session.engine
    engine.regime_refitter.history_dir = empty       # the snapshot alone (60 bars) is too short
    report = engine.run_cycle(session.clock.ticks[0])
    assert report["regime_refit"]["ok"] is False and report["regime_refit"]["error"]
    assert any("regime refit failed" in n and "after this cycle: regime UNKNOWN" in n for n in report["notes"])
    assert engine.regime_detector.params is None and report["regime"]["regime"] == "UNKNOWN"
    later_today = session.clock.ticks[0] + timedelta(hours=1)
    assert engine.regime_refitter.due(engine.regime_detector, later_today) is None      # not every cycle
    second = engine.run_cycle(session.clock.ticks[1])                                   # the next day
    assert session.clock.ticks[1].date() > session.clock.ticks[0].date()
    assert second["regime_refit"]["why"] == "no fitted regime model loaded" and second["regime"]["regime"] == "UNKNOWN"


def test_a_failed_refit_keeps_a_model_fitted_on_the_past():
    assert RegimeRefitter.set_aside(Fitted("2020-01-01"), at("2024-03-01")) is None
    from hydra_engine.regime import HMMRegimeDetector
    today = HMMRegimeDetector()
    today.params = {"training": {"end": "2024-03-01"}}
    aside = RegimeRefitter.set_aside(today, at("2024-03-01"))        # fitted on today's closes: the future
    assert aside is not None and aside.params is None


def test_a_restart_resumes_on_the_refitted_model(tmp_path, shared_data):
    s = refit_settings(tmp_path, shared_data)
    first = build_sim_session(s, mode="backtest", data_dir=shared_data)
    first.engine.run_cycle(first.clock.ticks[0])
    refitted = first.engine.regime_detector
    state = first.engine.state()
    assert state["regime_refit"]["model_path"]
    again = build_sim_session(s, mode="backtest", data_dir=shared_data)
    again.engine.restore(state)
    assert isinstance(again.engine.regime_detector, HMMRegimeDetector)
    assert again.engine.regime_detector.params["means"] == refitted.params["means"]
    assert again.engine.regime_refitter.due(again.engine.regime_detector, first.clock.ticks[1]) is None
    # the refitted file gone: the restart refits again rather than trusting a model from the future
    state["regime_refit"]["model_path"] = str(tmp_path / "gone.json")
    third = build_sim_session(s, mode="backtest", data_dir=shared_data)
    third.engine.restore(state)
    assert third.engine.regime_refitter.due(third.engine.regime_detector, first.clock.ticks[1]) is not None


def test_refit_is_off_unless_configured_and_never_for_the_rule(tmp_path):
    s = make_settings(tmp_path)
    assert s.engine.regime_refit_days == 0
    assert build_sim_session(s).engine.regime_refitter is None
    rule = make_settings(tmp_path, engine={"regime_refit_days": 30, "regime_detector": "trend_vol_rule"})
    assert build_sim_session(rule).engine.regime_refitter is None
    from hydra_engine.config import load_settings
    assert load_settings().engine.regime_refit_days == 90      # the shipped hydra.toml refits quarterly


@pytest.mark.parametrize("bad", [-1, 4000])
def test_refit_days_out_of_range_is_refused(tmp_path, bad):
    from pydantic import ValidationError
    with pytest.raises(ValidationError, match="regime_refit_days"):
        make_settings(tmp_path, engine={"regime_refit_days": bad})
