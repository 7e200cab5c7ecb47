"""The trained models inside the running loop (issue #21): live monitoring and scheduled retraining.

Both plug into the engine through its existing seams — ``cycle_hooks`` (after OBSERVE, before the
signals are scored), ``cycle_end_hooks`` (after the cycle's closed trades are known, before the report
is recorded) and ``summary_sections`` — attached by :func:`attach_ml_loop` from the composition root.

**Monitoring** (ML spec "Model Monitoring", the levels of :mod:`.monitor`):

* :class:`ScorerMonitor` — when a trade whose entry proposal was scored closes, the cycle's report gets
  ``ml_monitor``: the prediction vs the realised outcome (won = net P&L > 0) and the rolling accuracy /
  calibration buckets over the last ``window`` scored trades; a note when an alert level is crossed.
* :class:`ClassifierMonitor` — at each perp bar that closes on a multiple of ``[regime_model]
  monitor_every_hours`` UTC (default 24: the bar closing at 00:00, so the forecast windows tile the days and
  never overlap; 1: every hourly bar), the installed classifier's forecast of the next 24 h regime is kept;
  once that window has closed, the rule label of the realised window (``labels.regime_label``, the label
  the classifier was trained on) is compared with it.

**Scheduled retraining** (:class:`ModelRetrainer`): ``[scorers] retrain_every_days`` /
``[regime_model] retrain_every_days`` (0 = off). Due when the loaded model was trained on data up to
or after the current day (a backtest of an earlier year: it is retrained before its first scored
signal) or ``every`` days after the last attempt. The new model is trained by the ``train`` pipeline
(:mod:`.dataset`, :mod:`.train`) with ``--end`` = the current UTC day, so on data strictly before the
cycle. In a backtest (replay modes) it trains in the cycle, deterministically — with
``retrain_every_days`` = the window length, a walk-forward retrained per window. In paper it trains on a
background thread and the finished model is swapped in at the start of a later cycle (one reference
assignment between cycles); in paper each retrain also trains on what the loop recorded in the log
folder's session journals (the scorer: its scored signals, :mod:`.recorded`; the classifier: its monitor's
resolved forecasts, :mod:`.recorded_regime`), a replay never reads them (:mod:`.retrain`). A failed
retrain keeps the current model and says so; a model trained on this cycle's future is then set aside (the
scorer abstains, the rule labeller labels). Both monitors' rolling figures and waiting predictions are in
the engine's resumable state (``Engine.state_sections``): they go on across a restart.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

from .monitor import monitor as rolling_figures
from .retrain import headline, in_training_replay, retrain_classifier, retrain_scorer, trained_end  # noqa: F401

log = logging.getLogger(__name__)

# =========================================================================== monitoring
class ScorerMonitor:
    """``cycle_end_hooks`` entry: the scorer's predictions vs the closed trades' outcomes."""

    name = "ml_scorer_monitor"

    def __init__(self, window: int = 50):
        self.window = window
        self.pending: dict[tuple[str, str], tuple[datetime, float]] = {}   # approved, scored entries
        self.pairs: list[tuple[float, int]] = []
        self.latest: dict | None = None

    def __call__(self, engine, report: dict, trades: list[dict], now: datetime) -> None:
        for t in trades:   # closes booked this cycle (their entries were approved in earlier cycles)
            key = (t.get("strategy"), t.get("symbol"))
            hit = self.pending.pop(key, None)
            if hit is None:
                continue
            won = 1 if float(t.get("pnl_usd") or 0) > 0 else 0
            self.pairs.append((hit[1], won))
            fig = rolling_figures(self.pairs, self.window)
            entry = {"strategy": key[0], "symbol": key[1], "scored_at": hit[0].isoformat(), "ml_score": hit[1],
                     "predicted_win": hit[1] >= 0.5, "won": bool(won), "pnl_usd": str(t.get("pnl_usd")),
                     **fig}
            report.setdefault("ml_monitor", []).append(entry)
            self.latest = fig
            for alert in fig["alerts"]:
                report["notes"].append(f"signal scorer drift: {alert}")
        scored = {(p.get("strategy"), p.get("symbol")): p["ml_score"] for p in report.get("proposals") or []
                  if p.get("ml_score") is not None}
        for d in report.get("decisions") or []:
            key = (d.get("strategy"), d.get("symbol"))
            if d.get("approved") and key in scored:
                self.pending[key] = (now, float(scored[key]))

    def summary(self) -> dict:
        return {"scored_trades": len(self.pairs), **(self.latest or rolling_figures(self.pairs, self.window))}

    # restart safety (``Engine.state_sections``): the rolling figures and the approved entries still open
    # go on across a restart (a paper session's scored trades are few: every pair is kept)
    def to_state(self) -> dict:
        return {"pairs": [[p, y] for p, y in self.pairs], "latest": self.latest,
                "pending": [[k[0], k[1], t.isoformat(), score] for k, (t, score) in self.pending.items()]}

    def load_state(self, state: dict) -> None:
        self.pairs = [(float(p), int(y)) for p, y in state.get("pairs", [])]
        self.latest = state.get("latest")
        for strategy, symbol, t, score in state.get("pending", []):
            self.pending[(strategy, symbol)] = (datetime.fromisoformat(t), float(score))


class ClassifierMonitor:
    """``cycle_hooks`` entry: the classifier's next-24 h forecasts vs the rule label of the realised window."""

    name = "ml_classifier_monitor"

    def __init__(self, symbols: list[str], window: int = 50, labeller_fn: Callable | None = None,
                 every_hours: int = 1):
        from ..perp import stats as perp_stats
        if every_hours < 1 or 24 % every_hours:
            raise ValueError(f"monitor_every_hours must divide 24 (1, 2, 3, 4, 6, 8, 12 or 24), got {every_hours}: "
                             "each forecast's baseline is the forecast made 24 h before it")
        self.symbols = list(symbols)
        self.window = window
        self.every_s = 3600 * every_hours
        self._labeller = labeller_fn or (lambda: perp_stats._LABELLER)
        self.forecasts: dict[tuple[str, datetime], object] = {}   # a regime value, or a Forecast to predict
        self._last_bar: dict[str, object] = {}
        self.pairs: list[tuple[str, str]] = []   # the last ``window`` (forecast, realised)
        self.resolved = 0
        self.latest: dict | None = None

    def __call__(self, now: datetime, market, report: dict) -> None:
        from ..perp.stats import perp_state
        from .recorded_regime import record_inputs
        from .labels import REGIME_WINDOW_H, regime_label
        labeller = self._labeller()
        if getattr(labeller, "booster", None) is None:   # the rule labeller is not a forecast to score
            return
        horizon = timedelta(hours=REGIME_WINDOW_H)
        later = getattr(labeller, "forecast_later", None)
        for s in self.symbols:
            if s not in market.bars:
                continue
            bar = market.newest_bar_ts(s)
            if bar is None or bar == self._last_bar.get(s):
                continue
            self._last_bar[s] = bar
            # the forecast windows start at UTC multiples of every_hours (one a day by default: disjoint
            # windows, so the rolling accuracy counts independent outcomes; an hourly monitor's neighbours share
            # 23 of their 24 hours). A bar's features are computed only when it is forecast.
            if self.every_s > 3600 and (int(bar) + market.bars[s].interval_s) % self.every_s:
                continue
            if later is not None:   # the features now, the model's prediction when the forecast is read
                entry = later(market, s, lambda s=s: perp_state(market, s))
                if entry.__class__ is not tuple:   # a tuple: the rule answered (sparse inputs), no forecast
                    self.forecasts[(s, now)] = entry
                continue
            regime, _, why = labeller.label(perp_state(market, s), market)
            if regime is not None and why.startswith("classifier"):
                self.forecasts[(s, now)] = regime.value
        due = []   # the forecasts are kept in the order they were made (cycle time): the due ones lead
        for k in self.forecasts:
            if k[1] + horizon > now:
                break
            due.append(k)
        if any(self.forecasts[k].__class__ is not str and self.forecasts[k].out is None for k in due):
            # one batch for every forecast still waiting (the next 24 h of due ones included)
            waiting = [f for f in self.forecasts.values() if f.__class__ is not str and f.out is None]
            for owner in {id(f.owner): f.owner for f in waiting}.values():
                owner.resolve([f for f in waiting if f.owner is owner])
        for (s, t) in due:
            predicted = self.forecasts.pop((s, t))
            inputs = None
            if predicted.__class__ is not str:   # its features, recorded: a training row once labelled
                inputs = record_inputs(predicted.owner.features, predicted.row)
                predicted = predicted.out[0].value
            actual = regime_label(market, s, t)
            if actual is None:
                continue
            self.pairs.append((predicted, actual.value))
            self.resolved += 1
            del self.pairs[:-self.window]
            recent = self.pairs
            acc = sum(p == a for p, a in recent) / len(recent)
            fig = {"resolved": self.resolved, "window": len(recent), "accuracy": round(acc, 4), "alerts": []}
            from .monitor import ACCURACY_DROP, EXPECTED_ACCURACY, MIN_BUCKET
            if len(recent) >= MIN_BUCKET and acc < EXPECTED_ACCURACY - ACCURACY_DROP:
                fig["alerts"].append(f"classifier accuracy {acc:.2f} over the last {len(recent)} resolved forecasts "
                                     f"is below {EXPECTED_ACCURACY - ACCURACY_DROP:.2f}: retrain (spec alert level)")
            report.setdefault("ml_regime_monitor", []).append(
                {"symbol": s, "forecast_at": t.isoformat(), "forecast": predicted, "realised": actual.value,
                 "correct": predicted == actual.value, **fig, **({"inputs": inputs} if inputs else {})})
            self.latest = fig
            for alert in fig["alerts"]:
                report["notes"].append(f"regime classifier drift: {alert}")

    def summary(self) -> dict:
        return self.latest or {"resolved": 0, "accuracy": None, "alerts": []}

    # restart safety (``Engine.state_sections``): the rolling figures and the forecasts still waiting for
    # their window go on across a restart; a waiting forecast keeps its features (its prediction is made
    # by the model installed when it is read, as it would have been)
    def to_state(self) -> dict:
        waiting = []
        for (s, t), f in self.forecasts.items():
            if f.__class__ is str:
                waiting.append([s, t.isoformat(), f, None])
            else:
                waiting.append([s, t.isoformat(), None if f.out is None else f.out[0].value,
                                [None if math.isnan(v) else float(v) for v in f.row]])
        return {"pairs": [list(p) for p in self.pairs], "resolved": self.resolved, "latest": self.latest,
                "waiting": waiting, "last_bar": {s: int(b) for s, b in self._last_bar.items()}}

    def load_state(self, state: dict) -> None:
        import numpy as np

        from ..perp.stats import PerpRegime
        from .regime_classifier import Forecast
        self.pairs = [tuple(p) for p in state.get("pairs", [])][-self.window:]
        self.resolved = int(state.get("resolved", len(self.pairs)))
        self.latest = state.get("latest")
        self._last_bar.update({s: int(b) for s, b in (state.get("last_bar") or {}).items()})
        labeller = self._labeller()
        for s, t, predicted, row in state.get("waiting", []):
            key = (s, datetime.fromisoformat(t))
            if row is None:
                if predicted is not None:
                    self.forecasts[key] = predicted
            elif getattr(labeller, "booster", None) is not None and len(row) == len(labeller.features):
                f = Forecast(np.array([math.nan if v is None else v for v in row], dtype=float), labeller)
                if predicted is not None:   # predicted before the restart: by the model in use then
                    f.out = (PerpRegime(predicted), math.nan, "restored")
                self.forecasts[key] = f
        self.forecasts = dict(sorted(self.forecasts.items(), key=lambda kv: kv[0][1]))


# =========================================================================== retraining
@dataclass
class ModelRetrainer:
    """The schedule, the training call and the swap, for one model.

    ``current()`` -> the model in use (None: none loaded); ``train(end)`` -> (model, card[, saved file])
    trained on data strictly before the day ``end``; ``install(model)`` puts it in use; ``set_aside()`` stops using a
    model trained on the future. ``background``: train on a thread (paper), else in the cycle (backtest)."""

    component: str
    every: timedelta
    current: Callable[[], object]
    train: Callable[[date], tuple]
    install: Callable[[object], None]
    set_aside: Callable[[str], None]
    background: bool = False
    load: Callable[[str], object] | None = None   # a saved model file -> the model (restart: resume on it)
    last_attempt: datetime | None = None
    model_path: str | None = None                 # the file of the retrained model in use, if saved
    history: list[dict] = field(default_factory=list)
    _thread: threading.Thread | None = None
    _ready: tuple | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    name = "ml_retrainer"

    def due(self, now: datetime) -> str | None:
        model = self.current()
        end = trained_end(getattr(model, "meta", None))
        if model is not None and end is not None and end > now.date():
            if self.last_attempt is not None and now.date() <= self.last_attempt.date():
                return None   # failed today already: tried again the next day
            return f"the loaded model was trained on data up to {end} (exclusive), after this cycle ({now.date()})"
        if model is None and self.last_attempt is not None and now.date() > self.last_attempt.date():
            return "no trained model loaded (the last retrain failed or set it aside)"
        if self.last_attempt is None:
            if end is None:
                return "no trained model loaded" if model is None else "the loaded model does not say its span"
            return f"the loaded model's data ends {end}, {self.every.days}+ days ago" \
                if (now.date() - end).days >= self.every.days else None
        return f"{self.every.days} days since the last retrain" if now - self.last_attempt >= self.every else None

    def __call__(self, now: datetime, market, report: dict) -> None:   # a cycle hook
        with self._lock:
            ready, self._ready = self._ready, None
        if ready is not None:
            self._finish(*ready, report)
        if self._thread is not None and self._thread.is_alive():
            return
        why = self.due(now)
        if not why:
            return
        self.last_attempt = now
        if self.background:
            self._thread = threading.Thread(target=self._run, args=(now, why, None), daemon=True,
                                            name=f"retrain-{self.component}")
            self._thread.start()
            report["notes"].append(f"{self.component} retrain started in the background ({why}) on data before "
                                   f"{now.date()}")
        else:
            self._run(now, why, report)

    def _run(self, now: datetime, why: str, report: dict | None) -> None:
        started = time.perf_counter()
        rec = {"component": self.component, "at": now.isoformat(), "why": why, "data_before": now.date().isoformat()}
        try:
            model, card, *saved = self.train(now.date())
            rec.update(ok=True, headline=headline(card))
            if saved and saved[0] is not None:
                rec["model_path"] = str(saved[0])
            result = (model, rec)
        except Exception as exc:  # noqa: BLE001 -- a failed retrain keeps the old model, it never stops the loop
            log.warning("%s retrain at %s failed: %s (keeping the current model)", self.component, now, exc)
            rec.update(ok=False, error=f"{type(exc).__name__}: {exc}")
            result = (None, rec)
        rec["seconds"] = round(time.perf_counter() - started, 1)
        if report is not None:
            self._finish(*result, report)
        else:
            with self._lock:
                self._ready = result

    def _finish(self, model, rec: dict, report: dict) -> None:
        self.history.append(rec)
        report.setdefault("ml_retrain", []).append(rec)
        if model is None:
            cur = self.current()
            end = trained_end(getattr(cur, "meta", None))
            at = datetime.fromisoformat(rec["at"])
            if cur is not None and end is not None and end > at.date():
                self.set_aside(f"retrain failed ({rec['error']}); the loaded model was trained on data up to {end}, "
                               "after this cycle")
                rec["set_aside"] = True
                report["notes"].append(f"{self.component} retrain failed ({rec['error']}); the loaded model was "
                                       f"trained on data up to {end}, after this cycle: set aside until a retrain "
                                       "succeeds (tried again the next day)")
            else:
                report["notes"].append(f"{self.component} retrain failed ({rec['error']}): keeping the current model")
            return
        self.install(model)
        self.model_path = rec.get("model_path")
        h = rec["headline"]
        figs = ", ".join(f"{k} {h[k]}" for k in ("accuracy", "precision", "recall", "roc_auc", "precision_macro",
                                                  "recall_macro") if h.get(k) is not None)
        by = h.get("rows_by_origin")
        rows = f"{h.get('rows')} rows" + (f": {by['replay']} replay, {by['recorded']} recorded" if by else "")
        report["notes"].append(f"{self.component} retrained on {h.get('span')} ({rows}, "
                               f"{rec['seconds']} s) because {rec['why']}: held-out tail {figs}; "
                               f"beats baseline: {h.get('beats_baseline')}")

    def wait(self, timeout: float | None = None) -> None:
        """Block until a background retrain finishes (tests, shutdown)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def summary(self) -> list[dict]:
        return list(self.history)

    # restart safety (the engine's resumable state, ``Engine.state_sections``) ----------------------
    def to_state(self) -> dict:
        return {"last_attempt": self.last_attempt.isoformat() if self.last_attempt else None,
                "model_path": self.model_path}

    def load_state(self, state: dict) -> None:
        """Resume the schedule, and on the retrained model the last session ended with if its file is there."""
        if state.get("last_attempt"):
            self.last_attempt = datetime.fromisoformat(state["last_attempt"])
        path = state.get("model_path")
        if not path or self.load is None:
            return
        try:
            model = self.load(path)
        except Exception as exc:  # noqa: BLE001 -- a bad file must not stop a restart: retrain instead
            log.warning("retrained %s %s cannot be loaded (%s): retraining when due", self.component, path, exc)
            self.last_attempt = None
            return
        self.install(model)
        self.model_path = path


# =========================================================================== wiring
REPLAY_MODES = ("sim", "backtest")


def attach_ml_loop(engine, settings, *, mode: str, data_dir: Path, log_dir: Path | None) -> list:
    """Attach the monitors and retrainers the settings ask for; returns what was attached."""
    if in_training_replay():
        return []
    attached: list = []
    sections = engine.summary_sections
    scorer = next((s for s in engine.scorers if getattr(s, "name", "") == "ml_signal_scorer"), None)
    save_dir = Path(log_dir) / "models" if log_dir is not None and engine.session_log is not None else None
    background = mode not in REPLAY_MODES
    # paper/live: the scorer's retrain also learns from what the loop recorded (ml/recorded.py); a replay
    # (backtest, sim) never reads journals, so it stays deterministic
    journals = Path(log_dir) if background and log_dir is not None else None
    if scorer is not None:
        mon = ScorerMonitor(settings.scorers.monitor_window)
        engine.cycle_end_hooks.append(mon)
        sections["ml_scorer_monitor"] = mon.summary
        engine.state_sections["ml_scorer_monitor"] = mon
        attached.append(mon)
        days = settings.scorers.retrain_every_days
        if days > 0:
            start = settings.scorers.retrain_start

            def train_scorer_fn(end: date):
                if end <= start:
                    raise ValueError(f"no training data: [scorers] retrain_start {start} is not before {end}")
                return retrain_scorer(settings, data_dir, start, end, seed=settings.scorers.retrain_seed,
                                      save_dir=save_dir, journals=journals)

            def load_scorer(path: str):
                from .scorer_model import ScorerModel
                return ScorerModel.load(Path(path))

            def aside(why: str):
                scorer.model, scorer.missing = None, why
                scorer._seen.clear()

            def install(model):
                scorer.model, scorer.missing = model, None
                scorer._seen.clear()   # a cached score belongs to the model that made it

            rt = ModelRetrainer("signal_scorer", timedelta(days=days), lambda: scorer.model, train_scorer_fn,
                                install, aside, background=background, load=load_scorer)
            engine.cycle_hooks.append(rt)
            sections["ml_scorer_retrains"] = rt.summary
            engine.state_sections["ml_scorer_retrain"] = rt
            attached.append(rt)
    if settings.regime_model.perp_labeller == "classifier" and settings.perps.enabled:
        from ..perp import stats as perp_stats
        from ..perp.stats import RuleRegimeLabeller
        cmon = ClassifierMonitor(list(settings.perps.symbols), settings.regime_model.monitor_window,
                                 every_hours=settings.regime_model.monitor_every_hours)
        engine.cycle_hooks.append(cmon)
        sections["ml_regime_monitor"] = cmon.summary
        engine.state_sections["ml_regime_monitor"] = cmon
        attached.append(cmon)
        days = settings.regime_model.retrain_every_days
        if days > 0:
            start = settings.regime_model.retrain_start

            def train_cls_fn(end: date):
                return retrain_classifier(settings, data_dir, start, end, seed=settings.regime_model.retrain_seed,
                                          save_dir=save_dir, journals=journals)

            def load_classifier(path: str):
                from .regime_classifier import ClassifierRegimeLabeller
                return ClassifierRegimeLabeller.load(Path(path))

            def current():
                lab = perp_stats._LABELLER
                return lab if getattr(lab, "booster", None) is not None else None

            rt = ModelRetrainer("regime_classifier", timedelta(days=days), current, train_cls_fn,
                                perp_stats.set_regime_labeller,
                                lambda why: perp_stats.set_regime_labeller(RuleRegimeLabeller()), background=background,
                                load=load_classifier)
            engine.cycle_hooks.append(rt)
            sections["ml_regime_retrains"] = rt.summary
            engine.state_sections["ml_regime_retrain"] = rt
            attached.append(rt)
    return attached


__all__ = ["ClassifierMonitor", "ModelRetrainer", "ScorerMonitor", "attach_ml_loop", "retrain_classifier",
           "retrain_scorer"]
