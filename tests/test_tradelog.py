"""The JSON session trade log (issue #2): document + fsynced journal, crash recovery, atomic rewrites,
clear errors on foreign files, and the documented closed-trade fields in a real run's log."""
from __future__ import annotations

import json
import tempfile
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hydra_engine.tradelog as tradelog
from hydra_engine.domain import UTC
from hydra_engine.tradelog import SCHEMA_VERSION, SessionLog, load_session, newest_session

from .conftest import make_settings

T0 = datetime(2024, 3, 4, tzinfo=UTC)
STARTED = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
TRADE_FIELDS = ("strategy", "symbol", "side", "qty", "entry_time", "entry_price", "exit_time", "exit_price",
                "pnl_usd", "fees_usd", "r_multiple", "regime_at_entry", "exit_reason")  # README schema


def ts(cycle: int) -> str:
    return (T0 + timedelta(hours=cycle)).isoformat().replace("+00:00", "Z")


def order(coid: str, status: str, cycle: int) -> dict:
    return {"client_order_id": coid, "symbol": "BTC/USD", "side": "buy", "qty": "0.01", "order_type": "market",
            "time_in_force": "gtc", "created_at": ts(cycle), "strategy": "s", "purpose": "entry",
            "status": status, "broker_order_id": f"sim-{coid}", "filled_qty": "0", "filled_avg_price": None,
            "reject_reason": ""}


def fill(coid: str, cycle: int) -> dict:
    return {"client_order_id": coid, "symbol": "BTC/USD", "side": "buy", "qty": "0.01", "price": "62000",
            "fee_usd": "0.62", "ts": ts(cycle), "fill_id": f"fill-{coid}"}


def trade(n: int, cycle: int) -> dict:
    return {"strategy": "s", "symbol": "BTC/USD", "side": "buy", "qty": "0.01", "entry_time": ts(cycle - 2),
            "entry_price": "62000", "exit_time": ts(cycle), "exit_price": "62500", "pnl_usd": f"{n}.5",
            "fees_usd": "1.24", "r_multiple": 0.4, "regime_at_entry": "TRENDING_UP", "exit_reason": f"reason-{n}"}


def report(cycle: int, orders=(), fills=()) -> dict:
    return {"cycle": cycle, "ts": ts(cycle), "mode": "trade", "regime": {"regime": "TRENDING_UP", "confidence": 0.7},
            "signals": [], "proposals": [], "decisions": [], "orders": list(orders), "fills": list(fills),
            "exits": [], "errors": [], "equity_usd": "100000.00"}


def script() -> list[tuple[dict, list[dict]]]:
    """Eight cycles: orders accepted then filled (status updated in a later cycle), fills, trades."""
    return [
        (report(1), []),
        (report(2, [order("A", "accepted", 2)]), []),
        (report(3, [order("A", "filled", 2)], [fill("A", 3)]), []),
        (report(4), []),
        (report(5, [order("B", "accepted", 5)]), []),
        (report(6, [order("B", "filled", 5)], [fill("B", 6)]), [trade(1, 6)]),
        (report(7, [order("C", "accepted", 7), order("D", "rejected", 7)]), []),
        (report(8, [order("C", "filled", 7)], [fill("C", 8)]), [trade(2, 8)]),
    ]


def truth(cycles: list[tuple[dict, list[dict]]]) -> tuple[dict, list, list]:
    orders: dict[str, dict] = {}
    fills, trades = [], []
    for rep, tr in cycles:
        for o in rep["orders"]:
            orders[o["client_order_id"]] = o
        fills.extend(rep["fills"])
        trades.extend(tr)
    return orders, fills, trades


# --------------------------------------------------------------------------- normal writing
def test_session_log_writes_document_and_journal(tmp_path):
    log = SessionLog(tmp_path, STARTED, {"session_id": "sim-x", "mode": "sim", "config_hash": "abc"})
    assert log.path.name == "session-20260102T030405678Z.json"
    assert log.journal_path.name == "session-20260102T030405678Z.cycles.jsonl"
    doc0 = json.loads(log.path.read_text())  # the document exists from the start
    assert doc0["schema_version"] == SCHEMA_VERSION and doc0["cycles"] == []
    assert doc0["session"]["started_at"] == "2026-01-02T03:04:05.678000Z" and doc0["session"]["ended_at"] is None

    cycles = script()
    for rep, tr in cycles:
        log.record_cycle(rep, tr)
    log.close(STARTED + timedelta(minutes=5), {"cycles": 8, "pnl": Decimal("1.50")})

    doc = json.loads(log.path.read_text())
    assert doc["journal"] == log.journal_path.name
    assert doc["session"]["session_id"] == "sim-x" and doc["session"]["ended_at"] == "2026-01-02T03:09:05.678000Z"
    assert doc["summary"] == {"cycles": 8, "pnl": "1.50"}  # Decimal kept exact, as a string
    orders, fills, trades = truth(cycles)
    assert doc["orders"] == list(orders.values())  # upserted: one row per client_order_id, latest status
    assert [o["status"] for o in doc["orders"]] == ["filled", "filled", "filled", "rejected"]
    assert doc["fills"] == fills and doc["trades"] == trades
    assert [c["cycle"] for c in doc["cycles"]] == list(range(1, 9))
    assert doc["cycles"][6]["orders"] == 2 and doc["cycles"][7]["fills"] == 1

    lines = log.journal_path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{**rep, "trades": tr} for rep, tr in cycles]
    assert not list(tmp_path.glob("*.tmp"))

    loaded = load_session(log.path)
    assert "recovered_from_journal" not in loaded
    assert loaded["orders"] == doc["orders"] and loaded["fills"] == fills and loaded["trades"] == trades
    assert [d["cycle"] for d in loaded["cycle_details"]] == list(range(1, 9))
    assert newest_session(tmp_path) == log.path


def test_quiet_cycles_are_journalled_at_once_and_snapshotted_every_n(tmp_path):
    log = SessionLog(tmp_path, STARTED, {}, snapshot_every=3)
    for c in (1, 2):
        log.record_cycle(report(c), [])
    assert len(log.journal_path.read_text().splitlines()) == 2      # every cycle hits the journal
    assert json.loads(log.path.read_text())["cycles"] == []           # the document waits
    log.record_cycle(report(3), [])
    assert len(json.loads(log.path.read_text())["cycles"]) == 3       # ... until the third
    log.record_cycle(report(4, [order("A", "accepted", 4)]), [])
    assert len(json.loads(log.path.read_text())["orders"]) == 1       # a change is written at once


# --------------------------------------------------------------------------- crash recovery
def crash_session(folder: Path, cycles, doc_after: int, torn: str | None) -> tuple[Path, int]:
    """Write ``cycles`` but leave the document as it was after cycle ``doc_after`` (the process died
    before the later rewrites reached the disk), optionally with a torn, half-written journal line.
    Returns the document's path and how many cycles the surviving document holds."""
    log = SessionLog(folder, STARTED, {"session_id": "crash"}, snapshot_every=10_000)
    snapshot = log.path.read_text()
    for rep, tr in cycles:
        log.record_cycle(rep, tr)
        if rep["cycle"] == doc_after:
            snapshot = log.path.read_text()
    log._journal.close()  # no close(): no summary, no final rewrite
    log.path.write_text(snapshot)
    if torn is not None:
        with open(log.journal_path, "a", encoding="utf-8") as fh:
            fh.write(torn)
    return log.path, len(json.loads(snapshot)["cycles"])


@pytest.mark.parametrize("doc_after", [0, 1, 3, 5, 7, 8])
def test_load_session_recovers_every_complete_cycle_exactly_once(tmp_path, doc_after):
    cycles = script()
    torn = json.dumps({**report(9, [order("E", "accepted", 9)], [fill("E", 9)]), "trades": [trade(3, 9)]})
    path, in_doc = crash_session(tmp_path, cycles, doc_after, torn[: len(torn) // 2])
    assert in_doc <= doc_after
    doc = load_session(path)

    orders, fills, trades = truth(cycles)
    assert {o["client_order_id"]: o for o in doc["orders"]} == orders
    assert len(doc["orders"]) == len(orders)                          # each order once ...
    assert [o["status"] for o in doc["orders"] if o["client_order_id"] != "D"] == ["filled"] * 3  # ... latest state
    assert sorted(f["fill_id"] for f in doc["fills"]) == sorted(f["fill_id"] for f in fills)
    assert sorted(json.dumps(t, sort_keys=True) for t in doc["trades"]) == \
        sorted(json.dumps(t, sort_keys=True) for t in trades)
    assert [c["cycle"] for c in doc["cycles"]] == list(range(1, 9))  # the torn cycle 9 is not invented
    assert [d["cycle"] for d in doc["cycle_details"]] == list(range(1, 9))
    assert doc.get("recovered_from_journal", 0) == 8 - in_doc
    assert not any("E" == o["client_order_id"] for o in doc["orders"])


def test_a_torn_line_alone_loses_nothing_before_it(tmp_path):
    path, _ = crash_session(tmp_path, script(), 8, '{"cycle": 9, "ts": "2024-03-04T09:00:00Z", "ord')
    doc = load_session(path)
    assert "recovered_from_journal" not in doc
    assert len(doc["fills"]) == 3 and len(doc["trades"]) == 2


def test_a_corrupt_line_before_intact_lines_is_damage_not_a_torn_tail(tmp_path):
    path, _ = crash_session(tmp_path, script(), 2, None)
    journal = path.with_name(path.stem + ".cycles.jsonl")
    lines = journal.read_text().splitlines()
    lines[4] = lines[4][:30]                      # cycle 5 damaged; cycles 6-8 after it are intact
    journal.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError) as err:
        load_session(path)                        # not a session silently cut at cycle 4
    assert f"{journal}: line 5 is corrupt" in str(err.value) and "not a torn write" in str(err.value)
    journal.write_text("\n".join(lines[:5]) + "\n\n")  # the same line last (blank lines aside): a torn tail
    assert [d["cycle"] for d in load_session(path)["cycle_details"]] == [1, 2, 3, 4]


def test_load_is_idempotent(tmp_path):
    path, _ = crash_session(tmp_path, script(), 3, None)
    assert load_session(path) == load_session(path)  # reading never changes what is on disk


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_recovery_property_random_sessions_and_crash_points(data):
    n = data.draw(st.integers(1, 12), label="cycles")
    cycles, coid = [], 0
    for c in range(1, n + 1):
        orders, fills, trades = [], [], []
        for _ in range(data.draw(st.integers(0, 2), label=f"orders@{c}")):
            coid += 1
            orders.append(order(f"o{coid}", "accepted", c))
        if coid and data.draw(st.booleans(), label=f"update@{c}"):
            k = data.draw(st.integers(1, coid), label=f"which@{c}")
            orders.append(order(f"o{k}", "filled", c))
            fills.append({**fill(f"o{k}", c), "fill_id": f"f{c}-{k}"})
        if data.draw(st.booleans(), label=f"trade@{c}"):
            trades.append(trade(c, c))
        cycles.append((report(c, orders, fills), trades))
    doc_after = data.draw(st.integers(0, n), label="doc_after")
    torn = data.draw(st.sampled_from([None, "", "{", '{"cycle": 99, "orders": [{"client_order_id": "zz"']), label="torn")
    with tempfile.TemporaryDirectory() as folder, pytest.MonkeyPatch.context() as mp:
        mp.setattr(tradelog.os, "fsync", lambda fd: None)  # durability is not under test here; speed is
        doc = load_session(crash_session(Path(folder), cycles, doc_after, torn)[0])
    orders, fills, trades = truth(cycles)
    assert {o["client_order_id"]: o for o in doc["orders"]} == orders and len(doc["orders"]) == len(orders)
    assert sorted(f["fill_id"] for f in doc["fills"]) == sorted(f["fill_id"] for f in fills)
    assert len(doc["trades"]) == len(trades)
    assert sorted(t["exit_reason"] for t in doc["trades"]) == sorted(t["exit_reason"] for t in trades)
    assert [c["cycle"] for c in doc["cycles"]] == list(range(1, n + 1))


# --------------------------------------------------------------------------- atomic rewrites
def test_rewrite_is_atomic_and_leaves_no_tmp(tmp_path, monkeypatch):
    log = SessionLog(tmp_path, STARTED, {})
    log.record_cycle(report(1, [order("A", "accepted", 1)]), [])
    good = log.path.read_text()
    assert not list(tmp_path.glob("*.tmp"))

    def replace_dies(src, dst):  # the process dies between writing the temp file and the rename
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(tradelog.os, "replace", replace_dies)
    with pytest.raises(OSError, match="simulated crash"):
        log.record_cycle(report(2, [order("B", "accepted", 2)]), [])
    assert log.path.read_text() == good  # the document on disk is the previous complete version
    json.loads(log.path.read_text())
    monkeypatch.undo()

    log.record_cycle(report(3, [order("C", "accepted", 3)]), [])  # the next rewrite replaces the stale temp
    assert not list(tmp_path.glob("*.tmp"))
    assert [o["client_order_id"] for o in load_session(log.path)["orders"]] == ["A", "B", "C"]


# --------------------------------------------------------------------------- foreign or broken files
def test_schema_version_mismatch_is_a_clear_error(tmp_path):
    log = SessionLog(tmp_path, STARTED, {})
    doc = json.loads(log.path.read_text())
    log.path.write_text(json.dumps({**doc, "schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(ValueError) as err:
        load_session(log.path)
    assert str(log.path) in str(err.value)
    assert f"schema_version {SCHEMA_VERSION + 1}, expected {SCHEMA_VERSION}" in str(err.value)
    log.path.write_text(json.dumps({"orders": []}))
    with pytest.raises(ValueError, match="schema_version None"):
        load_session(log.path)


def test_bad_json_is_a_clear_error(tmp_path):
    path = tmp_path / "session-x.json"
    path.write_text('{"schema_version": 1, "orders": [')
    with pytest.raises(ValueError) as err:
        load_session(path)
    assert str(err.value).startswith(f"{path}: not a valid session log")


def test_unreadable_log_or_journal_is_named(tmp_path):
    with pytest.raises(ValueError, match=f"^{tmp_path}: cannot read the session log \\(Is a directory\\)"):
        load_session(tmp_path)
    path = tmp_path / "session-x.json"
    path.write_bytes(b'{"schema_version": 1, "x": "\xff"}')
    with pytest.raises(ValueError, match=f"^{path}: not a valid session log .*utf-8"):
        load_session(path)              # was the codec's message without the file


def test_missing_log_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="session log not found"):
        load_session(tmp_path / "session-none.json")


# --------------------------------------------------------------------------- a real run's log
@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    from hydra_engine.app import build_sim_session, run_session

    folder = tmp_path_factory.mktemp("tradelog_run")
    session = build_sim_session(make_settings(folder, start="2024-02-20", end="2024-03-01"))   # 02-27 squeeze
    summary = run_session(session, progress=False)
    return session, summary


def test_real_run_log_has_the_documented_closed_trade_fields(real_run):
    session, summary = real_run
    doc = load_session(session.session_log.path)
    assert doc["trades"], "the span was chosen to close trades; none closed"
    assert doc["trades"] == session.engine.closed_trades
    assert summary["closed_trades"] == len(doc["trades"])
    fills = {(f["symbol"], f["ts"]): f for f in doc["fills"]}
    for t in doc["trades"]:
        missing = [f for f in TRADE_FIELDS if f not in t]
        assert not missing, f"closed trade lacks {missing}: {t}"
        assert t["strategy"] == "liquidation_cascade" and t["symbol"] in ("BTC/USD", "ETH/USD")
        assert t["side"] in ("buy", "sell")
        assert Decimal(t["qty"]) > 0
        entry = datetime.fromisoformat(t["entry_time"].replace("Z", "+00:00"))
        exit_ = datetime.fromisoformat(t["exit_time"].replace("Z", "+00:00"))
        assert entry.tzinfo is not None and entry < exit_
        assert t["entry_time"].endswith("Z") and t["exit_time"].endswith("Z")
        assert isinstance(t["r_multiple"], float)
        assert t["regime_at_entry"] in {"TRENDING_UP", "TRENDING_DOWN", "MEAN_REVERTING", "HIGH_VOL", "CRASH",
                                        "RECOVERY", "UNKNOWN"}
        assert t["exit_reason"] in {"stop", "target", "trailing_stop", "time", "strategy", "kill"}
        # the trade agrees with the fills that made it, to the cent and beyond
        f_in, f_out = fills[(t["symbol"], t["entry_time"])], fills[(t["symbol"], t["exit_time"])]
        assert Decimal(t["entry_price"]) == Decimal(f_in["price"]) and Decimal(t["exit_price"]) == Decimal(f_out["price"])
        sign = 1 if t["side"] == "buy" else -1
        gross = (Decimal(t["exit_price"]) - Decimal(t["entry_price"])) * Decimal(t["qty"]) * sign
        fees = Decimal(f_in["fee_usd"]) + Decimal(f_out["fee_usd"])
        assert Decimal(t["fees_usd"]) == fees
        assert Decimal(t["pnl_usd"]) == (gross - fees).quantize(Decimal("0.000001"))


def test_real_run_journal_matches_the_document(real_run):
    session, _ = real_run
    doc = load_session(session.session_log.path)
    details = doc["cycle_details"]
    assert [d["cycle"] for d in details] == [c["cycle"] for c in doc["cycles"]] == list(range(1, len(details) + 1))
    assert [t for d in details for t in d["trades"]] == doc["trades"]
    assert sorted(f["fill_id"] for d in details for f in d["fills"]) == sorted(f["fill_id"] for f in doc["fills"])
    assert doc["session"]["config_hash"] and doc["session"]["ended_at"]


ORDER_FIELDS = ("client_order_id", "symbol", "side", "qty", "order_type", "time_in_force", "created_at", "strategy",
                "purpose", "status", "broker_order_id", "filled_qty", "filled_avg_price", "reject_reason",
                "limit_price", "stop_price", "trail_percent", "take_profit_price", "stop_loss_price", "reduce_only",
                "extended_hours", "venue")


def test_real_run_log_has_the_documented_order_fields(real_run):
    """README, the JSON session trade log: every field of ``orders[]`` is there (prices null when unused)."""
    session, _ = real_run
    doc = load_session(session.session_log.path)
    assert doc["orders"]
    for order in doc["orders"]:
        assert tuple(order) == ORDER_FIELDS, order
        assert order["status"] in ("accepted", "rejected", "unknown") and order["limit_price"] is None
