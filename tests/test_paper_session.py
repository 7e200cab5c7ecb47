"""`run --mode paper --cycles 3` end to end against the HTTP-level Alpaca double and a Binance mock.

Everything goes through the real code: alpaca-py (trading, stock and crypto data clients), the
Binance client on requests, the APScheduler live clock, the engine, the session log and the store.
The market is real: BTC/ETH hourly bars and Bybit open interest from the hours up to the
2023-10-23 short squeeze, re-stamped to end at the current hour so the staleness watchdog accepts them.
"""
from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
import requests
import responses

from hydra_engine.cli import main
from hydra_engine.tradelog import load_session

from .alpaca_double import API_KEY, SECRET_KEY, AlpacaDouble, make_bars
from .alpaca_server import real_window

UTC = timezone.utc
FAPI = "https://fapi.binance.com"


@pytest.fixture()
def paper_env(tmp_path, monkeypatch, shared_data):
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("APCA_API_KEY_ID", API_KEY)
    monkeypatch.setenv("APCA_API_SECRET_KEY", SECRET_KEY)
    for var in ("ALPACA_API_KEY", "ALPACA_SECRET_KEY", "APCA_API_BASE_URL", "APCA_API_DATA_URL"):
        monkeypatch.delenv(var, raising=False)
    from .test_fault_injection import paper_config
    return paper_config(tmp_path)


def install_market(double: AlpacaDouble, shared_data, now: datetime) -> None:
    last_open = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    for symbol, kfile, oifile, bsym in (("BTC/USD", "BTCUSDT_1h.parquet", "BTCUSDT_oi_1h.parquet", "BTCUSDT"),
                                        ("ETH/USD", "ETHUSDT_1h_from_1m.parquet", "ETHUSDT_oi_1h.parquet", "ETHUSDT")):
        closes, oi = real_window(shared_data, kfile, oifile)
        start = last_open - timedelta(hours=len(closes) - 1)
        double.bars[symbol] = make_bars(start, timedelta(hours=1), closes)
        double.quotes[symbol] = {"ap": closes[-1] * 1.0001, "as": 1, "bp": closes[-1], "bs": 1,
                                 "t": now.strftime("%Y-%m-%dT%H:%M:%SZ")}
        # open interest snapshots at each bar's close (the last one: the squeeze hour's close)
        hist = [{"symbol": bsym, "sumOpenInterest": f"{v:.3f}", "sumOpenInterestValue": f"{v * closes[-1]:.2f}",
                 "CMCCirculatingSupply": "0", "timestamp": str(int((start + timedelta(hours=i + 1)).timestamp() * 1000))}
                for i, v in enumerate(oi)]
        double.mock.add(responses.GET, f"{FAPI}/futures/data/openInterestHist",
                        match=[responses.matchers.query_param_matcher({"symbol": bsym}, strict_match=False)], json=hist)
        double.mock.add(responses.GET, f"{FAPI}/fapi/v1/openInterest",
                        match=[responses.matchers.query_param_matcher({"symbol": bsym})],
                        json={"openInterest": f"{oi[-1]:.3f}", "symbol": bsym, "time": int(now.timestamp() * 1000)})
        settled = now.replace(hour=now.hour // 8 * 8, minute=0, second=0, microsecond=0)
        funding = [{"symbol": bsym, "fundingRate": "0.00010000", "markPrice": f"{closes[-1]:.2f}",
                    "fundingTime": int((settled - timedelta(hours=8 * i)).timestamp() * 1000)} for i in (2, 1, 0)]
        double.mock.add(responses.GET, f"{FAPI}/fapi/v1/fundingRate",
                        match=[responses.matchers.query_param_matcher({"symbol": bsym}, strict_match=False)], json=funding)


def test_paper_run_three_cycles_places_and_manages_orders(paper_env, shared_data, tmp_path, monkeypatch, capsys):
    import hydra_engine.paper as paper

    now = datetime.now(UTC)
    with AlpacaDouble(now=now) as double:
        install_market(double, shared_data, now)
        original = paper.build_paper_session

        def build_and_steer(settings, **kw):
            session = original(settings, **kw)
            hook = session.before_cycle

            def before(engine, t):  # between cycles the "exchange" fills what is working, then a kill arrives
                for o in list(double._all_orders()):
                    if o["status"] in ("accepted", "pending_new", "new"):
                        double.fill(o["client_order_id"], str(double.bars[o["symbol"]][-1]["c"]))
                if engine.cycle == 2:
                    paper.set_control(session.store, "killed", "test kill", t)
                hook(engine, t)
            session.before_cycle = before
            return session

        monkeypatch.setattr(paper, "build_paper_session", build_and_steer)
        code = main(["--config", str(paper_env), "run", "--mode", "paper", "--cycles", "3", "--no-progress"])
        out = capsys.readouterr()
        assert code == 0, out.err
        assert double.body_errors and all(not e for e in double.body_errors)  # every body valid per the spec
        assert API_KEY not in out.out + out.err and SECRET_KEY not in out.out + out.err

    logs = sorted((tmp_path / "logs").glob("session-*.json"))
    doc = load_session(logs[-1])
    assert doc["session"]["mode"] == "paper" and len(doc["cycle_details"]) == 3
    entries = [o for o in doc["orders"] if o["purpose"] == "entry"]
    exits = [o for o in doc["orders"] if o["purpose"] == "exit"]
    assert entries and entries[0]["symbol"] in ("BTC/USD", "ETH/USD") and entries[0]["side"] == "buy"
    assert doc["fills"], "the entry fill must be picked up from Alpaca"
    c3 = doc["cycle_details"][2]
    assert c3["mode"] == "killed" and any(e["reason"] == "kill" for e in c3["exits"]) and exits
    # the same schema as the simulation's log
    assert set(doc) >= {"schema_version", "session", "orders", "fills", "trades", "cycles", "summary", "journal"}
    raw = logs[-1].read_text() + (tmp_path / "logs" / doc["journal"]).read_text()
    assert API_KEY not in raw and SECRET_KEY not in raw
    assert json.loads(logs[-1].read_text())["schema_version"] == 2   # 2: span records (issue #24)
    # review and explain work on a paper-session log too
    assert main(["review", str(logs[-1]), "--out", str(tmp_path / "rev")]) == 0
    assert (tmp_path / "rev" / "report.html").is_file()
    assert main(["explain", str(logs[-1]), "--cycle", "1"]) == 0
    assert "APPROVED" in capsys.readouterr().out


def test_reconciliation_mismatch_refuses_to_trade_unless_adopt(paper_env, shared_data, tmp_path, capsys):
    now = datetime.now(UTC)
    with AlpacaDouble(now=now) as double:
        install_market(double, shared_data, now)
        double.add_position("BTC/USD", "0.5", "60000")   # a position HYDRA never opened
        code = main(["--config", str(paper_env), "run", "--mode", "paper", "--cycles", "1", "--no-progress"])
        err = capsys.readouterr().err
        assert code == 1 and "disagree" in err and "BTC/USD" in err and "--adopt" in err
        assert not any(m == "POST" for m, _ in double.calls)
        code = main(["--config", str(paper_env), "run", "--mode", "paper", "--cycles", "1", "--no-progress", "--adopt"])
        assert code == 0


def test_a_paper_sessions_return_is_measured_from_the_accounts_equity(paper_env, shared_data, tmp_path, capsys):
    """The double's account holds $123,346.11 (the spec's example), not the configured $100,000: a
    session that trades nothing has returned 0 %, in the summary and in `review`."""
    now = datetime.now(UTC)
    with AlpacaDouble(now=now) as double:
        install_market(double, shared_data, now)
        assert main(["--config", str(paper_env), "run", "--mode", "paper", "--cycles", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "$123,346.11 -> $123,346.11  (+0.00%)" in out
    [log] = (tmp_path / "logs").glob("session-*.json")
    doc = load_session(log)
    assert doc["session"]["starting_equity_usd"] == "123346.11" and doc["fills"] == []
    # to the millisecond: a restart within the same second is a new session, not cycle 1 of the last one
    assert re.fullmatch(r"paper-\d{8}T\d{9}Z", doc["session"]["session_id"]), doc["session"]["session_id"]
    assert main(["review", str(log), "--out", str(tmp_path / "review")]) == 0
    metrics = json.loads((tmp_path / "review" / "metrics.json").read_text())
    assert metrics["total_return"] == 0 and metrics["max_drawdown"] == 0


def test_a_broker_failing_at_start_up_is_a_refusal_not_a_traceback(paper_env, shared_data, capsys):
    now = datetime.now(UTC)
    with AlpacaDouble(now=now) as double:
        install_market(double, shared_data, now)
        double.fail("GET", r"/v2/account$", times=100, status=401, body={"code": 40110000, "message": "unauthorized."})
        code = main(["--config", str(paper_env), "run", "--mode", "paper", "--cycles", "1", "--no-progress"])
        err = capsys.readouterr().err
        assert code == 1 and err.startswith("refusing to trade: a broker call failed at start-up (AuthError")
        assert "nothing was traded" in err and "Traceback" not in err
        assert not any(m == "POST" for m, _ in double.calls)


KEY_PARTS = (API_KEY, SECRET_KEY, SECRET_KEY[:16], SECRET_KEY[-16:])   # fragments too: no partial leak either
BROKER_FAILURES = {   # each echoes the keys, as a misbehaving proxy might: the messages must not
    "401": dict(status=401, body={"code": 40110000, "message": f"request is not authorized ({API_KEY}:{SECRET_KEY})"}),
    "403": dict(status=403, body={"code": 40310000, "message": f"forbidden. key {API_KEY}"}),
    "unreachable": dict(exception=requests.ConnectionError),
}


@pytest.mark.parametrize("failure", list(BROKER_FAILURES))
def test_status_kill_and_run_say_what_failed_at_the_broker(paper_env, shared_data, monkeypatch, capsys, caplog,
                                                           failure):
    """`status --broker` said "refusing to trade ... nothing was traded" (run's words); `kill` printed
    `NOT DONE: *` twice, the reason only in a WARNING line; a 401/403 pointed at no key variable."""
    from hydra_engine.brokers.ratelimit import RateLimiter
    monkeypatch.setattr(RateLimiter, "_pause", lambda self, s: None)   # the retries' back-off, not waited for
    auth = failure != "unreachable"
    now = datetime.now(UTC)
    with AlpacaDouble(now=now) as double:
        install_market(double, shared_data, now)
        double.add_position("BTC/USD", "0.5", "60000")
        for method, path in (("GET", r"/v2/account$"), ("DELETE", r"/v2/orders$"), ("DELETE", r"/v2/positions$")):
            double.fail(method, path, times=1000, **BROKER_FAILURES[failure])
        said = {}
        for command in (["status", "--broker"], ["kill"], ["run", "--mode", "paper", "--cycles", "1", "--no-progress"]):
            code = main(["--config", str(paper_env), *command])
            out, err = capsys.readouterr()
            said[command[0]] = (code, out, err)
            assert not [p for p in KEY_PARTS if p in out + err + caplog.text], command
            assert "Traceback" not in err and (not auth or "check APCA_API_KEY_ID / APCA_API_SECRET_KEY" in out + err)
        assert not any(m == "POST" for m, _ in double.calls)
    assert "flatten_all" in caplog.text   # the log lines were searched too

    kind = "AuthError" if auth else "BrokerUnavailable"
    code, out, err = said["status"]
    assert code == 1 and err.startswith(f"error: the broker status could not be read ({kind}: get account: ")
    assert "refusing to trade" not in err and "nothing was traded" not in err
    code, out, err = said["kill"]
    not_done = [line.strip() for line in out.splitlines() if "NOT DONE" in line]
    assert code == 1 and [line.split(": ", 2)[:2] for line in not_done] == [
        ["NOT DONE", f"{kind}"], ["NOT DONE", f"{kind}"]], out
    assert "cancel all orders: " in not_done[0] and "close all positions: " in not_done[1]
    reason = "request is not authorized" if failure == "401" else "forbidden" if auth else "ConnectionError"
    assert all(reason in line for line in not_done), not_done
    code, out, err = said["run"]
    assert code == 1 and err.startswith(f"refusing to trade: a broker call failed at start-up ({kind}: get account: ")


def test_live_trading_needs_flag_and_environment(paper_env, monkeypatch, capsys):
    monkeypatch.delenv("HYDRA_ENABLE_LIVE_TRADING", raising=False)
    monkeypatch.setenv("HYDRA_BROKER__PAPER", "false")
    code = main(["--config", str(paper_env), "run", "--mode", "paper", "--live", "--cycles", "1"])
    assert code == 2 and "live trading refused" in capsys.readouterr().err
    monkeypatch.setenv("HYDRA_ENABLE_LIVE_TRADING", "I_UNDERSTAND_REAL_MONEY")
    monkeypatch.setenv("HYDRA_BROKER__PAPER", "true")   # config alone (paper=true) + --live: still refused
    code = main(["--config", str(paper_env), "run", "--mode", "paper", "--live", "--cycles", "1"])
    assert code == 2


def probe_on_spy(double, monkeypatch, tmp_path, probe: str = "TrailingProbe"):
    """Real SPY sessions at the double and the probe class ``probe`` (of this module) as the only
    strategy; returns the config."""
    from importlib.metadata import EntryPoint

    import hydra_engine.plugins as plugins
    from .test_fault_injection import install_spy, paper_config
    name = globals()[probe].name
    install_spy(double, datetime.now(UTC))
    monkeypatch.setattr(plugins, "entry_points", lambda *, group: [EntryPoint(
        name=name, value=f"tests.test_paper_session:{probe}", group=group)] if group == "hydra.strategies" else [])
    return paper_config(tmp_path, symbols=("SPY",), extra=f'[strategies]\nenabled = ["{name}"]\n')


def test_equity_entry_gets_a_broker_native_trailing_stop(tmp_path, monkeypatch, double_env, capsys):
    """Issue #5: on Alpaca an equity position with a percent trail is protected by a `trailing_stop`
    order held at the broker (it trails between cycles); the engine then leaves that stop to Alpaca."""
    from .test_fault_injection import run_paper, session_doc

    double, _ = double_env
    cfg = probe_on_spy(double, monkeypatch, tmp_path)
    engines = []
    code = run_paper(cfg, monkeypatch, double, cycles=3, steer=lambda engine, cycle: engines.append(engine))
    assert code == 0, capsys.readouterr().err[-3000:]
    trail = [b for b in double.order_bodies if b.get("type") == "trailing_stop"]
    assert len(trail) == 1 and trail[0]["symbol"] == "SPY" and trail[0]["side"] == "sell"
    assert Decimal(trail[0]["trail_percent"]) == Decimal("1.5") and trail[0]["time_in_force"] == "gtc"
    assert all(not e for e in double.body_errors)
    assert "SPY" in engines[-1].native_stops and "SPY" in engines[-1].positions
    doc = session_doc(tmp_path)
    assert [o["purpose"] for o in doc["orders"]] == ["entry", "stop"]


def test_an_equity_entry_filled_in_two_slices_gets_broker_trailing_stops_for_every_share(tmp_path, monkeypatch,
                                                                                          double_env, capsys):
    """The broker's trailing stop is placed once the entry is done, for both shares: while the rest of the
    buy still works, Alpaca would refuse a sell stop as a potential wash trade (the engine manages the
    first share's stop meanwhile)."""
    from .test_fault_injection import run_paper, session_doc

    double, _ = double_env
    cfg = probe_on_spy(double, monkeypatch, tmp_path)
    real_fill, split, engines = double.fill, {}, []

    def one_share_first(coid, price, qty=None):
        o = double.order(coid)
        if qty is None and o["side"] == "buy" and not split:
            split[coid], qty = price, "1"
        return real_fill(coid, price, qty)

    def steer(engine, cycle):
        engines.append(engine)
        for coid, price in split.items():
            if double.order(coid)["status"] == "partially_filled" and engine.positions.get("SPY"):
                real_fill(coid, price)        # the second share, after the first is booked

    monkeypatch.setattr(double, "fill", one_share_first)
    code = run_paper(cfg, monkeypatch, double, cycles=4, steer=steer)
    assert code == 0, capsys.readouterr().err[-3000:]
    assert split and double.order(next(iter(split)))["status"] == "filled"
    trails = [o for o in double.orders.values() if o["type"] == "trailing_stop"]
    assert [Decimal(o["qty"]) for o in trails] == [2] and trails[0]["status"] in ("new", "accepted"), trails
    assert not [a for a in double.body_errors if a]
    assert engines[-1].positions["SPY"].qty == 2 and "SPY" in engines[-1].native_stops
    notes = [n for c in session_doc(tmp_path)["cycle_details"] for n in c["notes"]]
    assert any("filled a further 1" in n for n in notes), notes


def test_a_crossed_stop_on_a_partly_filled_equity_entry_is_not_replaced_by_a_broker_trail(tmp_path, monkeypatch,
                                                                                            double_env, capsys):
    """One of two shares fills; the engine-managed stop is crossed before the rest fills, so the exit
    cancels the rest of the entry. The canceled entry must not then get a broker trailing stop (the
    position manager would leave the crossed stop to it and the exit would be abandoned): the position
    is sold."""
    from .test_fault_injection import run_paper, session_doc

    double, _ = double_env
    cfg = probe_on_spy(double, monkeypatch, tmp_path)
    real_fill, split, engines = double.fill, {}, []

    def one_share_only(coid, price, qty=None):
        o = double.order(coid)
        if o["side"] == "buy":
            if split:
                return o                              # the rest of the entry does not fill
            split[coid] = price
            return real_fill(coid, price, "1")
        return real_fill(coid, price, qty)

    def steer(engine, cycle):
        engines.append(engine)
        for o in double._all_orders():                # the exchange completes cancels between cycles
            if o["status"] == "pending_cancel":
                o["status"] = "canceled"
        pos = engine.positions.get("SPY")
        if pos is not None:
            pos.stop_price = 10.0 ** 9                # crossed

    monkeypatch.setattr(double, "fill", one_share_only)
    assert run_paper(cfg, monkeypatch, double, cycles=6, steer=steer) == 0, capsys.readouterr().err[-3000:]
    assert not [o for o in double.orders.values() if o["type"] == "trailing_stop"]
    sells = [o for o in double.orders.values() if o["side"] == "sell" and o["status"] == "filled"]
    assert sells and "SPY" not in engines[-1].positions, session_doc(tmp_path)["cycle_details"][-1]["errors"]
    assert [t["exit_reason"] for t in session_doc(tmp_path)["trades"]] in (["stop"], ["trailing_stop"])


from decimal import Decimal  # noqa: E402

from hydra_engine.domain import Side, TradeProposal  # noqa: E402

from .test_fault_injection import SpyProbe, double_env  # noqa: E402,F401  (double_env: fixture)


class SharesProbe(SpyProbe):
    """Buys ``shares`` SPY shares once (a stop 3 % below, a target 6 % above, optionally a percent trail)."""

    shares: float = 1.0
    trailing_stop_pct: float | None = None

    def propose(self, ctx, combined):
        price = ctx.market.price("SPY")
        if "SPY" not in combined or ctx.held.get("SPY") or not price > 0:
            return []
        return [TradeProposal(self.name, "SPY", Side.BUY, price, price * 0.97, price * 1.06, 0.7, timedelta(days=2),
                              "probe", max_notional_usd=self.shares * price, min_notional_usd=100.0,
                              trailing_stop_pct=self.trailing_stop_pct)]


class TrailingProbe(SharesProbe):
    """Two shares with a 1.5 % trailing stop (Alpaca trails whole shares only)."""

    name = "trailing_probe"
    shares, trailing_stop_pct = 2.0, 1.5


class BracketProbe(SharesProbe):
    """Three shares (asked: 3.2 × the price, so sizing rounds down), no trail: a bracket entry. It enters
    once per test process (``entered`` is class state, so it survives the restart): after the stop leg
    closes the trade it must not buy again."""

    name = "bracket_probe"
    shares = 3.2
    entered = False

    def propose(self, ctx, combined):
        if BracketProbe.entered:
            return []
        proposals = super().propose(ctx, combined)
        BracketProbe.entered = bool(proposals)
        return proposals


def test_equity_entry_is_a_bracket_whose_stop_leg_closes_the_trade_even_across_a_restart(
        tmp_path, monkeypatch, double_env, capsys):
    """Issue #3: on Alpaca an equity entry of whole shares carries its stop and target as bracket legs
    (GTC). The legs are HYDRA's own: a restart does not take them for unknown orders, and when the stop
    leg fills at the broker the trade closes with exit reason "stop" and no second sell is sent."""
    from .test_fault_injection import run_paper, session_doc

    double, _ = double_env
    monkeypatch.setattr(BracketProbe, "entered", False)
    cfg = probe_on_spy(double, monkeypatch, tmp_path, "BracketProbe")
    engines = []
    assert run_paper(cfg, monkeypatch, double, cycles=2, steer=lambda e, c: engines.append(e)) == 0, \
        capsys.readouterr().err[-3000:]
    entry = [b for b in double.order_bodies if b.get("side") == "buy"]
    assert len(entry) == 1 and entry[0]["order_class"] == "bracket" and entry[0]["time_in_force"] == "gtc"
    qty = Decimal(entry[0]["qty"])
    assert qty == qty.to_integral_value() and qty >= 1
    pos = engines[-1].positions["SPY"]
    assert Decimal(entry[0]["stop_loss"]["stop_price"]) == Decimal(str(round(pos.stop_price, 2)))
    assert Decimal(entry[0]["take_profit"]["limit_price"]) == Decimal(str(round(pos.target_price, 2)))
    assert all(not e for e in double.body_errors)                       # valid against the OpenAPI spec
    stop_leg = double.order(entry[0]["client_order_id"] + "-sl")
    assert stop_leg["status"] == "new" and engines[-1].exit_reasons[stop_leg["client_order_id"]] == "stop"

    # restart: the working legs are HYDRA's, so no reconciliation refusal; then the stop leg fills
    engines.clear()

    def steer(engine, cycle):   # cycle numbers continue from the saved state
        engines.append(engine)
        if len(engines) == 2:
            double.fill(stop_leg["client_order_id"], entry[0]["stop_loss"]["stop_price"])
    assert run_paper(cfg, monkeypatch, double, cycles=3, steer=steer) == 0, capsys.readouterr().err[-3000:]
    assert "SPY" not in engines[-1].positions
    assert double.order(entry[0]["client_order_id"] + "-tp")["status"] == "canceled"     # OCO at the broker
    assert len([b for b in double.order_bodies if b.get("side") == "sell"]) == 0     # no second sell
    trades = session_doc(tmp_path)["trades"]
    assert [t["exit_reason"] for t in trades] == ["stop"]
    assert Decimal(str(trades[0]["exit_price"])) == Decimal(entry[0]["stop_loss"]["stop_price"])


class WideTrailProbe(SharesProbe):
    """Two shares, the fixed stop 3 % below and a 5 % trail: the trail is looser than the stop until the
    price has risen."""

    name = "wide_trail_probe"
    shares, trailing_stop_pct = 2.0, 5.0


def _spy_session_with_a_broker_trail(tmp_path, monkeypatch, double, probe, at_cycle_3):
    """Four cycles of ``probe`` on SPY: the entry fills, Alpaca holds the trailing stop, ``at_cycle_3``
    (engine, position) runs before cycle 3."""
    from .test_fault_injection import run_paper

    cfg = probe_on_spy(double, monkeypatch, tmp_path, probe)

    def steer(engine, cycle):
        for o in double._all_orders():                # the exchange completes cancels between cycles
            if o["status"] == "pending_cancel":
                o["status"] = "canceled"
        if cycle == 3 and engine.positions.get("SPY") is not None:
            at_cycle_3(engine, engine.positions["SPY"])

    assert run_paper(cfg, monkeypatch, double, cycles=5, steer=steer) == 0
    assert [o for o in double.order_bodies if o.get("type") == "trailing_stop"], "no broker trail was placed"


def test_a_broker_trailing_stop_that_ends_unfilled_hands_the_stop_back_to_the_engine(tmp_path, monkeypatch,
                                                                                    double_env):
    """Alpaca cancels (or expires) the GTC trailing stop: from then on nothing at the broker protects the
    position, so the engine's own stop check applies again and a crossed stop sells."""
    from .test_fault_injection import session_doc

    double, _ = double_env

    def broker_cancels_the_trail_and_the_price_falls_through_the_stop(engine, pos):
        for o in double._all_orders():
            if o["type"] == "trailing_stop" and o["status"] in ("new", "accepted"):
                o["status"] = "canceled"
        pos.stop_price = 10.0 ** 9

    _spy_session_with_a_broker_trail(tmp_path, monkeypatch, double, "TrailingProbe",
                                     broker_cancels_the_trail_and_the_price_falls_through_the_stop)
    sells = [o for o in double.orders.values() if o["side"] == "sell" and o["type"] == "market"]
    assert [o["status"] for o in sells] == ["filled"]   # (the probe then buys again: a new position)
    doc = session_doc(tmp_path)
    notes = [n for c in doc["cycle_details"] for n in c["notes"]]
    assert any("trailing stop" in n and "ended canceled" in n for n in notes), notes
    assert [t["exit_reason"] for t in doc["trades"]] == ["trailing_stop"]


def test_a_broker_trail_looser_than_the_fixed_stop_does_not_replace_it(tmp_path, monkeypatch, double_env):
    """A 5 % trail with a 3 % fixed stop: until the trail has moved past the fixed stop, Alpaca's order
    would sell only at the looser level, so the engine enforces the fixed stop itself (the broker's trail
    is canceled first, so the shares it holds are free to sell)."""
    from .test_fault_injection import session_doc

    double, _ = double_env

    def price_falls_through_the_fixed_stop(engine, pos):
        assert "SPY" in engine.native_stops and pos.stop_price == pos.initial_stop_price   # the trail is looser
        pos.stop_price = pos.initial_stop_price = 10.0 ** 9

    _spy_session_with_a_broker_trail(tmp_path, monkeypatch, double, "WideTrailProbe",
                                     price_falls_through_the_fixed_stop)
    trails = [o for o in double._all_orders() if o["type"] == "trailing_stop"]
    sells = [o for o in double._all_orders() if o["side"] == "sell" and o["type"] == "market"]
    assert trails[0]["status"] == "canceled" and [o["status"] for o in sells] == ["filled"]
    assert trails[0]["client_order_id"] < sells[0]["client_order_id"]   # canceled before the sell was sent
    assert [t["exit_reason"] for t in session_doc(tmp_path)["trades"]] == ["stop"]


def test_a_running_reconciliation_halts_entries_on_a_mismatch_seen_twice_and_resumes_when_it_clears(
        tmp_path, monkeypatch, double_env):
    """Someone opens 1 ETH in the Alpaca account while HYDRA runs. The check runs before the cycle's
    fill poll, so one disagreeing cycle may be a fill not booked yet: entries halt only when the next
    cycle still disagrees; when the book matches again, they resume. (Checked every cycle here; every
    30 in production.)"""
    import hydra_engine.paper as paper
    from .test_fault_injection import paper_config, run_paper, session_doc

    double, _ = double_env
    monkeypatch.setattr(paper, "RECONCILE_EVERY", 1)

    def steer(engine, cycle):
        if cycle == 3:
            double.add_position("ETH/USD", "1", "1800")
        if cycle == 6:
            double.positions.pop("ETHUSD")

    assert run_paper(paper_config(tmp_path), monkeypatch, double, cycles=7, steer=steer) == 0
    modes = {c["cycle"]: (c["mode"], " ".join(c["notes"])) for c in session_doc(tmp_path)["cycle_details"]}
    assert modes[3][0] == "trade"                                   # seen once: maybe a fill not booked yet
    assert modes[4][0] == modes[5][0] == "blocked" and "reconciliation mismatch" in modes[4][1], modes
    assert "ETH/USD" in modes[4][1]
    assert modes[6][0] == modes[7][0] == "trade", modes              # the book matches again


def test_a_mismatch_whose_numbers_move_still_halts_entries(tmp_path, monkeypatch, double_env):
    """Someone keeps adding ETH by hand: each check reads another quantity, but it is the same
    disagreement (ETH/USD) twice in a row, so entries halt."""
    import hydra_engine.paper as paper
    from .test_fault_injection import paper_config, run_paper, session_doc

    double, _ = double_env
    monkeypatch.setattr(paper, "RECONCILE_EVERY", 1)

    def steer(engine, cycle):
        if cycle >= 3:
            double.add_position("ETH/USD", str(cycle), "1800")

    assert run_paper(paper_config(tmp_path), monkeypatch, double, cycles=5, steer=steer) == 0
    modes = {c["cycle"]: c["mode"] for c in session_doc(tmp_path)["cycle_details"]}
    assert modes[3] == "trade" and modes[4] == modes[5] == "blocked", modes
