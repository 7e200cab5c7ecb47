"""What the dashboard reads: the session logs under ``engine.log_dir`` (and backtest folders in it) and,
read-only, the store's kill switch and engine state. Nothing here writes."""
from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from ..tradelog import load_session


@dataclass(frozen=True)
class SessionEntry:
    rel: str            # path relative to the log folder: the page's address
    path: Path
    session_id: str
    mode: str
    started_at: str
    ended_at: str | None
    return_pct: float | None
    mtime: float

    @property
    def running(self) -> bool:
        return self.ended_at is None


def list_sessions(log_dir: Path) -> list[SessionEntry]:
    """Every session document in the log folder and one level below (backtest folders), newest first.
    Only the document's head is parsed (it is small; the journal is not read here)."""
    out = []
    for path in [*log_dir.glob("session-*.json"), *log_dir.glob("*/session-*.json")]:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            s = doc.get("session") or {}
        except (OSError, ValueError, AttributeError):
            continue   # a torn or foreign file: listed nowhere rather than breaking the index
        summary = doc.get("summary") or {}
        out.append(SessionEntry(str(path.relative_to(log_dir)), path, s.get("session_id", path.stem),
                                s.get("mode", "?"), str(s.get("started_at", "")), s.get("ended_at"),
                                summary.get("return_pct"), path.stat().st_mtime))
    return sorted(out, key=lambda e: e.mtime, reverse=True)


class SessionCache:
    """``load_session`` once per version of the files (document and journal modification times)."""

    def __init__(self, size: int = 4):
        self.size = size
        self._docs: dict[Path, tuple[tuple, dict]] = {}

    def version(self, path: Path) -> tuple:
        """What identifies the files' current content (their modification times)."""
        return self._key(path)

    def get(self, path: Path) -> dict:
        key = self._key(path)
        hit = self._docs.get(path)
        if hit and hit[0] == key:
            return hit[1]
        doc = load_session(path)
        self._docs[path] = (key, doc)
        while len(self._docs) > self.size:
            self._docs.pop(next(iter(self._docs)))
        return doc

    @staticmethod
    def _key(path: Path) -> tuple:
        journal = None
        try:
            head = json.loads(path.read_text(encoding="utf-8"))
            journal = path.parent / head.get("journal", "")
        except (OSError, ValueError):
            pass
        return (path.stat().st_mtime_ns, journal.stat().st_mtime_ns if journal and journal.is_file() else None)


def read_store_state(url: str, root: Path) -> dict:
    """The kill switch (``control``) and each mode's saved engine state, read-only. Only SQLite files are
    opened (``mode=ro``: the dashboard never creates or migrates a database); another URL says so."""
    if not url.startswith("sqlite:///"):
        return {"problem": "the dashboard reads SQLite stores only; kill state not shown"}
    path = Path(url.removeprefix("sqlite:///"))
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        return {"problem": f"no database at {path} yet"}
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)
        try:
            rows = con.execute("SELECT key, value FROM engine_state").fetchall()
        finally:
            con.close()
    except sqlite3.Error as exc:
        return {"problem": f"{path}: cannot read the engine state ({exc})"}
    state = {}
    for key, value in rows:
        try:
            state[key] = json.loads(value)
        except ValueError:
            state[key] = {"unreadable": True}
    return {"state": state}


def kill_state(store: dict, doc: dict) -> dict:
    """Killed or armed, with the reason. The manual switch (``kill``/``resume``) is read by paper and live
    sessions only; a mode's saved risk state is shown only when it is this session's (the store keeps the
    latest session of each mode), else the session's own last cycle says whether it ended killed."""
    s = doc.get("session") or {}
    mode = s.get("mode", "?")
    cycles = doc.get("cycles") or []
    last = cycles[-1] if cycles else {}
    ended_killed = last.get("mode") == "killed"
    if "problem" in store:
        return {"known": False, "killed": ended_killed, "text": ("KILLED at its last cycle; " if ended_killed else "")
                + store["problem"]}
    state = store["state"]
    control = state.get("control") or {}
    saved = state.get(f"engine:{mode}") or {}
    risk = (saved.get("risk") or {}) if (saved.get("engine") or {}).get("session_id") == s.get("session_id") else {}
    if mode in ("paper", "live") and control.get("state") == "killed":
        return {"known": True, "killed": True, "text": f"KILLED (manual): {control.get('reason', '')}"}
    if risk.get("killed"):
        return {"known": True, "killed": True,
                "text": f"KILLED ({risk.get('kill_rule', '?')}): {risk.get('kill_reason', '')}"}
    if ended_killed:
        return {"known": True, "killed": True, "text": "KILLED at its last cycle (see its notes)"}
    cooldown = risk.get("cooldown_until")
    if cooldown and last.get("ts") and str(cooldown).replace("+00:00", "Z") <= last["ts"]:
        cooldown = None   # over by the session's last cycle
    return {"known": True, "killed": False,
            "text": "armed (not killed)" + (f"; loss cooldown until {cooldown}" if cooldown else "")}


def live_positions(store: dict, doc: dict) -> dict | None:
    """The store's managed positions when its saved state belongs to this very session (a running or the
    last paper session): they carry the trailing stop and high-water mark the log does not."""
    if "state" not in store:
        return None
    s = doc.get("session") or {}
    saved = store["state"].get(f"engine:{s.get('mode')}") or {}
    if (saved.get("engine") or {}).get("session_id") != s.get("session_id"):
        return None
    return saved.get("positions") or {}
