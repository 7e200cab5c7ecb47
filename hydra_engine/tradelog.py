"""The JSON session trade log: a public contract (schema documented in the README).

Two files per session, both under ``logs/``:

* ``session-<UTC start>.cycles.jsonl`` — the journal: one JSON line per finished cycle with the whole
  decision trace (regime, signals, proposals, risk decisions, orders, fills, exits, closed trades,
  equity). Each line is flushed and fsynced when its cycle ends, so a crash loses at most the cycle in
  progress.
* ``session-<UTC start>.json`` — the session document: metadata, every order, fill and closed trade,
  a compact per-cycle summary and the run summary. It is rewritten atomically (temp file + rename)
  whenever a cycle changed orders, fills or trades, every ``snapshot_every`` cycles, and at the end.

:func:`load_session` reads a session back, replaying the journal over the document when a crash left
the document behind, so every consumer (review, explain, weights) sees the same complete record.
"""
from __future__ import annotations

import codecs
import copy
import json
import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from .json_text import _compact, _flat, _item_at_level2, _line_at_level2, _tabbed, to_jsonable  # noqa: F401

SCHEMA_VERSION = 2          # 2: the journal may hold span records (one line for a run of quiet cycles)
READABLE_VERSIONS = (1, 2)  # version 1 logs (no span records) are read as they are


def _dump_indent1(doc: Any, fh) -> None:
    """Write ``json.dump(doc, fh, indent=1)``'s exact bytes. The items of the document's lists -- its
    ``cycles`` (a _SpilledCycles: one summary per cycle, most of a long session's document, converted once
    and kept: :meth:`_SpilledCycles.write_indented`), orders, fills and trades -- each as
    :func:`_item_at_level2` writes it; every other value by ``json.dumps(value, indent=1)`` with its lines
    indented one level deeper. Anything but a non-empty dict with string keys is left to ``json.dump``."""
    if type(doc) is not dict or not doc or any(type(k) is not str for k in doc):
        json.dump(doc, fh, indent=1)
        return
    sep = "{\n "
    for key, value in doc.items():
        fh.write(sep + json.encoder.encode_basestring_ascii(key) + ": ")
        sep = ",\n "
        if type(value) is _SpilledCycles and value:
            fh.write("[\n  ")
            value.write_indented(fh)
            fh.write("\n ]")
            continue
        if type(value) is list and value:
            items = map(_item_at_level2, value)
        else:
            fh.write(json.dumps(value, indent=1).replace("\n", "\n "))
            continue
        fh.write("[\n  ")
        batch: list[str] = []
        for text in items:
            batch.append(text)
            if len(batch) >= 2000:
                fh.write(",\n  ".join(batch) + ",\n  ")
                batch = []
        fh.write(",\n  ".join(batch) + "\n ]")
    fh.write("\n}")


def _atomic_write(path: Path, text: str | None = None, *, doc: Any = None) -> None:
    """Write ``text`` — or stream ``doc`` as ``json.dumps(doc, indent=1)`` would, chunk by chunk — to a
    temp file, fsync it and rename it over ``path``."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        if doc is not None:
            _dump_indent1(doc, fh)   # same bytes as dumps(indent=1), without the whole string in memory
        else:
            fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


_CHUNK = 1 << 20   # bytes read at a time from the summaries' files


class _SpilledCycles(list):
    """The document's ``cycles`` list, kept in an anonymous temporary file instead of in memory.

    A session appends one summary per cycle for as long as it runs (100,000 cycles held ~70 MB as
    dicts), so the summaries are written as JSON lines to a nameless temp file (deleted by the OS when
    closed; nothing appears in the log folder) and read back only when the document is written
    (:meth:`write_indented`) or the list is iterated (``json.loads`` per line). The document's bytes are
    exactly what they were with an in-memory list (JSON floats, ints and strings round-trip exactly)."""

    def __init__(self) -> None:
        super().__init__()
        self._fh = tempfile.TemporaryFile("w+b")
        self._n = 0
        self._at_end = True     # False once a read moved the position: the next append seeks back first
        self._text = None       # the summaries converted for the document (write_indented), and ...
        self._converted = 0     # ... how many bytes of the summaries' file they cover, ...
        self._text_items = 0    # ... how many summaries

    def append(self, item: dict) -> None:
        # a seek flushes the file's buffer (a write call per summary): only after a read moved the position
        if not self._at_end:
            self._fh.seek(0, os.SEEK_END)
            self._at_end = True
        # flat (scalar values under string keys, every summary _summarise makes): the tabbed form, which
        # the document writer indents without parsing; anything else as compact JSON, as always
        if _flat(item):
            line = _tabbed(item)
        else:
            line = _compact(item)
        self._fh.write(line.encode("utf-8") + b"\n")
        self._n += 1

    def __len__(self) -> int:
        return self._n

    def __bool__(self) -> bool:
        return self._n > 0

    def __iter__(self):
        for line in self._lines():
            yield json.loads(line)

    def _lines(self):
        fh = self._fh
        fh.flush()
        end = fh.seek(0, os.SEEK_END)
        pos = 0
        while pos < end:     # positional reads: appends between two items cannot disturb the walk
            self._at_end = False
            fh.seek(pos)
            line = fh.readline()
            pos += len(line)
            yield line

    def write_indented(self, out) -> None:
        """Write the summaries as ``json.dump(doc, indent=1)`` writes the items of the document's ``cycles``
        list (two levels deep), separated by ``",\n  "``, to the text stream ``out``: each as
        :func:`_line_at_level2` makes it from its stored line. A summary is converted once: the converted
        text is kept in a second anonymous temp file, extended by the summaries appended since the last
        call and copied out whole (a paper session rewrites its document after every cycle with orders)."""
        fh = self._fh
        fh.flush()
        end = fh.seek(0, os.SEEK_END)
        if self._text is None:
            self._text = tempfile.TemporaryFile("w+b")
        text = self._text
        if self._converted < end:
            self._at_end = False
            text.seek(0, os.SEEK_END)
            fh.seek(self._converted)
            rest = b""
            while self._converted < end:   # 1 MiB at a time: the summaries never all in memory
                chunk = fh.read(min(_CHUNK, end - self._converted))
                self._converted += len(chunk)
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()         # a line cut by the chunk's end (empty after a whole line)
                if lines:
                    joined = ",\n  ".join(_line_at_level2(line.decode("utf-8")) for line in lines)
                    text.write((",\n  " if self._text_items else "").encode("utf-8") + joined.encode("utf-8"))
                    self._text_items += len(lines)
        text.flush()
        text.seek(0)
        decode = codecs.getincrementaldecoder("utf-8")().decode
        while chunk := text.read(_CHUNK):
            out.write(decode(chunk))
        out.write(decode(b"", final=True))

    def __getitem__(self, index):
        items = list(self)
        return items[index]

    def __reduce__(self):
        return (list, (list(self),))


class SessionLog:
    """Writes one session's journal and document."""

    def __init__(self, log_dir: Path, started_at: datetime, metadata: dict, snapshot_every: int = 500):
        log_dir.mkdir(parents=True, exist_ok=True)
        stamp = started_at.strftime("%Y%m%dT%H%M%S") + f"{started_at.microsecond // 1000:03d}Z"
        self.path = log_dir / f"session-{stamp}.json"
        self.journal_path = log_dir / f"session-{stamp}.cycles.jsonl"
        self.snapshot_every = snapshot_every
        self.doc: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "session": to_jsonable({**metadata, "started_at": started_at, "ended_at": None}),
            "journal": self.journal_path.name,
            "orders": [], "fills": [], "trades": [], "cycles": _SpilledCycles(), "summary": {},
        }
        self._orders_by_id: dict[str, int] = {}
        self._journal = open(self.journal_path, "a", encoding="utf-8")
        self._cycles_since_snapshot = 0
        # journal lines fsynced every N cycles (every line is flushed to the OS at once, so only a machine
        # crash can lose the unsynced ones). 1 for paper and live; backtests raise it (``run_hydra``): a
        # deterministic replay that dies with its machine is run again
        self.fsync_every = 1
        self._since_fsync = 0
        self.write_snapshot()

    def record_cycle(self, report: dict, trades: list[dict]) -> None:
        """Append one finished cycle (already JSON-able) and its closed trades."""
        changed = bool(report.get("orders") or report.get("fills") or trades)
        for order in report.get("orders", []):
            self._upsert_order(order)
        self.doc["fills"].extend(report.get("fills", []))
        self.doc["trades"].extend(trades)
        self._summarise(report)
        self._write_line({**report, "trades": trades}, 1)
        if changed or self._cycles_since_snapshot >= self.snapshot_every:
            self.write_snapshot()

    def record_span(self, reports: list[dict]) -> None:
        """Append a run of quiet cycles (event-horizon replay, ``hydra_engine/horizon.py``) as ONE journal
        line, the *span record*: ``{"cycle": first, "span": {"cycles": n, "keys": [...], "same": {...},
        "each": {...}}}`` -- ``keys`` is the reports' key order, ``same`` the fields equal in every cycle,
        ``each`` a list per field that varies (one value per cycle). :func:`load_session` expands it into
        the ``n`` per-cycle records a tick-by-tick run writes (no orders, fills or trades: a span is quiet)."""
        if not reports:
            return
        if len(reports) == 1:
            self.record_cycle(reports[0], [])
            return
        keys = list(reports[0])
        same, each = {}, {}
        for key in keys:
            if key == "cycle":
                continue
            values = [r[key] for r in reports]
            first = values[0]
            if all(v == first for v in values):
                same[key] = first
            else:
                each[key] = values
        for report in reports:
            if list(report) != keys or report.get("orders") or report.get("fills"):
                raise ValueError(f"cycle {report.get('cycle')}: a span record holds quiet cycles of one shape only")
            self._summarise(report)
        self._write_line({"cycle": reports[0]["cycle"], "span": {"cycles": len(reports), "keys": keys + ["trades"],
                                                                  "same": {**same, "trades": []}, "each": each}},
                         len(reports))
        if self._cycles_since_snapshot >= self.snapshot_every:
            self.write_snapshot()

    def _write_line(self, record: dict, cycles: int) -> None:
        self._journal.write(_compact(record) + "\n")   # json.dumps(record, separators=(",", ":"))
        self._journal.flush()
        self._since_fsync += cycles
        if self._since_fsync >= self.fsync_every:
            os.fsync(self._journal.fileno())
            self._since_fsync = 0
        self._cycles_since_snapshot += cycles

    def _summarise(self, report: dict) -> None:
        regime = report.get("regime") or {}
        self.doc["cycles"].append({
            "cycle": report["cycle"], "ts": report["ts"], "mode": report.get("mode"),
            "regime": regime.get("regime"), "regime_confidence": regime.get("confidence"),
            "equity_usd": report.get("equity_usd"), "signals": len(report.get("signals", [])),
            "proposals": len(report.get("proposals", [])),
            "approved": sum(1 for d in report.get("decisions", []) if d.get("approved")),
            "orders": len(report.get("orders", [])), "fills": len(report.get("fills", [])),
            "exits": len(report.get("exits", [])), "errors": len(report.get("errors", [])),
        })

    def update_orders(self, orders: list[dict]) -> None:
        for order in orders:
            self._upsert_order(order)

    def _upsert_order(self, order: dict) -> None:
        key = order["client_order_id"]
        if key in self._orders_by_id:
            self.doc["orders"][self._orders_by_id[key]] = order
        else:
            self._orders_by_id[key] = len(self.doc["orders"])
            self.doc["orders"].append(order)

    def write_snapshot(self) -> None:
        _atomic_write(self.path, doc=self.doc)
        self._cycles_since_snapshot = 0

    def close(self, ended_at: datetime, summary: dict) -> None:
        self.doc["session"]["ended_at"] = to_jsonable(ended_at)
        self.doc["summary"] = to_jsonable(summary)
        self.write_snapshot()
        if self._since_fsync:
            os.fsync(self._journal.fileno())
        self._journal.close()


class CorruptLog(ValueError):
    """A session log or journal that reads as JSON but is damaged or holds a record of the wrong shape;
    the message names the file and the line or record (and field)."""


def json_kind(value: Any) -> str:
    """What a parsed JSON value is, for a message: "a JSON list", "JSON null"."""
    if value is None or isinstance(value, bool):
        return f"JSON {json.dumps(value)}"
    kinds = {dict: "object", list: "list", str: "string", int: "number", float: "number"}
    return f"a JSON {kinds.get(type(value), type(value).__name__)}"


def _number(value: Any, finite: bool) -> bool:
    """A JSON number or a decimal string (money is written as strings), not a bool."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return False
    try:
        x = float(value)
    except ValueError:
        return False
    return not finite or x - x == 0.0


def _time(value: Any) -> bool:
    """An ISO-8601 time string."""
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


_TRADE_FIELDS = (  # (field, required, valid, what it must be)
    ("strategy", True, lambda v: isinstance(v, str) and v != "", "the strategy's name"),
    ("entry_time", True, _time, "an ISO-8601 time"),
    ("exit_time", True, _time, "an ISO-8601 time"),
    ("pnl_usd", True, lambda v: _number(v, finite=True), "a finite number"),
    ("fees_usd", False, lambda v: _number(v, finite=False), "a number or null"),
    ("r_multiple", False, lambda v: _number(v, finite=False), "a number or null"),
)


def check_trades(trades: Any, path: Path) -> None:
    """The closed trades that review, explain and weights compute from: each an object with the
    strategy's name, ISO-8601 entry and exit times and a finite net P&L; ``fees_usd`` and
    ``r_multiple`` may be null (to_jsonable writes NaN as null) or missing, but are numbers if given."""
    if not isinstance(trades, list):
        raise CorruptLog(f"{path}: 'trades' is {type(trades).__name__}, expected a list of trades")
    for i, t in enumerate(trades):
        if not isinstance(t, dict):
            raise CorruptLog(f"{path}: trades[{i}] is {t!r}, expected a trade object")
        for name, required, valid, expected in _TRADE_FIELDS:
            value = t.get(name)
            if (required or value is not None) and not valid(value):
                got = f"= {value!r}" if name in t else "is missing"
                raise CorruptLog(f"{path}: trades[{i}].{name} {got}: expected {expected}")


def load_session(path: str | Path) -> dict:
    """Read a session document, completing it from its journal if the process died mid-session.

    The returned dict has the document's keys plus ``cycle_details`` (the journal lines, i.e. the
    full decision trace per cycle)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"session log not found: {path}") from None
    except OSError as exc:   # a folder, no permission, ...: the OS message alone may not name the file
        raise ValueError(f"{path}: cannot read the session log ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a valid session log ({exc})") from None
    if not isinstance(doc, dict):   # valid JSON of another shape ([], null): every reader below needs an object
        raise CorruptLog(f"{path}: not a HYDRA session log: the document is {json_kind(doc)}, expected an object")
    if doc.get("schema_version") not in READABLE_VERSIONS:
        raise ValueError(f"{path}: schema_version {doc.get('schema_version')!r}, expected {SCHEMA_VERSION} "
                         f"(or an older {', '.join(map(str, READABLE_VERSIONS[:-1]))})")
    journal = path.parent / doc.get("journal", "")
    try:
        details = _read_journal(journal) if journal.is_file() else []
    except OSError as exc:
        raise ValueError(f"{journal}: cannot read the cycle journal ({exc.strerror or exc})") from None
    known_cycles = {c["cycle"] for c in doc["cycles"]}
    missing = [d for d in details if d["cycle"] not in known_cycles]
    if missing:  # the document lags the journal: rebuild the tail from the journal
        orders = {o["client_order_id"]: o for o in doc["orders"]}
        for d in missing:
            for o in d.get("orders", []):
                orders[o["client_order_id"]] = o
            doc["fills"].extend(d.get("fills", []))
            doc["trades"].extend(d.get("trades", []))
            doc["cycles"].append({"cycle": d["cycle"], "ts": d["ts"], "mode": d.get("mode"),
                                  "regime": (d.get("regime") or {}).get("regime"),
                                  "regime_confidence": (d.get("regime") or {}).get("confidence"),
                                  "equity_usd": d.get("equity_usd")})
        doc["orders"] = list(orders.values())
        doc["recovered_from_journal"] = len(missing)
    if isinstance(doc.get("trades"), list):  # a document without trades is the callers' to refuse
        check_trades(doc["trades"], path)
    doc["cycle_details"] = details
    return doc


def _read_journal(journal: Path) -> list[dict]:
    """The journal's cycle lines. Only the last non-empty line can be torn by a crash (the journal is
    appended and fsynced line by line), so an unreadable last line is dropped; an unreadable line with
    more lines after it is damage, and dropping it (and every cycle after it) would be a silent wrong
    result, so it is an error naming the file and the line."""
    details: list[dict] = []
    unreadable: tuple[int, str] | None = None   # (line number, why): fatal once another line follows it
    with open(journal, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            if unreadable is not None:
                raise CorruptLog(f"{journal}: line {unreadable[0]} is corrupt ({unreadable[1]}); later lines "
                                 "follow it, so this is damage, not a torn write")
            try:
                line = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                unreadable = (number, str(exc))
                continue
            if not isinstance(line, dict):
                raise CorruptLog(f"{journal}: line {number} is not a HYDRA cycle record: the line is "
                                 f"{json_kind(line)}, expected an object")
            if type(line.get("cycle")) is not int:
                raise CorruptLog(f"{journal}: line {number} is not a cycle record (no integer 'cycle')")
            if "span" in line:
                details.extend(expand_span(line, f"{journal}: line {number}"))
            else:
                details.append(line)
    return details


def expand_span(line: dict, where: str = "span record") -> list[dict]:
    """The per-cycle records a span record stands for (``SessionLog.record_span``), key order included."""
    span = line.get("span")
    try:
        n, keys, same, each = span["cycles"], span["keys"], span["same"], span["each"]
        if type(n) is not int or n < 1 or any(len(v) != n for v in each.values()):
            raise ValueError("cycle count and per-cycle lists disagree")
        first = line["cycle"]
        out = []
        for k in range(n):
            rec = {}
            for key in keys:
                value = first + k if key == "cycle" else (each[key][k] if key in each else same[key])
                rec[key] = value if type(value) in (str, int, float, bool, type(None)) else copy.deepcopy(value)
            out.append(rec)
        return out
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        raise CorruptLog(f"{where}: a damaged span record ({type(exc).__name__}: {exc})") from None


def last_logged_fills(log_dir: Path, before: Path, mode: str) -> tuple[str, set[str]]:
    """(session id, fill ids) of the last cycle journaled by the newest ``mode`` session that journaled
    one, among the session logs older than ``before``. A process killed between that cycle's journal line
    and its store commit left those fills in the log but not in the store; a restart books them in the
    store without logging them a second time."""
    for path in sorted(log_dir.glob("session-*.json"), reverse=True):
        if path >= before:
            continue
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if doc.get("session", {}).get("mode") != mode:
                continue        # a backtest or simulation between two paper sessions is not the one
            lines = (path.parent / doc.get("journal", "")).read_text(encoding="utf-8").splitlines()
        except (OSError, ValueError, AttributeError):
            continue
        for line in reversed(lines):
            try:
                last = json.loads(line)
            except json.JSONDecodeError:
                continue   # a torn last line: the cycle before it is the last complete one
            return doc.get("session", {}).get("session_id", ""), {f["fill_id"] for f in last.get("fills", [])}
    return "", set()


def newest_session(log_dir: Path) -> Path | None:
    files = sorted(p for p in log_dir.glob("session-*.json"))
    return files[-1] if files else None
