"""The verdicts the gate reads: per symbol, every outcome in the order it became known.

One structure serves live trading (the analyst adds to it from its own thread) and replay (built once
from the recorded rows), so a backtest applies exactly the lookup the live gate applied. A lookup never
sees an outcome made after the moment asked about, which is the whole look-ahead rule for verdicts.

Thread safety without a lock on the read path: each symbol's history is an immutable tuple, replaced
whole (one dict assignment, atomic in CPython) when the analyst adds to it. The gate's ``check`` takes
a reference to the tuple once and bisects it: O(log n) over a handful of entries live, no waiting.
"""
from __future__ import annotations

import threading
from bisect import bisect_right
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterable

from ..domain import require_utc
from .schema import TimedOutcome


@dataclass(frozen=True, slots=True)
class Lookup:
    """At a moment: the newest real verdict made at or before it (any age: the gate judges the age),
    and the newest outcome of any kind (a verdict or a "no verdict"), for the trace."""

    verdict: TimedOutcome | None
    last: TimedOutcome | None


_NOTHING = Lookup(None, None)


class VerdictBook:
    def __init__(self, outcomes: Iterable[TimedOutcome] = (), *, keep: timedelta | None = None):
        """``keep``: live, how far behind the newest outcome to keep history (None keeps everything,
        as a replay must)."""
        self._keep = keep
        self._write = threading.Lock()
        # symbol -> (all outcomes, verdicts only), each sorted by made_at, ties in insertion order
        self._by_symbol: dict[str, tuple[tuple[TimedOutcome, ...], tuple[TimedOutcome, ...]]] = {}
        self.add(outcomes)

    def add(self, outcomes: Iterable[TimedOutcome]) -> None:
        grouped: dict[str, list[TimedOutcome]] = {}
        for o in outcomes:
            grouped.setdefault(o.symbol, []).append(o)
        with self._write:
            for symbol, new in grouped.items():
                old_all, _ = self._by_symbol.get(symbol, ((), ()))
                merged = sorted([*old_all, *new], key=lambda o: o.made_at)   # stable: ties keep their order
                if self._keep is not None and merged:
                    horizon = merged[-1].made_at - self._keep
                    merged = [o for o in merged if o.made_at >= horizon] or merged[-1:]
                all_ = tuple(merged)
                self._by_symbol[symbol] = (all_, tuple(o for o in all_ if o.is_verdict))

    def lookup(self, symbol: str, now: datetime) -> Lookup:
        require_utc(now, "now")
        entry = self._by_symbol.get(symbol)
        if entry is None:
            return _NOTHING
        all_, verdicts = entry
        i = bisect_right(all_, now, key=lambda o: o.made_at)
        j = bisect_right(verdicts, now, key=lambda o: o.made_at)
        return Lookup(verdicts[j - 1] if j else None, all_[i - 1] if i else None)

    def history(self, symbol: str) -> tuple[TimedOutcome, ...]:
        """Every outcome kept for ``symbol``, oldest first (an immutable tuple: replaced, never changed)."""
        entry = self._by_symbol.get(symbol)
        return entry[0] if entry is not None else ()

    def symbols(self) -> list[str]:
        return sorted(self._by_symbol)

    def __len__(self) -> int:
        return sum(len(a) for a, _ in self._by_symbol.values())
