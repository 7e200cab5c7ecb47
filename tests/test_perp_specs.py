"""The perp instruments' specs (issue #20): shipped from a recorded venue row with the source named, and on a
Binance account replaced at start-up by the venue's exchangeInfo and leverage brackets -- differences noted,
untradable symbols refused -- at the HTTP boundary (``responses`` and the USD-M double, signatures checked)."""
from __future__ import annotations

import json
from decimal import Decimal
from types import SimpleNamespace

import pytest
import responses

from hydra_engine.adapters.binance_usdm import DEMO_URL, BinanceKeys, BinanceUsdmBroker
from hydra_engine.config import ConfigError
from hydra_engine.perp.live import PaperPerps
from hydra_engine.perp.margin import load_brackets
from hydra_engine.perp.records import DEFAULT_PERP_SPECS
from hydra_engine.perp.specs import SPECS_FILE, load_shipped_specs, venue_specs
from hydra_engine.ports import InvalidOrder

from .binance_usdm_double import KEY, SECRET, UsdmDouble, exchange_info_row


@pytest.fixture()
def keys(monkeypatch):
    monkeypatch.setenv("BINANCE_API_KEY", KEY)
    monkeypatch.setenv("BINANCE_API_SECRET", SECRET)
    monkeypatch.delenv("HYDRA_BINANCE_TRADE_URL", raising=False)
    return BinanceKeys()


def started(keys, tmp_path, usdm: UsdmDouble, leverage=None) -> BinanceUsdmBroker:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        usdm.install(mock, DEMO_URL)
        b = BinanceUsdmBroker(keys, ["BTCUSDT", "ETHUSDT"], state_path=tmp_path / "ids.json", sleep=lambda s: None)
        b.start(leverage or {"BTCUSDT": 5, "ETHUSDT": 5})
    return b


# ------------------------------------------------------------------ shipped
def test_the_shipped_specs_name_their_source_and_say_which_are_unverified():
    raw = json.loads(SPECS_FILE.read_text())
    assert "ccxt/ccxt ts/src/test/static/markets/binance.json" in raw["_source"] and "0dca8ac" in raw["_source"]
    specs = load_shipped_specs()
    assert {s for s, p in specs.items() if "UNVERIFIED" not in p.source} == {"BTCUSDT", "ETHUSDT"}
    assert (specs["BTCUSDT"].tick_size, specs["BTCUSDT"].step_size, specs["BTCUSDT"].min_notional_usdt) == \
        (Decimal("0.1"), Decimal("0.001"), Decimal("5"))
    # the simulated venue trades on the same numbers (one place: specs.json)
    for s, p in specs.items():
        assert (DEFAULT_PERP_SPECS[s].price_increment, DEFAULT_PERP_SPECS[s].qty_increment) == (p.tick_size, p.step_size)
    # the brackets file names its source too
    assert "freqtrade" in json.loads((SPECS_FILE.parent / "brackets.json").read_text())["_source"]


def test_the_recorded_rows_parse_to_the_shipped_values():
    body = {"symbols": [exchange_info_row("BTCUSDT"), exchange_info_row("ETHUSDT")]}
    specs, refused = venue_specs(body, ["BTCUSDT", "ETHUSDT"])
    shipped = load_shipped_specs()
    assert not refused and all(shipped[s].differences(specs[s]) == [] for s in specs)


# ------------------------------------------------------------------ at a demo account's start-up
def test_start_reads_exchange_info_and_signed_brackets_and_notes_nothing_when_they_agree(keys, tmp_path):
    usdm = UsdmDouble()
    b = started(keys, tmp_path, usdm)
    assert b.spec_notes == [] and not b.refused
    assert usdm.calls("GET", "/fapi/v1/exchangeInfo") and "signature" not in usdm.calls("GET", "/fapi/v1/exchangeInfo")[0]
    assert "signature" in usdm.calls("GET", "/fapi/v1/leverageBracket")[0] and usdm.bad_signatures == 0
    shipped = load_brackets()
    assert {s: b.brackets[s].tiers for s in b.brackets} == {s: shipped[s].tiers for s in ("BTCUSDT", "ETHUSDT")}
    assert b.min_notional_usdt == {"BTCUSDT": Decimal("5"), "ETHUSDT": Decimal("5")}


def test_the_venues_values_are_used_and_every_difference_is_noted(keys, tmp_path):
    usdm = UsdmDouble()
    usdm.exchange_info["symbols"] = [exchange_info_row("BTCUSDT", notional="100"),
                                     exchange_info_row("ETHUSDT", tick="0.05", notional="20")]
    btc = next(r for r in usdm.leverage_brackets if r["symbol"] == "BTCUSDT")
    for row in btc["brackets"]:                          # the venue lowered the cap to 50x (brackets stay ordered)
        row["initialLeverage"] = min(row["initialLeverage"], 50)
    b = started(keys, tmp_path, usdm, leverage={"BTCUSDT": 75, "ETHUSDT": 5})
    notes = "\n".join(b.spec_notes)
    assert "BTCUSDT exchangeInfo differs" in notes and "min_notional_usdt 5 -> 100" in notes
    assert "ETHUSDT exchangeInfo differs" in notes and "tick_size 0.01 -> 0.05" in notes
    assert "BTCUSDT leverage brackets differ" in notes and "max leverage 125x -> 50x" in notes
    assert b.asset("ETHUSDT").price_increment == Decimal("0.05")
    assert b.min_notional_usdt["BTCUSDT"] == Decimal("100") and b.brackets["BTCUSDT"].max_leverage == 50
    assert usdm.leverage["BTCUSDT"] == 50                # 75 asked, the venue's cap is 50
    # the first cycle says them (paper wiring), prefixed so they are found in the log
    engine = SimpleNamespace(startup_notes=[])
    PaperPerps(None, None, venue=b).keep_state(None, engine)
    assert any(n.startswith("perp venue specs: BTCUSDT exchangeInfo differs") for n in engine.startup_notes)


def test_a_symbol_not_trading_or_not_listed_is_refused_with_its_reason(keys, tmp_path):
    usdm = UsdmDouble()
    usdm.exchange_info["symbols"] = [{**exchange_info_row("ETHUSDT"), "status": "SETTLING"}]     # BTC not listed
    with pytest.raises(ConfigError, match="none of perps.symbols can be traded"):
        started(keys, tmp_path, usdm)
    usdm = UsdmDouble()
    usdm.exchange_info["symbols"] = [exchange_info_row("BTCUSDT"), {**exchange_info_row("ETHUSDT"), "status": "SETTLING"}]
    b = started(keys, tmp_path / "b", usdm)
    assert "ETHUSDT status at the venue is 'SETTLING', not TRADING: refused" in b.refused["ETHUSDT"]
    assert any("ETHUSDT refused" in n for n in b.spec_notes)
    with pytest.raises(InvalidOrder, match="SETTLING"):
        b.asset("ETHUSDT")
    assert "ETHUSDT" not in usdm.leverage and "ETHUSDT" not in usdm.margin_type     # nothing set on it
    specs, refused = venue_specs({"symbols": [exchange_info_row("BTCUSDT")]}, ["BTCUSDT", "SOLUSDT"])
    assert "SOLUSDT is not listed in the venue's exchangeInfo" in refused["SOLUSDT"] and set(specs) == {"BTCUSDT"}
