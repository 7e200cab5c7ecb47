"""The regime step's speed-ups change no bit (issue #24): every new path is compared with a verbatim copy of
the code it replaced (the ``_reference_*`` functions below), on the shared real data and on edge cases.

* the emission density (``regime_em.diag_log_density``) against hmmlearn's own function;
* the EM restarts of ``HMMRegimeDetector.fit`` (``regime_em.fit_restarts``, serial and over the process
  pool) against the restart loop ``fit`` had inline: every restart's fitted parameters, log-likelihood,
  iterations and convergence history, and the whole fitted model (means, variances, transmat, start
  probabilities, chosen restart, log-likelihood, state names) at refit dates of the 2020-2024 backtest;
* the daily closes read once per folder (``regime_features.load_daily_closes``) against the function that
  re-read them on every refit.
"""
from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hydra_engine import regime_em
from hydra_engine.data.catalog import read_parquet
from hydra_engine.regime import HMMRegimeDetector
from hydra_engine.regime_features import (ASSETS, BTC_DAILY, BTC_HOURLY, EQUITY_DIRS, VIX_FILES, VIX_SYMBOL,
                                          _contiguous_tail, _daily_arrays_from_bars, _index_from_days, _utc_days,
                                          build_features, load_daily_closes)


# --------------------------------------------------------------------------- verbatim references
def _reference_log_density_diag(X, means, covars):
    """hmmlearn 0.3.3 ``hmmlearn.stats._log_multivariate_normal_density_diag``, verbatim."""
    nc, nf = means.shape
    # Avoid 0 log 0 = nan in degenerate covariance case.
    covars = np.maximum(covars, np.finfo(float).tiny)
    with np.errstate(over="ignore"):
        return -0.5 * (nf * np.log(2 * np.pi)
                       + np.log(covars).sum(axis=-1)
                       + ((X[:, None, :] - means) ** 2 / covars).sum(axis=-1))


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


# --------------------------------------------------------------------------- the emission density
def test_density_is_hmmlearns_bit_for_bit_on_real_features_in_both_layouts(closes_2024):
    _, xc = training_matrix(closes_2024, "2021-01-01")
    assert xc.flags.f_contiguous and not xc.flags.c_contiguous       # what fit hands to hmmlearn
    rng = np.random.default_rng(7)
    m, _ = regime_em.fit_restart(xc, 7, 5, 3)                         # realistic means and variances
    for means, covars in [(m.means_, m._covars_), (rng.standard_normal((7, xc.shape[1])), rng.random((7, xc.shape[1])))]:
        for x in (xc, np.ascontiguousarray(xc), xc[:1], xc[:2]):
            assert same_array(regime_em.diag_log_density(x, means, covars), _reference_log_density_diag(x, means, covars))


@pytest.mark.parametrize("order", ["F", "C"])
def test_density_is_hmmlearns_bit_for_bit_on_adversarial_values(order):
    """Magnitudes 1e-8..1e8 (so the order of the feature sum shows), NaN, inf, zero and tiny variances,
    1..20 and 130 features, 0..300 days, 1..8 states, non-contiguous inputs."""
    rng = np.random.default_rng(11)
    for nf in list(range(1, 21)) + [130]:
        for _ in range(6):
            ns, nc = int(rng.integers(0, 300)), int(rng.integers(1, 9))
            x = np.asarray(rng.standard_normal((ns, nf)) * 10.0 ** rng.integers(-8, 9, (ns, nf)), order=order)
            x[rng.random(x.shape) < 0.03] = np.nan
            x[rng.random(x.shape) < 0.01] = np.inf
            means = rng.standard_normal((nc, nf)) * 10.0 ** rng.integers(-8, 9, (nc, nf))
            covars = rng.random((nc, nf)) * 10.0 ** rng.integers(-12, 9, (nc, nf))
            covars[rng.random(covars.shape) < 0.05] = 0.0
            for xx, mm in [(x, means), (x[::2], means), (x, np.asfortranarray(means))]:
                assert same_array(regime_em.diag_log_density(xx, mm, covars), _reference_log_density_diag(xx, mm, covars)), (nf, ns, nc)


# --------------------------------------------------------------------------- the EM restarts and the fit
class CountingPool(regime_em.ProcessPoolExecutor):
    started = submitted = 0

    def __init__(self, *args, **kwargs):
        type(self).started += 1
        super().__init__(*args, **kwargs)

    def submit(self, *args, **kwargs):
        type(self).submitted += 1
        return super().submit(*args, **kwargs)


@pytest.mark.parametrize("before,n_init", [("2020-01-01", 8), ("2023-04-01", 8), ("2021-01-01", 3)])
def test_fit_is_the_reference_fit_serial_and_over_the_pool(closes_2024, monkeypatch, before, n_init):
    """At refit dates of the 2020-2024 backtest (its first refit, a later one; and fewer restarts): every
    restart equals the old inline loop's, and so does the whole fitted model, with the pool and without."""
    frame, _ = training_matrix(closes_2024, before)
    seeds = list(range(n_init))
    runs = {}

    def recording(impl, name):
        def fit_restarts(xc, n_states, n_iter, random_states):
            runs[name] = impl(xc, n_states, n_iter, random_states)
            return runs[name]
        return fit_restarts

    models = {}
    fit_restarts = regime_em.fit_restarts
    monkeypatch.setattr(regime_em, "ProcessPoolExecutor", CountingPool)
    CountingPool.started = CountingPool.submitted = 0
    for name, impl in [("reference", _reference_restarts),
                       ("serial", lambda *a: fit_restarts(*a, workers=1)),
                       ("pool", lambda *a: fit_restarts(*a, workers=2))]:
        with monkeypatch.context() as m:
            m.setattr(regime_em, "fit_restarts", recording(impl, name))
            models[name] = HMMRegimeDetector().fit(frame, seed=0, n_init=n_init).params
        models[name]["training"].pop("fitted_at")
    assert CountingPool.started == 1 and CountingPool.submitted >= 1  # the forked process did fit restarts
    assert [restart_state(*r) for r in runs["serial"]] == [restart_state(*r) for r in runs["reference"]]
    assert [restart_state(*r) for r in runs["pool"]] == [restart_state(*r) for r in runs["reference"]]
    assert models["serial"] == models["reference"] and models["pool"] == models["reference"]
    assert len(runs["reference"]) == len(seeds) and all(m is not None for m, _ in runs["reference"])
    # the chosen restart is the first best (ties included), as the loop picked it
    lls = [ll for _, ll in runs["reference"]]
    assert models["pool"]["training"]["log_likelihood"] == max(lls)


def test_ties_keep_the_first_restart_and_the_pool_returns_restarts_in_order(closes_2024):
    """Three restarts with the same seed tie exactly; the pool hands them back in order, like the loop."""
    _, xc = training_matrix(closes_2024, "2012-06-01")
    assert len(xc) >= HMMRegimeDetector().days_needed           # a short history: about two years
    serial = regime_em.fit_restarts(xc, 7, 300, [4, 4, 9, 4], workers=1)
    pooled = regime_em.fit_restarts(xc, 7, 300, [4, 4, 9, 4], workers=3)
    assert [restart_state(*r) for r in pooled] == [restart_state(*r) for r in serial]
    assert [restart_state(*r) for r in serial] == [restart_state(*r) for r in _reference_restarts(xc, 7, 300, [4, 4, 9, 4])]
    assert restart_state(*serial[0]) == restart_state(*serial[1]) == restart_state(*serial[3])


def test_a_pool_that_cannot_start_falls_back_to_the_same_serial_result(closes_2024, monkeypatch, caplog):
    _, xc = training_matrix(closes_2024, "2012-06-01")

    class Broken:
        def __init__(self, *a, **k):
            raise OSError("no processes left")

    monkeypatch.setattr(regime_em, "ProcessPoolExecutor", Broken)
    with caplog.at_level(logging.WARNING, logger="hydra_engine.regime_em"):
        got = regime_em.fit_restarts(xc, 7, 300, [0, 1], workers=2)
    assert "one by one" in caplog.text
    assert [restart_state(*r) for r in got] == [restart_state(*r) for r in _reference_restarts(xc, 7, 300, [0, 1])]


def test_a_pool_that_breaks_mid_fit_falls_back_to_the_same_serial_result(closes_2024, monkeypatch, caplog):
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool
    _, xc = training_matrix(closes_2024, "2012-06-01")

    class Breaking(regime_em.ProcessPoolExecutor):
        def submit(self, *a, **k):       # what a pool whose worker died hands back
            future = Future()
            future.set_exception(BrokenProcessPool("a worker died"))
            return future

    monkeypatch.setattr(regime_em, "ProcessPoolExecutor", Breaking)
    with caplog.at_level(logging.WARNING, logger="hydra_engine.regime_em"):
        got = regime_em.fit_restarts(xc, 7, 300, [0, 1, 2], workers=2)
    assert "one by one" in caplog.text
    assert [restart_state(*r) for r in got] == [restart_state(*r) for r in _reference_restarts(xc, 7, 300, [0, 1, 2])]


def test_bad_input_fails_the_same_way():
    """Days with a missing value never reach fit (it drops them); if they did, every path refuses them alike."""
    rng = np.random.default_rng(3)
    x = np.asfortranarray(np.column_stack([rng.standard_normal(200), np.where(rng.random(200) < 0.5, np.nan, 1.0)]))
    errors = []
    for run in (lambda: _reference_restarts(x, 3, 20, [0, 1]), lambda: regime_em.fit_restarts(x, 3, 20, [0, 1], workers=1),
                lambda: regime_em.fit_restarts(x, 3, 20, [0, 1], workers=2)):
        with pytest.raises(ValueError) as exc:
            run()
        errors.append(str(exc.value))
    assert errors[0] == errors[1] == errors[2]


def test_worker_count(monkeypatch):
    monkeypatch.setenv(regime_em.WORKERS_ENV, "1")
    assert regime_em.fit_workers() == 1
    monkeypatch.setenv(regime_em.WORKERS_ENV, "two")
    with pytest.raises(ValueError, match="HYDRA_REGIME_FIT_WORKERS"):
        regime_em.fit_workers()
    monkeypatch.setenv(regime_em.WORKERS_ENV, "0")
    with pytest.raises(ValueError, match="HYDRA_REGIME_FIT_WORKERS"):
        regime_em.fit_workers()
    monkeypatch.setenv(regime_em.WORKERS_ENV, " 3 ")
    assert regime_em.fit_workers() == 3
    monkeypatch.delenv(regime_em.WORKERS_ENV)
    assert regime_em.fit_workers() == 1                              # serial unless asked (see regime_em)


# --------------------------------------------------------------------------- the daily closes
def assert_same_closes(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for k in want:
        pd.testing.assert_series_equal(got[k], want[k], check_exact=True, check_freq=True)
        assert got[k].index.dtype == want[k].index.dtype


def test_daily_closes_read_once_equal_the_reread_closes(shared_data):
    for end in [None, "2020-01-01", pd.Timestamp("2021-04-01"), pd.Timestamp("2024-07-01", tz="UTC"), "2010-02-01", "1990-01-01"]:
        assert_same_closes(load_daily_closes(shared_data, end), _reference_load_daily_closes(shared_data, end))
    first = load_daily_closes(shared_data, "2022-01-01")
    first["SPY"].iloc[:] = -1.0                                      # a caller's edits never reach the cache
    assert_same_closes(load_daily_closes(shared_data, "2022-01-01"), _reference_load_daily_closes(shared_data, "2022-01-01"))


def test_daily_closes_follow_a_changed_file(tmp_path):
    vix = tmp_path / VIX_FILES[1]
    vix.parent.mkdir(parents=True)
    vix.write_text("date,close\n2024-01-02,13.2\n2024-01-03,14.0\n")
    assert load_daily_closes(tmp_path)[VIX_SYMBOL].tolist() == [13.2, 14.0]
    vix.write_text("date,close\n2024-01-02,13.2\n2024-01-03,14.5\n2024-01-04,15.0\n")
    os.utime(vix, ns=(1, 1))
    assert_same_closes(load_daily_closes(tmp_path), _reference_load_daily_closes(tmp_path))
    vix.unlink()
    assert load_daily_closes(tmp_path) == {} == _reference_load_daily_closes(tmp_path)
