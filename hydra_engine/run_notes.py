"""Library warnings folded into HYDRA's own notes (issue #17).

During a run, warnings that hmmlearn (non-convergence of an EM fit) and HYDRA's regime modules (a failed
HMM restart or refit) log are not printed as raw timestamped lines in the middle of the progress bar; they
are collected, de-duplicated by their message's shape, and handed back as notes (``"hmmlearn: Model is not
converging (x12, first at cycle 3)"``) for the run summary, ``metrics.json`` and the console. ``--verbose``
(DEBUG logging) still shows every line as it comes.
"""
from __future__ import annotations

import logging
import re

FOLDED_LOGGERS = ("hmmlearn", "hydra_engine.regime", "hydra_engine.regime_refit")
_NUMBERS = re.compile(r"[-+]?\d[\d.,:eE+-]*")


class FoldedWarnings(logging.Handler):
    def __init__(self, where=lambda: None):
        super().__init__(level=logging.WARNING)
        self.where = where                       # e.g. the engine's cycle number, said with the first one
        self.seen: dict[tuple[str, str], list] = {}   # (logger, message shape) -> [count, first message, where]
        self._saved: list[tuple[logging.Logger, bool]] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
        except Exception:   # a malformed record still counts
            msg = str(record.msg)
        top = record.name.split(".")[0] if record.name.startswith("hmmlearn") else record.name
        key = (top, _NUMBERS.sub("#", msg)[:120])
        entry = self.seen.setdefault(key, [0, msg, self.where()])
        entry[0] += 1

    def __enter__(self) -> "FoldedWarnings":
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            return self   # --verbose: every line as it comes
        for name in FOLDED_LOGGERS:
            lg = logging.getLogger(name)
            self._saved.append((lg, lg.propagate))
            lg.addHandler(self)
            lg.propagate = False
        return self

    def __exit__(self, *exc) -> None:
        for lg, propagate in self._saved:
            lg.removeHandler(self)
            lg.propagate = propagate
        self._saved.clear()

    def notes(self) -> list[str]:
        out = []
        for (name, _), (count, first, where) in self.seen.items():
            text = first if len(first) <= 160 else first[:157] + "..."
            extra = ([f"x{count}"] if count > 1 else []) + ([f"first at cycle {where}"] if where is not None else [])
            out.append(f"{name}: {text}" + (f" ({', '.join(extra)})" if extra else ""))
        return out
