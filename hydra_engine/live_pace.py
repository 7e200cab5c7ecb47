"""The progress a replay reports: rate and ETA measured from the end of the first cycle (its one-off work,
the regime refit on the history before the span, is not a cycle's cost), for the live view and the line view."""
from __future__ import annotations
import time


class Pace:
    """Cycles a second and the time left of a replay, measured from the END of its first cycle.

    The first cycle carries one-off work -- the regime refit on the history before the span, the plugins'
    pre-computation, caches filling -- that can take longer than thousands of later cycles; a rate counted
    from the start would promise hours for a run of a minute (issue #17: progress that tells the truth from
    the first second). Until a second cycle has ended there is no rate, and the view says what the first
    cycle took instead. ``clock`` is injectable for tests."""

    def __init__(self, total: int | None, clock=time.monotonic):
        self.total, self._clock = total, clock
        self.started: float | None = None
        self.first_cycle_s: float | None = None   # the first cycle's wall time, one-off work included
        self._base: tuple[int, float] | None = None   # (cycles seen, time) at the end of the first cycle
        self._seen = 0
        self._last: float | None = None

    def start(self) -> None:
        self.started = self._clock()

    def on_cycle(self) -> None:
        t = self._clock()
        self._seen += 1
        if self._base is None:
            self.first_cycle_s = t - (self.started if self.started is not None else t)
            self._base = (self._seen, t)
        self._last = t

    def rate(self) -> float | None:
        """Cycles a second since the first cycle ended (None before a second cycle has)."""
        if self._base is None or self._seen <= self._base[0] or self._last is None or self._last <= self._base[1]:
            return None
        return (self._seen - self._base[0]) / (self._last - self._base[1])

    def eta_s(self) -> float | None:
        r = self.rate()
        if r is None or self.total is None:
            return None
        return max(0, self.total - self._seen) / r

    def fields(self) -> dict:
        """What a frame carries (``Frame.extra``): rate, ETA and the first cycle's one-off time."""
        return {"rate_cycles_s": self.rate(), "eta_s": self.eta_s(), "first_cycle_s": self.first_cycle_s}


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def pace_text(extra: dict) -> str | None:
    """``1,234 cycles/s, ETA 1m05s`` -- or, before a rate exists, what the first cycle's one-off work took."""
    if extra.get("rate_cycles_s") is not None:
        text = f"{extra['rate_cycles_s']:,.0f} cycles/s"
        if extra.get("eta_s") is not None:
            text += f", ETA {_duration(extra['eta_s'])}"
        return text
    if extra.get("first_cycle_s") is not None:
        return f"first cycle (one-off setup, e.g. the regime refit) took {extra['first_cycle_s']:.1f} s; ETA after the next"
    return None


# ---------------------------------------------------------------- formatting shared by both views
