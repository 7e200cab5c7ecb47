"""Recorded rows: what the running loop saw, as a training source of the signal scorer (issue #21, items 2 and 5).

Every signal the ``ml_signal_scorer`` plugin scores is recorded in the cycle report (``ml_scores[i].inputs``:
its base features, the ones that were not NaN, and the id of the feature set that computed them), and so in
the session journal (``<log_dir>/session-*.cycles.jsonl``), together with the cycle's ``prices``.
:func:`recorded_rows` turns those journals into labelled training rows; :func:`merge` adds them to the
replay's :class:`~.dataset.SignalSet`. The paper retrain (``ModelRetrainer`` in paper) trains on both.

* **Which journals.** The session documents directly in the log folder (``session-*.json``) of paper, live
  and sim sessions. Backtests and sweeps write into their own sub-folders and are never read; a session
  document of another mode (``backtest``) in the folder is skipped.
* **Which signals.** Each ``ml_scores`` entry with recorded ``inputs`` (scored or abstained: the label does
  not depend on the score), matched to the cycle's ``signals[i]`` (the trace is one entry per signal, in
  order) for its direction, half-life and ``created_at``. A signal re-emitted unchanged on later cycles is
  one opinion, kept once at its first cycle (as the training replay keeps it); an entry that only says
  ``scored_at`` (the scorer's cache) is that re-emission.
* **Exactly the model's columns.** The inputs must have been computed by this feature set
  (``FEATURE_SET_ID`` of :data:`~.features.SCORER_BASE_FEATURES`); a journal whose scorer computed other
  columns is skipped with a note (its prices still label other sessions' signals). A missing key is a NaN
  feature (the scorer records only the finite ones), as in the replay rows.
* **The same label.** :func:`~.labels.signal_outcome` with the training replay's round-trip cost
  (:func:`~.dataset.round_trip_costs`) over the holding period :func:`~.labels.holding_period` of the
  signal's half-life; the close known at a time is the price recorded by the newest cycle at or before it.
  The recorded prices of every read session form one timeline per symbol, so a holding period that runs
  past the end of one session is labelled from a later session's prices when the gap between them is
  covered.
* **Never a guess.** A signal is left out, and counted, when its holding period ends after the retraining
  time (``past_retrain_time``); when the recorded prices do not cover it (``not_covered``: no price at the
  signal's own cycle, no recorded price at or after its end — the recording stopped before the period
  ended — or a hole of more than ``max_gap`` between two recorded prices of the symbol across it); when the price at its end is the same
  observation as at its start (``no_new_price``: unchanged since the entry cycle — a closed market or a
  stalled feed — as the replay label needs a later bar); a stale symbol's price (``stale_symbols``) is not
  a recorded price. Only cycles at or before the retraining time are read.
* **Damage.** An unreadable session document or journal line is noted (file and line) and left out;
  nothing raises.
"""
from __future__ import annotations

import json
import math
from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from ..domain import UTC
from ..tradelog import json_kind
from .features import FEATURE_SET_ID, SCORER_BASE_FEATURES
from .labels import holding_period, signal_outcome

#: session modes whose journals are a training source (backtests and sweeps are not)
RECORDING_MODES = ("paper", "live", "sim")
#: the longest hole between two recorded prices of a symbol that a holding period may contain
MAX_PRICE_GAP = timedelta(hours=2)
NOT_FEATURES = frozenset({"dissimilarity", "feature_set", "scored_at"})
_BASE = frozenset(SCORER_BASE_FEATURES)
_SHAPE = (("prices", dict), ("signals", list), ("ml_scores", list), ("stale_symbols", dict))
_REASONS = ("past_retrain_time", "not_covered", "no_new_price", "no_direction", "unmatched_signal", "duplicate")


@dataclass
class RecordedRows:
    rows: list[dict] = field(default_factory=list)   # t, symbol, source, features, net, y, label_end, session
    notes: list[str] = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    SPAN = "signal time .. last holding-period end"

    def span(self) -> str | None:
        if not self.rows:
            return None
        lo = min(r["t"] for r in self.rows)
        hi = max(r["label_end"] for r in self.rows)
        return f"{lo.isoformat()} .. {hi.isoformat()} ({self.SPAN})"

    def summary(self) -> dict:
        return {"rows": len(self.rows), "span": self.span(), **self.counts, "notes": list(self.notes)}


class _Timeline:
    """One symbol's recorded prices: cycle times (epoch s), prices, and the time each price was first seen
    (an unchanged price on later cycles is the same observation)."""

    def __init__(self, points: dict[int, float]):
        self.ts = sorted(points)
        self.px = [points[t] for t in self.ts]
        self.seen: list[int] = []
        for k, t in enumerate(self.ts):
            self.seen.append(self.seen[-1] if k and self.px[k] == self.px[k - 1] else t)

    def index_at(self, t: int) -> int:
        """Index of the newest recorded price at or before ``t`` (-1: none)."""
        return bisect_right(self.ts, t) - 1

    def covered(self, t0: int, t1: int, max_gap_s: int) -> bool:
        """A price recorded at ``t0``, one at or after ``t1`` (the recording ran past the period's end, so the
        newest price at or before it was the one known then), and no hole over ``max_gap_s`` between them."""
        k0, k1 = self.index_at(t0), self.index_at(t1)
        if k0 < 0 or self.ts[k0] != t0:
            return False
        if self.ts[k1] != t1:
            k1 += 1
            if k1 >= len(self.ts):
                return False
        return all(self.ts[k + 1] - self.ts[k] <= max_gap_s for k in range(k0, k1))


def _parse_time(value) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        return None
    return t if t.tzinfo is not None else None


def _session_docs(log_dir: Path, out: RecordedRows) -> list[tuple[Path, str]]:
    """(journal, mode) of each paper/live/sim session document directly in ``log_dir``, by file name."""
    found = []
    for doc_path in sorted(Path(log_dir).glob("session-*.json")):
        try:
            doc = json.loads(doc_path.read_text(encoding="utf-8"))
            mode = doc["session"]["mode"]
            journal = doc_path.parent / doc["journal"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            out.notes.append(f"{doc_path}: unreadable session document ({type(exc).__name__}: {exc}): skipped")
            out.counts["sessions_skipped"] += 1
            continue
        if mode not in RECORDING_MODES:
            out.counts["sessions_other_mode"] += 1
            continue
        if not journal.is_file():
            out.notes.append(f"{doc_path}: its journal {journal.name} is missing: skipped")
            out.counts["sessions_skipped"] += 1
            continue
        found.append((journal, mode))
    return found


def _read_cycles(journal: Path, until_s: int, out: RecordedRows):
    """The journal's cycles at or before ``until_s``: (epoch s, cycle record); damaged lines noted."""
    try:
        fh = open(journal, "rb")  # noqa: SIM115 -- opened here to report an unreadable file; closed by the with
    except OSError as exc:
        out.notes.append(f"{journal}: cannot be read ({exc.strerror or exc}): skipped")
        return
    with fh:
        for number, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            if not raw.endswith(b"\n"):   # the last line, still being written (the running session) or torn
                out.notes.append(f"{journal}: line {number} is incomplete (being written, or torn by a crash): "
                                 "left out")
                continue
            try:
                line = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                out.notes.append(f"{journal}: line {number} is corrupt ({exc}): left out")
                out.counts["corrupt_lines"] += 1
                continue
            t = _parse_time(line.get("ts")) if isinstance(line, dict) else None
            if t is None:
                out.notes.append(f"{journal}: line {number} is not a cycle record (no ISO-8601 'ts'): left out")
                out.counts["corrupt_lines"] += 1
                continue
            bad = next((k for k, kind in _SHAPE if line.get(k) is not None and not isinstance(line[k], kind)), None)
            if bad is not None:
                out.notes.append(f"{journal}: line {number}: '{bad}' is {json_kind(line[bad])}, expected a JSON "
                                 f"{'object' if dict(_SHAPE)[bad] is dict else 'list'}: left out")
                out.counts["corrupt_lines"] += 1
                continue
            if int(t.timestamp()) <= until_s:
                yield int(t.timestamp()), t, line


def _columns_problem(inputs: dict) -> str | None:
    fs = inputs.get("feature_set")
    if fs is not None:
        return None if fs == FEATURE_SET_ID else f"feature set {fs!r}, the model's is {FEATURE_SET_ID!r}"
    other = sorted(set(inputs) - NOT_FEATURES - _BASE)
    return f"columns the model does not have: {other[:5]}" if other else None


def recorded_rows(log_dir: Path, settings, until: datetime, *, max_gap: timedelta = MAX_PRICE_GAP) -> RecordedRows:
    """The labelled rows of every scored signal recorded in the paper/live/sim journals of ``log_dir`` whose
    holding period ends at or before ``until`` (the retraining time) and is covered by recorded prices."""
    from .dataset import round_trip_costs
    out = RecordedRows(counts={"sessions_read": 0, "sessions_skipped": 0, "sessions_other_mode": 0,
                               "sessions_other_columns": 0, "corrupt_lines": 0, "signals_recorded": 0,
                               "signals_without_feature_set_id": 0, **dict.fromkeys(_REASONS, 0)})
    until_s = int(until.timestamp())
    prices: dict[str, dict[int, float]] = {}
    candidates: list[dict] = []
    for journal, mode in _session_docs(Path(log_dir), out):
        mine: list[dict] = []
        problem = None
        for ts, t, cyc in _read_cycles(journal, until_s, out):
            stale = cyc.get("stale_symbols") or {}
            for sym, px in (cyc.get("prices") or {}).items():
                if sym in stale or isinstance(px, bool) or not isinstance(px, (int, float)) or not px > 0 \
                        or not math.isfinite(px):
                    continue
                prices.setdefault(sym, {}).setdefault(ts, float(px))   # the first session read keeps a time
            signals = cyc.get("signals") or []
            for i, entry in enumerate(cyc.get("ml_scores") or []):
                inputs = entry.get("inputs") if isinstance(entry, dict) else None
                if not isinstance(inputs, dict) or set(inputs) <= {"scored_at"}:
                    continue          # no inputs recorded, or a re-emission of a signal scored earlier
                problem = problem or _columns_problem(inputs)
                sig = signals[i] if i < len(signals) and isinstance(signals[i], dict) else {}
                mine.append({"t": t, "ts": ts, "entry": entry, "inputs": inputs, "signal": sig,
                             "session": journal.name})
        if problem is not None:
            out.counts["sessions_other_columns"] += 1
            out.notes.append(f"{journal}: recorded by a scorer with other feature columns ({problem}): its "
                             f"{len(mine)} signals are left out")
            continue
        out.counts["sessions_read"] += 1
        candidates += mine
    timelines = {s: _Timeline(p) for s, p in prices.items()}
    perps, cost_perp, cost_spot = round_trip_costs(settings)
    gap_s = int(max_gap.total_seconds())
    seen: set = set()
    for c in candidates:
        out.counts["signals_recorded"] += 1
        e, sig = c["entry"], c["signal"]
        sym, source = e.get("symbol"), e.get("source")
        try:
            score, half_life = float(sig["score"]), float(sig["half_life"])
            created = str(sig.get("created_at"))
            if not isinstance(sym, str) or not isinstance(source, str) or sig.get("symbol") != sym \
                    or sig.get("source") != source or not (math.isfinite(score) and 0 < half_life < math.inf):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            out.counts["unmatched_signal"] += 1
            continue
        if score == 0:
            out.counts["no_direction"] += 1
            continue
        direction = math.copysign(1.0, score)
        key = (source, sym, created, direction > 0)
        if key in seen:
            out.counts["duplicate"] += 1
            continue
        seen.add(key)
        hold = holding_period(timedelta(seconds=half_life))
        end = c["t"] + hold
        if end > until:
            out.counts["past_retrain_time"] += 1
            continue
        line = timelines.get(sym)
        end_s = int(end.timestamp())
        if line is None or not line.covered(c["ts"], end_s, gap_s):
            out.counts["not_covered"] += 1
            continue

        def close_at(symbol, at, line=line):   # the close known at ``at``: (first seen, price)
            k = line.index_at(int(at.timestamp()))
            return None if k < 0 else (datetime.fromtimestamp(line.seen[k], UTC), line.px[k])
        res = signal_outcome(close_at, sym, direction, c["t"], hold, cost_perp if sym in perps else cost_spot, until)
        if res is None:
            out.counts["no_new_price"] += 1
            continue
        feats = {k: float(v) for k, v in c["inputs"].items() if k in _BASE and isinstance(v, (int, float))}
        if c["inputs"].get("feature_set") is None:
            out.counts["signals_without_feature_set_id"] += 1
        out.rows.append({"t": c["t"], "symbol": sym, "source": source, "features": feats, "net": res[0],
                         "y": res[1], "label_end": end, "session": c["session"]})
    if out.counts["signals_without_feature_set_id"]:
        out.notes.append(f"{out.counts['signals_without_feature_set_id']} recorded rows carry no feature-set id "
                         "(journals written before it was recorded): accepted because every column they hold is "
                         "one of the model's")
    return out


def merge(ds, rec: RecordedRows):
    """The replay's SignalSet plus the recorded rows, one row per (source, symbol, signal time): a recorded row
    replaces a replay row of the same key (it holds what the live cycle saw, live-only series included)."""
    from .dataset import SignalSet
    rec_rows = {}
    for r in rec.rows:
        rec_rows.setdefault((r["source"], r["symbol"], int(r["t"].timestamp())), r)
    keep = [i for i in range(len(ds.y)) if (ds.sources[i], ds.symbols[i], int(ds.t[i])) not in rec_rows]
    rows = list(rec_rows.values())
    nb = len(SCORER_BASE_FEATURES)
    X_rec = np.array([[r["features"].get(f, math.nan) for f in SCORER_BASE_FEATURES] for r in rows],
                     dtype=float).reshape(-1, nb)
    t = np.concatenate([np.asarray(ds.t, dtype=float)[keep], [r["t"].timestamp() for r in rows]])
    order = np.argsort(t, kind="stable")
    cat = lambda a, b: np.concatenate([np.asarray(a)[keep], np.asarray(b, dtype=float)])[order]
    sources = [ds.sources[i] for i in keep] + [r["source"] for r in rows]
    symbols = [ds.symbols[i] for i in keep] + [r["symbol"] for r in rows]
    X = np.concatenate([np.asarray(ds.X_base, dtype=float).reshape(-1, nb)[keep], X_rec])[order]
    meta = {**ds.meta,
            "rows_by_origin": {"replay": len(keep), "recorded": len(rows)},
            "replay_rows_replaced_by_recorded": len(ds.y) - len(keep),
            "recorded": {**rec.summary(), "notes": rec.notes[:20] + ([f"... {len(rec.notes) - 20} more"]
                                                                    if len(rec.notes) > 20 else [])}}
    return SignalSet(t[order], cat(ds.label_end, [r["label_end"].timestamp() for r in rows]), X,
                     [sources[i] for i in order], [symbols[i] for i in order], cat(ds.y, [r["y"] for r in rows]),
                     cat(ds.net, [r["net"] for r in rows]), meta, ds.summary)


__all__ = ["MAX_PRICE_GAP", "RECORDING_MODES", "RecordedRows", "merge", "recorded_rows"]
