"""One closed-trade schema (issue #15 item 8): ``domain.ClosedTrade`` defines the record, the store's
``trades`` table derives from it, and this test fails if the two ever differ again (the store had silently
dropped ``regime_confidence_at_entry``). A database from before a field existed gets its column added."""
from __future__ import annotations

import dataclasses
import logging
import sqlite3
import typing

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

from hydra_engine.domain import ClosedTrade
from hydra_engine.store import ADDABLE_TRADE_COLUMNS, Store, StoreError, TradeRow

SQL_TYPES = {str: sa.String, float: sa.Float, int: sa.Integer}
ROW_OWN = ("id", "session_id")   # the row's key and the session it belongs to: not part of the trade record


def trade_dict(**over) -> dict:
    t = ClosedTrade("liquidation_cascade", "BTC/USD", "buy", "0.01", "2024-02-27T10:00:00Z", "57000",
                    "2024-02-28T10:00:00Z", "59000", "19.88", "0.12", 1.1, "HIGH_VOL", "target",
                    regime_confidence_at_entry=0.8123, funding_usd="-1.25")
    return {**{f.name: getattr(t, f.name) for f in dataclasses.fields(t)}, **over}


def test_the_store_row_has_exactly_the_closed_trade_fields_in_order_with_their_types():
    fields = dataclasses.fields(ClosedTrade)
    row_fields = [n for n in TradeRow.model_fields if n not in ROW_OWN]
    assert row_fields == [f.name for f in fields], "store.TradeRow and domain.ClosedTrade differ"
    assert [c.name for c in TradeRow.__table__.columns] == list(ROW_OWN) + [f.name for f in fields]
    hints = typing.get_type_hints(ClosedTrade)
    for f in fields:
        assert TradeRow.model_fields[f.name].annotation == hints[f.name], f.name
        column = TradeRow.__table__.columns[f.name]
        sql_type = column.type.impl if isinstance(column.type, sa.TypeDecorator) else column.type   # AutoString
        assert isinstance(sql_type, SQL_TYPES[hints[f.name]]), (f.name, column.type)
        if f.default is dataclasses.MISSING:
            assert TradeRow.model_fields[f.name].is_required() and not column.nullable, f.name
        else:
            assert TradeRow.model_fields[f.name].default == f.default, f.name


def test_the_restored_and_the_new_field_are_there():
    names = [f.name for f in dataclasses.fields(ClosedTrade)]
    assert {"regime_confidence_at_entry", "funding_usd"} <= set(names) <= set(TradeRow.model_fields)
    assert ClosedTrade.__dataclass_fields__["funding_usd"].default == "0"   # every non-perp trade
    assert ClosedTrade.__dataclass_fields__["venue"].default == ""          # a one-venue session (issue #20)
    assert set(ADDABLE_TRADE_COLUMNS) == {"regime_confidence_at_entry", "funding_usd", "venue"}


def test_a_closed_trade_round_trips_through_the_store_field_for_field(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'hydra.db'}")
    t = trade_dict()
    store.save_cycle("s1", {"cycle": 1, "ts": "2024-02-28T10:00:00Z"}, [], [], [t], None)
    [row] = store.trades("s1")
    assert {k: getattr(row, k) for k in t} == t
    assert ClosedTrade(**{f.name: getattr(row, f.name) for f in dataclasses.fields(ClosedTrade)}) == ClosedTrade(**t)


OLD_TRADES = """create table trades (id integer primary key, session_id varchar not null, strategy varchar not null,
    symbol varchar not null, side varchar not null, qty varchar not null, entry_time varchar not null,
    entry_price varchar not null, exit_time varchar not null, exit_price varchar not null, pnl_usd varchar not null,
    fees_usd varchar not null, r_multiple float not null, regime_at_entry varchar not null,
    exit_reason varchar not null)"""


def test_a_database_from_before_the_new_fields_gets_their_columns_and_keeps_its_rows(tmp_path, caplog):
    db = tmp_path / "old.db"
    old = trade_dict()
    with sqlite3.connect(db) as c:
        c.execute(OLD_TRADES)
        c.execute("insert into trades values (1, 'old', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  [old[k] for k in ("strategy", "symbol", "side", "qty", "entry_time", "entry_price", "exit_time",
                                    "exit_price", "pnl_usd", "fees_usd", "r_multiple", "regime_at_entry",
                                    "exit_reason")])
    with caplog.at_level(logging.WARNING, logger="hydra_engine.store"):
        store = Store(f"sqlite:///{db}")
    assert "added trades column(s) regime_confidence_at_entry, funding_usd, venue" in caplog.text
    [before] = store.trades("old")
    # stored before the fields existed: not recorded, and said so (NULL), never a made-up 0
    assert before.regime_confidence_at_entry is None and before.funding_usd is None
    assert before.pnl_usd == old["pnl_usd"] and before.exit_reason == "target"
    store.save_cycle("new", {"cycle": 1, "ts": "2024-02-28T10:00:00Z"}, [], [], [old], None)
    [after] = store.trades("new")
    assert after.regime_confidence_at_entry == 0.8123 and after.funding_usd == "-1.25"
    Store(f"sqlite:///{db}")   # opening it again: nothing left to add, no error


def test_a_trades_table_lacking_more_than_the_new_fields_is_refused_untouched(tmp_path):
    db = tmp_path / "foreign.db"
    with sqlite3.connect(db) as c:
        c.execute("create table trades (id integer primary key, session_id varchar, strategy varchar)")
    with pytest.raises(StoreError, match=r"its tables are not HYDRA's \(table trades lacks symbol, side, .*funding_usd, venue\)"):
        Store(f"sqlite:///{db}")
    with sqlite3.connect(db) as c:
        assert [r[1] for r in c.execute("pragma table_info(trades)")] == ["id", "session_id", "strategy"]


def test_rows_read_back_with_sqlmodel_select(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'hydra.db'}")
    store.save_cycle("s", {"cycle": 1, "ts": "2024-02-28T10:00:00Z"}, [], [], [trade_dict(funding_usd="0")], None)
    with Session(store.engine) as s:
        [row] = s.exec(select(TradeRow)).all()
    assert row.funding_usd == "0" and row.regime_confidence_at_entry == 0.8123
