"""HMM regime detector on the real shared data: known episodes, refit stability, the snapshot path,
the UNKNOWN fallbacks, persistence and the train command."""
from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from hydra_engine.domain import UTC, Regime
from hydra_engine.ports import BarSeries, MarketSnapshot
from hydra_engine.regime import (DEFAULT_MODEL_PATH, REGIMES, HMMRegimeDetector, Hysteresis, StateRule,
                                 TrendVolRule, _forward_python, load_detector)
from hydra_engine.regime_features import (ASSETS, FEATURES, MAX_CARRY_DAYS, VIX_CHANGE_DAYS, VIX_SYMBOL, WINDOW,
                                          build_features, daily_closes_from_snapshot, load_daily_closes,
                                          load_feature_frame)


@pytest.fixture(scope="module")
def frame(shared_data):
    return load_feature_frame(shared_data)


@pytest.fixture(scope="module")
def fitted(frame):
    """Two refits with different seeds (fitted once for the module)."""
    return HMMRegimeDetector().fit(frame, seed=0), HMMRegimeDetector().fit(frame, seed=1)


@pytest.fixture(scope="module")
def labels(fitted, frame):
    return fitted[0].label_history(frame)


def share(labels: pd.Series, start: str, end: str, allowed: set[Regime]) -> float:
    window = labels[start:end]
    assert len(window) > 15
    return float(window.isin([r.value for r in allowed]).mean())


def test_covid_crash_is_crash_or_high_vol(labels):
    assert share(labels, "2020-02-01", "2020-03-31", {Regime.CRASH, Regime.HIGH_VOL}) > 0.5
    assert share(labels, "2020-03-09", "2020-03-31", {Regime.CRASH, Regime.HIGH_VOL}) == 1.0


def test_2022_bear_market_is_down_or_high_vol(labels):
    assert share(labels, "2022-01-01", "2022-12-31", {Regime.TRENDING_DOWN, Regime.HIGH_VOL}) > 0.5


def test_calm_years_are_trending_up_or_mean_reverting(labels):
    calm = {Regime.TRENDING_UP, Regime.MEAN_REVERTING}
    assert share(labels, "2017-01-01", "2017-12-31", calm) > 0.9
    assert share(labels, "2019-01-01", "2019-12-31", calm) > 0.7


def test_labels_stable_across_refits_with_other_seeds(fitted, frame):
    a, b = (d.label_history(frame) for d in fitted)
    assert float((a == b).mean()) > 0.9
    # the states themselves are the same market states: same rule labels, close means
    assert fitted[0].params["state_regimes"] == fitted[1].params["state_regimes"]


def test_filter_is_causal(fitted, frame):
    """Labels up to a day never change when later days are appended (no look-ahead)."""
    det = fitted[0]
    full = det.label_history(frame)
    cut = frame[:"2020-03-10"]
    assert det.label_history(cut).equals(full[:"2020-03-10"])


def test_regime_probabilities_are_distributions(fitted, frame):
    probs = fitted[0].regime_probabilities(frame["2019":"2021"])
    assert np.allclose(probs.sum(axis=1), 1.0)
    assert ((probs >= 0) & (probs <= 1)).all().all()


def test_model_parameters_and_card(fitted, tmp_path):
    det = fitted[0]
    path = det.save(tmp_path / "regime_hmm.json")
    data = json.loads(path.read_text())
    for key in ("means", "variances", "transmat", "startprob", "scaler_mean", "scaler_std", "state_regimes", "features"):
        assert key in data
    assert np.allclose(np.asarray(data["transmat"]).sum(axis=1), 1.0)
    assert data["training"]["start"].startswith("2010") and data["training"]["end"] == "2024-12-31"
    card = (tmp_path / "regime_hmm.card.md").read_text()
    assert "training span" in card and "log-likelihood" in card and "| state | regime |" in card
    again = HMMRegimeDetector.load(path)
    assert again.params["means"] == det.params["means"]


# ------------------------------------------------------------------ the snapshot path
def _bars(symbol: str, s: pd.Series, interval_s: int) -> BarSeries:
    ts = s.index.as_unit("s").asi8.astype("int64")
    c = s.to_numpy(float)
    return BarSeries(symbol, interval_s, ts, c, c, c, c, np.zeros_like(c))


def real_snapshot(root, now: datetime, days: int = 500) -> MarketSnapshot:
    """Daily ETF/VIX bars and hourly BTC perp bars from the shared files, only those closed by ``now``."""
    closes = load_daily_closes(root)
    bars = {}
    for sym in ("SPY", "TLT", "HYG", "GLD", "VIX"):
        s = closes[sym]
        s = s[s.index + pd.Timedelta(days=1) <= pd.Timestamp(now)].iloc[-days:]
        bars[sym] = _bars(sym, s, 86_400)
    btc = pd.read_parquet(root / "crypto_perp/binance_usdm/klines/BTCUSDT_1h.parquet", columns=["ts", "close"])
    btc = btc.set_index("ts")["close"]
    btc = btc[btc.index + pd.Timedelta(hours=1) <= pd.Timestamp(now)].iloc[-60 * 24:]
    bars["BTC/USD"] = _bars("BTC/USD", btc, 3600)
    return MarketSnapshot(now=now, bars=bars)


def pandas_reference_features(closes: dict[str, pd.Series]) -> pd.DataFrame:
    """The feature maths written the obvious pandas way (rolling std, reindex with ffill/tolerance):
    the numpy implementation the detector runs must agree with it."""
    cal = closes["SPY"].index
    out = pd.DataFrame(index=cal, columns=list(FEATURES), dtype=float)
    carry = dict(method="ffill", limit=MAX_CARRY_DAYS, tolerance=pd.Timedelta(days=MAX_CARRY_DAYS))
    for prefix, (symbol, per_year) in ASSETS.items():
        logp = np.log(closes[symbol])
        vol = logp.diff().rolling(WINDOW).std() * np.sqrt(per_year)
        out[f"{prefix}_ret20"] = (logp - logp.shift(WINDOW)).reindex(cal, **carry)
        out[f"{prefix}_lvol20"] = np.log(vol).reindex(cal, **carry)
    lv = np.log(closes[VIX_SYMBOL])
    out["vix_log"] = lv.reindex(cal, **carry)
    out["vix_chg5"] = (lv - lv.shift(VIX_CHANGE_DAYS)).reindex(cal, **carry)
    return out


def test_feature_maths_match_a_pandas_reference_on_real_data(shared_data):
    closes = load_daily_closes(shared_data)
    ours, ref = build_features(closes), pandas_reference_features(closes)
    assert list(ours.index) == list(ref.index)
    np.testing.assert_allclose(ours.to_numpy(), ref.to_numpy(), rtol=1e-9, atol=1e-12)   # NaN where NaN
    assert ours["btc_ret20"].notna().sum() > 1000 and ours["spy_lvol20"].notna().sum() > 5000


def test_compiled_forward_pass_equals_the_plain_recursion(fitted, frame):
    det = fitted[0]
    window = frame["2019-06-01":"2021-06-01"]
    x = window.reindex(columns=det.params["features"]).to_numpy(float)
    p = det.params
    from hydra_engine.regime import _masked_loglik
    ll = _masked_loglik((x - np.asarray(p["scaler_mean"])) / np.asarray(p["scaler_std"]),
                        np.asarray(p["means"]), np.asarray(p["variances"]))
    lik = np.exp(ll - ll.max(axis=1, keepdims=True))
    plain = _forward_python(np.asarray(p["startprob"]), np.asarray(p["transmat"]), lik)
    np.testing.assert_allclose(det._filtered(x), plain, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(plain.sum(axis=1), 1.0)


def test_snapshot_features_match_file_features(shared_data, frame):
    now = datetime(2020, 3, 20, 15, 0, tzinfo=UTC)
    closes = daily_closes_from_snapshot(real_snapshot(shared_data, now))
    assert closes["BTC/USD"].index[-1] == pd.Timestamp("2020-03-19", tz="UTC")   # 03-20 not over yet
    assert closes["SPY"].index[-1] == pd.Timestamp("2020-03-19", tz="UTC")
    snap = build_features(closes)
    days = snap.index[snap["btc_ret20"].notna() & snap["spy_ret20"].notna()]
    assert len(days) >= 15
    pd.testing.assert_frame_equal(snap.loc[days], frame.loc[days], check_freq=False)


def test_detect_on_real_snapshot_in_the_covid_crash(shared_data, fitted, labels):
    now = datetime(2020, 3, 20, 15, 0, tzinfo=UTC)
    reading = fitted[0].detect(real_snapshot(shared_data, now))
    assert reading.regime in (Regime.CRASH, Regime.HIGH_VOL)
    assert 0.5 < reading.confidence <= 1.0
    assert reading.as_of == now and reading.detector == "hmm_regime"
    assert reading.details["as_of_day"] == "2020-03-19"
    assert reading.details["missing_features"] == []
    assert reading.regime.value == labels["2020-03-19"]       # same answer as the file-based history


def test_the_engines_snapshots_give_the_models_own_labels_through_2022(shared_data, fitted, labels):
    """The replay keeps 500 hourly BTC bars for strategies (~21 days): too few for BTC's 20-day features
    on more than the last row, and the detector then disagreed with the model's own causal labels on some
    days of 2022. With the regime history it keeps beside them it agrees on every business day."""
    from hydra_engine.regime_features import regime_history_days
    from hydra_engine.config import PROJECT_ROOT, load_settings
    from hydra_engine.data.replay import ReplayMarketData

    settings = load_settings(PROJECT_ROOT / "hydra.toml")
    assert settings.engine.regime_detector == "hmm" and settings.engine.history_bars == 500

    def replay(**kw):
        return ReplayMarketData(shared_data, settings.universe.symbols, data_only=settings.universe.data_only,
                                history_bars=500, **kw)

    engine_data, strategies_only = replay(regime_history_days=regime_history_days(settings)), replay()
    det = fitted[0]
    disagree = {"with regime history": 0, "history_bars only": 0}
    for day in pd.date_range("2022-01-03", "2022-12-30", freq="B"):
        now = datetime(day.year, day.month, day.day, 23, tzinfo=UTC)
        for name, data in (("with regime history", engine_data), ("history_bars only", strategies_only)):
            det._cache_key = None
            reading = det.detect(data.snapshot(now))
            disagree[name] += reading.regime != labels.loc[pd.Timestamp(reading.details["as_of_day"], tz="UTC")]
    assert disagree["with regime history"] == 0 and disagree["history_bars only"] > 0, disagree
    snap = engine_data.snapshot(datetime(2022, 4, 15, tzinfo=UTC))
    assert len(snap.bars["BTC/USD"]) == 500 and len(snap.regime_bars["BTC/USD"]) == 90 * 24
    assert "SPY" not in snap.regime_bars                     # daily bars: history_bars already holds 500 days


def test_detect_in_a_calm_market_and_without_btc(shared_data, fitted):
    now = datetime(2017, 7, 3, 12, 0, tzinfo=UTC)   # BTC perp data starts 2019-10: its features are missing
    reading = fitted[0].detect(real_snapshot(shared_data, now))
    assert reading.regime in (Regime.TRENDING_UP, Regime.MEAN_REVERTING)
    assert set(reading.details["missing_features"]) == {"btc_ret20", "btc_lvol20"}


def test_unknown_when_unfitted_short_history_or_too_few_features(shared_data, fitted):
    now = datetime(2020, 3, 20, 15, 0, tzinfo=UTC)
    snap = real_snapshot(shared_data, now)
    assert HMMRegimeDetector().detect(snap).regime is Regime.UNKNOWN
    short = real_snapshot(shared_data, now, days=50)
    r = fitted[0].detect(MarketSnapshot(now=now, bars={k: v for k, v in short.bars.items() if k != "BTC/USD"}))
    assert r.regime is Regime.UNKNOWN and r.confidence == 0.0 and "need 60" in r.details["why"]
    only_btc = MarketSnapshot(now=now, bars={"BTC/USD": snap.bars["BTC/USD"]})
    r = fitted[0].detect(only_btc)
    assert r.regime is Regime.UNKNOWN and "why" in r.details
    assert fitted[0].detect(MarketSnapshot(now=now)).regime is Regime.UNKNOWN


def test_a_spy_history_that_has_just_begun_keeps_the_other_markets_days(shared_data, fitted):
    """The shared equity files start SPY on 2020-07-27 while VIX, TLT and GLD go back further: the
    feature calendar keeps their days before SPY's first, so the detector still reads a regime from the
    other markets (it used to switch to SPY's few days outright and read UNKNOWN for 12 weeks)."""
    now = datetime(2022, 6, 1, 12, tzinfo=UTC)
    snap = real_snapshot(shared_data, now)
    spy = snap.bars["SPY"]
    young = BarSeries("SPY", spy.interval_s, *(a[-5:] for a in (spy.ts, spy.open, spy.high, spy.low, spy.close,
                                                                   spy.volume)))
    reading = fitted[0].detect(MarketSnapshot(now=now, bars={**snap.bars, "SPY": young}))
    assert reading.regime is not Regime.UNKNOWN, reading.details
    assert {"spy_ret20", "spy_lvol20"} <= set(reading.details["missing_features"])   # 5 days: no 20-day SPY features


def test_fit_refuses_too_little_history(frame):
    with pytest.raises(ValueError):
        HMMRegimeDetector().fit(frame["2015-01-01":"2015-03-01"])


def test_load_detector_falls_back_to_the_rule(tmp_path):
    assert isinstance(load_detector(tmp_path / "missing.json"), TrendVolRule)
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    assert isinstance(load_detector(tmp_path / "bad.json"), TrendVolRule)


def test_shipped_model_loads_and_knows_march_2020(frame):
    if not DEFAULT_MODEL_PATH.exists():
        pytest.skip("models/regime_hmm.json not trained yet (hydra train --component regime)")
    det = load_detector()
    assert isinstance(det, HMMRegimeDetector)
    assert det.label_history(frame["2019-06-01":"2020-03-31"])["2020-03-16"] in ("CRASH", "HIGH_VOL")


# ------------------------------------------------------------------ rule and hysteresis
def test_state_rule_is_fixed_and_documented():
    rule = StateRule()
    assert rule.label(-0.10, 0.50) is Regime.CRASH
    assert rule.label(-0.01, 0.45) is Regime.CRASH
    assert rule.label(0.05, 0.30) is Regime.RECOVERY
    assert rule.label(0.00, 0.30) is Regime.HIGH_VOL
    assert rule.label(0.02, 0.10) is Regime.TRENDING_UP
    assert rule.label(-0.02, 0.10) is Regime.TRENDING_DOWN
    assert rule.label(0.002, 0.10) is Regime.MEAN_REVERTING


def test_hysteresis_needs_k_consecutive_confident_readings():
    h = Hysteresis(threshold=0.6, confirm=3)
    a, b = [0.9, 0.1], [0.1, 0.9]
    held, _ = h.run(np.array([a, b, b, a, b, b, b, b]))
    assert held.tolist() == [0, 0, 0, 0, 0, 0, 1, 1]
    held, _ = h.run(np.array([a, [0.45, 0.55], [0.45, 0.55], [0.45, 0.55]]))   # below threshold: no switch
    assert held.tolist() == [0, 0, 0, 0]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=60), st.integers(1, 5))
def test_hysteresis_switches_only_after_a_confirmed_streak(tops, k):
    probs = np.full((len(tops), 6), 0.02)
    probs[np.arange(len(tops)), tops] = 0.9
    held, _ = Hysteresis(0.6, k).run(probs)
    assert held[0] == tops[0]
    for t in range(1, len(tops)):
        if held[t] != held[t - 1]:
            assert t + 1 >= k and all(x == held[t] for x in tops[t - k + 1:t + 1])


def test_regime_list_excludes_unknown():
    assert Regime.UNKNOWN not in REGIMES and len(REGIMES) == 6


# ------------------------------------------------------------------ the train command
def test_train_command_writes_model_and_card(shared_data, tmp_path, capsys):
    from hydra_engine.cli import main

    out = tmp_path / "m" / "regime_hmm.json"
    code = main(["train", "--component", "regime", "--data", str(shared_data), "--end", "2016-01-01",
                 "--seed", "3", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    data = json.loads(out.read_text())
    assert data["training"]["end"] < "2016-01-01" and data["training"]["seed"] == 3
    assert data["dropped_features"] == ["btc_ret20", "btc_lvol20"]    # no BTC before 2016
    assert (out.parent / "regime_hmm.card.md").is_file()
    assert "log-lik" in text and "saved" in text
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(out)]) == 2



@pytest.mark.parametrize("argv,message", [
    (["--states", "0"], "argument --states: 0 is fewer than 2"),     # was scikit-learn's 'n_clusters' message
    (["--states", "1"], "argument --states: 1 is fewer than 2"),     # was a model naming one regime every day
    (["--seed", "-1"], "argument --seed: -1 is outside 0..4294966"),  # was "... Got -1000 instead"
    (["--seed", "4294967"], "argument --seed: 4294967 is outside 0..4294966"),
    (["--start", "2020-13-01"], "argument --start: '2020-13-01' is not a date YYYY-MM-DD")])
def test_train_refuses_a_bad_argument_by_name(tmp_path, capsys, argv, message):
    from hydra_engine.cli import main
    with pytest.raises(SystemExit) as exc:
        main(["train", *argv, "--out", str(tmp_path / "m.json")])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("argv,message", [
    (["--start", "2020-01-01", "--end", "2019-01-01"], "argument --start: 2020-01-01 must be before --end 2019-01-01"),
    (["--start", "2024-12-01"], "--start 2024-12-01 .. --end (last day): the span holds 21 training days"),
    (["--start", "2020-01-01", "--end", "2020-06-01"], "the span holds 103 training days"),
    (["--end", "1990-01-01"], "--start (first day) .. --end 1990-01-01: the span holds 0 training days"),
    (["--start", "2024-01-01", "--states", "20"], "20 states (--states) need at least 400")])
def test_train_refuses_a_span_too_short_naming_the_arguments_and_the_days(shared_data, tmp_path, capsys,
                                                                          argv, message):
    """A short or reversed span said "the SPY features are required: they name the states"."""
    from hydra_engine.cli import main
    assert main(["train", "--data", str(shared_data), *argv, "--out", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    if "holds" in message and "--states" not in argv:
        assert "7 states (--states) need at least 140 (20 a state, at least 60)" in err, err
    assert not (tmp_path / "m.json").exists()


def test_fit_refuses_one_state_and_a_seed_numpy_cannot_take(frame):
    with pytest.raises(ValueError, match="n_states 1: at least 2"):
        HMMRegimeDetector(n_states=1).fit(frame)
    with pytest.raises(ValueError, match="seed -1 must be 0..4294966"):
        HMMRegimeDetector().fit(frame, seed=-1)
