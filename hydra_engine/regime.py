"""Regime layer: reads the market state and names the regime.

Two detectors implement ``detect(market) -> RegimeReading``:

* :class:`HMMRegimeDetector` (issue #4) — a Gaussian hidden Markov model (hmmlearn) over daily
  cross-asset features (:mod:`hydra_engine.regime_features`), fitted offline by
  ``hydra train --component regime`` and persisted as plain JSON in ``models/regime_hmm.json``;
* :class:`TrendVolRule` — the interim volatility/trend rule, kept as the documented fallback when no
  fitted model is available (:func:`load_detector` picks it then).

Why an HMM: regimes are persistent hidden states that show through noisy returns and volatilities;
the transition matrix encodes persistence and the filtered posterior gives an honest confidence.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np
import pandas as pd

from .config import PROJECT_ROOT
from .domain import Regime, RegimeReading
from .ports import BarSeries, MarketSnapshot
from .regime_features import ASSETS, FEATURES, VIX_SYMBOL, daily_close_arrays_from_snapshot, feature_matrix

# Which features the model uses. TLT/GLD volatility are left out: they mostly repeat the SPY/HYG/VIX
# volatility signal, and with a diagonal covariance repeated evidence only makes the posterior
# overconfident and the fit multi-modal (refits with other seeds disagreed far more with them).
CORE_FEATURES = ("spy_ret20", "spy_lvol20", "hyg_ret20", "hyg_lvol20", "tlt_ret20", "gld_ret20",
                 "vix_log", "vix_chg5")
EXTENSION_FEATURES = ("btc_ret20", "btc_lvol20")
DEFAULT_MODEL_PATH = PROJECT_ROOT / "models" / "regime_hmm.json"
MODEL_FORMAT = "hydra-regime-hmm/1"
REGIMES = [r for r in Regime if r is not Regime.UNKNOWN]
# Restart i of a fit with seed s draws from numpy seed s * SEED_STRIDE + i, and numpy seeds stop at
# 2**32 - 1: so a seed is 0..MAX_SEED (with fewer than SEED_STRIDE restarts).
SEED_STRIDE = 1000
MAX_SEED = (2**32 - SEED_STRIDE) // SEED_STRIDE
MIN_STATES = 2        # one hidden state is one regime on every day: nothing is detected
DAYS_PER_STATE = 20   # training days a hidden state needs for its means, variances and transitions
_log = logging.getLogger(__name__)


class RegimeDetector(Protocol):
    """The regime-detector plugin kind (entry-point group ``hydra.regime_detectors``). Each detector class
    declares ``interface_version`` = :data:`~hydra_engine.plugin_kinds.REGIME_DETECTOR_INTERFACE_VERSION`,
    the version of this interface it was written for."""

    name: str

    def detect(self, market: MarketSnapshot) -> RegimeReading: ...


class TrendVolRule:
    """Interim rule on the reference symbol's closes (SPY daily by default, BTC/USD as fallback).

    - 20-bar realised volatility at or above the 90th percentile of the visible history: CRASH when
      the 20-bar return is below -8 %, else HIGH_VOL;
    - otherwise a 20-bar return beyond ±2 %: TRENDING_UP / TRENDING_DOWN;
    - otherwise MEAN_REVERTING. Fewer than 60 bars: UNKNOWN (entries restricted)."""

    name = "trend_vol_rule"
    interface_version = 1

    def __init__(self, reference_symbols: tuple[str, ...] = ("SPY", "BTC/USD"), lookback: int = 20):
        self.reference_symbols = reference_symbols
        self.lookback = lookback

    def detect(self, market: MarketSnapshot) -> RegimeReading:
        for symbol in self.reference_symbols:
            bars = market.bars.get(symbol)
            if bars is not None and len(bars) >= 3 * self.lookback + 1:
                return self._classify(symbol, bars, market.now)
        return RegimeReading(Regime.UNKNOWN, 0.0, self.name, market.now,
                             {"why": f"fewer than {3 * self.lookback + 1} bars on {self.reference_symbols}"})

    def _classify(self, symbol: str, bars: BarSeries, now: datetime) -> RegimeReading:
        with np.errstate(divide="ignore", invalid="ignore"):
            rets = np.diff(np.log(bars.close))
        rets = rets[np.isfinite(rets)]
        n = self.lookback
        if len(rets) < 3 * n:
            return RegimeReading(Regime.UNKNOWN, 0.0, self.name, now, {"why": "too few finite returns"})
        vols = np.lib.stride_tricks.sliding_window_view(rets, n).std(axis=1)
        vol_now = float(vols[-1])
        pct = float((vols < vol_now).mean())
        ret_n = float(rets[-n:].sum())
        if pct >= 0.9:
            regime = Regime.CRASH if ret_n < -0.08 else Regime.HIGH_VOL
            conf = pct
        elif abs(ret_n) > 0.02:
            regime = Regime.TRENDING_UP if ret_n > 0 else Regime.TRENDING_DOWN
            conf = min(1.0, abs(ret_n) / 0.06)
        else:
            regime = Regime.MEAN_REVERTING
            conf = 1.0 - abs(ret_n) / 0.02
        # as_of_day: the day its inputs end, so that a stalled feed reads UNKNOWN (regime_freshness, #17)
        details = {"symbol": symbol, "return_20": round(ret_n, 6), "vol_20": round(vol_now, 6),
                   "vol_percentile": round(pct, 4),
                   "as_of_day": datetime.fromtimestamp(int(bars.ts[-1]), timezone.utc).date().isoformat()}
        return RegimeReading(regime, round(max(0.0, min(1.0, conf)), 4), self.name, now, details)


# --------------------------------------------------------------------------- HMM detector
@dataclass(frozen=True)
class StateRule:
    """Deterministic map from a hidden state's mean SPY 20-day log return (``ret20``) and mean
    annualised realised volatility (``vol``) to a named regime. Fixed thresholds in market units
    (not ranks) are why labels do not flip between refits: a state is named by what it *is*.

    First match wins:
      1. ``vol >= high_vol``: CRASH if ``ret20 <= crash_ret20`` or (``vol >= crash_vol`` and
         ``ret20 < 0``); RECOVERY if ``ret20 >= recovery_ret20``; else HIGH_VOL;
      2. ``ret20 >= trend_ret20``: TRENDING_UP;  3. ``ret20 <= -trend_ret20``: TRENDING_DOWN;
      4. otherwise MEAN_REVERTING (calm, no drift)."""

    high_vol: float = 0.22        # annualised; about the top quartile of VIX since 1990
    crash_vol: float = 0.40
    crash_ret20: float = -0.05    # -5 % over 20 trading days
    recovery_ret20: float = 0.02
    trend_ret20: float = 0.01     # about ±13 % a year

    def label(self, ret20: float, vol: float) -> Regime:
        if vol >= self.high_vol:
            if ret20 <= self.crash_ret20 or (vol >= self.crash_vol and ret20 < 0):
                return Regime.CRASH
            return Regime.RECOVERY if ret20 >= self.recovery_ret20 else Regime.HIGH_VOL
        if ret20 >= self.trend_ret20:
            return Regime.TRENDING_UP
        if ret20 <= -self.trend_ret20:
            return Regime.TRENDING_DOWN
        return Regime.MEAN_REVERTING


@dataclass(frozen=True)
class Hysteresis:
    """Keeps the regime from flapping: switch only when another regime's posterior is at least
    ``threshold`` on ``confirm`` consecutive daily readings. The first reading is taken as is."""

    threshold: float = 0.6
    confirm: int = 3

    def run(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Held regime index and the streak behind a pending switch, per row of regime posteriors."""
        probs = np.asarray(probs, float)
        held = np.empty(len(probs), int)
        streak = np.zeros(len(probs), int)
        if not len(probs):
            return held, streak
        tops = probs.argmax(axis=1)
        top_p = probs[np.arange(len(probs)), tops].tolist()
        cur, cand, n = -1, -1, 0
        for t, top in enumerate(tops.tolist()):
            if cur < 0:
                cur = top
            elif top != cur and top_p[t] >= self.threshold:
                n = n + 1 if top == cand else 1
                cand = top
                if n >= self.confirm:
                    cur, cand, n = top, -1, 0
            else:
                cand, n = -1, 0
            held[t], streak[t] = cur, n
        return held, streak


def _masked_loglik(x: np.ndarray, means: np.ndarray, variances: np.ndarray) -> np.ndarray:
    """Per-row, per-state log density of a diagonal Gaussian over the observed (non-NaN) features.

    Dropping a missing dimension is exact marginalisation for a diagonal covariance, so BTC before
    2019-10 or a symbol absent from a snapshot costs information, never correctness."""
    obs = np.isfinite(x)
    z = np.where(obs[:, None, :], x[:, None, :] - means[None], 0.0)
    terms = -0.5 * (np.log(2 * np.pi * variances)[None] + z * z / variances[None])
    return np.where(obs[:, None, :], terms, 0.0).sum(axis=2)


try:  # hmmlearn's compiled forward recursion (what GaussianHMM.score runs with implementation="scaling")
    from hmmlearn._hmmc import forward_scaling as _forward_scaling
except ImportError:  # pragma: no cover - only if a future hmmlearn moves it
    _forward_scaling = None


def _forward_python(start: np.ndarray, transmat: np.ndarray, lik: np.ndarray) -> np.ndarray:
    """Filtered state posteriors by the normalised forward recursion; a day whose likelihood is zero
    under every reachable state resets to uniform instead of dividing by zero."""
    out = np.empty_like(lik)
    prev = start
    uniform = np.full(len(start), 1.0 / len(start))
    for t in range(len(lik)):
        cur = (prev @ transmat if t else prev) * lik[t]
        total = cur.sum()
        prev = cur / total if total > 0 else uniform
        out[t] = prev
    return out


def _stationary(transmat: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eig(transmat.T)
    v = np.abs(np.real(vecs[:, np.argmin(np.abs(vals - 1))]))
    return v / v.sum()


@dataclass
class HMMRegimeDetector:
    """Gaussian HMM regime detector over :data:`~hydra_engine.regime_features.FEATURES`.

    Fitting (:meth:`fit`): hmmlearn ``GaussianHMM`` (diagonal covariance, ``n_init`` restarts, best
    log-likelihood kept) on the *core* features (:data:`CORE_FEATURES`) over the days where every
    core feature exists (2010-02 on, VIX being the youngest); BTC, which starts 2019-10, then gets
    per-state means/variances from one posterior-weighted M-step over the days it exists, so five
    years of crypto do not shorten fifteen years of cross-asset history. Features are standardised with the
    training span's mean/std only. States are sorted by volatility so the JSON is stable, and named
    by :class:`StateRule`.

    Detection: the *filtered* (causal) posterior — only data up to each day — started from the
    chain's stationary distribution; regime probability = sum over the states with that name;
    :class:`Hysteresis` over the daily readings; confidence = held regime's posterior."""

    n_states: int = 7
    hysteresis: Hysteresis = field(default_factory=Hysteresis)
    rule: StateRule = field(default_factory=StateRule)
    min_days: int = 60               # feature rows needed before detect answers
    min_features: int = 4            # observed features needed on the last day
    core_features: tuple[str, ...] = CORE_FEATURES
    extension_features: tuple[str, ...] = EXTENSION_FEATURES
    name: str = "hmm_regime"
    interface_version: ClassVar[int] = 1
    params: dict | None = None       # fitted parameters (see to_dict); None until fit/load
    _cache_key: tuple | None = field(default=None, init=False, repr=False, compare=False)
    _cached: RegimeReading | None = field(default=None, init=False, repr=False, compare=False)

    # ------------------------------------------------------------------ fitting
    @property
    def days_needed(self) -> int:
        """Complete training days (every core feature present) a fit needs."""
        return max(self.min_days, DAYS_PER_STATE * self.n_states)

    def _training_rows(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str], pd.DataFrame]:
        """(the model's columns of ``frame``, the core features fitted by EM, the days with all of them).
        A core feature with fewer than ``min_days`` values is left out; SPY's never are: they name the states."""
        wanted = list(self.core_features) + [c for c in self.extension_features if c not in self.core_features]
        frame = frame[[c for c in wanted if c in frame.columns]].dropna(how="all")
        core = [c for c in self.core_features if c in frame
                and (frame[c].count() >= self.min_days or c in ("spy_ret20", "spy_lvol20"))]
        return frame, core, frame[core].dropna()

    def training_days(self, frame: pd.DataFrame) -> int:
        """How many days of ``frame`` a fit would train on (0 without SPY's features); compare with
        :attr:`days_needed` to refuse a short span before fitting."""
        frame, core, rows = self._training_rows(frame)
        return len(rows) if {"spy_ret20", "spy_lvol20"} <= set(core) else 0

    def fit(self, frame: pd.DataFrame, seed: int = 0, n_init: int = 8, n_iter: int = 300) -> "HMMRegimeDetector":
        from .regime_em import fit_restarts  # imported here: only training needs hmmlearn and sklearn

        if self.n_states < MIN_STATES:
            raise ValueError(f"n_states {self.n_states}: at least {MIN_STATES} hidden states are needed")
        if not 0 <= seed <= MAX_SEED or not 1 <= n_init <= SEED_STRIDE:
            raise ValueError(f"seed {seed} must be 0..{MAX_SEED} and n_init {n_init} 1..{SEED_STRIDE}")
        self._cache_key = self._cached = None  # a refit invalidates the last reading
        frame, core, rows = self._training_rows(frame)
        if frame.get("spy_ret20") is None or frame["spy_lvol20"].count() < self.min_days:
            raise ValueError("the SPY features are required: they name the states")
        if len(rows) < self.days_needed:
            raise ValueError(f"only {len(rows)} complete training days for {len(core)} core features; "
                             f"need {self.days_needed}")
        train = frame.loc[rows.index]
        mu, sd = train.mean(), train.std().replace(0.0, 1.0)
        xc = ((rows - mu[core]) / sd[core]).to_numpy()
        best, best_ll = None, -math.inf
        # the restarts, in order (regime_em); the first strictly best log-likelihood wins, as it always has
        restarts = [seed * SEED_STRIDE + i for i in range(n_init)]
        for i, (m, ll) in enumerate(fit_restarts(xc, self.n_states, n_iter, restarts)):
            if m is None:   # degenerate restart: try the next one
                _log.warning("HMM restart %d failed: %s", i, ll)
                continue
            if np.isfinite(ll) and ll > best_ll:
                best, best_ll = m, ll
        if best is None:
            raise RuntimeError("every HMM restart failed")
        post = best.predict_proba(xc)                           # smoothed, for estimation only
        cols = list(train.columns)
        means = np.zeros((self.n_states, len(cols)))
        variances = np.ones((self.n_states, len(cols)))
        xall = ((train - mu) / sd).to_numpy()
        dropped = []
        for j, c in enumerate(cols):
            if c in core:
                means[:, j] = best.means_[:, core.index(c)]
                variances[:, j] = np.diagonal(best.covars_, axis1=1, axis2=2)[:, core.index(c)]
                continue
            ok = np.isfinite(xall[:, j])
            if ok.sum() < self.min_days:
                dropped.append(c)
                continue
            w = post[ok]
            n = w.sum(axis=0) + 1e-9
            means[:, j] = w.T @ xall[ok, j] / n
            variances[:, j] = np.maximum(w.T @ (xall[ok, j] ** 2) / n - means[:, j] ** 2, 1e-3)
        keep = [j for j, c in enumerate(cols) if c not in dropped]
        cols = [cols[j] for j in keep]
        means, variances = means[:, keep], variances[:, keep]
        # canonical state order (by SPY volatility, then return): the same market, the same JSON
        spy_v, spy_r = cols.index("spy_lvol20"), cols.index("spy_ret20")
        order = np.lexsort((means[:, spy_r], means[:, spy_v]))
        transmat = best.transmat_[np.ix_(order, order)]
        means, variances = means[order], variances[order]
        argmax_days = np.bincount(np.argsort(order)[post.argmax(axis=1)], minlength=self.n_states)
        self.params = {
            "format": MODEL_FORMAT,
            "features": cols, "core_features": [c for c in cols if c in core], "dropped_features": dropped,
            "scaler_mean": [float(mu[c]) for c in cols], "scaler_std": [float(sd[c]) for c in cols],
            "means": means.tolist(), "variances": variances.tolist(),
            "transmat": transmat.tolist(), "startprob": _stationary(transmat).tolist(),
            "state_regimes": [], "state_stats": [],
            "training": {"start": train.index[0].date().isoformat(), "end": train.index[-1].date().isoformat(),
                         "days": int(len(rows)), "seed": int(seed), "n_init": int(n_init),
                         "log_likelihood": float(best_ll), "log_likelihood_per_day": float(best_ll / len(xc)),
                         "converged": bool(best.monitor_.converged), "iterations": int(best.monitor_.iter),
                         "fitted_at": datetime.now(timezone.utc).isoformat(timespec="seconds")},
            "hysteresis": asdict(self.hysteresis), "rule": asdict(self.rule),
        }
        k_free = self.n_states - 1 + self.n_states * (self.n_states - 1) + 2 * self.n_states * len(core)
        self.params["training"]["bic"] = float(-2 * best_ll + k_free * math.log(len(xc)))
        for k in range(self.n_states):
            raw = {c: float(means[k, j] * sd[c] + mu[c]) for j, c in enumerate(cols)}
            ret20, vol = raw["spy_ret20"], math.exp(raw["spy_lvol20"])
            if "vix_log" in raw:  # implied (VIX) or realised, whichever is higher: both are SPX vol
                vol = max(vol, math.exp(raw["vix_log"]) / 100)
            regime = self.rule.label(ret20, vol)
            self.params["state_regimes"].append(regime.value)
            stay = transmat[k, k]
            self.params["state_stats"].append({
                "state": k, "regime": regime.value, "spy_ret20": round(ret20, 5), "spy_vol": round(math.exp(raw["spy_lvol20"]), 4),
                "rule_vol": round(vol, 4),
                "vix": round(math.exp(raw["vix_log"]), 2) if "vix_log" in raw else None,
                "btc_ret20": round(raw["btc_ret20"], 4) if "btc_ret20" in raw else None,
                "days_argmax": int(argmax_days[k]), "expected_duration_days": round(1 / max(1e-9, 1 - stay), 1),
                "mean_std": {c: round(float(means[k, j]), 4) for j, c in enumerate(cols)},
            })
        return self

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        self._require_fitted()
        return self.params

    def save(self, path: str | Path = DEFAULT_MODEL_PATH) -> Path:
        """Write the parameters as JSON (readable, diff-able, no pickle) and the model card beside it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")
        path.with_name(path.stem + ".card.md").write_text(self.card(), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path = DEFAULT_MODEL_PATH) -> "HMMRegimeDetector":
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("format") != MODEL_FORMAT:
            raise ValueError(f"{path}: format {data.get('format')!r}, expected {MODEL_FORMAT}")
        return cls(n_states=len(data["means"]), hysteresis=Hysteresis(**data["hysteresis"]),
                   rule=StateRule(**data["rule"]), params=data)

    # ------------------------------------------------------------------ inference
    def _require_fitted(self) -> None:
        if self.params is None:
            raise RuntimeError("HMMRegimeDetector is not fitted: call fit() or load()")

    def state_posteriors(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Filtered P(state_t | features_1..t) per day: causal, so a backtest never peeks ahead."""
        self._require_fitted()
        post = self._filtered(frame.reindex(columns=self.params["features"]).to_numpy(float))
        return pd.DataFrame(post, index=frame.index, columns=range(self.n_states))

    def _filtered(self, x: np.ndarray) -> np.ndarray:
        """Forward filter over raw feature rows (columns = the model's ``features``), started from the
        chain's stationary distribution. Emissions are computed here (hmmlearn cannot marginalise
        NaN features); the recursion itself is hmmlearn's compiled scaled forward pass, whose
        per-day normalised alphas are exactly the filtered posteriors (``_forward_python`` is the same
        recursion, used if that private routine is ever missing, and the test reference)."""
        p = self.params
        x = (x - np.asarray(p["scaler_mean"])) / np.asarray(p["scaler_std"])
        ll = _masked_loglik(x, np.asarray(p["means"]), np.asarray(p["variances"]))
        lik = np.exp(ll - ll.max(axis=1, keepdims=True))   # per-row scaling: only ratios matter
        start, a = np.asarray(p["startprob"], float), np.asarray(p["transmat"], float)
        if _forward_scaling is not None and len(lik):
            try:
                return _forward_scaling(start, a, np.ascontiguousarray(lik))[1]
            except ValueError:   # a day no state can explain (all-zero row): the loop below copes
                pass
        return _forward_python(start, a, lik)

    def _state_to_regime(self) -> np.ndarray:
        """0/1 matrix (states × :data:`REGIMES`): regime probability = posterior @ this."""
        names = self.params["state_regimes"]
        return np.array([[1.0 if n == r.value else 0.0 for r in REGIMES] for n in names])

    def regime_probabilities(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Filtered probability of each named regime per day (sum over its states)."""
        post = self.state_posteriors(frame).to_numpy()
        return pd.DataFrame(post @ self._state_to_regime(), index=frame.index, columns=[r.value for r in REGIMES])

    def label_history(self, frame: pd.DataFrame, hysteresis: bool = True) -> pd.Series:
        """Regime per day (values are :class:`Regime`), causal; with the detector's hysteresis by default."""
        probs = self.regime_probabilities(frame)
        idx = self.hysteresis.run(probs.to_numpy())[0] if hysteresis else probs.to_numpy().argmax(axis=1)
        return pd.Series([REGIMES[i] for i in idx], index=frame.index, name="regime")

    def detect(self, market: MarketSnapshot) -> RegimeReading:
        """The regime is a daily reading: it is recomputed only when some feature symbol has a new
        daily close (for hourly crypto, a new UTC day), otherwise the last reading is returned with
        the new time. This keeps the hourly loop from re-filtering the same days (bench/RESULTS.md)."""
        key = self._daily_key(market)
        if key is not None and key == self._cache_key:
            r = self._cached
            return RegimeReading(r.regime, r.confidence, r.detector, market.now, r.details)
        reading = self._detect(market)
        self._cache_key, self._cached = key, reading
        return reading

    horizon_reads_data = True   # the replay driver passes its data source (the next bars' close times)

    def horizon_regime_until(self, market: MarketSnapshot, data=None):
        """Event-horizon replay: no label change before the daily key can change (horizon_promises.py)."""
        from .horizon_promises import hmm_regime_until
        return hmm_regime_until(self, market, data)

    @staticmethod
    def _daily_key(market: MarketSnapshot) -> tuple | None:
        key = []
        for symbol in [s for s, _ in ASSETS.values()] + [VIX_SYMBOL]:
            bars = market.bars.get(symbol)
            key.append(None if bars is None or not len(bars)
                       else (int(bars.ts[-1]) + bars.interval_s) // 86400)
        return tuple(key)

    def _detect(self, market: MarketSnapshot) -> RegimeReading:
        """One reading from the snapshot's whole visible history, in numpy (no pandas on this path:
        it runs on every new daily close inside the hourly loop)."""
        now = market.now
        if self.params is None:
            return RegimeReading(Regime.UNKNOWN, 0.0, self.name, now, {"why": "no fitted regime model loaded"})
        features = self.params["features"]
        try:
            days, x = feature_matrix(daily_close_arrays_from_snapshot(market))
            rows = np.isfinite(x).any(axis=1)
            days, x = days[rows], x[:, [FEATURES.index(c) for c in features]][rows]
            if len(days) < self.min_days:
                return RegimeReading(Regime.UNKNOWN, 0.0, self.name, now, {
                    "why": f"{len(days)} days of features in the snapshot, need {self.min_days}"})
            present = np.isfinite(x[-1])
            missing = [c for c, ok in zip(features, present) if not ok]
            last_day = datetime.fromtimestamp(int(days[-1]) * 86_400, timezone.utc).date()
            if int(present.sum()) < self.min_features:
                return RegimeReading(Regime.UNKNOWN, 0.0, self.name, now, {
                    "why": f"only {int(present.sum())} of {len(features)} features on {last_day}, "
                           f"need {self.min_features}", "missing": missing})
            probs = self._filtered(x) @ self._state_to_regime()
            held, streak = self.hysteresis.run(probs)
        except Exception as exc:  # a bad snapshot must not stop the engine: say why, restrict entries
            _log.exception("regime detection failed")
            return RegimeReading(Regime.UNKNOWN, 0.0, self.name, now, {"why": f"detection failed: {exc!r}"})
        last = probs[-1]
        regime = REGIMES[int(held[-1])]
        top = int(np.argmax(last))
        details = {
            "as_of_day": last_day.isoformat(),
            "raw_regime": REGIMES[top].value, "raw_confidence": round(float(last[top]), 4),
            "pending_switch_streak": int(streak[-1]),
            "probabilities": {r.value: round(float(v), 4) for r, v in zip(REGIMES, last)},
            "missing_features": missing,
            "model_trained_to": self.params["training"]["end"],
        }
        return RegimeReading(regime, round(float(last[REGIMES.index(regime)]), 4), self.name, now, details)

    # ------------------------------------------------------------------ model card
    def card(self) -> str:
        p = self.to_dict()
        t = p["training"]
        lines = [
            "# Model card: HMM regime detector (`models/regime_hmm.json`)", "",
            "Gaussian hidden Markov model (hmmlearn `GaussianHMM`, diagonal covariance) over daily "
            "cross-asset features; hidden states are named by a fixed rule over their mean SPY return "
            "and volatility. Produced by `hydra train --component regime`.", "",
            f"- fitted at: {t['fitted_at']}",
            f"- training span: {t['start']} → {t['end']} ({t['days']} days with every core feature)",
            f"- states: {self.n_states}; restarts: {t['n_init']}; seed: {t['seed']}; "
            f"converged: {t['converged']} after {t['iterations']} iterations",
            f"- log-likelihood (core features, standardised): {t['log_likelihood']:.1f} "
            f"({t['log_likelihood_per_day']:.3f} per day); BIC {t['bic']:.1f}",
            f"- core features (fitted by EM): {', '.join(p['core_features'])}",
            f"- extension features (one posterior-weighted M-step over the days they exist): "
            f"{', '.join(c for c in p['features'] if c not in p['core_features']) or 'none'}",
            f"- dropped (too few observations): {', '.join(p['dropped_features']) or 'none'}",
            "- standardisation: training-span mean/std per feature (stored in the JSON)",
            f"- state → regime rule: {p['rule']} (volatility = max(SPY realised, VIX/100))",
            f"- regimes no state maps to (never reported by this fit): "
            f"{', '.join(r.value for r in REGIMES if r.value not in p['state_regimes']) or 'none'}",
            f"- hysteresis: switch after {p['hysteresis']['confirm']} consecutive daily readings with "
            f"posterior ≥ {p['hysteresis']['threshold']}", "",
            "| state | regime | SPY 20d return | SPY vol (ann.) | VIX | BTC 20d return | days (argmax) | expected duration (days) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for s in p["state_stats"]:
            fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
            lines.append(f"| {s['state']} | {s['regime']} | {s['spy_ret20']:+.2%} | {s['spy_vol']:.1%} | "
                         f"{fmt(s['vix'], '.1f')} | {fmt(s['btc_ret20'], '+.1%')} | {s['days_argmax']} | "
                         f"{s['expected_duration_days']} |")
        lines += ["", "Limitations: the states are fitted on 2010-onward US ETF/VIX history, BTC only "
                  "informs the states' emissions from 2019-10; regimes are daily, so intraday crashes show "
                  "up at the next daily close; the rule's thresholds are judgement, not fitted.", ""]
        return "\n".join(lines)


def load_detector(path: str | Path = DEFAULT_MODEL_PATH) -> RegimeDetector:
    """The fitted HMM if its JSON loads, else the interim :class:`TrendVolRule` (logged)."""
    try:
        return HMMRegimeDetector.load(path)
    except (OSError, ValueError, KeyError) as exc:
        _log.warning("regime model %s unavailable (%s); using TrendVolRule", path, exc)
        return TrendVolRule()
