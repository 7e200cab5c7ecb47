"""``hydra logs prune [--days N] [--keep N] [--dry-run]``: delete old session logs (``[logs]`` retention).

A session is its document ``session-<stamp>.json``, its journal ``session-<stamp>.cycles.jsonl`` and the
folders ``review``/``weights``/``tearsheet`` wrote beside it (``session-<stamp>-review/`` …). Its age is
the time since either file was last written, so a session still running (its journal grows every cycle)
is never old. The newest ``keep_last`` sessions are kept whatever their age. Backtest result folders
(``backtest-*/``) are the user's results and are not touched.
"""
from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from ..config import load_settings
from ..domain import UTC
from . import config_option

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


@dataclass
class SessionFiles:
    stem: str
    paths: list[Path] = field(default_factory=list)
    last_written: datetime | None = None


def session_files(log_dir: Path) -> list[SessionFiles]:
    """Every session in ``log_dir``, oldest first (by last write)."""
    sessions: dict[str, SessionFiles] = {}
    for p in log_dir.glob("session-*"):
        name = p.name
        if name.endswith(".cycles.jsonl"):
            stem = name[: -len(".cycles.jsonl")]
        elif name.endswith(".json"):
            stem = name[: -len(".json")]
        elif p.is_dir() and "-" in name[len("session-"):]:
            stem = name.rsplit("-", 1)[0]          # session-<stamp>-review
        else:
            continue
        s = sessions.setdefault(stem, SessionFiles(stem))
        s.paths.append(p)
        if p.is_file():
            written = datetime.fromtimestamp(p.stat().st_mtime, UTC)
            s.last_written = max(s.last_written or written, written)
    found = [s for s in sessions.values() if s.last_written is not None]   # a folder alone is no session
    return sorted(found, key=lambda s: s.last_written)


def prune(log_dir: Path, *, days: int, keep_last: int, now: datetime | None = None,
          dry_run: bool = False) -> list[SessionFiles]:
    """Delete (or with ``dry_run`` only list) the sessions older than ``days`` beyond the newest
    ``keep_last``. ``days`` 0 keeps everything."""
    if days <= 0 or not log_dir.is_dir():
        return []
    now = now or datetime.now(UTC)
    sessions = session_files(log_dir)
    candidates = sessions[: max(0, len(sessions) - keep_last)]
    old = [s for s in candidates if now - s.last_written > timedelta(days=days)]
    if not dry_run:
        for s in old:
            for p in s.paths:
                if p.is_dir():
                    shutil.rmtree(p)
                else:
                    p.unlink(missing_ok=True)
    return old


def register(sub) -> None:
    logs = sub.add_parser("logs", help="manage session logs (prune old ones)", parents=[config_option()])
    logs_sub = logs.add_subparsers(dest="logs_command", metavar="ACTION", required=True)
    p = logs_sub.add_parser("prune", help="delete session logs older than the retention ([logs] retention_days)",
                            parents=[config_option()],
                            description="Delete session logs (document, journal and the review/weights folders "
                            "beside them) older than --days, keeping the newest --keep sessions. Backtest "
                            "folders are not touched.")
    p.add_argument("--days", type=int, default=None, help="age limit in days (default: [logs] retention_days)")
    p.add_argument("--keep", type=int, default=None, help="always keep the newest N sessions ([logs] keep_last)")
    p.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    p.set_defaults(func=handle_prune)


def handle_prune(args) -> int:
    settings = load_settings(args.config)
    days = settings.logs.retention_days if args.days is None else args.days
    keep = settings.logs.keep_last if args.keep is None else args.keep
    if days < 0 or keep < 0:
        print("error: --days and --keep must be 0 or more", file=sys.stderr)
        return EXIT_USAGE
    log_dir = settings.resolve_path(settings.engine.log_dir)
    if days == 0:
        print(f"retention is 0 days (keep everything): nothing pruned in {log_dir}; "
              "set [logs] retention_days or pass --days N")
        return EXIT_OK
    old = prune(log_dir, days=days, keep_last=keep, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    for s in old:
        print(f"{verb} {s.stem} (last written {s.last_written:%Y-%m-%d %H:%M}Z): "
              + ", ".join(p.name for p in sorted(s.paths)))
    print(f"{verb} {len(old)} session(s) older than {days} days in {log_dir} (newest {keep} kept)")
    return EXIT_OK
