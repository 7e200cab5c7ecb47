"""Persistence with SQLModel: orders, fills, positions, closed trades, cycle summaries, engine state.

SQLite under ``logs/`` by default; any SQLAlchemy URL (PostgreSQL included) via ``storage.url``.
Orders are upserted by client_order_id, fills by fill_id, so replaying a cycle after a crash can
never duplicate a row. Engine state (risk and kill state, weights, order sequence, managed
positions) is a small key → JSON table, read back at start-up so a restart resumes where it stopped.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import types
from datetime import datetime
from pathlib import Path
from typing import Any, Optional, get_type_hints

from sqlalchemy import delete, event, insert, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Field, Session, SQLModel, create_engine, select

from .domain import ClosedTrade
from .tradelog import to_jsonable

_log = logging.getLogger(__name__)


class OrderRow(SQLModel, table=True):
    __tablename__ = "orders"
    client_order_id: str = Field(primary_key=True)
    session_id: str = Field(index=True)
    symbol: str
    side: str
    qty: str
    order_type: str
    time_in_force: str
    strategy: str
    purpose: str
    status: str
    created_at: str
    broker_order_id: Optional[str] = None
    filled_qty: str = "0"
    filled_avg_price: Optional[str] = None
    reject_reason: str = ""


class FillRow(SQLModel, table=True):
    __tablename__ = "fills"
    fill_id: str = Field(primary_key=True)
    session_id: str = Field(index=True)
    client_order_id: str = Field(index=True)
    symbol: str
    side: str
    qty: str
    price: str
    fee_usd: str
    ts: str
    # the venue that executed it (issue #20); NULL in rows stored before the column existed ("not recorded")
    venue: Optional[str] = Field(default=None, nullable=True)


# columns a database made before them may lack, per table: the migration adds them (nullable, NULL)
ADDABLE_FILL_COLUMNS = ("venue",)


def _trade_row_namespace(ns: dict) -> None:
    """The ``trades`` table: the row's own key and session, then one column per field of
    :class:`~hydra_engine.domain.ClosedTrade`, in its order and with its types. Derived, not repeated: a
    second hand-kept list of the same fields is how ``regime_confidence_at_entry`` was silently dropped
    from the store. A field with a default is a nullable column: in a database created before the field
    existed the migration (``Store._add_trade_columns``) adds it, and the rows stored before then hold
    NULL there -- "not recorded", never a made-up value."""
    hints = get_type_hints(ClosedTrade)
    annotations: dict[str, Any] = {"id": Optional[int], "session_id": str}
    ns.update({"__tablename__": "trades", "__module__": __name__, "__annotations__": annotations,
               "id": Field(default=None, primary_key=True), "session_id": Field(index=True)})
    for f in dataclasses.fields(ClosedTrade):
        annotations[f.name] = hints[f.name]
        if f.default is not dataclasses.MISSING:
            ns[f.name] = Field(default=f.default, nullable=True)


TradeRow = types.new_class("TradeRow", (SQLModel,), {"table": True}, _trade_row_namespace)
# the ClosedTrade fields a database made before them may lack: the columns the migration may add
ADDABLE_TRADE_COLUMNS = tuple(f.name for f in dataclasses.fields(ClosedTrade) if f.default is not dataclasses.MISSING)


class CycleRow(SQLModel, table=True):
    __tablename__ = "cycles"
    id: Optional[int] = Field(default=None, primary_key=True)
    session_id: str = Field(index=True)
    cycle: int
    ts: str
    mode: str
    regime: Optional[str] = None
    equity_usd: str
    n_orders: int = 0
    n_errors: int = 0


class StateRow(SQLModel, table=True):
    __tablename__ = "engine_state"
    key: str = Field(primary_key=True)
    value: str
    updated_at: str


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _add_fills_trades_state(s: Session, session_id: str, fills: list[dict], trades: list[dict],
                            state: dict[str, Any] | None, now: str) -> None:
    for f in fills:
        s.merge(FillRow(session_id=session_id, **{k: v for k, v in f.items() if k in FillRow.model_fields}))
    for t in trades:
        s.add(TradeRow(session_id=session_id, **{k: v for k, v in t.items() if k in TradeRow.model_fields}))
    for key, value in (state or {}).items():
        s.merge(StateRow(key=key, value=json.dumps(to_jsonable(value)), updated_at=now))


class StoreError(ValueError):
    """The database behind ``storage.url`` cannot be used (not a database, damaged, tables of another
    program) or a value stored in it cannot be read. The message names the database and the key."""


def _shown(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 -- an unparsable URL: say so without echoing what may hold a password
        return "(unparsable URL)"


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "orig", None) or exc).splitlines()[0]


class Store:
    def __init__(self, url: str, root: Path | None = None):
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            path = Path(url.removeprefix("sqlite:///"))
            if not path.is_absolute() and root is not None:
                path = root / path  # relative SQLite paths are relative to the project, not the cwd
            path.parent.mkdir(parents=True, exist_ok=True)
            url = f"sqlite:///{path}"
        self.url = url
        try:
            self.engine = create_engine(url)
            if url.startswith("sqlite"):
                event.listen(self.engine, "connect", _sqlite_pragmas)
            SQLModel.metadata.create_all(self.engine)
            missing = self._missing_columns()
            addable = {"trades": set(ADDABLE_TRADE_COLUMNS), "fills": set(ADDABLE_FILL_COLUMNS)}
            if missing and all(set(cols) <= addable.get(table, set()) for table, cols in missing):
                for table, cols in missing:
                    self._add_trade_columns(cols, table)
                missing = self._missing_columns()
        except (SQLAlchemyError, ModuleNotFoundError) as exc:
            # checked here, at start-up: found by the first cycle with an order, it stopped a run mid-session
            raise StoreError(f"storage.url {_shown(url)}: not a usable HYDRA database ({_reason(exc)})") from exc
        if missing:
            lacks = "; ".join(f"table {table} lacks {', '.join(cols)}" for table, cols in missing)
            raise StoreError(f"storage.url {_shown(url)}: its tables are not HYDRA's ({lacks}); "
                             "point storage.url at a new file or move this one away")
        self._pending_cycles: list[dict] = []   # CycleRow columns, not yet committed

    def _missing_columns(self) -> list[tuple[str, list[str]]]:
        """(table, its missing columns) for tables that exist without columns HYDRA needs (create_all
        leaves existing tables alone)."""
        found = inspect(self.engine)
        out = []
        for table in SQLModel.metadata.sorted_tables:
            have = {c["name"] for c in found.get_columns(table.name)}
            lacking = [c.name for c in table.columns if c.name not in have]
            if lacking:
                out.append((table.name, lacking))
        return out

    def _add_trade_columns(self, columns: list[str], table_name: str = "trades") -> None:
        """The one migration: a HYDRA database from before a closed-trade field existed gets its column,
        nullable, its earlier rows NULL ("not recorded"). Only defaulted ClosedTrade fields qualify and only
        when nothing else is missing (checked by the caller): a table lacking anything more is not
        HYDRA's and is refused untouched. Adding a nullable column loses nothing and is one statement,
        in one transaction, so a failure leaves the database as it was."""
        table = (TradeRow if table_name == "trades" else FillRow).__table__   # fills: Fill.venue (issue #20)
        with self.engine.begin() as conn:
            for name in columns:
                col_type = table.columns[name].type.compile(dialect=self.engine.dialect)
                conn.exec_driver_sql(f'ALTER TABLE {table_name} ADD COLUMN "{name}" {col_type}')
        _log.warning("storage %s: added %s column(s) %s (fields newer than this database; its earlier rows "
                     "hold NULL there)", _shown(self.url), table_name, ", ".join(columns))

    def save_cycle(self, session_id: str, report: dict, orders: list[dict], fills: list[dict],
                   trades: list[dict], state: dict[str, Any] | None, *, force: bool = False,
                   batch: int = 1) -> None:
        """Persist one cycle. Cycles without orders, fills or trades may be batched (``batch``)."""
        regime = (report.get("regime") or {}).get("regime")
        # a plain row (the cycles table's columns), inserted in one executemany at the commit: the ORM's
        # per-object construction and unit of work cost ~0.5 ms a cycle (issue #24); the rows are the same
        self._pending_cycles.append({"session_id": session_id, "cycle": report["cycle"], "ts": report["ts"],
                                     "mode": report.get("mode", ""), "regime": regime,
                                     "equity_usd": report.get("equity_usd", "0"),
                                     "n_orders": len(orders), "n_errors": len(report.get("errors", []))})
        if not (orders or fills or trades or force or len(self._pending_cycles) >= batch):
            return
        with Session(self.engine) as s:
            self._insert_cycles(s)
            for o in orders:   # an order another session sent (resolved at start-up) keeps its sender's id
                s.merge(OrderRow(**{"session_id": session_id, **{k: ("" if v is None and k == "reject_reason" else v)
                                                                 for k, v in o.items() if k in OrderRow.model_fields}}))
            _add_fills_trades_state(s, session_id, fills, trades, state, report["ts"])
            s.commit()
        self._pending_cycles = []

    def save_recovered(self, session_id: str, fills: list[dict], trades: list[dict], state: dict[str, Any],
                       now: datetime) -> None:
        """Fills (and the trades they closed) that ``session_id`` logged but did not store before it
        stopped, with the state that books them (key -> value, as ``save_cycle``), in one commit."""
        with Session(self.engine) as s:
            _add_fills_trades_state(s, session_id, fills, trades, state, now.isoformat())
            s.commit()

    def _insert_cycles(self, s: Session) -> None:
        """The pending cycle rows, oldest first (ids in that order), in the session's transaction."""
        if self._pending_cycles:
            s.execute(insert(CycleRow.__table__), self._pending_cycles)

    def flush(self) -> None:
        if self._pending_cycles:
            with Session(self.engine) as s:
                self._insert_cycles(s)
                s.commit()
            self._pending_cycles = []

    def save_state(self, key: str, value: Any, now: datetime) -> None:
        with Session(self.engine) as s:
            s.merge(StateRow(key=key, value=json.dumps(to_jsonable(value)), updated_at=now.isoformat()))
            s.commit()

    def load_state(self, key: str) -> Any:
        with Session(self.engine) as s:
            row = s.get(StateRow, key)
            if row is None:
                return None
            try:
                return json.loads(row.value)
            except ValueError as exc:
                raise StoreError(f"{_shown(self.url)}: stored state {key!r} is not valid JSON ({exc})") from exc

    def record_orders(self, session_id: str, orders: list[dict]) -> None:
        """Issue #16 (write-ahead): upsert order rows now, outside any cycle commit -- an order is recorded
        with status ``submitting`` before it is sent, so a process killed right after the POST leaves it
        on record; the cycle that sent it (or the next start, by client order id) writes its outcome. An
        order already on record with another status is not set back to ``submitting``."""
        with Session(self.engine) as s:
            for o in orders:
                row = OrderRow(**{"session_id": session_id, **{k: ("" if v is None and k == "reject_reason" else v)
                                                               for k, v in o.items() if k in OrderRow.model_fields}})
                if row.status == "submitting" and s.get(OrderRow, row.client_order_id) is not None:
                    continue
                s.merge(row)
            s.commit()

    def submitting_orders(self) -> list[OrderRow]:
        """Orders recorded before they were sent whose outcome no cycle recorded (the sender was killed)."""
        with Session(self.engine) as s:
            return list(s.exec(select(OrderRow).where(OrderRow.status == "submitting")))

    def orders(self, session_id: str | None = None) -> list[OrderRow]:
        with Session(self.engine) as s:
            q = select(OrderRow)
            if session_id:
                q = q.where(OrderRow.session_id == session_id)
            return list(s.exec(q))

    def fills(self, session_id: str | None = None) -> list[FillRow]:
        with Session(self.engine) as s:
            q = select(FillRow)
            if session_id:
                q = q.where(FillRow.session_id == session_id)
            return list(s.exec(q))

    def trades(self, session_id: str | None = None) -> list[TradeRow]:
        with Session(self.engine) as s:
            q = select(TradeRow)
            if session_id:
                q = q.where(TradeRow.session_id == session_id)
            return list(s.exec(q))

    def last_cycle(self) -> CycleRow | None:
        with Session(self.engine) as s:
            return s.exec(select(CycleRow).order_by(CycleRow.id.desc()).limit(1)).first()

    def forget_session(self, session_id: str) -> int:
        """Delete every row of ``session_id`` (a replay run again with the same configuration and first day
        has the same id and replaces the earlier run's rows instead of adding a second set). Returns how
        many cycle rows were there."""
        with Session(self.engine) as s:
            cycles = len(s.exec(select(CycleRow.id).where(CycleRow.session_id == session_id)).all())
            for row in (CycleRow, TradeRow, FillRow, OrderRow):
                s.exec(delete(row).where(row.session_id == session_id))
            s.commit()
        return cycles
