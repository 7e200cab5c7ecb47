"""Event-horizon promises and catch-up of the open positions (issue #24 item 1; the driver is
:mod:`hydra_engine.horizon`): :func:`position_horizon` -- the first bar whose range could reach a position's
stop, target or percent trail, or its time limit -- and :func:`_walk_positions`, the position manager's bar
walk over a skipped span in closed form."""
from __future__ import annotations

import math
from datetime import datetime, timedelta

import numpy as np

from .domain import UTC
from .positions import PositionManager, trailing_candidate

FAR = datetime.max.replace(tzinfo=UTC) - timedelta(days=2)
MARGIN = 1e-6          # relative margin on every price level a position promise compares with


def _ts(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


CHUNK = 512    # bars a position promise looks ahead at a time


def position_horizon(engine, now: datetime) -> datetime | None:
    """The earliest time any open position's stop, target, percent trail or time limit could fire.

    Per position: the close of the first bar whose range could reach the stop (ratcheted by the percent
    trail as far as the bars up to it could take it) or the target, with a ``MARGIN``; a bar with a
    non-finite price or a close outside its range ends the promise too. Looked ahead ``CHUNK`` bars at
    a time and kept while the position is the same object with the same levels and the promised time
    is still ahead (the levels evolve only as the promise assumed until then)."""
    positions = engine.book.positions
    if not positions:
        return FAR
    bars_of = getattr(engine.market, "_bars", None)   # ReplayMarketData's arrays; other data: no promise
    if bars_of is None:
        return None
    pm = engine.position_manager
    if type(pm) is not PositionManager:   # a replaced manager: its rules are its own
        return None
    cache = engine.__dict__.setdefault("_horizon_positions", {})
    scanned = pm._scanned
    native = engine.book.native_stops
    now_s = now.timestamp()
    best = FAR
    for symbol, pos in positions.items():
        if pos.qty == 0:
            continue
        if symbol in native or pos.trailing_atr_mult or not pos.high_water_mark or pos.high_water_mark <= 0:
            return None
        if pos.max_holding is not None:
            try:
                best = min(best, pos.opened_at + pos.max_holding)
            except OverflowError:
                pass
        key = (id(pos), pos.opened_at, pos.qty, pos.target_price, pos.trailing_stop_pct,
               pos.initial_stop_price if pos.trailing_stop_pct else pos.stop_price)
        hit = cache.get(symbol)
        if hit is None or hit[0] != key or hit[1] <= now_s:
            t = _first_possible_exit(pos, bars_of.get(symbol), scanned.get(symbol))
            if t is None:
                return None
            cache[symbol] = hit = (key, t)
        if hit[1] < 1 << 62:
            best = min(best, _ts(hit[1]))
    return best


def _first_possible_exit(pos, b, seen) -> int | None:
    """Epoch close time of the first bar that could make ``pos`` exit (1 << 62: none in the data)."""
    opened_s = pos.opened_at.timestamp()
    if b is None or seen is None or seen[0] != opened_s:
        return None
    stop, target, pct = float(pos.stop_price), float(pos.target_price), pos.trailing_stop_pct
    if not (math.isfinite(stop) and math.isfinite(target)):
        return None
    n = len(b.open_ts)
    k0 = int(b.open_ts.searchsorted(math.ceil(max(opened_s, seen[1] + 1)), "left"))
    k1 = min(n, k0 + CHUNK)
    if k0 >= k1:
        return 1 << 62
    o, h, lo, c = b.o[k0:k1], b.h[k0:k1], b.l[k0:k1], b.c[k0:k1]
    with np.errstate(invalid="ignore"):
        up, down = np.fmax(np.fmax(h, c), o), np.fmin(np.fmin(lo, c), o)
        # a bar the walk would skip (a non-finite price) or whose close lies outside its range: the
        # per-cycle mark update would then move the high-water mark by itself, so such a bar ends it
        odd = ~(np.isfinite(o) & np.isfinite(h) & np.isfinite(lo) & np.isfinite(c)) | (c > h) | (c < lo)
        stops = np.full(len(h), stop)
        if pos.qty > 0:
            if pct:
                hwm = np.fmax.accumulate(np.fmax(up, pos.high_water_mark))
                stops = np.fmax(stops, hwm * (1 - pct / 100))
            hit = (down <= stops * (1 + MARGIN)) | (up >= target * (1 - MARGIN))
        else:
            if pct:
                hwm = np.fmin.accumulate(np.fmin(down, pos.high_water_mark))
                stops = np.fmin(stops, hwm * (1 + pct / 100))
            hit = (up >= stops * (1 - MARGIN)) | (down <= target * (1 + MARGIN))
    hit |= odd
    idx = np.flatnonzero(hit)
    if len(idx):
        return int(b.close_ts[k0 + int(idx[0])])
    return int(b.close_ts[k1]) if k1 < n else 1 << 62   # looked at up to bar k1 - 1: visit when k1 closes


def _walk_positions(engine, last: datetime) -> None:
    """What the position manager's bar walks (``PositionManager.scan_bars``) would have done over the bars
    that closed in the span, in closed form: with no exit possible (the promise) a walk only raises the
    high-water mark to the bars' extreme and ratchets the percent trail from it -- a max (min) and a
    monotone ratchet, so one step over all the bars gives the same floats as one step per bar. The
    per-cycle mark update after each walk is a no-op then (every close inside its bar's range)."""
    positions = engine.book.positions
    if not positions:
        return
    pm = engine.position_manager
    bars_of = engine.market._bars
    last_s = math.floor(last.timestamp())
    for symbol, pos in positions.items():
        if pos.qty == 0:
            continue
        b = bars_of[symbol]
        opened_s = pos.opened_at.timestamp()
        seen = pm._scanned[symbol]
        k0 = int(b.open_ts.searchsorted(math.ceil(max(opened_s, seen[1] + 1)), "left"))
        k1 = int(b.close_ts.searchsorted(last_s, "right"))   # ints: a float would cast the whole array
        if k1 <= k0:
            continue
        long = pos.qty > 0
        hwm = pos.high_water_mark or float(pos.avg_entry_price)
        fav = (b.h if long else b.l)[k0:k1]
        extreme = (max(fav.tolist()) if long else min(fav.tolist())) if k1 - k0 <= 16 else \
            float(fav.max() if long else fav.min())
        hwm = max(hwm, extreme) if long else min(hwm, extreme)
        if pos.trailing_stop_pct:
            cand = trailing_candidate(long, hwm, pos.trailing_stop_pct, None, None)
            new = max(pos.stop_price, cand) if long else min(pos.stop_price, cand)
            if new != pos.stop_price:
                pos.stop_price = new
        pos.high_water_mark = hwm
        pm._scanned[symbol] = (opened_s, int(b.open_ts[k1 - 1]))
