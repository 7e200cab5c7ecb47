"""Event-horizon promises of the regime layer (issue #24 item 1; the driver is :mod:`hydra_engine.horizon`).

* :func:`hmm_regime_until` -- the HMM detector re-reads only when the *daily key* of its feature symbols
  changes (``HMMRegimeDetector._daily_key``: per symbol, the UTC day its newest visible bar closes on);
  between two such changes ``detect`` returns the cached reading. So its label cannot change before the
  first future bar of a feature symbol whose close day differs from the key becomes visible (a replay
  bar is visible from its close time). Promised only while the detector's cache holds the snapshot's
  current key (otherwise the next scheduled detection recomputes and may change the label).
* :func:`refitter_until` -- the scheduled refitter (:class:`~hydra_engine.regime_refit.RegimeRefitter`)
  acts at the first regime refresh at which ``due`` answers; ``due`` depends only on the clock, the last
  attempt and the loaded model's training end, so the earliest such time is known.

Each returns a UTC datetime (nothing can change before it) or None (no promise: the driver visits).
"""
from __future__ import annotations

from datetime import date, datetime, timedelta

import numpy as np

from .domain import UTC
from .horizon_positions import _ts

LOOK = 64   # future bars examined per feature symbol (hourly crypto: a new UTC day within 24)


def hmm_regime_until(detector, market, data) -> datetime | None:
    """The earliest time the HMM detector's daily key could change (module docstring). ``market`` is the
    cycle's snapshot, ``data`` the replay source (its ``_bars`` arrays; other sources: no promise)."""
    from .regime import HMMRegimeDetector
    from .regime_features import ASSETS, VIX_SYMBOL
    cls = type(detector)
    if (cls.detect, cls._daily_key) != (HMMRegimeDetector.detect, HMMRegimeDetector._daily_key):
        return None   # a subclass that reads otherwise: its own promise or none
    bars_of = getattr(data, "_bars", None)
    if bars_of is None or detector._cached is None:
        return None
    key = detector._daily_key(market)
    if key is None or key != detector._cache_key:
        return None
    best = None
    for symbol in [s for s, _ in ASSETS.values()] + [VIX_SYMBOL]:
        b = bars_of.get(symbol)
        if b is None:          # not in the replay: it never appears, its key entry stays None
            continue
        seen = market.bars.get(symbol)
        if seen is None or not len(seen):
            # not visible yet: the first bar that becomes visible changes the key
            k = int(b.close_ts.searchsorted(int(market.now.timestamp()), "right"))
            if k >= len(b.close_ts):
                continue
            t = int(b.close_ts[k])
        else:
            last_open, interval = int(seen.ts[-1]), int(seen.interval_s)
            day = (last_open + interval) // 86400
            k = int(b.open_ts.searchsorted(last_open, "right"))
            opens = b.open_ts[k:k + LOOK]
            if not len(opens):
                continue       # no later bar in the data: the key entry never changes
            moved = np.flatnonzero((opens.astype(np.int64) + interval) // 86400 != day)
            t = int(b.close_ts[k + int(moved[0])]) if len(moved) else int(b.close_ts[k + len(opens) - 1])
        best = t if best is None else min(best, t)
    return _ts(best) if best is not None else datetime.max.replace(tzinfo=UTC) - timedelta(days=2)


def _midnight(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def refitter_until(refitter, detector, now: datetime) -> datetime | None:
    """The earliest time ``refitter.due(detector, t)`` could answer for a ``t`` after ``now`` (its branches,
    in order); None when it is due now or its schedule cannot be read."""
    if refitter.due(detector, now):
        return None
    params = getattr(detector, "params", None)
    if not params:   # retried each new UTC day after the last attempt
        return _midnight(refitter.last_attempt.date() + timedelta(days=1)) if refitter.last_attempt else None
    # ``trained_to >= now.date()`` only gets less true as time runs on
    if refitter.last_attempt is not None:
        return refitter.last_attempt + refitter.every
    trained_to = date.fromisoformat(params["training"]["end"])
    return _midnight(trained_to + timedelta(days=refitter.every.days))
