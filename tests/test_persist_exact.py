"""Issue #24: observing and recording a cycle made cheaper, bit for bit the same.

Every function the change touched is compared with a verbatim copy of the code it replaced (the ``ref_*``
and ``Ref*`` definitions below, copied from main before the change): on real replays of the shared data
(a span around the 2020-03-05 regime-break kill, whose cycles are killed, and three weeks of January 2024),
cycle by cycle -- each raw report formatted by both, each formatted report journaled by a reference session
log next to the real one, each snapshot and each perp mark computed by both -- and then the journal and
session document bytes; a short span is also run end to end through the old code and the new, comparing
the journal, the document and every store row. Edge cases (NaN, infinities, signed zeros, ints among floats,
Decimal prices, empty and nested values, escapes) are checked against the references directly."""
from __future__ import annotations

import io
import json
import math
import os
import random
import re
import sqlite3
import tempfile
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum, IntEnum
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hydra_engine import app as app_module
from hydra_engine import cycle_report, engine as engine_module, tradelog
from hydra_engine.data import replay as replay_module
from hydra_engine.data.replay import INTRADAY_KEEP, ReplayMarketData
from hydra_engine.data.snapshot_parts import _LazyBars, rows_since
from hydra_engine.domain import UTC, RegimeReading, require_utc
from hydra_engine.perp.venue import SimulatedPerpVenue
from hydra_engine.ports import Account, MarketSnapshot, PointSeries
from hydra_engine.tradelog import SessionLog, to_jsonable

ROOT = Path(__file__).resolve().parents[1]


# ====================================================================== references (verbatim, from main)
_REF_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
_PLAIN = (str, int, bool, type(None))


def _field_names(cls: type) -> tuple[str, ...]:
    names = _REF_FIELD_NAMES.get(cls)
    if names is None:
        names = _REF_FIELD_NAMES[cls] = tuple(f.name for f in fields(cls))
    return names


def ref_to_jsonable(obj: Any) -> Any:
    """Decimal → string (exact), datetime → ISO-8601 UTC, enums → value, dataclasses → dicts."""
    cls = type(obj)
    if cls in _PLAIN:                # exact types only: str/int enums still become their value below
        return obj
    if cls is float:
        return None if obj != obj else obj  # NaN is not JSON
    if isinstance(obj, Decimal):
        return str(obj)
    if isinstance(obj, datetime):
        return obj.isoformat().replace("+00:00", "Z")
    if isinstance(obj, Enum):
        return obj.value
    if is_dataclass(obj) and not isinstance(obj, type):
        # field by field (what asdict() + recursion gave, without asdict's deep copy of every value)
        return {k: ref_to_jsonable(getattr(obj, k)) for k in _field_names(cls)}
    if isinstance(obj, dict):
        return {str(k): ref_to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [ref_to_jsonable(v) for v in obj]
    if isinstance(obj, float) and obj != obj:  # NaN is not JSON
        return None
    if hasattr(obj, "total_seconds"):
        return obj.total_seconds()
    return obj


CENT = Decimal("0.01")


def ref_format_report(report: dict) -> None:
    """Turn a cycle report's raw values into their JSON-ready form, in place and keeping the key order:
    ISO time, prices rounded to 8 places (non-finite ones dropped), a copy of the regime reading, weights
    rounded to 6 places, equity and cash to the cent."""
    report["ts"] = ref_to_jsonable(report["ts"])
    traced = report.get("llm_verdicts")           # the LLM gate's trace (llm/wiring.py), formatted only when read
    if traced is not None and hasattr(traced, "jsonable"):
        report["llm_verdicts"] = traced.jsonable()
    for key in ("signals", "fills"):   # the cycle's Signal and Fill objects (a dict: converted already)
        items = report.get(key)
        if items:
            report[key] = [x if isinstance(x, dict) else ref_to_jsonable(x) for x in items]
    if "prices" in report:
        report["prices"] = {s: round(p, 8) for s, p in report["prices"].items() if math.isfinite(p)}
    if "regime" in report:
        report["regime"] = dict(_ref_regime_json(report["regime"]))
    if "weights" in report:
        report["weights"] = {k: round(v, 6) for k, v in report["weights"].items()}
    account = report.get("equity_usd")
    if isinstance(account, Account):
        report["equity_usd"] = str(account.equity_usd.quantize(CENT))
        report["cash_usd"] = str(account.cash_usd.quantize(CENT))


_REF_REGIME_JSON: list = [None, None]   # the last reading converted and its JSON form: a reading spans many cycles


def _ref_regime_json(regime) -> dict:
    """A cycle's regime reading as JSON (converted once per reading: readings repeat for many cycles)."""
    if not isinstance(regime, RegimeReading):
        return regime   # already a dict (a report built before the reading was kept raw)
    if _REF_REGIME_JSON[0] is not regime:
        _REF_REGIME_JSON[:] = [regime, ref_to_jsonable(regime)]
    return _REF_REGIME_JSON[1]


def ref_atomic_write(path: Path, text: str | None = None, *, doc: Any = None) -> None:
    """Write ``text`` — or stream ``doc`` as ``json.dumps(doc, indent=1)`` would, chunk by chunk — to a
    temp file, fsync it and rename it over ``path``."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        if doc is not None:
            json.dump(doc, fh, indent=1)   # same bytes as dumps(indent=1), without the whole string in memory
        else:
            fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class RefSpilledCycles(list):
    def __init__(self) -> None:
        super().__init__()
        self._fh = tempfile.TemporaryFile("w+b")
        self._n = 0

    def append(self, item: dict) -> None:
        self._fh.seek(0, os.SEEK_END)
        self._fh.write(json.dumps(item, separators=(",", ":")).encode("utf-8") + b"\n")
        self._n += 1

    def __len__(self) -> int:
        return self._n

    def __bool__(self) -> bool:
        return self._n > 0

    def __iter__(self):
        fh = self._fh
        fh.flush()
        end = fh.seek(0, os.SEEK_END)
        pos = 0
        while pos < end:     # positional reads: appends between two items cannot disturb the walk
            fh.seek(pos)
            line = fh.readline()
            pos += len(line)
            yield json.loads(line)

    def __getitem__(self, index):
        items = list(self)
        return items[index]

    def __reduce__(self):
        return (list, (list(self),))


class RefSessionLog:
    """main's SessionLog, the parts a replay runs (record_cycle, the journal line, the summary, the
    document at close), verbatim."""

    def __init__(self, log_dir: Path, started_at: datetime, metadata: dict, snapshot_every: int = 500):
        log_dir.mkdir(parents=True, exist_ok=True)
        stamp = started_at.strftime("%Y%m%dT%H%M%S") + f"{started_at.microsecond // 1000:03d}Z"
        self.path = log_dir / f"session-{stamp}.json"
        self.journal_path = log_dir / f"session-{stamp}.cycles.jsonl"
        self.snapshot_every = snapshot_every
        self.doc: dict[str, Any] = {
            "schema_version": tradelog.SCHEMA_VERSION,
            "session": ref_to_jsonable({**metadata, "started_at": started_at, "ended_at": None}),
            "journal": self.journal_path.name,
            "orders": [], "fills": [], "trades": [], "cycles": RefSpilledCycles(), "summary": {},
        }
        self._orders_by_id: dict[str, int] = {}
        self._journal = open(self.journal_path, "a", encoding="utf-8")
        self._cycles_since_snapshot = 0
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

    def _write_line(self, record: dict, cycles: int) -> None:
        self._journal.write(json.dumps(record, separators=(",", ":")) + "\n")
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
        ref_atomic_write(self.path, doc=self.doc)
        self._cycles_since_snapshot = 0

    def close(self, ended_at: datetime, summary: dict) -> None:
        self.doc["session"]["ended_at"] = ref_to_jsonable(ended_at)
        self.doc["summary"] = ref_to_jsonable(summary)
        self.write_snapshot()
        if self._since_fsync:
            os.fsync(self._journal.fileno())
        self._journal.close()


def ref_update_marks(self, prices, now: datetime | None = None) -> None:
    """main's SimulatedPerpVenue.update_marks."""
    for symbol, price in prices.items():
        if isinstance(price, Decimal):
            ok = price.is_finite() and price > 0
        else:
            ok = 0 < price < math.inf
        if ok:
            self._marks[symbol] = price if isinstance(price, Decimal) else Decimal(repr(float(price)))
    if now is not None:
        self._advance(now)
    if self.bars is None:
        ts = now or self._now
        for symbol in list(self._positions):
            mark = self._marks.get(symbol)
            if mark is not None and ts is not None:
                self._check_cross(symbol, mark, mark, ts)


# main's ReplayMarketData.snapshot and _intraday_into, as functions of the market
def ref_snapshot(self, now: datetime) -> MarketSnapshot:
    require_utc(now, "now")
    now_s = int(now.timestamp())
    n = self.history_bars
    spans: dict[str, tuple[int, int]] = {}
    stale: dict[str, str] = {}
    newest_ts: dict[str, int] = {}
    closes: dict[str, float] = {}
    for clock in self._clocks:   # the per-symbol work is dict updates, done in C
        i = int(clock.close_ts.searchsorted(now_s, "right"))   # ndarray method: no dispatch wrapper
        symbols = clock.symbols
        if i == 0:
            stale.update(dict.fromkeys(symbols, "no closed bar yet"))
            continue
        span, opened = (i - n if i > n else 0, i), clock.open_ts.item(i - 1)   # .item(): a Python int
        if len(symbols) == 1:   # a clock of its own (e.g. a single-symbol backtest): plain assignments
            s = symbols[0]
            spans[s], newest_ts[s], closes[s] = span, opened, clock.closes.item(i - 1, 0)
        else:
            spans.update(dict.fromkeys(symbols, span))
            newest_ts.update(dict.fromkeys(symbols, opened))
            closes.update(zip(symbols, clock.closes[i - 1].tolist()))
        last_close = clock.close_ts.item(i - 1)
        if clock.any_bad or now_s - last_close > clock.fresh_for_s:
            for symbol, stale_after, next_bad in clock.checks:
                if next_bad is not None and next_bad.item(i - 1) <= now_s:   # a refused row is newer
                    bad = self._bars[symbol].bad_close_ts
                    newest_bad = int(bad[bad <= now_s].max())
                    stale[symbol] = f"newest bar has an invalid price (closed {datetime.fromtimestamp(newest_bad, UTC):%Y-%m-%d %H:%M}Z)"
                elif now_s - last_close > stale_after:
                    stale[symbol] = f"newest bar closed {(now_s - last_close) / 3600:.1f} h ago"
    if not self._clock_order_is_symbol_order:
        order = self._bars
        spans = {s: spans[s] for s in order if s in spans}
        stale = {s: stale[s] for s in order if s in stale}
        newest_ts = {s: newest_ts[s] for s in order if s in newest_ts}
        closes = {s: closes[s] for s in order if s in closes}
    snap = MarketSnapshot(now, _LazyBars(self._series, spans), {}, stale, {}, newest_ts, closes)
    snap.rows_since = partial(rows_since, spans, self._bars)
    if self._fine:
        snap.fine_path = self._fine.path
    if self._regime_bars:
        longer = {}
        for symbol, keep in self._regime_bars.items():
            if symbol in spans:
                i = spans[symbol][1]
                longer[symbol] = (i - keep if i > keep else 0, i)
        snap.regime_bars = _LazyBars(self._regime_series, longer)
    for key, p in self._points.items():
        i = int(p.ts.searchsorted(now_s, "right"))
        j = i - n if i > n else 0
        snap.series[key] = PointSeries(p.kind, p.symbol, p.ts[j:i], p.values[j:i])
    if self._intraday or self.intraday_missing:
        ref_intraday_into(self, snap, now_s)
    if self._events is not None:
        snap.events = self._events(now, snap.feed_problems)
        for name, limit_s in self._event_limits:
            if now_s >= limit_s:
                ok, why = next(f for f in self.event_feeds if f.name == name).health(now)
                if not ok:
                    snap.feed_problems[name] = why
    return snap


def ref_intraday_into(self, snap: MarketSnapshot, now_s: int) -> None:
    spans = {}
    for symbol, ib in self._intraday.items():
        i = int(ib.close_ts.searchsorted(now_s, "right"))
        if i:
            spans[symbol] = (i - INTRADAY_KEEP if i > INTRADAY_KEEP else 0, i)
    snap.intraday = _LazyBars(self._intraday_series, spans)
    for symbol, (_, i) in spans.items():   # a candle newer than the daily bar is the symbol's price now
        ib, daily = self._intraday[symbol], self._bars.get(symbol)
        if daily is None or symbol not in snap.closes:
            continue
        d = int(daily.close_ts.searchsorted(now_s, "right"))
        if d and int(ib.close_ts[i - 1]) > int(daily.close_ts[d - 1]):
            snap.closes[symbol] = float(ib.c[i - 1])
    missing = dict(self.intraday_missing)
    for symbol, ib in self._intraday.items():
        if symbol not in spans or now_s - int(ib.close_ts[spans[symbol][1] - 1]) > 5 * 86_400:
            missing[symbol] = (f"no intraday bars for {symbol} near {datetime.fromtimestamp(now_s, UTC):%Y-%m-%d}; "
                               f"the file covers {ib.first_day} .. {ib.last_day}")
    snap.intraday_missing = missing


# ====================================================================== real replays, cycle by cycle
FIXED_NOW = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


class _FixedNow(datetime):
    """``datetime`` whose ``now`` is fixed: the session's start and end stamps (file names, the document's
    session times, the store's state time) are then the same in two runs."""

    @classmethod
    def now(cls, tz=None):
        return FIXED_NOW if tz is not None else FIXED_NOW.replace(tzinfo=None)


def _settings(shared_data: Path, out: Path, start: str, end: str):
    from hydra_engine.backtest import backtest_settings
    from hydra_engine.config import load_settings
    return backtest_settings(load_settings(ROOT / "hydra.toml"), shared_data, date.fromisoformat(start),
                             date.fromisoformat(end), out)


def _run(shared_data: Path, out: Path, start: str, end: str, before_run=None) -> dict:
    """A backtest of the shipped configuration (every enabled plugin) as ``hydra backtest`` runs it."""
    from hydra_engine.backtest import _defer_snapshots
    out.mkdir(parents=True, exist_ok=True)
    session = app_module.build_sim_session(_settings(shared_data, out, start, end), mode="backtest",
                                           data_dir=shared_data, log_dir=out)
    _defer_snapshots(session.session_log)
    if before_run is not None:
        before_run(session)
    summary = app_module.run_session(session, progress=False)
    return summary


def _json(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _same_snapshot(a: MarketSnapshot, b: MarketSnapshot) -> None:
    assert a.now == b.now
    assert type(a.bars) is type(b.bars) and list(a.bars) == list(b.bars)
    if isinstance(a.bars, _LazyBars):
        assert a.bars._spans == b.bars._spans and a.bars._build == b.bars._build
    assert list(a.series) == list(b.series)
    for key, sa in a.series.items():
        sb = b.series[key]
        assert (sa.kind, sa.symbol, sa.ts.dtype, sa.values.dtype) == (sb.kind, sb.symbol, sb.ts.dtype, sb.values.dtype)
        assert np.array_equal(sa.ts, sb.ts) and np.array_equal(sa.values, sb.values, equal_nan=True)
    for name in ("stale", "feed_problems", "newest_ts", "intraday_missing"):
        assert list(getattr(a, name).items()) == list(getattr(b, name).items()), name
    assert [(s, repr(p), type(p)) for s, p in a.closes.items()] == [(s, repr(p), type(p)) for s, p in b.closes.items()]
    for name in ("regime_bars", "intraday"):
        la, lb = getattr(a, name), getattr(b, name)
        assert type(la) is type(lb) and list(la) == list(lb), name
        if isinstance(la, _LazyBars):
            assert la._spans == lb._spans and la._build == lb._build, name
    assert a.events == b.events and a.fine_path == b.fine_path
    assert (a.rows_since.func, a.rows_since.args[0], a.rows_since.args[1]) == \
        (b.rows_since.func, b.rows_since.args[0], b.rows_since.args[1])


def _same_marks(a: dict, b: dict) -> None:
    assert [(s, str(m), m.as_tuple()) for s, m in a.items()] == [(s, str(m), m.as_tuple()) for s, m in b.items()]


def _tee(shared_data: Path, tmp_path: Path, monkeypatch, start: str, end: str) -> dict:
    """Run a real span once with the new code while the references redo each step beside it: every raw
    report is also formatted by ``ref_format_report`` (same JSON bytes), journaled by a ``RefSessionLog``
    in another folder, every snapshot also taken by ``ref_snapshot``, every perp mark also made by
    ``ref_update_marks``. Returns the counts and both logs' paths."""
    counts = {"reports": 0, "snapshots": 0, "marks": 0}
    twins: dict[int, dict] = {}
    new_format = engine_module.format_report

    def tee_format(report: dict) -> None:
        twin = dict(report)
        ref_format_report(twin)
        new_format(report)
        assert list(report) == list(twin)
        assert _json(report) == _json(twin), report["cycle"]
        twins[id(report)] = twin
        counts["reports"] += 1

    new_snapshot = ReplayMarketData.snapshot

    def tee_snapshot(self, now):
        snap = new_snapshot(self, now)
        _same_snapshot(snap, ref_snapshot(self, now))
        counts["snapshots"] += 1
        return snap

    new_marks = SimulatedPerpVenue.update_marks

    class _Shadow:   # only the marks part of ref_update_marks runs on it (now None, bars set)
        bars = ()

    def tee_marks(self, prices, now=None):
        shadow = _Shadow()
        shadow._marks = dict(self._marks)
        ref_update_marks(shadow, prices)
        new_marks(self, prices, now)
        _same_marks({s: self._marks[s] for s in prices if s in self._marks},
                    {s: shadow._marks[s] for s in prices if s in shadow._marks})
        counts["marks"] += 1

    monkeypatch.setattr(engine_module, "format_report", tee_format)
    monkeypatch.setattr(ReplayMarketData, "snapshot", tee_snapshot)
    monkeypatch.setattr(SimulatedPerpVenue, "update_marks", tee_marks)
    monkeypatch.setattr(app_module, "datetime", _FixedNow)
    from hydra_engine.backtest import _defer_snapshots

    def with_reference_log(session) -> None:
        real = session.session_log
        started = datetime.fromisoformat(real.doc["session"]["started_at"].replace("Z", "+00:00"))
        metadata = {k: v for k, v in real.doc["session"].items() if k not in ("started_at", "ended_at")}
        ref = RefSessionLog(tmp_path / "ref", started, metadata)
        assert ref.doc["session"] == real.doc["session"]
        _defer_snapshots(ref)
        record, close = real.record_cycle, real.close

        def record_both(report: dict, trades: list[dict]) -> None:
            record(report, trades)
            ref.record_cycle(twins.pop(id(report)), trades)

        def close_both(ended_at, summary) -> None:
            close(ended_at, summary)
            ref.close(ended_at, summary)
        real.record_cycle, real.close = record_both, close_both
        counts["ref_log"] = ref

    summary = _run(shared_data, tmp_path / "new", start, end, before_run=with_reference_log)
    ref = counts.pop("ref_log")
    new_journal, new_doc = Path(summary["journal"]).read_bytes(), Path(summary["log"]).read_bytes()
    assert new_journal == ref.journal_path.read_bytes()
    assert new_doc == ref.path.read_bytes()
    doc = json.loads(new_doc)
    assert len(doc["cycles"]) == summary["cycles"] == counts["reports"] == counts["snapshots"] == counts["marks"]
    return {**counts, "summary": summary, "doc": doc}


def test_killed_span_around_the_2020_03_05_kill_matches_the_reference_cycle_by_cycle(shared_data, tmp_path,
                                                                                     monkeypatch):
    got = _tee(shared_data, tmp_path, monkeypatch, "2020-02-25", "2020-03-07")
    modes = [c["mode"] for c in got["doc"]["cycles"]]
    assert "killed" in modes and modes[-1] == "killed"   # the kill fired inside the span and held
    assert got["doc"]["orders"] and got["doc"]["fills"]  # orders, fills (and the kill's closing orders) too


def _store_rows(db: Path) -> dict[str, list]:
    con = sqlite3.connect(db)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        return {t: con.execute(f'SELECT * FROM "{t}" ORDER BY rowid').fetchall() for t in tables}
    finally:
        con.close()


# a regime refit says how long it took (its note and its record's "seconds"): wall time, masked
_WALL_TIME = re.compile(rb"\(\d+ days, \d+\.\d+ s\)|\"seconds\\?\":\s?\d+(\.\d+)?(e-?\d+)?")


def _without_wall_time(data: bytes) -> bytes:
    return _WALL_TIME.sub(b"<wall time>", data)


def test_january_2024_through_the_old_code_and_the_new_gives_the_same_files_and_store_rows(shared_data, tmp_path,
                                                                                          monkeypatch):
    """End to end: a week of January 2024 run by the new code, then by the old (every changed function
    replaced by its reference, to_jsonable in every module that imported it): the journal, the session
    document and every row of every store table are the same (the regime refit's note says how many
    seconds the refit took, the only wall time in them: masked)."""
    import sys
    monkeypatch.setattr(app_module, "datetime", _FixedNow)
    span = ("2024-01-02", "2024-01-09")
    run = tmp_path / "run"   # both runs write under the same path (the journal names the regime model file)
    new = _run(shared_data, run, *span)
    run.rename(tmp_path / "new")
    new = {k: (v.replace(str(run), str(tmp_path / "new")) if isinstance(v, str) else v) for k, v in new.items()}
    with monkeypatch.context() as m:
        m.setattr(engine_module, "format_report", ref_format_report)
        m.setattr(app_module, "SessionLog", RefSessionLog)
        m.setattr(ReplayMarketData, "snapshot", ref_snapshot)
        m.setattr(SimulatedPerpVenue, "update_marks", ref_update_marks)
        for name, module in list(sys.modules.items()):
            if name.startswith("hydra_engine") and getattr(module, "to_jsonable", None) is to_jsonable:
                m.setattr(module, "to_jsonable", ref_to_jsonable)
        old = _run(shared_data, run, *span)
    run.rename(tmp_path / "old")
    old = {k: (v.replace(str(run), str(tmp_path / "old")) if isinstance(v, str) else v) for k, v in old.items()}
    assert new["cycles"] == old["cycles"] > 150
    assert _without_wall_time(Path(new["journal"]).read_bytes()) == _without_wall_time(Path(old["journal"]).read_bytes())
    assert _without_wall_time(Path(new["log"]).read_bytes()) == _without_wall_time(Path(old["log"]).read_bytes())
    rows_new, rows_old = _store_rows(tmp_path / "new" / "hydra.db"), _store_rows(tmp_path / "old" / "hydra.db")
    assert rows_new.keys() == rows_old.keys()
    for table in rows_new:
        assert _without_wall_time(repr(rows_new[table]).encode()) == _without_wall_time(repr(rows_old[table]).encode()), table
    assert rows_new["cycles"] and rows_new["orders"] and rows_new["fills"] and rows_new["engine_state"]


# ====================================================================== edge cases against the references
class _Colour(Enum):
    RED = "red"


class _Level(IntEnum):
    HIGH = 3


@dataclass(frozen=True)
class _Inner:
    when: datetime
    span: timedelta
    money: Decimal


@dataclass
class _Outer:
    name: str
    x: float
    n: int
    flag: bool
    none: None
    inner: _Inner
    items: list = field(default_factory=list)
    mapping: dict = field(default_factory=dict)
    colour: _Colour = _Colour.RED
    level: _Level = _Level.HIGH
    nested: tuple = ()


class _FloatSub(float):
    pass


class _Seconds:
    def total_seconds(self) -> float:
        return 12.5


def test_to_jsonable_matches_the_reference_on_every_kind_of_value():
    when = datetime(2020, 3, 5, 12, 30, tzinfo=UTC)
    other_tz = datetime(2020, 3, 5, 12, 30, tzinfo=timezone(timedelta(hours=2)))
    inner = _Inner(when, timedelta(hours=36), Decimal("-0.000"))
    values = [
        None, True, False, 0, -7, 2**70, "", "é\t\"", 0.0, -0.0, 1.5, math.nan, math.inf, -math.inf,
        _FloatSub(2.5), _FloatSub(math.nan), np.float64(0.25), np.float64(math.nan), np.int64(3),
        Decimal("1.10"), Decimal("NaN"), when, other_tz, datetime(2020, 1, 1), date(2020, 1, 2),
        timedelta(seconds=-1.5), _Seconds(), _Colour.RED, _Level.HIGH, inner,
        _Outer("o", math.nan, 1, True, None, inner, [inner, math.nan, (1, 2)], {1: inner, None: -0.0, "k": [{}]},
               nested=(inner, {"a": {2.5, }})),
        {}, [], (), set(), frozenset({1}), {"a": {"b": [math.inf, {"c": math.nan}]}}, [_Outer, _Inner, int],
        Account(cash_usd=Decimal("1.005"), equity_usd=Decimal("2"), buying_power_usd=Decimal("0")),
    ]
    for _ in range(2):   # the second pass answers from the learned converters
        for value in values:
            got, want = to_jsonable(value), ref_to_jsonable(value)
            assert repr(got) == repr(want) and type(got) is type(want), value
            assert _dumped(got) == _dumped(want)


def _dumped(value) -> str:
    try:
        return json.dumps(value)
    except TypeError as exc:   # numpy ints, dates: not JSON for either
        return f"TypeError: {exc}"


def test_report_rounding_matches_the_reference_on_repeats_zeros_nans_and_ints():
    rng = random.Random(24)
    base = {"A": 101.123456789123, "B": 0.0, "C": -0.0, "D": math.nan, "E": math.inf, "F": 3, "G": 1e-9,
            "H": -2.5, "I": 5e-324, "J": 1.000000005, "K": _FloatSub(7.123456789)}
    sequence = [dict(base)]
    for _ in range(60):   # repeats (the memo's hits), sign flips of zero, a finite price turning NaN and back, ...
        step = dict(sequence[-1])
        key = rng.choice(list(base))
        step[key] = rng.choice([step[key], -step[key] if isinstance(step[key], float) else step[key], math.nan,
                                -math.inf, 0.0, -0.0, 4, 4.0, rng.uniform(-1e6, 1e6), base[key]])
        sequence.append(step)
    for values in sequence:
        want_p = {s: round(p, 8) for s, p in values.items() if math.isfinite(p)}
        got_p = cycle_report._rounded(values, 8, cycle_report._PRICES_ROUNDED, finite_only=True)
        want_w = {k: round(v, 6) for k, v in values.items()}
        got_w = cycle_report._rounded(values, 6, cycle_report._WEIGHTS_ROUNDED, finite_only=False)
        for got, want in ((got_p, want_p), (got_w, want_w)):
            assert [(k, repr(v), type(v)) for k, v in got.items()] == [(k, repr(v), type(v)) for k, v in want.items()]


def test_format_report_matches_the_reference_on_a_made_up_report():
    from hydra_engine.domain import Regime, Signal
    now = datetime(2024, 1, 5, 14, tzinfo=UTC)
    reading = RegimeReading(Regime.HIGH_VOL, math.nan, "hmm", now, {"p": [0.5, math.nan], "why": "é"})
    signal = Signal("BTC/USD", -0.0, 0.5, "s", now, timedelta(hours=3), "t")
    account = Account(cash_usd=Decimal("100.005"), equity_usd=Decimal("-3.994"), buying_power_usd=Decimal(0))
    for _ in range(3):
        report = {"cycle": 3, "ts": now, "mode": "killed", "signals": [signal, {"already": "json"}], "fills": [],
                  "prices": {"BTC/USD": 42000.123456789, "SPY": math.nan, "X": 0.0, "Y": -0.0, "Z": 7},
                  "regime": reading, "weights": {"a": 0.1234564999, "b": math.inf, "c": -0.0}, "equity_usd": account}
        twin = dict(report)
        cycle_report.format_report(report)
        ref_format_report(twin)
        assert list(report) == list(twin) and _json(report) == _json(twin) and repr(report) == repr(twin)


def _doc_with(items: list) -> dict:
    cycles = tradelog._SpilledCycles()
    for item in items:
        cycles.append(item)
    return {"schema_version": 2, "session": {"a": 1, "started_at": "x", "list": [1, [2, {}]], "e": {}},
            "journal": "j", "orders": [{"id": "é", "n": math.nan, "q": "1.5", "b": False, "none": None}] + items[:3],
            "fills": [], "trades": items[::-1] + [1, "s", None, 2.5, [1, {"a": []}], [], {}, (1, 2)],
            "cycles": cycles, "more": (1, {"a": 1}), "summary": {"nested": {"deep": [{"x": -math.inf}]}}}


def test_the_document_writer_gives_json_dump_indent_1_bytes():
    flat = {"cycle": 1, "ts": "2020-03-05T00:00:00Z", "mode": "killed", "regime": None, "regime_confidence": 0.5,
            "equity_usd": "1.00", "signals": 0, "b": True, "f": False, "nan": math.nan, "inf": -math.inf, "z": -0.0,
            "s": "a,\t:\" \\ \n\u00e9\u2603 ,\t :\t"}
    items = [flat, {}, {"one": 1}, {"k\t,:": "v:\t,"}, {"nested": {"x": [1, {}]}, "y": []}, {"l": [1.5, None]},
             {"f": _FloatSub(1.25), "n": np.float64(2.5)}, {1: "int key"}, dict(flat, cycle=2)]
    for chosen in (items, [flat] * 5, [{}], []):
        doc = _doc_with(chosen)
        want, got = io.StringIO(), io.StringIO()
        json.dump(doc, want, indent=1)
        tradelog._dump_indent1(doc, got)
        assert got.getvalue() == want.getvalue()
        assert list(doc["cycles"]) == json.loads(json.dumps(chosen))   # read back as before
        ref = RefSpilledCycles()
        for item in chosen:
            ref.append(item)
        assert list(doc["cycles"]) == list(ref) or math.nan in [v for i in chosen for v in i.values()]
    for other in ({}, [], {"a": 1}, {1: 2}, [1, {"a": []}]):   # not a session document: json.dump itself
        want, got = io.StringIO(), io.StringIO()
        json.dump(other, want, indent=1)
        tradelog._dump_indent1(other, got)
        assert got.getvalue() == want.getvalue()


@pytest.mark.parametrize("chunk", [1 << 20, 37, 1])
def test_the_document_rewritten_as_summaries_come_gives_json_dump_bytes_each_time(monkeypatch, chunk):
    """The converted summaries are kept between writes (a paper session rewrites its document after every
    cycle with orders) and read in chunks: each write is still json.dump(indent=1)'s bytes."""
    monkeypatch.setattr(tradelog, "_CHUNK", chunk)
    rng = random.Random(5)
    cycles = tradelog._SpilledCycles()
    doc = {"schema_version": 2, "session": {}, "orders": [], "cycles": cycles, "summary": {}}
    n = 0
    for _ in range(6):
        for _ in range(rng.choice([0, 1, 3, 40] if chunk < 100 else [0, 1, 300])):
            n += 1
            item = {"cycle": n, "ts": f"t{n}", "mode": rng.choice(["killed", "trade", None]),
                    "regime_confidence": rng.choice([0.5, math.nan, None, 1e-300, -0.0]), "s": "é\t,:" * (n % 3)}
            cycles.append(item if n % 7 else {**item, "nested": [n]})   # some lines not flat
            doc["orders"].append({"id": str(n), "q": n / 3})
        if n % 2:
            list(cycles)   # a read between writes
        want, got = io.StringIO(), io.StringIO()
        json.dump(doc, want, indent=1)
        tradelog._dump_indent1(doc, got)
        assert got.getvalue() == want.getvalue()
    assert len(cycles) == n > 0


def test_spilled_cycles_read_and_appended_in_turn_behave_as_the_reference():
    """Appends between reads (the seek before an append is now made only after a read)."""
    def script(cycles) -> list:
        seen = []
        cycles.append({"cycle": 1})
        walk = iter(cycles)
        seen.append(next(walk))
        cycles.append({"cycle": 2, "x": [1]})      # while a walk is under way
        seen.append(list(walk))
        cycles.append({"cycle": 3, "s": "\t,:"})
        seen += [list(cycles), len(cycles), cycles[-1], bool(cycles)]
        cycles.append({})
        seen += [list(cycles), len(cycles)]
        return seen
    got, want = script(tradelog._SpilledCycles()), script(RefSpilledCycles())
    assert got == want and got[1] == [] and [c["cycle"] for c in got[2]] == [1, 2, 3]


def test_perp_marks_match_the_reference_on_repeats_and_refused_prices():
    rng = random.Random(7)
    new, ref = (SimulatedPerpVenue(None, {}, starting_balance_usdt="1000") for _ in range(2))
    choices = [100.5, 100.5, 100.50000000000001, 0.0, -0.0, -3.0, math.nan, math.inf, 7, Decimal("100.5"),
               Decimal("NaN"), Decimal("-1"), Decimal("2.50"), _FloatSub(9.5), np.float64(100.5), 1e-12]
    for _ in range(200):
        prices = {s: rng.choice(choices) for s in ("BTCUSDT", "ETHUSDT", "SPY")}
        new.update_marks(prices)
        ref_update_marks(ref, prices)
        _same_marks(new._marks, ref._marks)


def test_counting_closed_bars_on_from_the_last_count_is_searchsorted():
    from hydra_engine.data.replay import _count_closed
    rng = np.random.default_rng(11)
    arrays = [np.array([], dtype=np.int64), np.array([5], dtype=np.int64),
              np.cumsum(rng.integers(0, 4, 300)).astype(np.int64),          # sorted, with repeats
              np.sort(rng.integers(0, 1000, 200)).astype(np.int64),
              rng.integers(0, 1000, 50).astype(np.int64)]                     # not sorted: always searched
    for ts in arrays:
        at: list = []
        now = -3
        for _ in range(600):
            now += int(rng.choice([0, 0, 1, 1, 2, 5, 40, -1, -30, 400]))      # forward mostly, sometimes back
            assert _count_closed(ts, now, at) == int(ts.searchsorted(now, "right"))
        other = ts.copy()      # another array under the same state: searched afresh
        assert _count_closed(other, now, at) == int(other.searchsorted(now, "right"))


def test_snapshots_match_the_reference_when_time_goes_back_and_forth(shared_data):
    market = ReplayMarketData(shared_data, ["BTC/USD", "SPY", "BTCUSDT"], data_only=["VIX"],
                              intraday=["SPY", "GLD"], start=date(2024, 1, 1), end=date(2024, 2, 1))
    ticks = market.timeline()
    order = ticks[:200] + ticks[150:170] + ticks[100:101] * 3 + ticks[500:] + ticks[:5][::-1] + \
        [ticks[0] - timedelta(days=3000), ticks[-1] + timedelta(days=400)] + ticks[300:320]
    for now in order:
        _same_snapshot(market.snapshot(now), ref_snapshot(market, now))
