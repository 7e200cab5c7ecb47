"""The regime step's speed-ups change no bit (issue #24): every new path is compared with a verbatim copy of
the code it replaced (the ``_reference_*`` functions below), on the shared real data and on edge cases.

* the EM restarts of ``HMMRegimeDetector.fit`` (``regime_em.fit_restarts``) against the restart loop ``fit`` had inline: every restart's fitted parameters, log-likelihood,
  iterations and convergence history, and the whole fitted model (means, variances, transmat, start
  probabilities, chosen restart, log-likelihood, state names) at refit dates of the 2020-2024 backtest;
* detection: the features (one carry index per series) against their previous code, and whole readings
  on real snapshots;
* the daily closes read once per folder (``regime_features.load_daily_closes``) against the function that
  re-read them on every refit.
"""
from __future__ import annotations

import math
import os
import pickle
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hydra_engine import regime, regime_em
from hydra_engine.data.catalog import read_parquet
from hydra_engine.regime import HMMRegimeDetector
from hydra_engine.regime_features import (ASSETS, BTC_DAILY, BTC_HOURLY, EQUITY_DIRS, FEATURES, MAX_CARRY_DAYS,
                                          VIX_CHANGE_DAYS, VIX_FILES, VIX_SYMBOL, WINDOW, _contiguous_tail,
                                          _daily_arrays_from_bars, _index_from_days, _lagged_difference, _utc_days,
                                          build_features, daily_close_arrays_from_snapshot, feature_matrix,
                                          load_daily_closes)


# --------------------------------------------------------------------------- verbatim references
def _reference_restarts(xc, n_states, n_iter, random_states):
    """The restart loop ``HMMRegimeDetector.fit`` ran inline before regime_em (verbatim but for the
    loop variable: the restart's seed), as (model, log-likelihood) or (None, the error's text)."""
    from hmmlearn.hmm import GaussianHMM
    from sklearn.cluster import kmeans_plusplus
    out = []
    for rs in random_states:
        m = GaussianHMM(n_states, covariance_type="diag", n_iter=n_iter, tol=1e-2, min_covar=1e-3,
                        implementation="scaling", init_params="st", random_state=rs)
        m.means_ = kmeans_plusplus(xc, n_states, random_state=rs)[0]
        m.covars_ = np.tile(xc.var(axis=0), (n_states, 1))
        try:
            m.fit(xc)
            ll = m.score(xc)
        except (ValueError, np.linalg.LinAlgError) as exc:
            out.append((None, str(exc)))
            continue
        out.append((m, ll))
    return out


def _reference_load_daily_closes(data_dir, end=None):
    """``regime_features.load_daily_closes`` before the read cache, verbatim."""
    root = Path(data_dir)
    out: dict[str, pd.Series] = {}
    for _, (symbol, _) in ASSETS.items():
        if symbol == "BTC/USD":
            continue
        for folder in EQUITY_DIRS:
            f = root / folder / f"{symbol}.csv.gz"
            if f.is_file():
                df = pd.read_csv(f)
                col = "Adj Close" if "Adj Close" in df else "Close"
                out[symbol] = pd.Series(df[col].to_numpy(float), index=_utc_days(df["Date"]))
                break
    vix = []
    for f in VIX_FILES:
        if (root / f).is_file():
            if "ohlc" in f.name:
                df = pd.read_csv(root / f, skiprows=[1, 2])
                vix.append(pd.Series(df["Close"].to_numpy(float), index=_utc_days(df["Price"])))
            else:
                df = pd.read_csv(root / f)
                vix.append(pd.Series(df.iloc[:, 1].to_numpy(float), index=_utc_days(df.iloc[:, 0])))
    if vix:  # the OHLC file wins where both have a day; the close-only file extends it
        s = pd.concat(vix)
        out[VIX_SYMBOL] = s[~s.index.duplicated(keep="first")].sort_index()
    if (root / BTC_HOURLY).is_file():
        df = read_parquet(root / BTC_HOURLY, columns=["ts", "close"])
        ts = df["ts"].dt.tz_convert("UTC").astype("datetime64[s, UTC]").astype("int64").to_numpy()
        last_close_s = float(ts[-1] + 3600)
        day, close = _daily_arrays_from_bars(ts, df["close"].to_numpy(float), 3600, last_close_s)
        out["BTC/USD"] = pd.Series(close, index=_index_from_days(day))
    elif (root / BTC_DAILY).is_file():
        df = pd.read_csv(root / BTC_DAILY)
        out["BTC/USD"] = pd.Series(df["close"].to_numpy(float), index=_utc_days(pd.to_datetime(df["timestamp"], unit="ms")))
    if end is not None:
        cut = pd.Timestamp(end, tz="UTC") if pd.Timestamp(end).tzinfo is None else pd.Timestamp(end)
        out = {k: v[v.index < cut] for k, v in out.items()}
    out = {k: _contiguous_tail(v.sort_index().dropna()) for k, v in out.items()}
    return {k: v for k, v in out.items() if len(v)}


# --------------------------------------------------------------------------- helpers
def same_array(a, b) -> bool:
    """Bit for bit (NaN payloads included), same shape, dtype and memory order."""
    a, b = np.asarray(a), np.asarray(b)
    return (a.shape == b.shape and a.dtype == b.dtype and a.flags.f_contiguous == b.flags.f_contiguous
            and a.flags.c_contiguous == b.flags.c_contiguous and a.tobytes(order="A") == b.tobytes(order="A"))


def restart_state(m, ll):
    """Everything a restart leaves behind that fit reads, as bytes."""
    if m is None:
        return ("failed", ll)
    return pickle.dumps((m.means_, m._covars_, m.transmat_, m.startprob_, float(ll), m.monitor_.iter,
                         m.monitor_.converged, list(m.monitor_.history), m.n_features))


@pytest.fixture(scope="module")
def closes_2024(shared_data):
    return load_daily_closes(shared_data)


def training_matrix(closes, before: str, core=None):
    """``fit``'s standardised core-feature matrix (as ``fit`` makes it: column-major) on days before ``before``."""
    cut = pd.Timestamp(before, tz="UTC")
    frame = build_features({k: v[v.index < cut] for k, v in closes.items()}).dropna(how="all")
    det = HMMRegimeDetector() if core is None else HMMRegimeDetector(core_features=core)
    frame, core, rows = det._training_rows(frame)
    train = frame.loc[rows.index]
    mu, sd = train.mean(), train.std().replace(0.0, 1.0)
    return frame, ((rows - mu[core]) / sd[core]).to_numpy()


# --------------------------------------------------------------------------- numpy's row-sum order
@pytest.mark.parametrize("before,n_init", [("2020-01-01", 8), ("2023-04-01", 4), ("2021-01-01", 3)])
def test_fit_is_the_reference_fit(closes_2024, monkeypatch, before, n_init):
    """At refit dates of the 2020-2024 backtest (its first refit with its 8 restarts, later ones with fewer): every
    restart equals the old inline loop's, and so does the whole fitted model."""
    frame, _ = training_matrix(closes_2024, before)
    seeds = list(range(n_init))
    runs = {}

    def recording(impl, name):
        def fit_restarts(xc, n_states, n_iter, random_states):
            runs[name] = impl(xc, n_states, n_iter, random_states)
            return runs[name]
        return fit_restarts

    models = {}
    for name, impl in [("reference", _reference_restarts), ("serial", regime_em.fit_restarts)]:
        with monkeypatch.context() as m:
            m.setattr(regime_em, "fit_restarts", recording(impl, name))
            models[name] = HMMRegimeDetector().fit(frame, seed=0, n_init=n_init).params
        models[name]["training"].pop("fitted_at")
    for name in runs:
        assert [restart_state(*r) for r in runs[name]] == [restart_state(*r) for r in runs["reference"]], name
        assert models[name] == models["reference"], name
    assert len(runs["reference"]) == len(seeds) and all(m is not None for m, _ in runs["reference"])
    lls = [ll for _, ll in runs["reference"]]
    assert models["serial"]["training"]["log_likelihood"] == max(lls)


def test_ties_keep_the_first_restart(closes_2024):
    """Three restarts with the same seed tie exactly; they come back in order, like the loop's."""
    _, xc = training_matrix(closes_2024, "2012-06-01")
    assert len(xc) >= HMMRegimeDetector().days_needed           # a short history: about two years
    serial = regime_em.fit_restarts(xc, 7, 300, [4, 4, 9, 4])
    reference = _reference_restarts(xc, 7, 300, [4, 4, 9, 4])
    assert [restart_state(*r) for r in serial] == [restart_state(*r) for r in reference]
    assert restart_state(*serial[0]) == restart_state(*serial[1]) == restart_state(*serial[3])


def test_bad_input_fails_the_same_way():
    """Days with a missing value never reach fit (it drops them); if they did, every path refuses them alike."""
    rng = np.random.default_rng(3)
    x = np.asfortranarray(np.column_stack([rng.standard_normal(200), np.where(rng.random(200) < 0.5, np.nan, 1.0)]))
    errors = []
    for run in (lambda: _reference_restarts(x, 3, 20, [0, 1]),
                lambda: regime_em.fit_restarts(x, 3, 20, [0, 1])):
        with pytest.raises(ValueError) as exc:
            run()
        errors.append(str(exc.value))
    assert errors[0] == errors[1]


def assert_same_closes(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for k in want:
        pd.testing.assert_series_equal(got[k], want[k], check_exact=True, check_freq=True)
        assert got[k].index.dtype == want[k].index.dtype


def test_daily_closes_read_once_equal_the_reread_closes(shared_data):
    for end in [None, "2020-01-01", pd.Timestamp("2021-04-01"), pd.Timestamp("2024-07-01", tz="UTC"), "2010-02-01",
                "1990-01-01"]:
        assert_same_closes(load_daily_closes(shared_data, end), _reference_load_daily_closes(shared_data, end))
    first = load_daily_closes(shared_data, "2022-01-01")
    first["SPY"].iloc[:] = -1.0                                      # a caller's edits never reach the cache
    assert_same_closes(load_daily_closes(shared_data, "2022-01-01"),
                       _reference_load_daily_closes(shared_data, "2022-01-01"))


def test_daily_closes_follow_a_changed_file(tmp_path):
    """A file rewritten in place (same size, same modification time) is read again; one removed is gone."""
    vix = tmp_path / VIX_FILES[1]
    vix.parent.mkdir(parents=True)
    vix.write_text("date,close\n2024-01-02,13.2\n2024-01-03,14.0\n")
    st = vix.stat()
    assert load_daily_closes(tmp_path)[VIX_SYMBOL].tolist() == [13.2, 14.0]
    vix.write_text("date,close\n2024-01-02,13.2\n2024-01-03,14.5\n")
    os.utime(vix, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert vix.stat().st_size == st.st_size and vix.stat().st_mtime_ns == st.st_mtime_ns
    assert load_daily_closes(tmp_path)[VIX_SYMBOL].tolist() == [13.2, 14.5]
    vix.write_text("date,close\n2024-01-02,13.2\n2024-01-03,14.5\n2024-01-04,15.0\n")
    assert_same_closes(load_daily_closes(tmp_path), _reference_load_daily_closes(tmp_path))
    vix.unlink()
    assert load_daily_closes(tmp_path) == {} == _reference_load_daily_closes(tmp_path)


# --------------------------------------------------------------------------- detection
def _reference_carried(values, own_days, calendar):
    """``regime_features._carried`` before the shared carry index, verbatim."""
    j = np.searchsorted(own_days, calendar, side="right") - 1
    out = np.full(len(calendar), np.nan)
    ok = (j >= 0)
    ok[ok] = calendar[ok] - own_days[j[ok]] <= MAX_CARRY_DAYS
    out[ok] = values[j[ok]]
    return out


def _reference_feature_matrix(closes):
    """``regime_features.feature_matrix`` before the shared carry index, verbatim."""
    order = [[s for p, (s, _) in ASSETS.items() if p != "btc"] + [VIX_SYMBOL], list(closes)]
    group = next(([closes[s][0] for s in g if s in closes] for g in order if any(s in closes for s in g)), [])
    calendar = np.unique(np.concatenate(group)) if group else np.empty(0, "int64")
    if "SPY" in closes and len(closes["SPY"][0]):
        spy_days = closes["SPY"][0]
        calendar = np.union1d(calendar[calendar < spy_days[0]], spy_days)
    x = np.full((len(calendar), len(FEATURES)), np.nan)
    col = {name: j for j, name in enumerate(FEATURES)}
    for prefix, (symbol, per_year) in ASSETS.items():
        if symbol not in closes or len(closes[symbol][1]) <= WINDOW:
            continue
        days, close = closes[symbol]
        logp = np.log(close)
        ret = _lagged_difference(logp, WINDOW)
        lr = np.diff(logp)
        vol = np.full(len(close), np.nan)
        vol[WINDOW:] = np.lib.stride_tricks.sliding_window_view(lr, WINDOW).std(axis=1, ddof=1) * math.sqrt(per_year)
        with np.errstate(divide="ignore"):
            lvol = np.log(vol)
        lvol[np.isneginf(lvol)] = np.nan
        x[:, col[f"{prefix}_ret20"]] = _reference_carried(ret, days, calendar)
        x[:, col[f"{prefix}_lvol20"]] = _reference_carried(lvol, days, calendar)
    if VIX_SYMBOL in closes and len(closes[VIX_SYMBOL][1]) > VIX_CHANGE_DAYS:
        days, level = closes[VIX_SYMBOL]
        lv = np.log(level)
        x[:, col["vix_log"]] = _reference_carried(lv, days, calendar)
        x[:, col["vix_chg5"]] = _reference_carried(_lagged_difference(lv, VIX_CHANGE_DAYS), days, calendar)
    return calendar, x


@pytest.mark.parametrize("now", ["2020-03-09T01:00:00", "2021-05-19T17:00:00", "2022-06-14T00:00:00",
                                 "2024-08-05T15:00:00", "2019-11-20T00:00:00"])
def test_detection_is_the_reference_on_real_snapshots(shared_data, now, monkeypatch):
    """Real snapshots (a crash, a BTC crash, the 2022 bear market, the August 2024 VIX spike, BTC's first
    weeks): the same features and the same reading (regime, confidence, details)."""
    from tests.test_regime_hmm import real_snapshot
    snap = real_snapshot(shared_data, datetime.fromisoformat(now).replace(tzinfo=timezone.utc))
    arrays = daily_close_arrays_from_snapshot(snap)
    days, x = feature_matrix(arrays)
    ref_days, ref_x = _reference_feature_matrix(arrays)
    assert same_array(days, ref_days) and same_array(x, ref_x)
    short = {k: (d[-25:], c[-25:]) for k, (d, c) in arrays.items()}    # windows barely past 20 days
    assert all(same_array(a, b) for a, b in zip(feature_matrix(short), _reference_feature_matrix(short)))
    assert all(same_array(a, b) for a, b in zip(feature_matrix({}), _reference_feature_matrix({})))
    det = HMMRegimeDetector.load()
    new = det._detect(snap)
    monkeypatch.setattr(regime, "feature_matrix", _reference_feature_matrix)
    old = det._detect(snap)
    assert (new.regime, new.confidence, new.details) == (old.regime, old.confidence, old.details)
    assert new.regime is not regime.Regime.UNKNOWN
