"""Every fill names its venue (issue #20): the session log's fills, the store's fills and `review`, in a
backtest that trades on both venues (the simulated Alpaca book and the simulated USD-M perp account) over
the shipped real data; and a database from before the column gets it added."""
from __future__ import annotations

import collections
import logging
import sqlite3

import pytest

from hydra_engine.backtest import run_hydra
from hydra_engine.review import build_review
from hydra_engine.store import Store

from .conftest import SHIPPED_DATA, make_settings

PRIMITIVES = ["funding_squeeze", "liquidation_reversal", "oi_divergence", "crowding_fade", "funding_carry"]


@pytest.fixture(scope="module")
def both_venues(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fv")
    s = make_settings(tmp, start="2024-01-01", end="2024-03-01", perps={"enabled": True},
                      strategies={"enabled": ["liquidation_cascade", *PRIMITIVES]})
    doc, _ = run_hydra(s, SHIPPED_DATA, tmp / "out", progress=False)
    return s, doc


def test_a_backtest_with_perps_has_fills_from_both_venues_each_named(both_venues):
    settings, doc = both_venues
    perps = set(settings.perps.symbols)
    by_venue = collections.defaultdict(set)
    for f in doc["fills"]:
        by_venue[f["venue"]].add(f["symbol"])
    assert set(by_venue) == {"alpaca", "perp"}, by_venue          # both venues traded, no fill unnamed
    assert by_venue["perp"] <= perps and not by_venue["alpaca"] & perps
    # the fill names the venue its order was sent to
    order_venue = {o["client_order_id"]: o["venue"] for o in doc["orders"]}
    assert all(order_venue[f["client_order_id"]] == f["venue"] for f in doc["fills"]
               if f["client_order_id"] in order_venue)
    assert {t["venue"] for t in doc["trades"]} <= {"alpaca", "perp"}


def test_the_store_keeps_each_fills_venue(both_venues):
    settings, doc = both_venues
    store = Store(settings.storage.url)
    rows = store.fills(doc["session"]["session_id"])
    assert len(rows) == len(doc["fills"])
    assert {r.fill_id: r.venue for r in rows} == {f["fill_id"]: f["venue"] for f in doc["fills"]}


def test_review_shows_the_fills_per_venue(both_venues):
    _, doc = both_venues
    review = build_review(doc)
    [table] = [t for t in review.tables if t.title == "Fills per venue"]
    counts = {row[0]: int(row[1]) for row in table.rows}
    expected = collections.Counter(f["venue"] for f in doc["fills"])
    assert counts == dict(expected) and set(counts) == {"alpaca", "perp"}
    assert review.metrics["fills_per_venue"]["perp"]["fills"] == expected["perp"]
    assert "Fills per venue" in review.text()


OLD_FILLS = """create table fills (fill_id varchar primary key, session_id varchar not null,
    client_order_id varchar not null, symbol varchar not null, side varchar not null, qty varchar not null,
    price varchar not null, fee_usd varchar not null, ts varchar not null)"""


def test_a_database_from_before_fills_named_their_venue_gets_the_column(tmp_path, caplog):
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as c:
        c.execute(OLD_FILLS)
        c.execute("insert into fills values ('f1', 'old', 'c1', 'SPY', 'buy', '1', '500', '0.5', '2024-01-02T15:00:00Z')")
    with caplog.at_level(logging.WARNING, logger="hydra_engine.store"):
        store = Store(f"sqlite:///{db}")
    assert "added fills column(s) venue" in caplog.text
    [before] = store.fills("old")
    assert before.venue is None and before.price == "500"      # not recorded: NULL, never a guessed venue
    store.save_cycle("new", {"cycle": 1, "ts": "2024-01-03T15:00:00Z"}, [],
                     [{"fill_id": "f2", "client_order_id": "c2", "symbol": "BTCUSDT", "side": "sell", "qty": "0.01",
                       "price": "42000", "fee_usd": "0.21", "ts": "2024-01-03T15:00:00Z", "venue": "perp"}], [], None)
    [after] = store.fills("new")
    assert after.venue == "perp"


def test_explain_names_a_fills_venue(both_venues, capsys):
    from hydra_engine.cli import main
    _, doc = both_venues
    perp_fill = next(f for f in doc["fills"] if f["venue"] == "perp")
    cycle = next(c["cycle"] for c in doc["cycle_details"] if any(f["fill_id"] == perp_fill["fill_id"]
                                                                 for f in c.get("fills", [])))
    assert main(["explain", doc["log_path"], "--cycle", str(cycle)]) == 0
    out = capsys.readouterr().out
    assert f"order {perp_fill['client_order_id']}  venue perp" in out
