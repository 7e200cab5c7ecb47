"""Pieces of a replay snapshot (``data/replay.py``): the lazy ``bars`` mapping, and the newest bars of a
symbol read straight from its arrays for the position manager (issue #24: a leaner event path)."""
from __future__ import annotations

import math
from typing import Mapping

from ..ports import BarSeries


class _LazyBars(Mapping):
    """A snapshot's ``bars``: symbol -> ``BarSeries``, each built on first access. A cycle in which no
    plugin looks at a symbol's history (most of them) then costs no series at all."""

    __slots__ = ("_build", "_spans", "_built")

    def __init__(self, build, spans: dict[str, tuple[int, int]]):
        self._build, self._spans, self._built = build, spans, {}

    def __getitem__(self, symbol: str) -> BarSeries:
        series = self._built.get(symbol)
        if series is None:
            j, i = self._spans[symbol]
            series = self._built[symbol] = self._build(symbol, j, i)
        return series

    def get(self, symbol: str, default=None):
        return self[symbol] if symbol in self._spans else default

    def __contains__(self, symbol) -> bool:
        return symbol in self._spans

    def __iter__(self):
        return iter(self._spans)

    def __len__(self) -> int:
        return len(self._spans)


def rows_since(spans: dict[str, tuple[int, int]], bars: Mapping, symbol: str,
               from_s: int) -> list[tuple[int, float, float, float, float]] | None:
    """``MarketSnapshot.bars_since`` of a replay snapshot with these ``spans`` (symbol -> (j, i), rows j..i-1
    of the replay's ``_Bars`` in ``bars``): the same (open s, open, high, low, close) rows, read straight from
    the arrays without building a ``BarSeries``; None for a symbol without bars. The newest bar (and the one
    before it) answer the common cases, a search the rest."""
    span = spans.get(symbol)
    if span is None:
        return None
    j, i = span
    b = bars[symbol]
    ts = b.open_ts
    if ts.item(i - 1) < from_s:          # nothing opened since: a cycle between two of its bars
        return []
    k = i - 1
    if k == j or ts.item(k - 1) < from_s:   # just the newest bar: every cycle of a position held on
        return [(ts.item(k), b.o.item(k), b.h.item(k), b.l.item(k), b.c.item(k))]
    if from_s.__class__ is float and math.isfinite(from_s):
        from_s = math.ceil(from_s)   # the same first bar (int open times), without casting the window to float
    k = j + int(ts[j:i].searchsorted(from_s, "left"))
    o, h, lo, c = b.o, b.h, b.l, b.c
    return [(ts.item(r), o.item(r), h.item(r), lo.item(r), c.item(r)) for r in range(k, i)]
