"""Fault injection (issue #7): crashes, broker failures, bad data, a broken Binance feed.

1. Crash/restart: the real CLI (`python hydra_engine.py run --mode paper`) runs as a subprocess against
   the loopback server double (tests/alpaca_server.py) and is SIGKILLed twenty times in a row at seeded
   points -- before and after the broker processed an order, during order listing/fill polling, after
   a random delay -- and restarted (with --adopt only when it refuses because the book changed while
   it was down). Afterwards no order is duplicated, every fill the exchange made is on record, and
   HYDRA's stored book matches the broker's.
2. Alpaca failures (429 storms, 5xx, timeouts after acceptance, malformed JSON, 403/422) during an
   in-process multi-cycle paper session on the HTTP-level double.
3. Bad bars and open interest: in replay (corrupted copies of the shipped data) and served live.
4. A broken Binance feed (5xx, garbage JSON, timeouts, 429): the crypto strategy stands down, an
   Alpaca-only test plugin (registered through a monkeypatched entry point) trades SPY.
The two gaps first found here (non-positive open interest in replay, a bad newest bar served live) are fixed and tested below.
"""
from __future__ import annotations

import copy
import json
import os
import random
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
import requests

from hydra_engine.cli import main
from hydra_engine.clock import LiveClock
from hydra_engine.domain import Regime, Side, Signal, TradeProposal
from hydra_engine.paper import set_control
from hydra_engine.store import Store
from hydra_engine.strategy import DataNeed, Strategy, StrategyParams
from hydra_engine.tradelog import load_session

from .alpaca_double import API_KEY, SECRET_KEY, AlpacaDouble
from .alpaca_server import AlpacaServer, install_real_market, register_binance_mock

UTC = timezone.utc
ROOT = Path(__file__).resolve().parents[1]
SEED = 20240305


def paper_config(tmp_path: Path, name: str = "hydra.toml", *, symbols=("BTC/USD", "ETH/USD"), extra: str = "",
                 params: str = "") -> Path:
    cfg = tmp_path / name
    cfg.write_text(f"""
[engine]
cycle_interval_s = 1
observation_cycles = 0
regime_detector = "trend_vol_rule"
log_dir = "{tmp_path / 'logs'}"
[universe]
symbols = {json.dumps(list(symbols))}
data_only = []
[strategies.params.liquidation_cascade]
{params}
[broker]
kind = "alpaca"
[data]
kind = "alpaca"
[storage]
url = "sqlite:///{tmp_path / 'hydra.db'}"
{extra}
""")
    return cfg


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("APCA_", "ALPACA_", "HYDRA_")) or k == "HYDRA_SHARED_DATA"}
    env.update(APCA_API_KEY_ID=API_KEY, APCA_API_SECRET_KEY=SECRET_KEY, PYTHONUNBUFFERED="1", **extra)
    return env


class Runner:
    """Start `hydra_engine.py run --mode paper` processes and kill them where the plan says."""

    def __init__(self, tmp_path: Path, server: AlpacaServer):
        self.tmp, self.server, self.n = tmp_path, server, 0
        self.env = clean_env(**server.env())
        self.fallback_kill_s = 6.0

    def run(self, cfg: Path, *, cycles: int, adopt: bool = False, plan: tuple = ("none",),
            timeout_s: float = 60.0) -> tuple[int, str]:
        self.n += 1
        args = [sys.executable, str(ROOT / "hydra_engine.py"), "--config", str(cfg), "run", "--mode", "paper",
                "--no-progress", "--cycles", str(cycles), *(["--adopt"] if adopt else [])]
        err_path = self.tmp / f"run-{self.n:02d}.stderr"
        with open(err_path, "w") as err, open(self.tmp / f"run-{self.n:02d}.stdout", "w") as out:
            proc = subprocess.Popen(args, cwd=self.tmp, env=self.env, stdout=out, stderr=err)
            if plan[0] == "post":      # SIGKILL at the next POST /v2/orders, before or after the broker acts
                self.server.kill_on("POST", r"^/v2/orders$", when=plan[1], pid=proc.pid)
            elif plan[0] == "list":    # SIGKILL after the n-th order listing (open orders, fill polling)
                self.server.kill_on("GET", r"^/v2/orders$", when="after", pid=proc.pid, nth=plan[1])
            # a kill plan always ends in SIGKILL: at its request, else (no such request yet) after the delay
            deadline = plan[1] if plan[0] == "delay" else (self.fallback_kill_s if plan[0] != "none" else timeout_s)
            try:
                rc = proc.wait(timeout=deadline)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
                if plan[0] == "none":
                    pytest.fail(f"run {self.n} did not finish within {timeout_s}s: {err_path.read_text()[-2000:]}")
            finally:
                self.server.disarm()
        return rc, err_path.read_text()


MIN_ORDER_SIZE = {"BTC/USD": Decimal("0.0001"), "ETH/USD": Decimal("0.001")}   # the Assets API's min_order_size


def stored_positions(store: Store) -> dict[str, Decimal]:
    state = store.load_state("engine:paper") or {}
    return {s: Decimal(str(p["qty"])) for s, p in state.get("positions", {}).items() if Decimal(str(p["qty"]))}


def logged_fill_ids(log_dir: Path) -> set[str]:
    ids = set()
    for path in log_dir.glob("session-*.json"):
        doc = load_session(path)
        ids |= {f["fill_id"] for f in doc["fills"]}
    return ids


# =========================================================================== 1. crash / restart
def test_twenty_sigkills_lose_no_fill_duplicate_no_order_and_books_match(tmp_path, shared_data):
    rng = random.Random(SEED)
    # time exits after ~4 s keep entries and exits flowing across the restarts
    cfg = paper_config(tmp_path, params="max_holding_hours = 0.001")
    # the last, clean run may not open anything new (no cascade at a 50 % threshold): the books settle
    final_cfg = paper_config(tmp_path, "final.toml", params="max_holding_hours = 0.004\noi_drop_pct = 50.0")
    plans = ([("post", "before")] * 5 + [("post", "after")] * 5
             + [("list", rng.randint(1, 12)) for _ in range(5)] + [("delay", round(rng.uniform(1.5, 6.0), 2))
                                                                   for _ in range(5)])
    rng.shuffle(plans)
    outcomes = []
    control = Store(f"sqlite:///{tmp_path / 'hydra.db'}")
    killed = False
    with AlpacaServer(shared_data, fill_delay_s=1.0) as server:
        runner = Runner(tmp_path, server)
        for i, plan in enumerate(plans):
            # what the exchange does while HYDRA is down
            last_kill = server.killed[-1] if server.killed else None
            if last_kill and last_kill[3] == "after" and last_kill[1] == "POST" and outcomes and outcomes[-1][1] == -9:
                server.hold_fills(12)          # the order HYDRA never heard about stays working over the restart
            elif rng.random() < 0.5:
                server.fill_working()          # fills while HYDRA is down
            # the operator's kill switch (via the store, as `hydra kill`/`resume` do): flattens, then re-arms
            if not killed and server.positions() and rng.random() < 0.6:
                set_control(control, "killed", "fault-injection kill", datetime.now(UTC))
                killed = True
            elif killed and rng.random() < 0.8:
                set_control(control, "resumed", "", datetime.now(UTC))
                killed = False
            adopt = False
            for _attempt in range(2):
                start = len(server.requests)
                rc, err = runner.run(cfg, cycles=30, adopt=adopt, plan=plan)
                if rc == 1 and "disagree" in err:
                    # refused at start-up: nothing may have been sent, the operator adopts the broker's book
                    assert not any(m == "POST" for m, _ in server.requests[start:]), err
                    assert "--adopt" in err
                    adopt = True
                    continue
                break
            assert rc == -9, f"run {i} {plan}: exit {rc}\n{err[-3000:]}"
            assert "Traceback" not in err, err[-3000:]
            outcomes.append((plan, rc, adopt))

        if killed:
            set_control(control, "resumed", "", datetime.now(UTC))
        # the exchange fills what is still working, then one clean run must reconcile WITHOUT --adopt:
        # every change to the book since the last crash came from HYDRA's own orders
        server.fill_working()
        server.auto_fill = False
        final_rc, final_err = runner.run(final_cfg, cycles=2)

        (tmp_path / "exchange.json").write_text(json.dumps(   # for post-mortems of a failure
            {"orders": list(server.double.orders.values()), "fills": server.fills, "killed": server.killed,
             "outcomes": outcomes, "posts": server.post_answers}, default=str, indent=1))
        store = Store(f"sqlite:///{tmp_path / 'hydra.db'}")
        broker_book = server.positions()
        exchange_fills = list(server.fills)
        answers = list(server.post_answers)
        entries = list(server.accepted_entries)
        kills = list(server.killed)
        fees_taken = dict(server.double.crypto_fees_taken)
        broker_ids = {o["client_order_id"] for o in server.double._all_orders()}

    # the plan really exercised crashes at every point, and the adopt path
    assert all(rc == -9 for _, rc, _ in outcomes), outcomes           # twenty SIGKILLs in a row
    assert sum(k[1] == "POST" and k[3] == "before" for k in kills) >= 3, kills
    assert sum(k[1] == "POST" and k[3] == "after" for k in kills) >= 3, kills
    # issue #16: the order a killed process sent and never heard about carries a HYDRA id: the restart
    # replays it as HYDRA's own instead of refusing, so no start needs --adopt (it is for foreign books;
    # tests/test_kill_switch.py covers that path)
    assert not any(adopt for _, _, adopt in outcomes), outcomes
    assert len(exchange_fills) >= 6 and any(f["side"] == "sell" for f in exchange_fills), exchange_fills

    # no duplicate order: HYDRA never reused a client_order_id ...
    assert not [a for a in answers if a[0] == 422 and "unique" in a[2]], answers
    # ... and never tried to sell what the broker no longer held (an earlier exit filled in the meantime)
    assert not [a for a in answers if a[0] == 403 and "insufficient" in a[2]], answers
    # ... and never opened a second entry on a symbol with an entry working or a position held (dust,
    # below the minimum order size, is not a position)
    for e in entries:
        sym = e["order"]["symbol"]
        assert not [o for o in e["working"] if o["symbol"] == sym and o["side"] == "buy"], e
        assert abs(e["positions"].get(sym, 0)) < MIN_ORDER_SIZE[sym], (sym, e["positions"], e["order"]["client_order_id"])

    assert final_rc == 0, final_err[-3000:]

    # no fill missing: every fill the exchange made is in the fills table and in some session log
    stored = {f.fill_id for f in store.fills()}
    missing = [f for f in exchange_fills if f["fill_id"] not in stored]
    assert not missing, missing
    logged = logged_fill_ids(tmp_path / "logs")
    assert not [f for f in exchange_fills if f["fill_id"] not in logged]

    # issue #16 (write-ahead): every broker order with a HYDRA id is in the orders table and in a session
    # log, also those a killed process had just sent
    from hydra_engine.orderids import is_hydra_order_id
    hydra_ids = {c for c in broker_ids if is_hydra_order_id(c)}
    assert hydra_ids and hydra_ids == broker_ids, broker_ids - hydra_ids
    table = {o.client_order_id: o.status for o in store.orders()}
    assert not hydra_ids - table.keys(), hydra_ids - table.keys()
    assert not [c for c in hydra_ids if table[c] == "submitting"], table
    logged_orders = {o["client_order_id"] for p in (tmp_path / "logs").glob("session-*.json")
                     for o in load_session(p)["orders"]}
    assert not hydra_ids - logged_orders, hydra_ids - logged_orders

    # HYDRA's book (as stored for the next restart) is the broker's -- up to dust: Alpaca keeps its crypto
    # fee out of the coins bought, so a round trip leaves less than the minimum order size behind
    assert fees_taken, "the exchange took no fee in coins: the dust rule was not exercised"
    local = stored_positions(store)
    for sym in local.keys() | broker_book.keys():
        assert abs(local.get(sym, 0) - broker_book.get(sym, 0)) < MIN_ORDER_SIZE[sym], (sym, local, broker_book)


# =========================================================================== in-process paper sessions
class FastClock(LiveClock):
    """The live clock without the waiting: cycles run back to back at the real time. Unlike APScheduler
    it does not swallow an exception from a cycle, so a cycle that dies fails the test."""

    def run(self, on_tick, max_ticks=None) -> int:
        n = 0
        while max_ticks is None or n < max_ticks:
            n += 1
            if on_tick(self.now()) is False:
                break
        return n


@pytest.fixture()
def double_env(tmp_path, monkeypatch, shared_data):
    """An entered AlpacaDouble with the real squeeze market, the Binance routes on the same mock, keys
    in the environment, and no waiting anywhere (rate-limit pauses, retries and back-offs are counted)."""
    from hydra_engine.brokers.ratelimit import RateLimiter
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("APCA_API_KEY_ID", API_KEY)
    monkeypatch.setenv("APCA_API_SECRET_KEY", SECRET_KEY)
    for var in ("ALPACA_API_KEY", "ALPACA_SECRET_KEY", "APCA_API_BASE_URL", "APCA_API_DATA_URL", "HYDRA_BINANCE_URL",
                "HYDRA_ENABLE_LIVE_TRADING"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(RateLimiter, "_pause", lambda self, s: setattr(self, "slept_s", self.slept_s + max(0.0, s)))
    now = datetime.now(UTC)
    with AlpacaDouble(now=now) as double:
        binance = install_real_market(double, shared_data, now)
        register_binance_mock(double, binance)
        yield double, binance


def run_paper(cfg: Path, monkeypatch, double, *, cycles: int, steer=None, args=()) -> int:
    """`run --mode paper` through the CLI, with ``steer(engine, cycle_about_to_run)`` before each cycle;
    between cycles the double's exchange fills whatever is working (at the last close)."""
    import hydra_engine.paper as paper
    from signals.binance import BinanceFuturesClient
    # the real builder, also when an earlier run_paper of the same test (a restart) replaced it
    original = getattr(paper.build_paper_session, "real_builder", paper.build_paper_session)

    def build(settings, **kw):
        kw["clock"] = FastClock(1)
        kw.setdefault("binance_client", BinanceFuturesClient(sleep=lambda s: None))
        session = original(settings, **kw)
        session.engine.broker._sleep = lambda s: None
        hook = session.before_cycle

        def before(engine, t):
            double.now = t          # the engine's clock: the wall clock, or the one --clock-start set
            for o in list(double._all_orders()):
                if o["status"] in ("accepted", "pending_new", "new") and o["type"] == "market" \
                        and (double.market_open or o["asset_class"] == "crypto"):   # queued equities wait
                    double.fill(o["client_order_id"], str(double.bars[o["symbol"]][-1]["c"]))
            if steer:
                steer(engine, engine.cycle + 1)
            hook(engine, t)
        session.before_cycle = before
        return session

    build.real_builder = original
    monkeypatch.setattr(paper, "build_paper_session", build)
    return main(["--config", str(cfg), "run", "--mode", "paper", "--cycles", str(cycles), "--no-progress", *args])


def session_doc(tmp_path: Path) -> dict:
    return load_session(sorted((tmp_path / "logs").glob("session-*.json"))[-1])


def posts_by_cycle(double, marks: dict[int, int]) -> dict[int, int]:
    total = double.count("POST", r"/v2/orders$")
    keys = sorted(marks)
    return {c: (marks[keys[i + 1]] if i + 1 < len(keys) else total) - marks[c] for i, c in enumerate(keys)}


class KilledBetweenJournalAndStore(BaseException):
    """Stands for a SIGKILL landing after a cycle's journal line was fsynced and before its store commit."""


def kill_between_journal_and_store(monkeypatch, when) -> dict:
    """The first ``Store.save_cycle`` for which ``when(fills, trades)`` holds raises, and from then on the
    "dead" process stores nothing (run_session's final save_state included) until ``state["dead"]`` is
    cleared by the test for the restart."""
    from hydra_engine.store import Store
    real_save_cycle, real_save_state = Store.save_cycle, Store.save_state
    state = {"killed": [], "dead": False}

    def save_cycle(self, session_id, report, orders, fills, trades, st, **kw):
        if state["dead"]:
            raise KilledBetweenJournalAndStore()
        if not state["killed"] and when(fills, trades):
            state["killed"].append((session_id, [f["fill_id"] for f in fills]))
            state["dead"] = True
            raise KilledBetweenJournalAndStore()
        return real_save_cycle(self, session_id, report, orders, fills, trades, st, **kw)

    def save_state(self, key, value, now):
        if state["dead"]:
            raise KilledBetweenJournalAndStore()
        return real_save_state(self, key, value, now)

    monkeypatch.setattr(Store, "save_cycle", save_cycle)
    monkeypatch.setattr(Store, "save_state", save_state)
    return state


def all_session_docs(tmp_path: Path) -> list[dict]:
    return [load_session(p) for p in sorted((tmp_path / "logs").glob("session-*.json"))]


def test_a_kill_between_journal_and_store_books_the_entry_fill_once_with_its_plan(tmp_path, monkeypatch,
                                                                                  double_env, capsys):
    """The journal line is written (fsynced) before the store commits the same cycle, so a kill in between
    leaves a fill in the session log but not in the store. The restart books it in the store -- under the
    session that logged it -- without logging it again, rebuilds the position from the entry's persisted
    plan (not as an adopted unknown), and saves that state at once: a second kill before any cycle has
    stored anything must not lose the position."""
    from hydra_engine.store import Store
    double, _ = double_env
    cfg = paper_config(tmp_path, symbols=("BTC/USD",))
    kill, engines = kill_between_journal_and_store(monkeypatch, lambda fills, trades: bool(fills)), []
    with pytest.raises(KilledBetweenJournalAndStore):
        run_paper(cfg, monkeypatch, double, cycles=4, steer=lambda engine, cycle: engines.append(engine))
    (first_session, (fill_id,)) = kill["killed"][0]
    before = copy.deepcopy(engines[-1].positions["BTC/USD"])
    store = Store(f"sqlite:///{tmp_path / 'hydra.db'}")
    assert fill_id not in {f.fill_id for f in store.fills()}                 # the store missed it ...
    assert fill_id in {f["fill_id"] for f in all_session_docs(tmp_path)[0]["fills"]}   # ... the log has it

    kill["dead"] = False                                                     # restart; killed again at once

    def die_before_cycle_two(engine, cycle):
        if cycle == 2:
            kill["dead"] = True
            raise KilledBetweenJournalAndStore()
    with pytest.raises(KilledBetweenJournalAndStore):
        run_paper(cfg, monkeypatch, double, cycles=4, steer=die_before_cycle_two)
    kill["dead"] = False
    code = run_paper(cfg, monkeypatch, double, cycles=1)                     # and once more, cleanly
    assert code == 0, capsys.readouterr().err[-3000:]

    docs = all_session_docs(tmp_path)
    assert len(docs) == 3
    assert sum(f["fill_id"] == fill_id for d in docs for f in d["fills"]) == 1   # logged once, by the first session
    stored = [f for f in store.fills() if f.fill_id == fill_id]
    assert len(stored) == 1 and stored[0].session_id == first_session
    notes = docs[1]["cycle_details"][0]["notes"]
    assert any("booked in the store" in n and fill_id in n for n in notes), notes
    pos = store.load_state("engine:paper")["positions"]["BTC/USD"]
    assert pos["strategy"] == before.strategy == "liquidation_cascade"       # the entry's own plan ...
    assert pos["stop_price"] == before.stop_price and pos["target_price"] == before.target_price
    assert Decimal(pos["qty"]) == before.qty                                 # ... not a 5 % adopted stop


def test_a_kill_between_journal_and_store_books_the_closing_trade_once_and_learns_from_it(tmp_path, monkeypatch,
                                                                                          double_env, capsys):
    from hydra_engine.store import Store
    double, _ = double_env
    cfg = paper_config(tmp_path, symbols=("BTC/USD",))
    kill = kill_between_journal_and_store(monkeypatch, lambda fills, trades: bool(trades))

    def exit_at_once(engine, cycle):
        pos = engine.positions.get("BTC/USD")
        if pos is not None:
            pos.stop_price = 10.0 ** 9
    with pytest.raises(KilledBetweenJournalAndStore):
        run_paper(cfg, monkeypatch, double, cycles=8, steer=exit_at_once)
    kill["dead"] = False
    for o in list(double._all_orders()):     # the new entry the killed cycle also sent fills while HYDRA is down
        if o["status"] in ("accepted", "pending_new", "new"):
            double.fill(o["client_order_id"], str(double.bars[o["symbol"]][-1]["c"]))
    store = Store(f"sqlite:///{tmp_path / 'hydra.db'}")
    assert not store.trades()
    code = run_paper(cfg, monkeypatch, double, cycles=1)
    assert code == 0, capsys.readouterr().err[-3000:]
    docs = all_session_docs(tmp_path)
    assert sum(len(d["trades"]) for d in docs) == 1                          # logged once
    assert len(store.trades()) == 1                                          # stored once
    weights = store.load_state("engine:paper")["weights"]["stats"]["liquidation_cascade"]
    assert weights["trades"] == 1                                            # and the weights learnt from it


@pytest.mark.parametrize("adopt", [False, True])
def test_fills_caught_up_at_start_are_not_booked_twice_when_the_first_cycle_never_commits(tmp_path, monkeypatch,
                                                                                         double_env, capsys, adopt):
    """Restart 2 recovers a fill the killed session logged (and saves that state at once) and also
    catches up a fill made while HYDRA was down, which only its first cycle stores. Killed before that
    commit, restart 3 polls the caught-up fill again: the saved state must not already contain it --
    also when restart 2 had to adopt the broker's book (an unrelated position) and saved that."""
    from importlib.metadata import EntryPoint

    from hydra_engine.store import Store

    import hydra_engine.plugins as plugins
    double, _ = double_env
    install_spy(double, datetime.now(UTC))
    monkeypatch.setattr(plugins, "entry_points", lambda *, group: [EntryPoint(
        name="trailing_probe", value="tests.test_paper_session:TrailingProbe", group=group)] if group == "hydra.strategies" else [])
    cfg = paper_config(tmp_path, symbols=("BTC/USD", "SPY"),
                       extra='[strategies]\nenabled = ["liquidation_cascade", "trailing_probe"]\n')
    real_fill, release = double.fill, []

    def hold_spy(coid, price, qty=None):
        o = double.order(coid)
        if o["symbol"] == "SPY" and o["side"] == "buy" and not release:
            return o                                   # SPY's entry stays working
        return real_fill(coid, price, qty)

    monkeypatch.setattr(double, "fill", hold_spy)
    kill = kill_between_journal_and_store(
        monkeypatch, lambda fills, trades: any(f["symbol"] == "BTC/USD" for f in fills)
        and any(o["symbol"] == "SPY" for o in double.orders.values()))
    with pytest.raises(KilledBetweenJournalAndStore):
        run_paper(cfg, monkeypatch, double, cycles=12)
    kill["dead"] = False
    release.append(True)
    for o in list(double._all_orders()):               # SPY's entry fills while HYDRA is down
        if o["symbol"] == "SPY" and o["status"] in ("accepted", "pending_new", "new"):
            double.fill(o["client_order_id"], str(double.bars["SPY"][-1]["c"]))

    args = ("--adopt",) if adopt else ()
    if adopt:
        double.add_position("ETH/USD", "1.5", "3000", asset_class="crypto")   # opened by hand

    def die_in_first_cycle(engine, cycle):
        kill["dead"] = True
        raise KilledBetweenJournalAndStore()
    with pytest.raises(KilledBetweenJournalAndStore):
        run_paper(cfg, monkeypatch, double, cycles=2, steer=die_in_first_cycle, args=args)
    kill["dead"] = False
    store = Store(f"sqlite:///{tmp_path / 'hydra.db'}")
    saved = store.load_state("engine:paper")["positions"]
    # the invariant: the saved state holds no fill the fills table lacks
    assert "SPY" not in saved or any(f.symbol == "SPY" for f in store.fills()), saved
    books = {}
    capsys.readouterr()
    code = run_paper(cfg, monkeypatch, double, cycles=1, args=args,
                     steer=lambda engine, cycle: books.setdefault("spy", engine.positions["SPY"].qty))
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]
    assert books["spy"] == Decimal(double.positions["SPY"]["qty"])    # booked once ...
    assert "qty differs for SPY" not in err, err[-3000:]              # ... not twice, then overwritten by --adopt


def test_a_restored_plan_whose_order_never_reached_the_broker_is_dropped(tmp_path, monkeypatch, double_env,
                                                                          capsys):
    """The entry's POST fails without an answer and the look-up fails too: the outcome is unknown, and
    the plan is kept (saved in the state) while the cycle asks again. The process then stops. After the
    restart the broker has never heard of the order: the plan must go, or every later proposal on the
    symbol is vetoed as "already has a working order", restart after restart."""
    from hydra_engine.store import Store
    double, _ = double_env
    cfg = paper_config(tmp_path, symbols=("BTC/USD",))
    cleared = []

    def steer(engine, cycle):
        if cycle == 1:
            double.fail("POST", r"/v2/orders$", times=1000, exception=requests.ConnectionError)
            double.fail("GET", r"/v2/orders:by_client_order_id$", times=1000, status=503, body="unavailable")
        elif engine.unresolved and not cleared:
            cleared.append(cycle)
            double.faults.clear()

    assert run_paper(cfg, monkeypatch, double, cycles=3, steer=steer) == 0, capsys.readouterr().err[-3000:]
    store = Store(f"sqlite:///{tmp_path / 'hydra.db'}")
    (coid,) = store.load_state("engine:paper")["plans"]
    assert not double.orders                                    # it never reached the broker

    assert run_paper(cfg, monkeypatch, double, cycles=3) == 0, capsys.readouterr().err[-3000:]
    doc = session_doc(tmp_path)
    notes = [n for c in doc["cycle_details"] for n in c["notes"]]
    assert any(coid in n and "unknown to the broker" in n for n in notes), notes
    assert coid not in store.load_state("engine:paper")["plans"]
    assert double.orders                                        # the symbol trades again


# =========================================================================== 2. broker failures
def test_broker_failures_keep_the_loop_running_and_trade_nothing_twice(tmp_path, monkeypatch, double_env, capsys,
                                                                      caplog):
    double, _ = double_env
    cfg = paper_config(tmp_path)
    marks: dict[int, int] = {}

    def steer(engine, cycle):
        marks[cycle] = double.count("POST", r"/v2/orders$")
        if cycle == 1:   # a 429 storm on the account, then the entry is refused (403, then 422)
            double.fail("GET", r"/v2/account$", times=4, status=429,
                        body={"code": 42910000, "message": "rate limit exceeded"})
            double.fail("POST", r"/v2/orders$", times=1, status=403,
                        body={"code": 40310000, "message": "insufficient buying power"})
        elif cycle == 2:
            double.fail("POST", r"/v2/orders$", times=1, status=422,
                        body={"code": 40010001, "message": "qty must be greater than 0"})
        elif cycle == 3:  # accepted, then the answer times out: the adapter must find it, not resend it
            double.fail("POST", r"/v2/orders$", times=1, exception=requests.ReadTimeout, after_processing=True)
            double.fail("GET", r"/v2/positions$", times=3, status=503, body="<html>Service Unavailable</html>")
        elif cycle == 4:  # malformed JSON where the fills are polled; a 5xx storm outlasting every retry
            double.fail("GET", r"/v2/orders$", times=1, status=200, body="{'not': json")
            double.fail("GET", r"/v2/account$", times=12, status=502, body="Bad Gateway")
        elif cycle == 5:  # accepted but answered 500: looked up by client_order_id, never sent twice
            double.fail("GET", r"/v2/clock$", times=2, status=500, body="")
        elif cycle == 6:  # a cycle slower than its 1 s interval (the market data takes 1.2 s to answer)
            snapshot = engine.market.snapshot
            engine.market.snapshot = lambda now: (time.sleep(1.2), snapshot(now))[1]
        elif cycle == 7:
            del engine.market.snapshot

    code = run_paper(cfg, monkeypatch, double, cycles=7, steer=steer)
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    doc = session_doc(tmp_path)
    cycles = doc["cycle_details"]
    assert [c["cycle"] for c in cycles] == [1, 2, 3, 4, 5, 6, 7]          # every cycle completed
    # issue #16: the 429 storm and the retried 5xx are visible: in the notes of the cycle they happened in,
    # at WARNING with counts, and in the summary's faults line; so is a cycle slower than its interval
    fault_notes = {c["cycle"]: [n for n in c["notes"] if n.startswith("broker faults in cycle")] for c in cycles}
    assert any("broker faults in cycle 1: " in n and "rate-limit answer(s) (429)" in n
               and not n.split(", ")[1].startswith("0 ") for n in fault_notes[1]), fault_notes
    assert any("broker faults in cycle 4: " in n and not n.split(": ", 1)[1].startswith("0 ")
               for n in fault_notes[4]), fault_notes                    # the 502 storm's retries, in cycle 4
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(w.startswith("broker faults in cycle 1: ") and "retried call(s)" in w for w in warnings), warnings
    slow = [n for n in cycles[5]["notes"] if n.startswith("degraded cycle time: cycle 6 took ")]
    assert slow and "longer than its 1 s interval" in slow[0], cycles[5]["notes"]
    assert any(w.startswith("degraded cycle time: cycle 6 took ") for w in warnings), warnings
    assert "\nfaults            " in out and "retried broker calls" in out and "slower than the interval" in out, out
    per_cycle = posts_by_cycle(double, marks)

    # refusals: said so in the cycle's errors, and nothing more was sent for that proposal in that cycle
    assert per_cycle[1] == 1 and any("InsufficientBuyingPower" in e for e in cycles[0]["errors"]), cycles[0]["errors"]
    assert per_cycle[2] == 1 and any("InvalidOrder" in e for e in cycles[1]["errors"]), cycles[1]["errors"]
    # the timed-out submit was placed exactly once and is known by its client_order_id
    accepted = [o for o in double.orders.values() if o["side"] == "buy"]
    assert len(accepted) == 1 and per_cycle[3] == 1, (accepted, per_cycle)
    coid = accepted[0]["client_order_id"]
    assert [o["client_order_id"] for o in doc["orders"] if o["status"] != "rejected"].count(coid) == 1
    # malformed bodies and the 5xx storm are errors of their cycle, not crashes
    assert any("poll_fills" in e for e in cycles[3]["errors"]), cycles[3]["errors"]
    assert any("502" in e or "BrokerUnavailable" in e for e in cycles[3]["errors"] + cycles[3]["notes"]), cycles[3]
    # the entry's fill was picked up once (after the malformed poll) and the position is managed
    assert [f["client_order_id"] for f in doc["fills"]] == [coid]
    assert len({o["client_order_id"] for o in double.orders.values()}) == len(double.orders)
    assert not [o for o in double.orders.values() if o["side"] == "buy" and o["client_order_id"] != coid]


# =========================================================================== 3. bad data (replay)
KLINES = "crypto_perp/binance_usdm/klines/BTCUSDT_1h.parquet"
OI = "crypto_perp/bybit_linear/open_interest/BTCUSDT_oi_1h.parquet"
SQUEEZE_DECISION = "2023-10-23T23:00:00Z"     # the clean replay buys BTC here (the 22:00 bar closed)


def corrupted_copy(tmp_path: Path, name: str, edit_klines=None, edit_oi=None) -> Path:
    """A copy of the shipped data folder with the BTC klines and/or open interest edited."""
    import shutil
    import pandas as pd
    folder = tmp_path / name
    shutil.copytree(ROOT / "data", folder)
    if edit_klines:
        k = pd.read_parquet(folder / KLINES)
        edit_klines(k).to_parquet(folder / KLINES)
    if edit_oi:
        o = pd.read_parquet(folder / OI)
        edit_oi(o).to_parquet(folder / OI)
    return folder


def replay(tmp_path: Path, folder: Path, name: str, **params) -> tuple[dict, list[dict]]:
    from hydra_engine.app import build_sim_session, run_session
    from .conftest import make_settings
    out = tmp_path / f"out-{name}"
    settings = make_settings(out, data_dir=folder, start="2023-10-20", end="2023-10-26", symbols=("BTC/USD", "ETH/USD"),
                             data_only=(), observation_cycles=20,
                             engine={"regime_detector": "trend_vol_rule", "log_dir": str(out / "logs")},
                             strategies={"enabled": ["liquidation_cascade"],
                                         "params": {"liquidation_cascade": params}} if params else {})
    summary = run_session(build_sim_session(settings), progress=False)
    doc = load_session(summary["log"])
    return doc, doc["cycle_details"]


def btc_entries(doc: dict) -> list[str]:
    return [o["created_at"] for o in doc["orders"] if o["symbol"] == "BTC/USD" and o["purpose"] == "entry"]


def _at(k, ts: str):
    import pandas as pd
    return k["ts"] == pd.Timestamp(ts)


def _newest_bar(value):
    def edit(k):
        k.loc[_at(k, "2023-10-23T22:00:00Z"), ["open", "high", "low", "close"]] = value
        return k
    return edit


def _gap(k):      # the three hours before the decision are missing: the newest bar is 3 h old
    import pandas as pd
    return k[(k["ts"] < pd.Timestamp("2023-10-23T20:00:00Z")) | (k["ts"] > pd.Timestamp("2023-10-23T22:00:00Z"))]


def _stale(k):    # the feed stops: nothing after 19:00 for the rest of the day
    import pandas as pd
    return k[(k["ts"] < pd.Timestamp("2023-10-23T20:00:00Z")) | (k["ts"] >= pd.Timestamp("2023-10-24T00:00:00Z"))]


@pytest.mark.parametrize("kind,edit", [("nan", _newest_bar(float("nan"))), ("zero", _newest_bar(0.0)),
                                       ("negative", _newest_bar(-63000.0)), ("gap", _gap), ("stale", _stale)])
def test_bad_bars_block_entries_on_the_symbol_and_say_why(tmp_path, kind, edit):
    clean, _ = replay(tmp_path, ROOT / "data", "clean")
    assert SQUEEZE_DECISION in btc_entries(clean)               # the honest baseline: this IS an entry
    doc, cycles = replay(tmp_path, corrupted_copy(tmp_path, kind, edit_klines=edit), kind)
    at = next(c for c in cycles if c["ts"] == SQUEEZE_DECISION)
    assert "BTC/USD" in at["stale_symbols"], at["stale_symbols"]
    assert SQUEEZE_DECISION not in btc_entries(doc)
    # no BTC entry is ever sent in a cycle that calls BTC stale; the journal says which rule vetoed
    stale_ts = {c["ts"] for c in cycles if "BTC/USD" in c["stale_symbols"]}
    assert not stale_ts & set(btc_entries(doc))
    vetoes = [d for c in cycles if c["ts"] in stale_ts for d in c["decisions"] if d["symbol"] == "BTC/USD"]
    assert all(d["rule"] == "stale_data" and not d["approved"] for d in vetoes), vetoes


def test_duplicated_and_out_of_order_bars_are_cleaned_and_counted(tmp_path):
    def shuffle(k):
        dup = k[(k["ts"] >= "2023-10-23T10:00:00Z") & (k["ts"] <= "2023-10-23T22:00:00Z")]
        return pd_concat([k, dup]).sample(frac=1.0, random_state=SEED)    # duplicated rows, any order
    clean, _ = replay(tmp_path, ROOT / "data", "clean")
    doc, _ = replay(tmp_path, corrupted_copy(tmp_path, "shuffled", edit_klines=shuffle), "shuffled")
    quality = doc["session"]["data_quality"]
    assert quality["duplicates"]["BTC/USD"] >= 11 and quality["out_of_order"]["BTC/USD"] > 0, quality
    def book(d):   # (ids embed the configuration hash, which names the data folder)
        return [(o["symbol"], o["side"], o["qty"], o["created_at"], o["purpose"]) for o in d["orders"]], d["trades"]
    assert book(doc) == book(clean) and clean["trades"]            # cleaning changes nothing


def pd_concat(frames):
    import pandas as pd
    return pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize("kind", ["nan", "zero", "negative"])
def test_bad_open_interest_gives_no_cascade_entry(tmp_path, kind):
    value = {"nan": float("nan"), "zero": 0.0, "negative": -5.0}[kind]

    def edit(o):
        import pandas as pd
        o.loc[o.index == pd.Timestamp("2023-10-23T23:00:00Z"), "open_interest"] = value
        return o
    _, clean_cycles = replay(tmp_path, ROOT / "data", "clean")
    at = next(c for c in clean_cycles if c["ts"] == SQUEEZE_DECISION)
    assert [s for s in at["signals"] if s["source"] == "oi_cascade" and s["symbol"] == "BTC/USD"]   # the baseline
    doc, cycles = replay(tmp_path, corrupted_copy(tmp_path, f"oi-{kind}", edit_oi=edit), f"oi-{kind}")
    at = next(c for c in cycles if c["ts"] == SQUEEZE_DECISION)
    assert not [s for s in at["signals"] if s["source"] == "oi_cascade" and s["symbol"] == "BTC/USD"], at["signals"]
    assert SQUEEZE_DECISION not in btc_entries(doc)


@pytest.mark.parametrize("kind", ["nan", "zero", "negative"])
def test_a_held_position_waits_for_a_good_price_then_exits(tmp_path, kind):
    """Entered at the squeeze (clean data); every BTC bar from 00:00 to 07:00 is bad. The 3-hour time
    limit falls inside: the position is held (nothing sold at a bad price) and exits at the first good bar."""
    import pandas as pd
    value = {"nan": float("nan"), "zero": 0.0, "negative": -1.0}[kind]
    bad = (pd.Timestamp("2023-10-24T00:00:00Z"), pd.Timestamp("2023-10-24T07:00:00Z"))

    def edit(k):
        k.loc[(k["ts"] >= bad[0]) & (k["ts"] <= bad[1]), ["open", "high", "low", "close"]] = value
        return k
    params = {"max_holding_hours": 3.0, "exit_score": -1.0}   # only the time limit (or a stop) may close it
    # issue #17: stops now trigger on the bar's low -- the 23:00 hour dipped to 32,521, through the default
    # 2 % stop (the close rule did not see it) -- so the stops are set out of reach: the time limit decides
    params.update(stop_pct=5.0, trailing_stop_pct=6.0)
    clean, _ = replay(tmp_path, ROOT / "data", "clean-3h", **params)
    first = clean["trades"][0]
    assert first["entry_time"].startswith("2023-10-23T23") and first["exit_reason"] == "time"
    doc, cycles = replay(tmp_path, corrupted_copy(tmp_path, f"held-{kind}", edit_klines=edit), f"held-{kind}", **params)
    trade = doc["trades"][0]
    assert trade["entry_time"] == first["entry_time"] and trade["exit_reason"] == "time"
    exit_fill = next(f for f in doc["fills"] if f["symbol"] == "BTC/USD" and f["side"] == "sell")
    # filled only once a good bar exists, at a real price (the open of the first good bar, less slippage)
    assert datetime.fromisoformat(exit_fill["ts"].replace("Z", "+00:00")) > bad[1].to_pydatetime()
    k = pd.read_parquet(ROOT / "data" / KLINES).set_index("ts")
    first_good_open = float(k.loc[bad[1] + pd.Timedelta(hours=1), "open"])
    assert float(exit_fill["price"]) == pytest.approx(first_good_open, rel=1e-3)
    # while the price was bad no exit order existed
    exits = [o for o in doc["orders"] if o["symbol"] == "BTC/USD" and o["purpose"] == "exit"]
    assert len(exits) == 1


# =========================================================================== 4. a broken Binance feed

class SpyProbe(Strategy):
    """A test plugin that needs only Alpaca bars: it buys SPY once, in any regime."""

    name = "spy_probe"
    interface_version = 1      # the strategy interface it is written for (plugins.check_plugin)
    regimes = frozenset(Regime)
    assets = ("SPY",)
    data_needs = (DataNeed("bars", "SPY"),)
    Params = StrategyParams

    def generate_signals(self, ctx):
        bars = ctx.market.bars.get("SPY")
        if bars is None or len(bars) < 2:
            return []
        return [Signal("SPY", 0.6, 0.7, "spy_probe", ctx.now, timedelta(days=1), "test probe: SPY bars present")]

    def propose(self, ctx, combined):
        price = ctx.market.price("SPY")
        if "SPY" not in combined or ctx.held.get("SPY") or not price > 0:
            return []
        return [TradeProposal(self.name, "SPY", Side.BUY, price, price * 0.97, price * 1.06, 0.7, timedelta(days=2),
                              "probe", max_notional_usd=1000.0, min_notional_usd=100.0)]


def install_spy(double: AlpacaDouble, now: datetime) -> None:
    """300 real SPY sessions (2023-10 .. 2024-12), re-dated to end at the last completed session."""
    import pandas as pd
    from zoneinfo import ZoneInfo
    spy = pd.read_csv(ROOT / "data/equities/daily/iex_like_spooky_course/SPY.csv.gz").tail(300)
    ny = now.astimezone(ZoneInfo("America/New_York"))
    last = ny.date() if ny.hour >= 17 else ny.date() - timedelta(days=1)
    days = list(pd.bdate_range(end=pd.Timestamp(last), periods=len(spy)))
    double.bars["SPY"] = [{"t": f"{d:%Y-%m-%d}T04:00:00Z", "o": r.Open, "h": r.High, "l": r.Low, "c": r.Close,
                           "v": int(r.Volume), "n": 100, "vw": r.Close} for d, r in zip(days, spy.itertuples())]
    c = float(spy["Close"].iloc[-1])
    double.quotes["SPY"] = {"ap": c * 1.0001, "as": 1, "bp": c, "bs": 1, "t": now.strftime("%Y-%m-%dT%H:%M:%SZ")}


BINANCE_FAULTS = {   # cycle -> (what, fault kwargs for every Binance route)
    2: ("5xx", dict(status=503, body="<html>503 Service Temporarily Unavailable</html>")),
    3: ("garbage JSON", dict(status=200, body="{\"symbol\": \"BTCUSDT\", \"fundingRate\": ")),
    4: ("timeout", dict(exception=requests.ReadTimeout)),
    5: ("429", dict(status=429, body={"code": -1003, "msg": "Too many requests"}, headers={"Retry-After": "120"})),
}
FEED_WORDS = {2: "BinanceUnavailable", 3: "BinanceDataError", 4: "BinanceUnavailable", 5: "BinanceRateLimited"}


def test_broken_binance_feed_stands_the_crypto_strategy_down_and_others_go_on(tmp_path, monkeypatch, double_env, capsys):
    from importlib.metadata import EntryPoint
    import hydra_engine.plugins as plugins
    double, _ = double_env
    install_spy(double, datetime.now(UTC))
    monkeypatch.setattr(plugins, "entry_points", lambda *, group: [EntryPoint(
        name="spy_probe", value="tests.test_fault_injection:SpyProbe", group=group)] if group == "hydra.strategies" else [])
    cfg = paper_config(tmp_path, symbols=("BTC/USD", "ETH/USD", "SPY"),
                       extra='[strategies]\nenabled = ["liquidation_cascade", "spy_probe"]\n')
    cfg.write_text(cfg.read_text().replace("observation_cycles = 0", "observation_cycles = 1"))

    def steer(engine, cycle):
        double.faults.clear()
        if cycle in BINANCE_FAULTS:
            for path in (r"/fapi/v1/fundingRate", r"/futures/data/openInterestHist", r"/fapi/v1/openInterest"):
                double.fail("GET", path, times=100, **BINANCE_FAULTS[cycle][1])

    code = run_paper(cfg, monkeypatch, double, cycles=5, steer=steer)
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]
    cycles = session_doc(tmp_path)["cycle_details"]
    assert len(cycles) == 5
    crypto_sources = {"oi_cascade", "funding_rate"}
    # cycle 1 (healthy feed, observing): the cascade is visible -- the baseline that makes the rest mean something
    assert any(s["source"] == "oi_cascade" for s in cycles[0]["signals"]), cycles[0]["signals"]
    for c in cycles[1:]:
        what = BINANCE_FAULTS[c["cycle"]][0]
        assert not [s for s in c["signals"] if s["source"] in crypto_sources], (what, c["signals"])
        assert not [o for o in c["orders"] if o["strategy"] == "liquidation_cascade"], what
        notes = " ".join(c["notes"])
        assert "data feed binance unhealthy" in notes and FEED_WORDS[c["cycle"]] in notes, (what, c["notes"])
    # the Alpaca-only plugin went on: it bought SPY in the first trading cycle and nothing was sent twice
    spy = [o for o in double.orders.values() if o["symbol"] == "SPY"]
    assert len(spy) == 1 and spy[0]["side"] == "buy" and spy[0]["client_order_id"].count("spy_probe") == 1
    assert [o["symbol"] for c in cycles for o in c["orders"]] == ["SPY"]
    assert not [o for o in double.orders.values() if "/" in o["symbol"]]


# =========================================================================== 3b. bad bars served live
@pytest.mark.parametrize("kind", ["nan", "zero", "negative"])
def test_bad_newest_bar_served_live_blocks_entries_on_the_symbol(tmp_path, monkeypatch, double_env, capsys, kind):
    double, _ = double_env
    value = {"nan": float("nan"), "zero": 0.0, "negative": -1.0}[kind]
    double.bars["BTC/USD"][-1].update(o=value, h=value, l=value, c=value)
    code = run_paper(paper_config(tmp_path), monkeypatch, double, cycles=2)
    assert code == 0, capsys.readouterr().err[-3000:]
    cycles = session_doc(tmp_path)["cycle_details"]
    assert all("BTC/USD" in c["stale_symbols"] for c in cycles), [c["stale_symbols"] for c in cycles]
    assert not [o for o in double.orders.values() if o["symbol"] == "BTC/USD"]


def test_good_bars_served_live_do_enter(tmp_path, monkeypatch, double_env, capsys):
    """The baseline for the test above: the same market with clean bars buys BTC in cycle 1."""
    double, _ = double_env
    code = run_paper(paper_config(tmp_path), monkeypatch, double, cycles=1)
    assert code == 0, capsys.readouterr().err[-3000:]
    assert [o["symbol"] for o in double.orders.values()] == ["BTC/USD"]


def test_an_exit_still_working_after_a_restart_is_not_sent_again(tmp_path, monkeypatch, double_env, capsys):
    """The exit is sent and the session ends before it fills. After the restart the stop is still crossed:
    the exit that works at the broker (which the restarted adapter does not know as an exit) must be
    waited for, not canceled and sent again."""
    double, _ = double_env
    cfg = paper_config(tmp_path, symbols=("BTC/USD",))
    real_fill = double.fill

    def no_sells(coid, price, qty=None):
        o = double.order(coid)
        return o if o["side"] == "sell" else real_fill(coid, price, qty)

    def cross(engine, cycle):
        pos = engine.positions.get("BTC/USD")
        if pos is not None:
            pos.stop_price = 10.0 ** 9

    monkeypatch.setattr(double, "fill", no_sells)
    assert run_paper(cfg, monkeypatch, double, cycles=4, steer=cross) == 0, capsys.readouterr().err[-3000:]
    sells = [o for o in double.orders.values() if o["side"] == "sell"]
    assert len(sells) == 1 and sells[0]["status"] in ("pending_new", "accepted", "new")
    assert run_paper(cfg, monkeypatch, double, cycles=3, steer=cross) == 0, capsys.readouterr().err[-3000:]
    sells = [o for o in double.orders.values() if o["side"] == "sell"]
    assert len(sells) == 1 and sells[0]["status"] in ("pending_new", "accepted", "new"), sells
