"""Retraining the trained models on data strictly before a time (issue #21, item 5): the functions the
scheduled :class:`~.loop.ModelRetrainer` calls, and the ``train`` pipeline's span runs.

In paper (``journals`` = the log folder) each retrain also learns from what the running loop recorded:
the scorer from the signals it scored (:mod:`.recorded`), the classifier from the forecasts its monitor
resolved (:mod:`.recorded_regime`). A replay (backtest, sim) never reads journals, so it stays deterministic.
"""
from __future__ import annotations

import threading
from datetime import date, datetime
from pathlib import Path

_TRAINING = threading.local()   # set while a retrain's own replay runs: it attaches no loop of its own


def in_training_replay() -> bool:
    return bool(getattr(_TRAINING, "active", False))


# =========================================================================== retraining
def headline(card: dict) -> dict:
    """The card's held-out tail figures and verdict, for the cycle notes."""
    m = card.get("holdout", {}).get("metrics", {})
    keys = ("accuracy", "precision", "recall", "roc_auc", "precision_macro", "recall_macro", "log_loss")
    return {**{k: m[k] for k in keys if k in m}, "beats_baseline": card.get("beats_baseline"),
            "span": card.get("data", {}).get("span"), "rows": card.get("data", {}).get("rows"),
            **({"rows_by_origin": card["data"]["rows_by_origin"]} if "rows_by_origin" in card.get("data", {}) else {})}


def retrain_scorer(settings, data_dir: Path, start: date, end: date, *, seed: int = 7,
                   save_dir: Path | None = None, journals: Path | None = None):
    """The ``train --component signal_scorer --start START --end END`` pipeline: a replay of every enabled
    plugin over [start, end) of ``data_dir``, labelled never past ``end``; with ``journals`` (a log folder,
    paper) plus the signals recorded in its session journals whose holding period ended by ``end``
    (:mod:`.recorded`). Returns (ScorerModel, card, path)."""
    from . import train as T
    from .dataset import collect_signals
    from .scorer_model import ScorerModel
    # the replay attaches no loop of its own and leaves the process's perp labeller alone: it reads the one
    # the running session uses (the flag is per thread: a paper session's own cycles are unaffected)
    _TRAINING.active = True
    try:
        ds = collect_signals(settings, data_dir, start, end, progress=False)
    finally:
        _TRAINING.active = False
    if journals is not None:
        from ..domain import UTC
        from .recorded import merge, recorded_rows
        rec = recorded_rows(journals, settings, datetime.combine(end, datetime.min.time(), UTC))
        ds = merge(ds, rec)
    model, meta, card = T.train_scorer(ds, seed=seed, threshold=settings.scorers.threshold, span=(start, end),
                                       data_dir=data_dir)
    if journals is not None:
        by = ds.meta["rows_by_origin"]
        card["summary"] += (f" Rows: {by['replay']} from the replay, {by['recorded']} recorded by the running loop "
                            f"in {journals} ({ds.meta['recorded']['span'] or 'none'}).")
        meta["trained"]["rows_by_origin"] = by
    path = None
    if save_dir is not None:
        path = T.save_scorer(model, meta, card, Path(save_dir) / f"signal_scorer-{end:%Y%m%d}.cbm")
    return ScorerModel(model, meta), card, path


def retrain_classifier(settings, data_dir: Path, start: date, end: date, *, seed: int = 7,
                       save_dir: Path | None = None, journals: Path | None = None):
    """``train --component regime_classifier --start START --end END``: the hourly perp rows of
    [start, end) of ``data_dir``, labelled never past ``end``; with ``journals`` (a log folder, paper) plus
    the forecasts the classifier monitor recorded there whose window ended by ``end``
    (:mod:`.recorded_regime`). Returns (labeller, card, path)."""
    from . import train as T
    from .dataset import regime_rows
    from .regime_classifier import ClassifierRegimeLabeller
    symbols = [s for s in settings.perps.symbols if s in ("BTCUSDT", "ETHUSDT")] or ["BTCUSDT", "ETHUSDT"]
    rs = regime_rows(data_dir, symbols, start, end, step_h=2, progress=False)
    origin = None
    if journals is not None:
        from ..domain import UTC
        from .recorded_regime import merge_regime, recorded_regime_rows
        rec = recorded_regime_rows(journals, datetime.combine(end, datetime.min.time(), UTC))
        rs, origin = merge_regime(rs, rec)
    booster, meta, card = T.train_classifier(rs, seed=seed, span=(start, end), data_dir=data_dir)
    if origin is not None:
        by = origin["rows_by_origin"]
        card["summary"] += (f" Rows: {by['replay']} from the replay, {by['recorded']} recorded by the running loop "
                            f"in {journals} ({origin['recorded']['span'] or 'none'}).")
        card["data"]["rows_by_origin"] = by
        card["data"]["recorded"] = origin["recorded"]
        meta["trained"]["rows_by_origin"] = by
    path = None
    if save_dir is not None:
        path = T.save_classifier(booster, meta, card, Path(save_dir) / f"regime_classifier-{end:%Y%m%d}.json")
    booster.set_param({"nthread": 1})
    return ClassifierRegimeLabeller(booster, meta), card, path


def trained_end(meta: dict | None) -> date | None:
    """The (exclusive) last day of a model's training data, from its sidecar."""
    try:
        return date.fromisoformat(meta["trained"]["end"])
    except (TypeError, KeyError, ValueError):
        return None


__all__ = ["headline", "in_training_replay", "retrain_classifier", "retrain_scorer", "trained_end"]
