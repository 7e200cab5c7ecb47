"""Event-horizon promises of the shipped plugins (issue #24 item 1; the driver is :mod:`hydra_engine.horizon`).

Helpers the plugins' ``horizon_next_wake(market, data=<the replay source>)`` share. Both read the replay
source's *whole* series (future points and events included): a promise is allowed to, since it only bounds
when ``wants_cycle`` could next be True and never changes a decision.

* :func:`event_wake` -- for a plugin woken by dated events: each relevant event contributes one window
  ``[wake, end]`` (datetimes) during which ``wants_cycle`` may be True; the promise is the start of the
  first window after now, and none while a window holds now. Only a replay whose every event feed is a
  :class:`~hydra_engine.data.event_feeds.ReplayEventFeed` promises (a live feed's future is unknown).
* :func:`point_wake` -- for a plugin woken by a point series' newest value: given, per point, whether a
  signal could fire while it is the newest (a superset, computed on the whole series), the promise is the
  ``known_at`` of the next such point; none while the newest known point is one.

Each returns a UTC datetime (``FAR``: never), or None (no promise: the driver visits the next tick).
"""
from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

import numpy as np

from .horizon_positions import FAR, _ts

MARGIN = timedelta(seconds=1)   # event windows are promised to start this much earlier than computed


def replay_events(data, kind: str) -> list | None:
    """Every event of ``kind`` the replay source's feeds hold, known or not (None: no replay source, or a
    feed that is not a replay file, whose future is not known)."""
    from .data.event_feeds import ReplayEventFeed
    feeds = getattr(data, "event_feeds", None)
    if feeds is None or not all(isinstance(f, ReplayEventFeed) for f in feeds):
        return None
    return [e for f in feeds for e in f._by_known if e.kind == kind]


def event_wake(owner, market, data, kind: str, window: Callable[[object], tuple[datetime, datetime] | None]):
    """The start of the first event window after ``market.now`` (minus :data:`MARGIN`), ``FAR`` when none is
    left, or None when a window holds now or there is no replay source. ``window(event)`` gives the event's
    ``(wake, end)``: ``wants_cycle`` can be True on its account only while ``wake <= now <= end`` (None: the
    event can never wake the plugin). The windows are computed once per feed set (cached on ``owner``)."""
    feeds = getattr(data, "event_feeds", None)
    cache = owner.__dict__.get("_horizon_windows")
    if cache is None or cache[0] is not feeds or cache[1] != kind:
        events = replay_events(data, kind)
        if events is None:
            return None
        spans = sorted(w for w in (window(e) for e in events) if w is not None and w[0] <= w[1])
        starts = [w[0] for w in spans]
        # the latest end among the windows started by each index: "does a started window hold now"
        ends_max, best = [], None
        for _, end in spans:
            best = end if best is None or end > best else best
            ends_max.append(best)
        cache = owner.__dict__["_horizon_windows"] = (feeds, kind, starts, ends_max)
    _, _, starts, ends_max = cache
    now = market.now
    k = bisect_right(starts, now)           # windows started at or before now: starts[:k]
    if k and ends_max[k - 1] >= now:
        return None                         # one may hold now (wants_cycle may be True): no promise
    return starts[k] - MARGIN if k < len(starts) else FAR


def point_wake(market, data, keys: Iterable[tuple[str, str]], hot: Callable[[tuple[str, str], object], np.ndarray]):
    """The ``known_at`` of the next point of the series ``keys`` (``(kind, symbol)``) that ``hot`` marks
    (``hot(key, src) -> bool array`` over the replay source's whole series ``src``), ``FAR`` when none is left;
    None while the newest known point of one of them is marked, or without a replay source. A series the
    replay does not hold never wakes the plugin (the snapshot never shows it)."""
    points = getattr(data, "_points", None)
    if points is None:
        return None
    now_s = int(market.now.timestamp())
    best = None
    for key in keys:
        src = points.get(key)
        if src is None:
            continue
        marked = hot(key, src)
        i = int(src.ts.searchsorted(now_s, "right"))     # points known by now: ts[:i]
        if i and marked[i - 1]:
            return None
        nxt = np.flatnonzero(marked[i:])
        if len(nxt):
            t = int(src.ts[i + int(nxt[0])])
            best = t if best is None else min(best, t)
    return FAR if best is None else _ts(best)


def cached(owner, key, src, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """``compute()`` once per (``key``, series array) on ``owner``."""
    cache = owner.__dict__.setdefault("_horizon_hot", {})
    hit = cache.get(key)
    if hit is not None and hit[0] is src.ts:
        return hit[1]
    out = compute()
    cache[key] = (src.ts, out)
    return out


def next_bar_close(market, data, symbol: str) -> int | None:
    """The close time (epoch s) of ``symbol``'s first replay bar after the snapshot's newest one: the
    earliest time the snapshot's bars of ``symbol`` can change (None: no later bar, or no replay source)."""
    b = getattr(data, "_bars", {}).get(symbol)
    if b is None:
        return None
    newest = market.newest_bar_ts(symbol)
    if newest is None:
        k = int(b.close_ts.searchsorted(int(market.now.timestamp()), "right"))
    else:
        k = int(b.open_ts.searchsorted(int(newest), "right"))
    return int(b.close_ts[k]) if k < len(b.close_ts) else None
