"""Issue #16: a kill switch and restarts that never leave the book wrong or a position unprotected.

Everything runs through the real CLI and alpaca-py against the HTTP-level Alpaca double (tests/alpaca_double.py),
whose market can be closed (``set_new_york_time``): equity orders sent then are accepted and wait for the open.
"""
from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import pytest

import hydra_engine.paper as paper
from hydra_engine.cli import main
from hydra_engine.config import load_settings
from hydra_engine.orderids import is_kill_order_id
from hydra_engine.store import Store

from .test_fault_injection import all_session_docs, double_env, paper_config, run_paper, session_doc  # noqa: F401
from .test_paper_session import BracketProbe, probe_on_spy

UTC = timezone.utc


def _store(tmp_path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'hydra.db'}")


def _fill_working(double, *, equities: bool = True) -> None:
    for o in list(double._all_orders()):
        if o["status"] in ("accepted", "pending_new", "new") and o["type"] == "market" \
                and (equities or o["asset_class"] == "crypto"):
            double.fill(o["client_order_id"], str(double.bars[o["symbol"]][-1]["c"]))


def _kill_orders(double) -> list[dict]:
    return [o for o in double._all_orders() if is_kill_order_id(o["client_order_id"])]


def _book_is_broker(engine, double) -> None:
    broker = {k: Decimal(p["qty"]) for k, p in double.positions.items()}
    local = {s.replace("/", ""): p.qty for s, p in engine.positions.items()}
    for sym in broker.keys() | local.keys():
        assert abs(broker.get(sym, 0) - local.get(sym, 0)) < Decimal("0.001"), (sym, broker, local)


class Died(BaseException):
    """Stands for a SIGKILL after a cycle's orders went out and before that cycle committed."""


def die_before_commit(monkeypatch, when) -> dict:
    """The first ``save_cycle`` whose orders satisfy ``when(orders)`` raises; the "dead" process then
    stores nothing more until ``state["dead"]`` is cleared. The write-ahead records are not blocked:
    they were written before the orders were sent, as a real SIGKILL would leave them."""
    real_cycle, real_state = Store.save_cycle, Store.save_state
    state = {"dead": False, "fired": 0, "when": when}    # revive with dead=False; re-aim with when

    def save_cycle(self, session_id, report, orders, fills, trades, st, **kw):
        if state["dead"]:
            raise Died()
        if state["when"] is not None and state["when"](orders):
            state["dead"], state["fired"] = True, state["fired"] + 1
            raise Died()
        return real_cycle(self, session_id, report, orders, fills, trades, st, **kw)

    def save_state(self, key, value, now):
        if state["dead"]:
            raise Died()
        return real_state(self, key, value, now)

    monkeypatch.setattr(Store, "save_cycle", save_cycle)
    monkeypatch.setattr(Store, "save_state", save_state)
    return state


# =========================================================================== kill: running, stopped, closed
def test_kill_with_the_engine_running_is_booked_with_reason_kill(tmp_path, monkeypatch, double_env, capsys):
    double, _ = double_env
    cfg = paper_config(tmp_path, symbols=("BTC/USD",))
    monkeypatch.setattr(paper, "RECONCILE_EVERY", 1)      # reconciliation every cycle: no blocked cycle allowed
    engines, said = [], {}

    def steer(engine, cycle):
        engines.append(engine)
        if engine.positions.get("BTC/USD") is not None and "kill" not in said:
            said["kill"] = paper.kill(load_settings(cfg), "operator kill")
            said["out"] = capsys.readouterr().out

    assert run_paper(cfg, monkeypatch, double, cycles=6, steer=steer) == 0, capsys.readouterr().err[-3000:]
    assert said["kill"] == 0, said["out"]
    (kill_order,) = _kill_orders(double)
    assert kill_order["status"] == "filled" and kill_order["side"] == "sell"
    assert f"closing BTC/USD with {kill_order['client_order_id']}" in said["out"]
    assert not [o for o in double._all_orders() if o["side"] == "sell" and o is not kill_order]   # not fought
    assert "BTC/USD" not in engines[-1].positions
    _book_is_broker(engines[-1], double)
    doc = session_doc(tmp_path)
    assert [t["exit_reason"] for t in doc["trades"]] == ["kill"]
    assert kill_order["client_order_id"] in {o["client_order_id"] for o in doc["orders"]}
    assert not [c for c in doc["cycle_details"] if c["mode"] == "blocked"], [c["notes"] for c in doc["cycle_details"]]
    notes = " ".join(n for c in doc["cycle_details"] for n in c["notes"])
    assert "booked next cycle" not in notes
    rows = {o.client_order_id: o for o in _store(tmp_path).orders()}
    assert rows[kill_order["client_order_id"]].status in ("accepted", "filled")
    assert [t.exit_reason for t in _store(tmp_path).trades()] == ["kill"]
    # the next start (after resume) reconciles without a word
    assert main(["--config", str(cfg), "resume"]) == 0
    assert run_paper(cfg, monkeypatch, double, cycles=1) == 0, capsys.readouterr().err[-3000:]


def test_kill_with_the_engine_stopped_is_booked_at_the_next_start(tmp_path, monkeypatch, double_env, capsys):
    double, _ = double_env
    cfg = paper_config(tmp_path, symbols=("BTC/USD",))
    assert run_paper(cfg, monkeypatch, double, cycles=2) == 0, capsys.readouterr().err[-3000:]
    assert "BTCUSD" in double.positions
    assert main(["--config", str(cfg), "kill", "--reason", "stopped engine"]) == 0
    _fill_working(double)                                  # the kill's close fills while HYDRA is down
    # flat up to dust (below the minimum order size: the crypto fee came out of the coins bought)
    assert Decimal(double.positions.get("BTCUSD", {"qty": "0"})["qty"]) < Decimal("0.0001")
    assert main(["--config", str(cfg), "resume"]) == 0
    engines = []
    assert run_paper(cfg, monkeypatch, double, cycles=1, steer=lambda e, c: engines.append(e)) == 0, \
        capsys.readouterr().err[-3000:]                    # no refusal, no --adopt
    assert "BTC/USD" not in engines[-1].positions
    trades = [t for d in all_session_docs(tmp_path) for t in d["trades"]]
    assert [t["exit_reason"] for t in trades] == ["kill"]
    (kill_order,) = _kill_orders(double)
    assert kill_order["client_order_id"] in {o.client_order_id for o in _store(tmp_path).orders()}


def test_kill_outside_market_hours_queues_for_the_open_and_the_engine_never_cancels_it(
        tmp_path, monkeypatch, double_env, capsys):
    """A SPY bracket position; kill at 20:10 New York: the legs go, the close is queued for the open (and
    says so); a running engine all night leaves the queued close alone and sends no close of its own;
    at the open it fills and is booked with reason kill."""
    double, _ = double_env
    monkeypatch.setattr(BracketProbe, "entered", False)
    cfg = probe_on_spy(double, monkeypatch, tmp_path, "BracketProbe")
    assert run_paper(cfg, monkeypatch, double, cycles=2) == 0, capsys.readouterr().err[-3000:]
    assert Decimal(double.positions["SPY"]["qty"]) >= 1
    capsys.readouterr()
    # closed for the night; the double's clock stays the wall clock the engine runs on (a fixed 20:10 New
    # York would put the kill before the engine's own earlier cycles when the test runs later than that)
    double.market_open = False
    assert main(["--config", str(cfg), "kill"]) == 0
    out = capsys.readouterr().out
    assert "(market closed: queued for the open)" in out, out
    (kill_order,) = _kill_orders(double)
    assert kill_order["status"] == "accepted" and kill_order["time_in_force"] == "day"

    engines = []
    assert run_paper(cfg, monkeypatch, double, cycles=3,
                     steer=lambda e, c: engines.append(e)) == 0, capsys.readouterr().err[-3000:]
    assert double.order(kill_order["client_order_id"])["status"] == "accepted"   # still queued: not canceled
    assert [o for o in double._all_orders() if o["side"] == "sell" and o["type"] == "market"] == [kill_order]
    doc = session_doc(tmp_path)
    assert not [c for c in doc["cycle_details"] if c["mode"] == "blocked"]
    assert not [e for c in doc["cycle_details"] for e in c["errors"]], [c["errors"] for c in doc["cycle_details"]]

    double.market_open = True                              # the open: the queued close fills
    assert run_paper(cfg, monkeypatch, double, cycles=2, steer=lambda e, c: engines.append(e)) == 0, \
        capsys.readouterr().err[-3000:]
    assert "SPY" not in double.positions and "SPY" not in engines[-1].positions
    trades = [t for d in all_session_docs(tmp_path) for t in d["trades"]]
    assert [t["exit_reason"] for t in trades] == ["kill"]


# =========================================================================== protection kept overnight
def test_an_exit_decided_at_16_43_new_york_keeps_the_brackets_broker_side_protection(tmp_path, monkeypatch,
                                                                                    double_env, capsys):
    double, _ = double_env
    monkeypatch.setattr(BracketProbe, "entered", False)
    cfg = probe_on_spy(double, monkeypatch, tmp_path, "BracketProbe")
    engines = []
    assert run_paper(cfg, monkeypatch, double, cycles=2, steer=lambda e, c: engines.append(e)) == 0, \
        capsys.readouterr().err[-3000:]
    (entry,) = [o for o in double.orders.values() if o["side"] == "buy"]
    legs = [leg["client_order_id"] for leg in entry["legs"]]
    assert all(double.order(c)["status"] == "new" for c in legs)

    def after_close(engine, cycle):
        double.set_new_york_time(16, 43)
        pos = engine.positions.get("SPY")
        if pos is not None:
            pos.stop_price = 10.0 ** 9                      # the engine's exit is decided: the stop is crossed

    assert run_paper(cfg, monkeypatch, double, cycles=3, steer=after_close) == 0, capsys.readouterr().err[-3000:]
    assert all(double.order(c)["status"] == "new" for c in legs), [double.order(c)["status"] for c in legs]
    assert not [o for o in double._all_orders() if o["side"] == "sell" and o["type"] == "market"]
    doc = session_doc(tmp_path)
    notes = [n for c in doc["cycle_details"] for n in c["notes"]]
    assert sum("deferred" in n and "protection stays" in n for n in notes) == 1, notes
    assert not [c for c in doc["cycle_details"] if c["errors"]], [c["errors"] for c in doc["cycle_details"]]

    def at_the_open(engine, cycle):
        double.market_open = True     # the next session (the double's clock stays the engine's: fills are polled by time)
        pos = engine.positions.get("SPY")
        if pos is not None:
            pos.stop_price = 10.0 ** 9

    assert run_paper(cfg, monkeypatch, double, cycles=3, steer=at_the_open) == 0, capsys.readouterr().err[-3000:]
    assert all(double.order(c)["status"] == "canceled" for c in legs), [double.order(c)["status"] for c in legs]
    assert "SPY" not in double.positions
    trades = [t for d in all_session_docs(tmp_path) for t in d["trades"]]
    assert [t["exit_reason"] for t in trades] in (["stop"], ["trailing_stop"])   # (a raised stop reads as a trail)


def test_a_refused_exit_puts_the_broker_held_stop_back(tmp_path, monkeypatch, double_env, capsys):
    double, _ = double_env
    monkeypatch.setattr(BracketProbe, "entered", False)
    cfg = probe_on_spy(double, monkeypatch, tmp_path, "BracketProbe")
    assert run_paper(cfg, monkeypatch, double, cycles=2) == 0, capsys.readouterr().err[-3000:]

    def refused(engine, cycle):
        pos = engine.positions.get("SPY")
        if pos is not None and cycle == 1:
            pos.stop_price = 10.0 ** 9
            double.fail("POST", r"/v2/orders$", times=1, status=403,
                        body={"code": 40310000, "message": "asset SPY is not tradable right now"})

    assert run_paper(cfg, monkeypatch, double, cycles=1, steer=refused) == 0, capsys.readouterr().err[-3000:]
    (entry,) = [o for o in double.orders.values() if o["side"] == "buy"]
    (leg,) = [leg for leg in entry["legs"] if leg["type"] == "stop"]
    stops = [o for o in double.orders.values() if o["type"] == "stop" and o["status"] in ("new", "accepted")]
    assert len(stops) == 1 and stops[0]["side"] == "sell" and stops[0]["qty"] == leg["qty"], stops
    assert Decimal(stops[0]["stop_price"]) == Decimal(leg["stop_price"])    # the level the broker held
    notes = [n for c in session_doc(tmp_path)["cycle_details"] for n in c["notes"]]
    assert any("protects the position again" in n for n in notes), notes


# =========================================================================== restarts replay own history
def test_exit_then_reentry_each_killed_before_commit_restarts_without_adopt(tmp_path, monkeypatch, double_env,
                                                                           capsys):
    double, _ = double_env
    cfg = paper_config(tmp_path, symbols=("BTC/USD",))

    def cross(engine, cycle):
        pos = engine.positions.get("BTC/USD")
        if pos is not None:
            pos.stop_price = 10.0 ** 9

    dead = die_before_commit(monkeypatch, lambda orders: any(o["purpose"] == "exit" for o in orders))
    with pytest.raises(Died):
        run_paper(cfg, monkeypatch, double, cycles=8, steer=cross)
    _fill_working(double)                              # the exit fills while HYDRA is down
    dead.update(dead=False, when=lambda orders: any(o["purpose"] == "entry" for o in orders))
    with pytest.raises(Died):
        run_paper(cfg, monkeypatch, double, cycles=8)   # re-enters, then dies before committing
    _fill_working(double)
    assert dead["fired"] == 2 and "BTCUSD" in double.positions
    dead.update(dead=False, when=None)
    engines = []
    code = run_paper(cfg, monkeypatch, double, cycles=1, steer=lambda e, c: engines.append(e))
    err = capsys.readouterr().err
    assert code == 0 and "qty differs" not in err, err[-3000:]
    _book_is_broker(engines[-1], double)
    # every order HYDRA sent is on record, though two processes died right after sending
    rows = {o.client_order_id: o for o in _store(tmp_path).orders()}
    assert {o["client_order_id"] for o in double.orders.values()} <= rows.keys()
    assert not [r for r in rows.values() if r.status == "submitting"]
    logged = {o["client_order_id"] for d in all_session_docs(tmp_path) for o in d["orders"]}
    assert {o["client_order_id"] for o in double.orders.values()} <= logged


def test_a_crash_right_after_a_bracket_entry_restarts_without_adopt_and_the_legs_protect(tmp_path, monkeypatch,
                                                                                        double_env, capsys):
    double, _ = double_env
    monkeypatch.setattr(BracketProbe, "entered", False)
    cfg = probe_on_spy(double, monkeypatch, tmp_path, "BracketProbe")
    dead = die_before_commit(monkeypatch, lambda orders: any(o["purpose"] == "entry" for o in orders))
    with pytest.raises(Died):
        run_paper(cfg, monkeypatch, double, cycles=3)
    _fill_working(double)
    dead.update(dead=False, when=None)
    (entry,) = [o for o in double.orders.values() if o["side"] == "buy"]
    sl = next(leg for leg in entry["legs"] if leg["type"] == "stop")
    tp = next(leg for leg in entry["legs"] if leg["type"] == "limit")
    engines = []
    for _ in range(2):                                  # every restart, not just the first
        code = run_paper(cfg, monkeypatch, double, cycles=1, steer=lambda e, c: engines.append(e))
        assert code == 0, capsys.readouterr().err[-3000:]
    eng = engines[-1]
    assert eng.exit_reasons[sl["client_order_id"]] == "stop" and eng.exit_reasons[tp["client_order_id"]] == "target"
    pos = eng.positions["SPY"]
    assert pos.stop_price == float(sl["stop_price"]) and pos.target_price == float(tp["limit_price"])
    assert double.order(sl["client_order_id"])["status"] == "new"


def test_adopt_adopts_the_legs_of_a_foreign_position(tmp_path, monkeypatch, double_env, capsys):
    double, _ = double_env
    cfg = paper_config(tmp_path, symbols=("BTC/USD", "SPY"), extra='[strategies]\nenabled = []\n')
    double.add_position("SPY", "4", "500")
    stop = double.add_foreign_order("SPY", "sell", "4", type="stop", stop_price="480")
    code = run_paper(cfg, monkeypatch, double, cycles=1)
    assert code == 1 and "disagree" in capsys.readouterr().err        # foreign: refused without --adopt
    engines = []
    assert run_paper(cfg, monkeypatch, double, cycles=1, args=("--adopt",),
                     steer=lambda e, c: engines.append(e)) == 0, capsys.readouterr().err[-3000:]
    assert engines[-1].exit_reasons[stop["client_order_id"]] == "stop"
    assert engines[-1].positions["SPY"].stop_price == 480.0
    assert run_paper(cfg, monkeypatch, double, cycles=1) == 0, capsys.readouterr().err[-3000:]   # not again
    double.fill(stop["client_order_id"], "480")
    assert run_paper(cfg, monkeypatch, double, cycles=1, steer=lambda e, c: engines.append(e)) == 0
    assert "SPY" not in engines[-1].positions
    assert [t["exit_reason"] for t in session_doc(tmp_path)["trades"]] == ["stop"]


# =========================================================================== kill --live
def test_kill_live_reaches_a_live_account_only_with_the_full_opt_in(tmp_path, monkeypatch, shared_data, capsys):
    from .alpaca_double import API_KEY, SECRET_KEY, AlpacaDouble
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("APCA_API_KEY_ID", API_KEY)
    monkeypatch.setenv("APCA_API_SECRET_KEY", SECRET_KEY)
    for var in ("APCA_API_BASE_URL", "APCA_API_DATA_URL", "HYDRA_ENABLE_LIVE_TRADING"):
        monkeypatch.delenv(var, raising=False)
    cfg = paper_config(tmp_path, symbols=("BTC/USD",))
    monkeypatch.setenv("HYDRA_BROKER__PAPER", "false")
    with AlpacaDouble(trading_url="https://api.alpaca.markets", now=datetime.now(UTC)) as live:
        live.add_position("BTC/USD", "0.5", "60000")
        for command in (["kill"], ["kill", "--live"], ["status", "--broker"], ["status", "--broker", "--live"]):
            assert main(["--config", str(cfg), *command]) == 2, command
            assert "live trading refused" in capsys.readouterr().err
        assert not live.calls                                          # the account was never contacted
        monkeypatch.setenv("HYDRA_ENABLE_LIVE_TRADING", "I_UNDERSTAND_REAL_MONEY")
        assert main(["--config", str(cfg), "kill"]) == 2                # no --live: still refused
        assert not live.calls
        assert main(["--config", str(cfg), "status", "--broker", "--live"]) == 0
        assert "LIVE" in capsys.readouterr().out
        assert main(["--config", str(cfg), "kill", "--live"]) == 0
        (order,) = _kill_orders(live)
        assert order["symbol"] == "BTC/USD" and order["side"] == "sell" and order["qty"] == "0.5"
