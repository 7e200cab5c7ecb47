"""Kills said out loud (issue #17): every kill (and every block that only a manual ``resume`` lifts) is
recorded with when, which rule and why, and -- in backtests only, when ``truth.backtest_auto_resume_days``
is above 0 -- resumed automatically after that cooling period.

Paper trading keeps the operator's ``resume`` (the setting is ignored outside ``mode="backtest"``): a kill
there is a person's decision. A backtest that measures the strategies rather than one kill may set a
cooling period; the report says which was used. ``share_blocked`` turns the log into the share of a span
during which entries were blocked.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from .tradelog import to_jsonable


class KillLog:
    def __init__(self, auto_resume_days: float = 0.0, enabled: bool = False):
        self.auto_resume = timedelta(days=auto_resume_days) if enabled and auto_resume_days > 0 else None
        self.entries: list[dict] = []        # {"rule", "reason", "at", "resumed_at", "resumed_by"}
        self._open: dict | None = None

    @property
    def policy(self) -> str:
        return (f"auto-resume after {self.auto_resume.total_seconds() / 86400:g} days" if self.auto_resume
                else "no auto-resume: entries wait for `resume`, as in paper")

    def step(self, engine, now: datetime, report: dict) -> None:
        """Once a cycle, after the kill switches ran and before the entry gate reads them."""
        s = getattr(engine.risk, "state", None)
        if s is None or not hasattr(s, "killed"):   # a risk layer without a kill state (benchmark stand-ins)
            return
        if s.killed and self._open is None:
            self._open = {"rule": s.kill_rule, "reason": s.kill_reason, "at": s.killed_at or now,
                          "resumed_at": None, "resumed_by": None}
            self.entries.append(self._open)
        elif not s.killed and self._open is not None:   # resumed by the operator (or a restore)
            self._open["resumed_at"], self._open["resumed_by"] = now, "resume"
            self._open = None
        if self._open is not None and self.auto_resume is not None and now - self._open["at"] >= self.auto_resume:
            engine.risk.resume(now)
            self._open["resumed_at"], self._open["resumed_by"] = now, "auto_resume"
            report["notes"].append(f"kill switch ({self._open['rule']}) resumed automatically after the "
                                   f"{self.auto_resume.total_seconds() / 86400:g}-day cooling period "
                                   "(truth.backtest_auto_resume_days)")
            self._open = None

    def horizon_until(self, engine):
        """Event-horizon replay (``hydra_engine/horizon.py``): the earliest time :meth:`step` could act on
        its own -- a backtest's automatic resume (``at + auto_resume``: the first tick at or after it is
        visited and resumes there, as tick by tick) -- FAR where none is due, or None where the log and
        the risk state disagree (a kill not yet logged, a resume not yet logged: the next cycle records it)."""
        from .horizon_positions import FAR
        s = getattr(engine.risk, "state", None)
        if s is None or not hasattr(s, "killed"):
            return FAR
        if bool(s.killed) != (self._open is not None):
            return None
        if self._open is not None and self.auto_resume is not None:
            return self._open["at"] + self.auto_resume
        return FAR

    def as_json(self, start: datetime | None = None, end: datetime | None = None) -> list[dict]:
        out = []
        for e in self.entries:
            row = to_jsonable(dict(e))
            if start is not None and end is not None and end > start:
                stop = e["resumed_at"] or end
                row["share_of_span_blocked"] = round(max(0.0, (stop - max(e["at"], start)).total_seconds())
                                                     / (end - start).total_seconds(), 4)
            out.append(row)
        return out
