"""Recorded regime rows: what the running loop saw, as a training source of the regime classifier (issue #21,
items 2 and 5; the signal scorer's counterpart is :mod:`.recorded`).

The classifier monitor (:class:`~.loop.ClassifierMonitor`) forecasts the next 24 h regime at the closed
bars of a perp symbol that end on UTC multiples of ``[regime_model] monitor_every_hours`` (default once a day,
1 = every hourly bar) from the features of that bar's snapshot, and 24 h later labels the realised
window with the rule the classifier is trained on (``labels.regime_label``). Each resolved forecast is in the
cycle report (``ml_regime_monitor``) with its **inputs** (the finite features by name and the id of the
feature list) and the realised regime -- together, one training row that holds the live-only series
(long/short ratio, the live liquidation feed) the data folder does not have. :func:`recorded_regime_rows`
reads them back from the paper/live/sim session journals of a log folder; :func:`merge_regime` adds them to
the replay's :class:`~.dataset.RegimeSet`. The paper classifier retrain (``ModelRetrainer``) trains on both.

* **The label** is the record's ``realised``: ``regime_label`` of (t, t+24 h] on the live market, the label
  of the replay rows. The naive baseline's "regime that just ended" is the ``realised`` of the same
  symbol's record made 24 h earlier; a row without one (the loop was not running then) is left out and
  counted (``no_previous_window``), as the replay drops an hour without a label.
* **Never past the retraining time**: only cycles at or before it are read, and a row whose window ends
  after it is counted (``past_retrain_time``).
* **Exactly the model's columns**: a record whose feature-list id is not :data:`REGIME_FEATURE_SET_ID` is
  skipped with its session (noted); a missing feature is NaN, as in the replay rows.
* **Damage** (unreadable documents, corrupt or torn lines, wrong shapes) is noted and left out; nothing raises.
"""
from __future__ import annotations

import hashlib
import math
from functools import lru_cache
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from .features import REGIME_FEATURES
from .labels import CLASS_INDEX, CLASSES, REGIME_WINDOW_H
from .recorded import RecordedRows, _parse_time, _read_cycles, _session_docs

#: the id of the classifier's feature list, recorded with each row's inputs
REGIME_FEATURE_SET_ID = hashlib.sha1(",".join(REGIME_FEATURES).encode()).hexdigest()[:12]
_BY_VALUE = {c.value: c for c in CLASSES}
_REASONS = ("past_retrain_time", "no_previous_window", "unknown_regime", "duplicate", "no_inputs")


@lru_cache(maxsize=8)
def _id_of(names: tuple) -> str:
    return hashlib.sha1(",".join(names).encode()).hexdigest()[:12]


def feature_set_id(names) -> str:
    return _id_of(tuple(names))


def record_inputs(names, row) -> dict:
    """A forecast's inputs as recorded: the finite features by name and the id of the feature list."""
    out: dict = {"feature_set": _id_of(tuple(names))}
    isfinite = math.isfinite
    for name, v in zip(names, row.tolist()):
        if isfinite(v):
            out[name] = v
    return out


class RecordedRegimeRows(RecordedRows):
    """rows: t, symbol, features, y, y_now, label_end, session."""
    SPAN = "forecast time .. last window end"


def recorded_regime_rows(log_dir: Path, until: datetime) -> RecordedRegimeRows:
    """The labelled classifier rows recorded in the paper/live/sim journals of ``log_dir`` whose 24 h window
    ended at or before ``until`` (the retraining time)."""
    out = RecordedRegimeRows(counts={"sessions_read": 0, "sessions_skipped": 0, "sessions_other_mode": 0,
                                     "sessions_other_columns": 0, "corrupt_lines": 0, "records": 0,
                                     **dict.fromkeys(_REASONS, 0)})
    until_s = int(until.timestamp())
    window = timedelta(hours=REGIME_WINDOW_H)
    found: dict[tuple[str, int], dict] = {}
    for journal, _mode in _session_docs(Path(log_dir), out):
        mine: list[dict] = []
        problem = None
        for _ts, _t, cyc in _read_cycles(journal, until_s, out):
            records = cyc.get("ml_regime_monitor")
            if not isinstance(records, list):
                continue
            for e in records:
                if not isinstance(e, dict):
                    out.counts["corrupt_lines"] += 1
                    continue
                out.counts["records"] += 1
                at = _parse_time(e.get("forecast_at"))
                sym, realised = e.get("symbol"), e.get("realised")
                if at is None or not isinstance(sym, str):
                    out.counts["corrupt_lines"] += 1
                    continue
                regime = _BY_VALUE.get(realised) if isinstance(realised, str) else None
                if regime is None:
                    out.counts["unknown_regime"] += 1
                    continue
                inputs = e.get("inputs")
                fs = inputs.get("feature_set") if isinstance(inputs, dict) else None
                if fs is not None and fs != REGIME_FEATURE_SET_ID:
                    problem = problem or f"feature set {fs!r}, the classifier's is {REGIME_FEATURE_SET_ID!r}"
                mine.append({"t": at, "symbol": sym, "y": CLASS_INDEX[regime], "label_end": at + window,
                             "inputs": inputs if fs is not None else None, "session": journal.name})
        if problem is not None:
            out.counts["sessions_other_columns"] += 1
            out.notes.append(f"{journal}: recorded by a classifier with other feature columns ({problem}): its "
                             f"{len(mine)} records are left out")
            continue
        out.counts["sessions_read"] += 1
        for r in mine:
            key = (r["symbol"], int(r["t"].timestamp()))
            if key in found:
                out.counts["duplicate"] += 1
                continue
            found[key] = r
    for (sym, t_s), r in sorted(found.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if r["label_end"] > until:
            out.counts["past_retrain_time"] += 1
            continue
        if r["inputs"] is None:   # a labeller without recorded inputs (or a journal from before they were)
            out.counts["no_inputs"] += 1
            continue
        before = found.get((sym, t_s - REGIME_WINDOW_H * 3600))
        if before is None:
            out.counts["no_previous_window"] += 1
            continue
        feats = {k: float(v) for k, v in r["inputs"].items()
                 if k in REGIME_FEATURES and isinstance(v, (int, float)) and not isinstance(v, bool)}
        out.rows.append({"t": r["t"], "symbol": sym, "features": feats, "y": r["y"], "y_now": before["y"],
                         "label_end": r["label_end"], "session": r["session"]})
    return out


def merge_regime(rs, rec: RecordedRegimeRows):
    """The replay's RegimeSet plus the recorded rows, one row per (symbol, forecast time): a recorded row
    replaces a replay row of the same key (it holds what the live cycle saw, live-only series included)."""
    from .dataset import RegimeSet
    rec_rows = {(r["symbol"], int(r["t"].timestamp())): r for r in rec.rows}
    keep = [i for i in range(len(rs.y)) if (rs.symbols[i], int(rs.t[i])) not in rec_rows]
    rows = list(rec_rows.values())
    nf = len(REGIME_FEATURES)
    X_rec = np.array([[r["features"].get(f, math.nan) for f in REGIME_FEATURES] for r in rows],
                     dtype=float).reshape(-1, nf)
    t = np.concatenate([np.asarray(rs.t, dtype=float)[keep], [r["t"].timestamp() for r in rows]])
    symbols = [rs.symbols[i] for i in keep] + [r["symbol"] for r in rows]
    order = np.lexsort((np.array(symbols, dtype=object).astype(str), t))
    cat = lambda a, b, dt: np.concatenate([np.asarray(a, dtype=dt)[keep], np.asarray(b, dtype=dt)])[order]  # noqa: E731
    X = np.concatenate([np.asarray(rs.X, dtype=float).reshape(-1, nf)[keep], X_rec])[order]
    merged = RegimeSet(t[order], cat(rs.label_end, [r["label_end"].timestamp() for r in rows], float), X,
                       cat(rs.y, [r["y"] for r in rows], int), cat(rs.y_now, [r["y_now"] for r in rows], int),
                       [symbols[i] for i in order])
    meta = {"rows_by_origin": {"replay": len(keep), "recorded": len(rows)},
            "replay_rows_replaced_by_recorded": len(rs.y) - len(keep),
            "recorded": {**rec.summary(), "notes": rec.notes[:20] + ([f"... {len(rec.notes) - 20} more"]
                                                                    if len(rec.notes) > 20 else [])}}
    return merged, meta


__all__ = ["REGIME_FEATURE_SET_ID", "RecordedRegimeRows", "feature_set_id", "merge_regime", "record_inputs",
           "recorded_regime_rows"]
