"""`kill` and `status --broker` reach the perp venue too (issue #20), through the real CLI.

Binance: the USD-M double (``tests/binance_usdm_double.py``) on the demo URL through ``responses``, answering
with the contract example bodies (``shared/contracts/binance/examples``) and checking every signed request's
HMAC and timestamp (NOTES-2 §4.7); Alpaca: the HTTP-level Alpaca double on the same ``responses`` mock.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from hydra_engine.adapters.binance_usdm import (
    DEMO_URL,
    LIVE_URL,
    BinanceKeys,
    BinanceUsdmBroker,
    binance_client_id,
)
from hydra_engine.adapters.binance_usdm_kill import flatten_usdm
from hydra_engine.cli import main
from hydra_engine.domain import make_client_order_id
from hydra_engine.orderids import is_kill_order_id, kill_order_id
from hydra_engine.store import Store

from .alpaca_double import API_KEY, SECRET_KEY, AlpacaDouble
from .binance_usdm_double import KEY, SECRET, UsdmDouble

UTC = timezone.utc
ENGINE_SESSION = "paper-20250301T120000123Z"


def _config(tmp_path, execution: str) -> str:
    cfg = tmp_path / "hydra.toml"
    cfg.write_text(f"""
[engine]
log_dir = "{tmp_path / 'logs'}"
[universe]
symbols = ["BTC/USD"]
data_only = []
[broker]
kind = "alpaca"
[data]
kind = "alpaca"
[storage]
url = "sqlite:///{tmp_path / 'hydra.db'}"
[perps]
enabled = true
symbols = ["BTCUSDT", "ETHUSDT"]
execution = "{execution}"
""")
    return str(cfg)


@pytest.fixture()
def env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)             # no .env
    for var in ("ALPACA_API_KEY", "ALPACA_SECRET_KEY", "APCA_API_BASE_URL", "APCA_API_DATA_URL",
                "HYDRA_ENABLE_LIVE_TRADING", "HYDRA_BINANCE_TRADE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("APCA_API_KEY_ID", API_KEY)
    monkeypatch.setenv("APCA_API_SECRET_KEY", SECRET_KEY)
    monkeypatch.setenv("BINANCE_API_KEY", KEY)
    monkeypatch.setenv("BINANCE_API_SECRET", SECRET)
    return monkeypatch


def _engine_id(symbol: str, seq: int) -> str:
    return make_client_order_id(ENGINE_SESSION, "funding_carry", symbol, seq)


def demo_book() -> UsdmDouble:
    """A demo account as a running engine left it: BTC long, ETH short, a resting post-only entry and a
    conditional stop (the engine's hashed ids)."""
    usdm = UsdmDouble()
    usdm._new_order({"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.010",
                     "newClientOrderId": binance_client_id(_engine_id("BTCUSDT", 1))})
    usdm._new_order({"symbol": "ETHUSDT", "side": "SELL", "type": "MARKET", "quantity": "0.500",
                     "newClientOrderId": binance_client_id(_engine_id("ETHUSDT", 2))})
    usdm._new_order({"symbol": "ETHUSDT", "side": "SELL", "type": "LIMIT", "quantity": "0.100", "price": "1850",
                     "timeInForce": "GTX", "newClientOrderId": binance_client_id(_engine_id("ETHUSDT", 3))})
    usdm._new_algo({"algoType": "CONDITIONAL", "symbol": "BTCUSDT", "side": "SELL", "type": "STOP_MARKET",
                    "quantity": "0.010", "triggerPrice": "28500", "reduceOnly": "true",
                    "clientAlgoId": binance_client_id(_engine_id("BTCUSDT", 4))})
    return usdm


def run(cfg: str, *args: str, usdm: UsdmDouble, capsys, base: str = DEMO_URL) -> tuple[int, str, str]:
    with AlpacaDouble(now=datetime.now(UTC)) as alpaca:
        usdm.install(alpaca.mock, base)
        code = main(["--config", cfg, *args])
    out, err = capsys.readouterr()
    assert KEY not in out + err and SECRET not in out + err
    assert "Traceback" not in out + err
    return code, out, err


def _kill_posts(usdm: UsdmDouble) -> list[dict]:
    return [p for p in usdm.calls("POST", "/fapi/v1/order")]


# =========================================================================== kill on the demo account
def test_kill_flattens_the_binance_demo_account_with_its_own_reduce_only_closes(env, tmp_path, capsys):
    cfg = _config(tmp_path, "binance_demo")
    usdm = demo_book()
    setup_posts = len(_kill_posts(usdm))
    code, out, err = run(cfg, "kill", usdm=usdm, capsys=capsys)
    assert code == 0, out + err
    assert usdm.bad_signatures == 0
    control = Store(f"sqlite:///{tmp_path / 'hydra.db'}").load_state("control")
    kill_id = control["kill_id"]
    # every working order canceled: the resting entry and the conditional stop
    assert [o["status"] for o in usdm.orders.values() if o["type"] == "LIMIT"] == ["CANCELED"]
    assert [a["algoStatus"] for a in usdm.algo.values()] == ["CANCELED"]
    # every position closed by a reduce-only MARKET under the kill's own (hashed) id
    assert usdm.positions == {}
    closes = usdm.calls("POST", "/fapi/v1/order")[setup_posts:]
    assert sorted((c["symbol"], c["side"], c["quantity"], c["type"], c["reduceOnly"]) for c in closes) == [
        ("BTCUSDT", "SELL", "0.01", "MARKET", "true"), ("ETHUSDT", "BUY", "0.5", "MARKET", "true")]
    assert {c["newClientOrderId"] for c in closes} == {binance_client_id(kill_order_id(kill_id, s))
                                                         for s in ("BTCUSDT", "ETHUSDT")}
    # recorded like the Alpaca closes: the orders table (written ahead, then the outcome) and the switch's
    # state, which the running engine (or the next start) books as exits with reason kill
    rows = {r.client_order_id: r for r in Store(f"sqlite:///{tmp_path / 'hydra.db'}").orders(kill_id)}
    assert set(rows) == {kill_order_id(kill_id, s) for s in ("BTCUSDT", "ETHUSDT")}
    assert {r.status for r in rows.values()} == {"filled"} and all(is_kill_order_id(c) for c in rows)
    assert control["orders"] == {s: kill_order_id(kill_id, s) for s in ("BTCUSDT", "ETHUSDT")}
    assert "perp (Binance USD-M demo): DONE" in out and "alpaca: DONE" in out and "NOT DONE" not in out
    assert "canceled 2 orders, closing 2 positions" in out


def test_a_rerun_of_kill_recognises_its_own_unknown_close_and_never_sends_it_twice(env, tmp_path, capsys):
    cfg = _config(tmp_path, "binance_demo")
    usdm = UsdmDouble()
    usdm._new_order({"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.010",
                     "newClientOrderId": binance_client_id(_engine_id("BTCUSDT", 1))})
    setup = len(_kill_posts(usdm))
    # the close is executed but answered 503 "unknown"; the query by id fails too: its outcome is unknown
    usdm.fail("POST", "/fapi/v1/order", 503, {"code": -1000, "msg": "Unknown error, please check your request or "
                                                                    "try again later."}, after=True)
    usdm.fail("GET", "/fapi/v1/order", 503, {"code": -1000, "msg": "Unknown error"})
    code, out, _ = run(cfg, "kill", usdm=usdm, capsys=capsys)
    assert code == 1 and "outcome unknown" in out and "perp (Binance USD-M demo): NOT DONE" in out, out
    first_kill = Store(f"sqlite:///{tmp_path / 'hydra.db'}").load_state("control")["kill_id"]
    assert len(_kill_posts(usdm)) == setup + 1
    # the re-run looks the earlier close up by its id first: filled -- nothing is sent again
    code, out, _ = run(cfg, "kill", usdm=usdm, capsys=capsys)
    assert code == 0, out
    assert f"an earlier kill's close {kill_order_id(first_kill, 'BTCUSDT')}: filled" in out
    assert len(_kill_posts(usdm)) == setup + 1 and usdm.positions == {}
    assert "closing 0 positions" in out and "perp (Binance USD-M demo): DONE" in out
    assert usdm.bad_signatures == 0


def test_kill_closes_in_the_venues_own_step_size_not_the_shipped_one(env, tmp_path, capsys):
    from .binance_usdm_double import exchange_info_row
    cfg = _config(tmp_path, "binance_demo")
    usdm = UsdmDouble()
    usdm.exchange_info["symbols"] = [exchange_info_row("BTCUSDT"), exchange_info_row("ETHUSDT", step="0.0001")]
    usdm._new_order({"symbol": "ETHUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.5005",
                     "newClientOrderId": binance_client_id(_engine_id("ETHUSDT", 1))})    # not a 0.001 multiple
    code, out, _ = run(cfg, "kill", usdm=usdm, capsys=capsys)
    assert code == 0 and usdm.positions == {}, out
    assert usdm.calls("POST", "/fapi/v1/order")[-1]["quantity"] == "0.5005"
    assert "ETHUSDT exchangeInfo differs" in out and "step_size 0.001 -> 0.0001" in out


def test_kill_without_binance_keys_says_no_binance_contact_and_fails(env, tmp_path, capsys):
    env.delenv("BINANCE_API_KEY")
    env.delenv("BINANCE_API_SECRET")
    cfg = _config(tmp_path, "binance_demo")
    usdm = demo_book()
    code, out, err = run(cfg, "kill", usdm=usdm, capsys=capsys)
    assert code == 1 and "NO BINANCE CONTACT" in out and "perp (Binance USD-M demo): NOT DONE" in out
    assert not usdm.requests                 # nobody asked: the positions are still there, and it says so
    assert "kill state set" in out
    code, out, err = run(cfg, "status", "--broker", usdm=usdm, capsys=capsys)
    assert code == 1 and "NO BINANCE CONTACT" in out and not usdm.requests


def test_live_binance_is_not_touched_without_the_three_part_opt_in(env, tmp_path, capsys):
    cfg = _config(tmp_path, "binance_live")
    usdm = demo_book()
    code, out, err = run(cfg, "kill", usdm=usdm, capsys=capsys, base=LIVE_URL)
    assert code == 1 and "live Binance trading refused" in out and not usdm.requests
    assert "perp (Binance USD-M LIVE): NOT DONE (live opt-in missing)" in out
    code, out, err = run(cfg, "status", "--broker", usdm=usdm, capsys=capsys, base=LIVE_URL)
    assert code == 2 and "live Binance trading refused" in out and not usdm.requests


# =========================================================================== status --broker
def test_status_broker_lists_the_demo_accounts_balance_positions_and_orders(env, tmp_path, capsys):
    cfg = _config(tmp_path, "binance_demo")
    usdm = demo_book()
    code, out, err = run(cfg, "status", "--broker", usdm=usdm, capsys=capsys)
    assert code == 0, out + err
    acct = json.loads(json.dumps(usdm._route("GET", "/fapi/v2/account", {})[1]))
    assert f"wallet {Decimal(acct['totalWalletBalance']):,.2f} USDT" in out      # the example account's numbers
    assert "BTCUSDT 0.010 @ 30,000.00" in out and "ETHUSDT -0.500 @ 1,800.00" in out
    assert "STOP_MARKET reduce-only" in out and "LIMIT" in out
    assert usdm.bad_signatures == 0 and not usdm.calls("POST", "/fapi/v1/order")[3:]   # nothing traded


# =========================================================================== the engine books the kill's fills
def test_the_engines_adapter_books_a_kills_close_under_the_kill_id(env, tmp_path):
    usdm = demo_book()
    import responses
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        usdm.install(mock, DEMO_URL)
        engine_side = BinanceUsdmBroker(BinanceKeys(), ["BTCUSDT", "ETHUSDT"], state_path=tmp_path / "engine.json")
        engine_side.poll_fills(datetime.now(UTC))          # the engine's earlier fills: consumed
        engine_side.poll_fills(datetime.now(UTC))
        killer = BinanceUsdmBroker(BinanceKeys(), ["BTCUSDT", "ETHUSDT"], state_path=tmp_path / "engine.kill.json")
        rep = flatten_usdm(killer, "kill-20250301T130000000Z")
        assert rep.ok and set(rep.closing_orders) == {"BTCUSDT", "ETHUSDT"}
        engine_side.adopt_orders(rep.closing_orders.values())     # Control reads them from the kill switch
        fills = engine_side.poll_fills(datetime.now(UTC))
    assert sorted(f.client_order_id for f in fills) == sorted(rep.closing_orders.values())
    assert {f.venue for f in fills} == {"perp"} and usdm.bad_signatures == 0


# =========================================================================== the simulated perp account
def test_kill_with_the_simulated_perp_account_says_what_happens_to_it(env, tmp_path, capsys):
    cfg = _config(tmp_path, "sim")
    store = Store(f"sqlite:///{tmp_path / 'hydra.db'}")
    store.save_state("engine:paper", {"risk": {}, "perp_venue": {"cash_usdt": "9000", "positions": {
        "BTCUSDT": {"symbol": "BTCUSDT", "qty": "0.010", "entry_price": "30000", "leverage": 5}}}},
        datetime.now(UTC))
    usdm = UsdmDouble()
    code, out, err = run(cfg, "kill", usdm=usdm, capsys=capsys)
    assert code == 0, out + err
    assert "not traded by this command" in out and "sends their closes in its first cycle" in out
    assert "saved account holds: BTCUSDT 0.010" in out and not usdm.requests
    assert "perp (simulated USD-M paper account): HANDED TO THE ENGINE (not flat yet: the kill is recorded and " \
           "the engine closes BTCUSDT" in out
    # the kill travels with the saved state: the next start restores it, and its first cycle flattens
    saved = store.load_state("engine:paper")
    assert saved["risk"]["killed"] is True and saved["perp_venue"]["positions"]["BTCUSDT"]["qty"] == "0.010"
    code, out, err = run(cfg, "status", "--broker", usdm=usdm, capsys=capsys)
    assert code == 0 and "BTCUSDT 0.010 @ 30,000.00 (5x)" in out


def test_a_restart_after_a_kill_closes_the_saved_simulated_perp_position_never_resurrects_it(tmp_path):
    """What the sim kill message says, checked on the engine: a perp position held in the saved account (real
    BTC bars and funding, Jan 2024), the kill written into the saved state by `set_control` as `kill` does; a
    new engine restored from that state sends the close in its first cycle (filled at the next bar's open)
    and books it with exit reason kill; the restored account ends flat."""
    from hydra_engine.app import build_sim_session
    from hydra_engine.control import Control, set_control

    from .conftest import make_settings
    names = ["funding_squeeze", "liquidation_reversal", "oi_divergence", "crowding_fade", "funding_carry"]
    settings = make_settings(tmp_path, start="2024-01-01", end="2024-03-01", perps={"enabled": True},
                             strategies={"enabled": names})
    first = build_sim_session(settings, persist=False)
    ticks = list(first.clock.ticks)
    for i, now in enumerate(ticks):
        first.engine.run_cycle(now)
        if any(s.endswith("USDT") for s in first.engine.positions):
            break
    held = {s: p.qty for s, p in first.engine.positions.items() if s.endswith("USDT")}
    assert held, "no perp position opened in the window"
    store = Store(f"sqlite:///{tmp_path / 'saved.db'}")
    store.save_state("engine:paper", {**first.engine.state(), "perp_venue": first.engine.broker.venues["perp"].to_state()},
                     now)
    set_control(store, "killed", "manual kill", now, kill_id="kill-20240101T000000000Z")   # what `kill` writes
    saved = store.load_state("engine:paper")
    assert saved["perp_venue"]["positions"] and saved["risk"]["killed"] is True

    restarted = build_sim_session(settings, persist=False)      # the next start: restored as paper.py does
    restarted.engine.restore(saved)
    venue = restarted.engine.broker.venues["perp"]
    venue.load_state(saved["perp_venue"])
    assert {s: p.qty for s, p in restarted.engine.positions.items()} == held       # restored, not lost
    control = Control(store)
    first_cycle = restarted.engine.run_cycle
    control.apply(restarted.engine, ticks[i + 1])
    report = first_cycle(ticks[i + 1])
    assert {(o["symbol"], o["purpose"], o["reduce_only"]) for o in report["orders"]} == {(s, "exit", True) for s in held}
    for now in ticks[i + 2:i + 4]:
        control.apply(restarted.engine, now)
        restarted.engine.run_cycle(now)
    assert not restarted.engine.positions and not venue.to_state()["positions"]
    assert [(t["symbol"], t["exit_reason"], t["venue"]) for t in restarted.engine.closed_trades] == \
        [(s, "kill", "perp") for s in held]
