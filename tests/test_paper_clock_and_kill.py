"""Issue #16, the rest: an injected clock for tests and dry runs, the final cycle's fills, faults and slow
cycles in the cycle they happen, no transient mismatch when a symbol trades in consecutive cycles, a real
`kill` while the engine runs outside market hours, and the kill that meets a running engine's own exit.

Everything runs through the real CLI and alpaca-py against the HTTP-level Alpaca double (tests/alpaca_double.py)
with the real BTC/ETH squeeze market and 300 real SPY sessions, re-stamped to the clock under test.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

import hydra_engine.paper as paper
from hydra_engine.cli import main
from hydra_engine.domain import Regime, Side, Signal, TradeProposal, make_client_order_id
from hydra_engine.orderids import is_kill_order_id
from hydra_engine.store import Store
from hydra_engine.strategy import DataNeed, Strategy, StrategyParams

from .alpaca_double import API_KEY, SECRET_KEY, AlpacaDouble
from .alpaca_server import install_real_market, register_binance_mock
from .test_fault_injection import all_session_docs, double_env, install_spy, paper_config, run_paper  # noqa: F401
from .test_fault_injection import session_doc
from .test_paper_session import BracketProbe, probe_on_spy

UTC = timezone.utc
NY = ZoneInfo("America/New_York")
# Tuesday 24 June 2025, 16:43 in New York: the equity market closed 43 minutes ago; crypto trades
DRY_START = datetime(2025, 6, 24, 16, 43, tzinfo=NY).astimezone(UTC)


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(str(text).replace("Z", "+00:00"))


def _fill_working(double) -> None:
    for o in list(double._all_orders()):
        if o["status"] in ("accepted", "pending_new", "new") and o["type"] == "market":
            double.fill(o["client_order_id"], str(double.bars[o["symbol"]][-1]["c"]))


@pytest.fixture()
def dry_double(tmp_path, monkeypatch, shared_data):
    """The double with its market time at 16:43 New York on 2025-06-24 (not the wall clock), the real
    squeeze market re-stamped to that time, the Binance answers stamped by the double's clock."""
    from hydra_engine.brokers.ratelimit import RateLimiter
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("APCA_API_KEY_ID", API_KEY)
    monkeypatch.setenv("APCA_API_SECRET_KEY", SECRET_KEY)
    for var in ("ALPACA_API_KEY", "ALPACA_SECRET_KEY", "APCA_API_BASE_URL", "APCA_API_DATA_URL", "HYDRA_BINANCE_URL",
                "HYDRA_ENABLE_LIVE_TRADING"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(RateLimiter, "_pause", lambda self, s: setattr(self, "slept_s", self.slept_s + max(0.0, s)))
    with AlpacaDouble(now=DRY_START, market_open=False) as double:
        binance = install_real_market(double, shared_data, DRY_START)
        register_binance_mock(double, binance, now_fn=lambda: double.now)
        yield double


# =========================================================================== 1. the injected clock
def test_a_dry_run_clock_drives_the_paper_engine_at_16_43_new_york(tmp_path, monkeypatch, dry_double, capsys):
    double = dry_double
    assert abs(datetime.now(UTC) - DRY_START) > timedelta(days=1)     # the wall clock is elsewhere
    cfg = paper_config(tmp_path, symbols=("BTC/USD",))
    engines = []
    code = run_paper(cfg, monkeypatch, double, cycles=3, steer=lambda e, c: engines.append(e),
                     args=("--clock-start", DRY_START.isoformat()))
    assert code == 0, capsys.readouterr().err[-3000:]
    doc = session_doc(tmp_path)
    assert doc["session"]["dry_run_clock_start"] == DRY_START.isoformat()
    window = (DRY_START, DRY_START + timedelta(minutes=2))
    stamps = [_ts(c["ts"]) for c in doc["cycle_details"]]
    assert len(stamps) == 3 and all(window[0] <= t < window[1] for t in stamps), stamps
    assert doc["orders"] and doc["fills"], "the squeeze entry must be sent and filled"
    assert all(window[0] <= _ts(o["created_at"]) < window[1] for o in doc["orders"]), doc["orders"]
    assert all(window[0] <= _ts(f["ts"]) < window[1] for f in doc["fills"]), doc["fills"]
    # the broker saw the same time: the order was submitted at the double's 16:43, and its fill was polled
    (entry,) = [o for o in double.orders.values() if o["side"] == "buy"]
    assert window[0] <= _ts(entry["submitted_at"]) < window[1]
    assert _ts(entry["submitted_at"]).astimezone(NY).strftime("%H:%M") in ("16:43", "16:44")
    assert "BTC/USD" in engines[-1].positions


def test_the_dry_run_clock_is_refused_with_live_and_in_a_simulation(tmp_path, monkeypatch, dry_double, capsys):
    cfg = paper_config(tmp_path, symbols=("BTC/USD",))
    monkeypatch.setenv("HYDRA_ENABLE_LIVE_TRADING", "I_UNDERSTAND_REAL_MONEY")
    monkeypatch.setenv("HYDRA_BROKER__PAPER", "false")
    code = main(["--config", str(cfg), "run", "--mode", "paper", "--live", "--cycles", "1", "--clock-start",
                 DRY_START.isoformat()])
    assert code == 2 and "refused with --live" in capsys.readouterr().err
    monkeypatch.delenv("HYDRA_BROKER__PAPER")
    assert main(["--config", str(cfg), "run", "--cycles", "1", "--clock-start", DRY_START.isoformat()]) == 2
    assert "applies to --mode paper" in capsys.readouterr().err
    with pytest.raises(SystemExit):       # a time without its offset is a guess: refused by the parser
        main(["--config", str(cfg), "run", "--mode", "paper", "--clock-start", "2025-06-24T16:43"])
    assert "has no UTC offset" in capsys.readouterr().err
    assert not [c for c in dry_double.calls if c[0] == "POST"]
    from hydra_engine.config import load_settings
    with pytest.raises(paper.LiveTradingRefused):   # the builder refuses it too, whoever calls it
        paper.build_paper_session(load_settings(cfg), live=True, clock_start=DRY_START)


# =========================================================================== 2. the final cycle's fills
def test_a_session_ended_by_cycles_books_its_final_fills_before_it_exits(tmp_path, monkeypatch, double_env, capsys):
    """One cycle: the squeeze entry goes out; the exchange fills it while HYDRA waits for it. The fill
    is in that cycle's record, the store and the saved state; the next start books nothing twice."""
    double, _ = double_env
    cfg = paper_config(tmp_path, symbols=("BTC/USD",))
    engines = []

    def steer(engine, cycle):          # the exchange fills while the engine waits (its injected sleep)
        engines.append(engine)
        engine.broker._sleep = lambda s: _fill_working(double)

    assert run_paper(cfg, monkeypatch, double, cycles=1, steer=steer) == 0, capsys.readouterr().err[-3000:]
    (entry,) = [o for o in double.orders.values() if o["side"] == "buy"]
    assert entry["status"] == "filled"
    doc = session_doc(tmp_path)
    (cycle,) = doc["cycle_details"]
    assert [f["client_order_id"] for f in cycle["fills"]] == [entry["client_order_id"]]
    assert "BTC/USD" in engines[-1].positions
    store = Store(f"sqlite:///{tmp_path / 'hydra.db'}")
    assert [f.client_order_id for f in store.fills()] == [entry["client_order_id"]]
    assert "BTC/USD" in store.load_state("engine:paper")["positions"]
    out = capsys.readouterr().out
    assert "open positions    BTC/USD" in out, out
    # the next start: nothing caught up, nothing booked twice, no mismatch
    assert run_paper(cfg, monkeypatch, double, cycles=1) == 0, capsys.readouterr().err[-3000:]
    assert [f.client_order_id for f in store.fills()] == [entry["client_order_id"]]
    assert not session_doc(tmp_path)["fills"]


def test_an_order_that_does_not_fill_in_time_is_left_for_the_next_start_and_said(tmp_path, monkeypatch, double_env,
                                                                                 capsys):
    double, _ = double_env
    cfg = paper_config(tmp_path, symbols=("BTC/USD",))
    assert run_paper(cfg, monkeypatch, double, cycles=1) == 0, capsys.readouterr().err[-3000:]
    (entry,) = [o for o in double.orders.values() if o["side"] == "buy"]
    notes = session_doc(tmp_path)["cycle_details"][-1]["notes"]
    assert any("still working when the session ended: " + entry["client_order_id"] in n for n in notes), notes
    engines = []
    assert run_paper(cfg, monkeypatch, double, cycles=1, steer=lambda e, c: engines.append(e)) == 0
    assert "BTC/USD" in engines[-1].positions           # filled meanwhile, booked by the next session


# =========================================================================== 4. consecutive trades, one symbol
class BtcFlipProbe(Strategy):
    """Buys BTC/USD whenever it holds none (the test crosses the stop of every position it holds, so
    the symbol trades in every cycle: entry, exit, entry, ...)."""

    name = "btc_flip_probe"
    interface_version = 1
    regimes = frozenset(Regime)
    assets = ("BTC/USD",)
    data_needs = (DataNeed("bars", "BTC/USD"),)
    Params = StrategyParams

    def generate_signals(self, ctx):
        return [Signal("BTC/USD", 0.6, 0.7, self.name, ctx.now, timedelta(days=1), "test probe")]

    def propose(self, ctx, combined):
        price = ctx.market.price("BTC/USD")
        if "BTC/USD" not in combined or ctx.held.get("BTC/USD") or not price > 0:
            return []
        return [TradeProposal(self.name, "BTC/USD", Side.BUY, price, price * 0.97, price * 1.06, 0.7,
                              timedelta(days=2), "probe", max_notional_usd=1000.0, min_notional_usd=100.0)]


def test_trading_one_symbol_in_consecutive_cycles_never_halts_entries(tmp_path, monkeypatch, double_env, capsys):
    """Reconciliation every cycle; BTC is bought, sold (stop crossed), bought again, ... one order per
    cycle, each filled between cycles. The check used to run before the cycle's fill poll, so each fill
    looked like a mismatch about BTC/USD -- twice in a row -- and entries halted for a cycle."""
    from importlib.metadata import EntryPoint
    import hydra_engine.plugins as plugins
    double, _ = double_env
    monkeypatch.setattr(paper, "RECONCILE_EVERY", 1)
    monkeypatch.setattr(plugins, "entry_points", lambda *, group: [EntryPoint(
        name=BtcFlipProbe.name, value=f"{__name__}:BtcFlipProbe", group=group)] if group == "hydra.strategies" else [])
    cfg = paper_config(tmp_path, symbols=("BTC/USD",), extra=f'[strategies]\nenabled = ["{BtcFlipProbe.name}"]\n')

    def cross(engine, report, trades, now):        # after the fill poll: every held position's stop is crossed
        for pos in engine.positions.values():
            pos.stop_price = 10.0 ** 9

    def steer(engine, cycle):
        if cross not in engine.after_fills_hooks:
            engine.after_fills_hooks.append(cross)

    assert run_paper(cfg, monkeypatch, double, cycles=6, steer=steer) == 0, capsys.readouterr().err[-3000:]
    cycles = session_doc(tmp_path)["cycle_details"]
    purposes = [[o["purpose"] for o in c["orders"]] for c in cycles]
    assert purposes[:5] == [["entry"], ["exit"], ["entry"], ["exit"], ["entry"]], purposes
    assert not [c for c in cycles if c["mode"] == "blocked"], [(c["cycle"], c["notes"]) for c in cycles]
    assert not [n for c in cycles for n in c["notes"] if "mismatch" in n]


# =========================================================================== 5. kill while running at night
def _at(double, when: datetime, *, open_: bool) -> str:
    double.now, double.market_open = when, open_
    return when.isoformat()


def test_a_kill_sent_while_the_engine_runs_at_night_is_booked_at_the_open(tmp_path, monkeypatch, double_env, capsys):
    """Tuesday 15:00 New York: a SPY bracket entry fills. 20:10: the engine runs (reconciling every cycle)
    and the operator sends `kill`: the legs go, the close is queued for the open, the engine books it as
    its kill exit and sends nothing of its own. Wednesday 09:31: the close fills and is booked with
    reason kill; book = broker; no cycle blocked; no start refused."""
    double, _ = double_env
    monkeypatch.setattr(BracketProbe, "entered", False)
    monkeypatch.setattr(paper, "RECONCILE_EVERY", 1)
    cfg = probe_on_spy(double, monkeypatch, tmp_path, "BracketProbe")
    day = datetime(2025, 6, 24, 15, 0, tzinfo=NY).astimezone(UTC)
    install_spy(double, day)
    start = _at(double, day, open_=True)
    assert run_paper(cfg, monkeypatch, double, cycles=2, args=("--clock-start", start)) == 0, \
        capsys.readouterr().err[-3000:]
    assert Decimal(double.positions["SPY"]["qty"]) >= 1

    night = datetime(2025, 6, 24, 20, 10, tzinfo=NY).astimezone(UTC)
    said, engines = {}, []

    def operator(engine, cycle):
        engines.append(engine)
        double.market_open = False
        if cycle == engines[0].cycle + 1 and "kill" not in said:   # the second cycle of this run
            capsys.readouterr()
            said["kill"] = main(["--config", str(cfg), "kill", "--reason", "night kill"])
            said["out"] = capsys.readouterr().out

    start = _at(double, night, open_=False)
    assert run_paper(cfg, monkeypatch, double, cycles=4, steer=operator, args=("--clock-start", start)) == 0, \
        capsys.readouterr().err[-3000:]
    assert said["kill"] == 0, said["out"]
    assert "(market closed: queued for the open)" in said["out"] and "NOT DONE" not in said["out"], said["out"]
    (kill_order,) = [o for o in double._all_orders() if is_kill_order_id(o["client_order_id"])]
    assert kill_order["status"] == "accepted"                     # queued, never canceled by the engine
    assert [o for o in double._all_orders() if o["side"] == "sell" and o["type"] == "market"] == [kill_order]
    notes = [n for c in session_doc(tmp_path)["cycle_details"] for n in c["notes"]]
    assert any(kill_order["client_order_id"] in n and "kill's exits" in n for n in notes), notes

    opening = datetime(2025, 6, 25, 9, 31, tzinfo=NY).astimezone(UTC)
    engines.clear()
    start = _at(double, opening, open_=True)
    assert run_paper(cfg, monkeypatch, double, cycles=2, steer=lambda e, c: engines.append(e),
                     args=("--clock-start", start)) == 0, capsys.readouterr().err[-3000:]
    assert double.order(kill_order["client_order_id"])["status"] == "filled"
    assert "SPY" not in double.positions and "SPY" not in engines[-1].positions       # book = broker
    docs = all_session_docs(tmp_path)
    assert [t["exit_reason"] for d in docs for t in d["trades"]] == ["kill"]
    assert not [c for d in docs for c in d["cycle_details"] if c["mode"] == "blocked"]
    fill = next(f for d in docs for f in d["fills"] if f["client_order_id"] == kill_order["client_order_id"])
    assert _ts(fill["ts"]).astimezone(NY).strftime("%Y-%m-%d %H:%M") == "2025-06-25 09:31"
    assert main(["--config", str(cfg), "resume"]) == 0
    assert run_paper(cfg, monkeypatch, double, cycles=1, args=("--clock-start", opening.isoformat())) == 0, \
        capsys.readouterr().err[-3000:]


@pytest.mark.parametrize("when", ["after_the_cancel", "before_the_close_is_posted", "filled_before_the_close"])
def test_a_kill_meeting_the_running_engines_own_kill_exit_says_so_instead_of_not_done(tmp_path, monkeypatch,
                                                                                      double_env, capsys, when):
    """The race: the running engine read the kill state before the command recorded its orders, and sent
    its own kill exit after the command canceled every order -- before the command listed the working
    orders (its exit is left working, no second close is sent), or just before the command's close went
    out (that close is refused: the coins are held), or it even filled by then. The position is being (or
    was) closed by HYDRA: the command says so, not NOT DONE, and exits 0."""
    from hydra_engine.brokers.alpaca import AlpacaBroker
    double, _ = double_env
    cfg = paper_config(tmp_path, symbols=("BTC/USD",))
    double.add_position("BTC/USD", "0.5", "60000")
    engine_exit = make_client_order_id("paper-20250624T204300000Z", "liquidation_cascade", "BTC/USD", 7)

    def the_engine_sends_its_exit():
        if not any(o["client_order_id"] == engine_exit for o in double._all_orders()):
            order = double._new_order({"symbol": "BTC/USD", "side": "sell", "qty": "0.5", "type": "market",
                                       "time_in_force": "gtc"}, engine_exit, True)
            double.orders[order["id"]] = order
            if when == "filled_before_the_close":
                double.fill(engine_exit, "60100")

    hook, name = ((AlpacaBroker, "positions") if when == "after_the_cancel"     # read just before the listing
                  else (AlpacaBroker, "_submit_once"))
    real = getattr(hook, name)

    def wrapped(self, *a, **kw):
        the_engine_sends_its_exit()
        return real(self, *a, **kw)

    monkeypatch.setattr(hook, name, wrapped)
    code = main(["--config", str(cfg), "kill"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "NOT DONE" not in out, out
    if when == "filled_before_the_close":
        assert "already closed BTC/USD: the broker holds no position" in out, out
        assert "BTCUSD" not in double.positions
    else:
        assert f"already closing BTC/USD: HYDRA's exit {engine_exit} (sent by the running engine)" in out, out
        assert double.order(engine_exit)["status"] == "pending_new"          # left working, not canceled
    sells = [o for o in double._all_orders() if o["side"] == "sell" and o["status"] != "canceled"]
    assert [o["client_order_id"] for o in sells] == [engine_exit]       # nothing sent twice
    # a close refused for another reason is still NOT DONE
    monkeypatch.setattr(hook, name, real)
    double.orders.clear()
    double.add_position("BTC/USD", "0.5", "60000")
    double.fail("POST", r"/v2/orders$", times=1, status=403, body={"code": 40310000, "message": "asset halted"})
    assert main(["--config", str(cfg), "kill"]) == 1
    assert "NOT DONE: close BTC/USD" in capsys.readouterr().out
