"""The perp module in paper sessions (issue #20): the simulated USD-M account on live public Binance data,
and the Binance demo account, each against the loopback double (``tests/binance_usdm_double.py``,
127.0.0.1 only) serving the contract example bodies; Alpaca is the in-process double as in
``test_paper_session.py``. Prices are real (BTC/ETH hourly closes up to the 2023-10-23 squeeze,
re-stamped to end at the current hour)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from hydra_engine.cli import main
from hydra_engine.domain import Order, OrderType, Side, TimeInForce
from hydra_engine.perp.live import LivePerpData
from hydra_engine.perp.venue import SimulatedPerpVenue
from hydra_engine.tradelog import load_session
from signals.binance import BinanceFuturesClient

from .alpaca_double import API_KEY, SECRET_KEY, AlpacaDouble
from .alpaca_server import real_window
from .binance_usdm_double import KEY, SECRET, UsdmDouble, UsdmServer, restamped_funding
from .test_paper_session import install_market

UTC = timezone.utc
PERPS = '\n[perps]\nenabled = true\nsymbols = ["BTCUSDT", "ETHUSDT"]\n'


def real_usdm(shared_data, now) -> UsdmDouble:
    btc, _ = real_window(shared_data, "BTCUSDT_1h.parquet", "BTCUSDT_oi_1h.parquet")
    eth, _ = real_window(shared_data, "ETHUSDT_1h_from_1m.parquet", "ETHUSDT_oi_1h.parquet")
    double = UsdmDouble(marks={"BTCUSDT": f"{btc[-1]:.1f}", "ETHUSDT": f"{eth[-1]:.2f}"},
                        hourly={"BTCUSDT": btc, "ETHUSDT": eth})
    double.funding_rows = {"BTCUSDT": restamped_funding("BTCUSDT", btc[-1], now),
                           "ETHUSDT": restamped_funding("ETHUSDT", eth[-1], now)}
    return double


@pytest.fixture()
def env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("APCA_API_KEY_ID", API_KEY)
    monkeypatch.setenv("APCA_API_SECRET_KEY", SECRET_KEY)
    for var in ("ALPACA_API_KEY", "ALPACA_SECRET_KEY", "APCA_API_BASE_URL", "APCA_API_DATA_URL", "HYDRA_ENABLE_LIVE_TRADING",
                "BINANCE_API_KEY", "BINANCE_API_SECRET", "HYDRA_BINANCE_TRADE_URL"):
        monkeypatch.delenv(var, raising=False)
    from .test_fault_injection import paper_config
    return paper_config


def run_paper(cfg, shared_data, usdm_server, monkeypatch, cycles=2) -> int:
    now = datetime.now(UTC)
    monkeypatch.setenv("HYDRA_BINANCE_URL", usdm_server.url)
    with AlpacaDouble(now=now) as double:
        double.mock.add_passthru("http://127.0.0.1")
        install_market(double, shared_data, now)
        return main(["--config", str(cfg), "run", "--mode", "paper", "--cycles", str(cycles), "--no-progress"])


def test_paper_runs_the_simulated_perp_account_on_live_public_data_without_keys(env, shared_data, tmp_path,
                                                                               monkeypatch, capsys):
    cfg = env(tmp_path, extra=PERPS)
    usdm = real_usdm(shared_data, datetime.now(UTC))
    with UsdmServer(usdm) as server:
        code = run_paper(cfg, shared_data, server, monkeypatch)
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    doc = load_session(sorted((tmp_path / "logs").glob("session-*.json"))[-1])
    assert doc["session"]["venues"]["perp"] == "simulated Binance USD-M on live public Binance data"
    cycle = doc["cycle_details"][-1]
    # the perp symbols are priced from the loopback klines (the newest closed hourly bar) and not stale
    assert cycle["prices"]["BTCUSDT"] == pytest.approx(usdm.hourly["BTCUSDT"][-1])
    assert "BTCUSDT" not in cycle["stale_symbols"] and "ETHUSDT" not in cycle["stale_symbols"]
    assert not [e for e in cycle["errors"] if "USDT" in e], cycle["errors"]
    paths = {p for _, p, _ in usdm.requests}
    assert {"/fapi/v1/klines", "/fapi/v1/fundingRate"} <= paths
    assert not any(p.startswith(("/fapi/v2", "/fapi/v1/order")) for p in paths)      # no key, no signed call
    # the equity includes the simulated perp wallet (Alpaca's account double + 10 000 USDT)
    assert Decimal(doc["session"]["starting_equity_usd"]) >= Decimal("10000")


def test_the_live_data_fills_and_funds_the_simulated_account(shared_data):
    """The venue on LivePerpData over HTTP: a market order fills at the open of the first minute bar at or
    after it, funding comes from the served settlements, marks from the hourly bars."""
    now = datetime.now(UTC).replace(second=30, microsecond=0)
    usdm = real_usdm(shared_data, now)
    with UsdmServer(usdm) as server:
        data = LivePerpData(BinanceFuturesClient(base_url=server.url), ["BTCUSDT"], history_bars=120)
        data.refresh(now)
        assert not data.problems and len(data.series("BTCUSDT")) == 120
        assert all(c <= now.timestamp() for c in data.hourly["BTCUSDT"].close_s)     # the forming bar is dropped
        assert [s.rate for s in data.funding["BTCUSDT"].settlements] == [Decimal("0.0001")] * 3
        venue = SimulatedPerpVenue(data, data.funding, starting_balance_usdt="10000", bars=data)
        venue.set_leverage("BTCUSDT", 5)
        venue.update_marks({"BTCUSDT": float(data.series("BTCUSDT").close[-1])}, now - timedelta(minutes=2))
        order = Order("paper-x-perp-BTCUSDT-000001", "BTCUSDT", Side.BUY, Decimal("0.010"), OrderType.MARKET,
                      TimeInForce.GTC, now - timedelta(minutes=2), "t")
        venue.submit(order)
        fills = venue.poll_fills(now)
    minute = data.minute["BTCUSDT"]
    k = int(minute.open_s.searchsorted(int((now - timedelta(minutes=2)).timestamp())))
    assert len(fills) == 1 and fills[0].ts == datetime.fromtimestamp(int(minute.open_s[k]), UTC)
    assert fills[0].price > Decimal(str(minute.o[k]))          # the open, moved against the buyer by slippage


def test_paper_trades_the_binance_demo_account_with_keys_and_the_setting(env, shared_data, tmp_path, monkeypatch,
                                                                        capsys):
    cfg = env(tmp_path, extra=PERPS + 'execution = "binance_demo"\nbase_leverage = 3.0\n')
    usdm = real_usdm(shared_data, datetime.now(UTC))
    monkeypatch.setenv("BINANCE_API_KEY", KEY)
    monkeypatch.setenv("BINANCE_API_SECRET", SECRET)
    with UsdmServer(usdm) as server:
        monkeypatch.setenv("HYDRA_BINANCE_TRADE_URL", server.url)
        code = run_paper(cfg, shared_data, server, monkeypatch)
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    doc = load_session(sorted((tmp_path / "logs").glob("session-*.json"))[-1])
    assert doc["session"]["venues"]["perp"].startswith("Binance USD-M demo account")
    # leverage and margin type were set at start; positions and orders reconciled (start-up and each cycle)
    assert usdm.leverage == {"BTCUSDT": 3, "ETHUSDT": 3}
    assert usdm.margin_type == {"BTCUSDT": "ISOLATED", "ETHUSDT": "ISOLATED"}
    assert len(usdm.calls("GET", "/fapi/v2/positionRisk")) >= 3 and usdm.calls("GET", "/fapi/v1/openAlgoOrders")
    assert usdm.bad_signatures == 0
    assert KEY not in out.out + out.err and SECRET not in out.out + out.err


def test_live_binance_needs_the_three_part_opt_in(env, shared_data, tmp_path, monkeypatch, capsys):
    cfg = env(tmp_path, extra=PERPS + 'execution = "binance_live"\n')
    monkeypatch.setenv("BINANCE_API_KEY", KEY)
    monkeypatch.setenv("BINANCE_API_SECRET", SECRET)
    usdm = real_usdm(shared_data, datetime.now(UTC))
    with UsdmServer(usdm) as server:
        code = run_paper(cfg, shared_data, server, monkeypatch, cycles=1)   # a paper run: no --live
    err = capsys.readouterr().err
    assert code != 0 and "needs the --live flag" in err
    assert not usdm.calls("POST", "/fapi/v1/order") and not usdm.calls("POST", "/fapi/v1/leverage")
