"""Scheduled refit of the HMM regime model inside the running loop (issue #4).

``engine.regime_refit_days = N`` makes the engine refit the detector every N days on the history known
at that moment, and never on anything later:

* the history is the daily closes of the data folder (``data.replay_dir``) strictly before the
  current UTC day, extended with the snapshot's own daily closes after the folder ends (in paper
  trading the folder stops where the shipped data stops; the live snapshot brings the recent days);
* a model fitted on days *up to or after* the current day (the shipped model inside a backtest of an
  earlier year) is refitted at the first regime refresh, so a backtest never reads regimes learnt
  from its own future;
* a failed or impossible fit keeps the current model and says why in the cycle report; it is tried
  again one period later, not every cycle;
* each refitted model is written as JSON with its model card under ``<log_dir>/models/`` and its path
  goes into the engine's resumable state, so a restart continues with the refitted model.

The fit is the same :meth:`HMMRegimeDetector.fit` as ``hydra train --component regime`` (same
features, same deterministic state naming, so labels mean the same thing after a refit).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from .ports import MarketSnapshot
from .regime import HMMRegimeDetector
from .regime_features import _contiguous_tail, build_features, daily_closes_from_snapshot, load_daily_closes

_log = logging.getLogger(__name__)


RECENT_DAYS = 20   # a feature absent on all of the last 20 days is one the live feed does not supply


def history_closes(history_dir: Path | None, market: MarketSnapshot, before: date) -> dict[str, pd.Series]:
    """Daily closes strictly before ``before``: the folder's files, then the snapshot's newer days.
    Where the two leave a hole of more than a month (paper trading years after the shipped files end),
    only the part after the hole is kept: a 20-day return across a hole is not a 20-day return."""
    cut = pd.Timestamp(before, tz="UTC")
    closes = load_daily_closes(history_dir, end=cut) if history_dir is not None and Path(history_dir).is_dir() else {}
    for symbol, recent in daily_closes_from_snapshot(market).items():
        recent = recent[recent.index < cut]
        known = closes.get(symbol)
        if known is not None and len(known):
            recent = recent[recent.index > known.index[-1]]
            if len(recent):
                closes[symbol] = pd.concat([known, recent])
        elif len(recent):
            closes[symbol] = recent
    return {k: _contiguous_tail(v) for k, v in closes.items()}


@dataclass
class RegimeRefitter:
    every: timedelta
    history_dir: Path | None
    save_dir: Path | None
    seed: int = 0
    n_init: int = 8
    last_attempt: datetime | None = None
    model_path: str | None = None           # the refitted model the engine runs on, if any

    def due(self, detector, now: datetime) -> str | None:
        """Why a refit is due now, or None."""
        params = getattr(detector, "params", None)
        if not params:   # no model (or one set aside, see ``set_aside``): try again each new day
            if self.last_attempt is None or now.date() > self.last_attempt.date():
                return "no fitted regime model loaded"
            return None
        trained_to = date.fromisoformat(params["training"]["end"])
        if trained_to >= now.date():
            # before the period: a restart reloads the configured model even after a failed refit set it aside
            return f"the loaded model was fitted on days up to {trained_to}, on or after today ({now.date()})"
        if self.last_attempt is not None:
            return f"{self.every.days} days since the last refit" if now - self.last_attempt >= self.every else None
        if (now.date() - trained_to).days >= self.every.days:
            return f"the loaded model's last training day {trained_to} is {self.every.days}+ days old"
        return None

    def refit(self, detector, market: MarketSnapshot, now: datetime, why: str) -> tuple[HMMRegimeDetector | None, dict]:
        """A new detector fitted on history before today, or None (and why) when it cannot be done."""
        self.last_attempt = now
        template = detector if isinstance(detector, HMMRegimeDetector) else HMMRegimeDetector()
        started = time.perf_counter()
        record = {"at": now.isoformat(), "why": why, "history_before": now.date().isoformat()}
        try:
            frame = build_features(history_closes(self.history_dir, market, now.date())).dropna(how="all")
            # a core feature the recent days lack (VIX is not on Alpaca's feed) would leave no complete
            # training day and is marginalised out at detection anyway: fit without it, and say so
            recent = frame.tail(RECENT_DAYS)
            core = tuple(c for c in template.core_features if c in recent and recent[c].notna().any())
            left_out = [c for c in template.core_features if c not in core]
            if left_out:
                record["features_left_out"] = left_out
            fresh = HMMRegimeDetector(n_states=template.n_states, hysteresis=template.hysteresis, rule=template.rule,
                                      min_days=template.min_days, min_features=template.min_features,
                                      core_features=core)
            fresh.fit(frame, seed=self.seed, n_init=self.n_init)
        except (ValueError, RuntimeError, OSError, np.linalg.LinAlgError) as exc:
            _log.warning("regime refit at %s failed: %s (keeping the current model)", now, exc)
            return None, {**record, "ok": False, "error": str(exc), "seconds": round(time.perf_counter() - started, 2)}
        t = fresh.params["training"]
        record.update(ok=True, trained_from=t["start"], trained_to=t["end"], days=t["days"],
                      state_regimes=fresh.params["state_regimes"], converged=t["converged"],
                      seconds=round(time.perf_counter() - started, 2))
        if self.save_dir is not None:
            path = fresh.save(Path(self.save_dir) / f"regime_hmm-{now.strftime('%Y%m%dT%H%M%SZ')}.json")
            self.model_path = str(path)
            record["model_path"] = self.model_path
        return fresh, record

    @staticmethod
    def set_aside(detector, now: datetime) -> HMMRegimeDetector | None:
        """After a failed refit: an unfitted detector of the same configuration (it reads UNKNOWN, which
        blocks entries) when the current model was fitted on days up to or after ``now`` -- trading on it
        would read regimes learnt from the future -- else None (the current model may stay)."""
        params = getattr(detector, "params", None)
        if not params or date.fromisoformat(params["training"]["end"]) < now.date():
            return None
        return HMMRegimeDetector(n_states=detector.n_states, hysteresis=detector.hysteresis, rule=detector.rule,
                                 min_days=detector.min_days, min_features=detector.min_features,
                                 core_features=detector.core_features)

    def horizon_until(self, detector, now: datetime) -> datetime | None:
        """Event-horizon replay: the earliest time a refit could be due (horizon_promises.py)."""
        from .horizon_promises import refitter_until
        return refitter_until(self, detector, now)

    # restart safety ---------------------------------------------------------------------------
    def to_state(self) -> dict:
        return {"last_attempt": self.last_attempt.isoformat() if self.last_attempt else None,
                "model_path": self.model_path}

    def load_state(self, state: dict) -> HMMRegimeDetector | None:
        """Restore the schedule; the refitted model to resume with, if its file is still there."""
        if state.get("last_attempt"):
            self.last_attempt = datetime.fromisoformat(state["last_attempt"])
        path = state.get("model_path")
        if not path:
            return None
        try:
            detector = HMMRegimeDetector.load(path)
        except (OSError, ValueError, KeyError) as exc:
            _log.warning("refitted regime model %s cannot be loaded (%s): refitting at the next refresh", path, exc)
            self.last_attempt = None
            return None
        self.model_path = path
        return detector


__all__ = ["RegimeRefitter", "history_closes", "refit_step"]


def refit_step(refitter, detector, market: MarketSnapshot, now: datetime, report: dict) -> tuple[object, bool]:
    """The cycle's refit step, for any refitter with ``due``, ``refit`` and ``set_aside``: when due, refit
    on the history known now and say so in the report
    (``report["regime_refit"]`` and a note). Returns (the detector to use, whether it changed). A
    failed refit keeps the current model, unless that model was fitted on days after ``now``: then
    it is set aside (regime UNKNOWN, no entries) until a refit succeeds."""
    why = refitter.due(detector, now)
    if not why:
        return detector, False
    fresh, record = refitter.refit(detector, market, now, why)
    report["regime_refit"] = record
    if fresh is None:
        aside = refitter.set_aside(detector, now)
        if aside is None:
            report["notes"].append(f"regime refit failed ({record['error']}): keeping the current model")
            return detector, False
        trained_to = detector.params["training"]["end"]
        record["set_aside"] = True     # the loaded model no longer reads the regime (see backtest notes)
        report["notes"].append(f"regime refit failed ({record['error']}); the loaded model was fitted on days up "
                               f"to {trained_to}, after this cycle: regime UNKNOWN (no entries) until a refit "
                               "succeeds (tried again each day)")
        return aside, True
    report["notes"].append(f"regime model refitted on {record['trained_from']}..{record['trained_to']} "
                           f"({record['days']} days, {record['seconds']} s) because {why}")
    return fresh, True
