"""Binance USD-M margin maths (issue #20): brackets as data, maintenance margin, the isolated-margin
liquidation price against hand-computed cases and the positionRisk examples, and the stop check."""
from __future__ import annotations

import json
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hydra_engine.domain import Side
from hydra_engine.perp.margin import (BRACKETS_FILE, Bracket, BracketError, LeverageBrackets, initial_margin_usdt,
                                      liquidation_price, load_brackets, maintenance_margin_usdt, margin_ratio,
                                      stop_inside_liquidation, unrealized_pnl_usdt)

from .conftest import PROJECT_ROOT

D = Decimal
EXAMPLES = PROJECT_ROOT.parent / "shared" / "contracts" / "binance" / "examples"
BRACKETS = load_brackets()
BTC = BRACKETS["BTCUSDT"]


def example(name: str):
    path = EXAMPLES / name
    if not path.is_file():
        pytest.skip(f"contract example {path} not found")
    return json.loads(path.read_text())


# --------------------------------------------------------------------------- brackets
def test_brackets_ship_for_the_universe_with_binance_caps():
    assert set(BRACKETS) == {"BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT"}
    assert {s: b.max_leverage for s, b in BRACKETS.items()} == {"BTCUSDT": 125, "ETHUSDT": 125, "SOLUSDT": 100,
                                                                 "BNBUSDT": 75}
    assert json.loads(BRACKETS_FILE.read_text())["_source"].startswith("Binance GET /fapi/v1/leverageBracket")
    tier1 = BTC.for_notional(D("50000"))
    assert (tier1.bracket, tier1.maint_margin_rate, tier1.maint_amount_usdt) == (1, D("0.004"), D("0"))
    tier2 = BTC.for_notional(D("50000.01"))
    assert (tier2.bracket, tier2.maint_margin_rate, tier2.maint_amount_usdt) == (2, D("0.005"), D("50"))


def test_a_mistyped_cum_is_refused():
    good = BTC.tiers
    bad = (good[0], Bracket(2, D("50000"), D("600000"), 100, D("0.005"), D("51")))
    with pytest.raises(BracketError, match="cum 51 != 50"):
        LeverageBrackets("BTCUSDT", bad)
    with pytest.raises(BracketError, match="starts at"):
        LeverageBrackets("BTCUSDT", (good[0], good[2]))


def test_max_notional_for_leverage():
    # 10x is allowed up to bracket 7 (max leverage 10, cap 230M); 11x..20x up to bracket 6 (100M)
    assert BTC.max_notional_for_leverage(10) == D("230000000")
    assert BTC.max_notional_for_leverage(20) == D("100000000")
    assert BTC.max_notional_for_leverage(125) == D("50000")
    with pytest.raises(BracketError):
        BTC.max_notional_for_leverage(126)


# --------------------------------------------------------------------------- margin, hand-computed
def test_maintenance_margin_by_tier_hand_computed():
    # tier 1: 0.5 BTC at 40,000 = 20,000 USDT notional x 0.4 % - 0 = 80
    assert maintenance_margin_usdt(D("0.5"), D("40000"), BTC) == D("80.000")
    # tier 2: 2 BTC at 50,000 = 100,000 x 0.5 % - 50 = 450
    assert maintenance_margin_usdt(D("-2"), D("50000"), BTC) == D("450.000")
    # tier 3: 20 BTC at 50,000 = 1,000,000 x 0.65 % - 950 = 5,550
    assert maintenance_margin_usdt(D("20"), D("50000"), BTC) == D("5550.0000")
    # continuous at the 50,000 boundary: tier 1 gives 200, tier 2 gives 250 - 50
    assert BTC.tiers[0].maintenance_margin_usdt(D("50000")) == BTC.tiers[1].maintenance_margin_usdt(D("50000"))


def test_liquidation_price_hand_computed_tier1():
    # long 0.1 BTC at 50,000 with 500 USDT isolated (10x): LP = (0.1*50000 - 500 - 0) / (0.1*(1 - 0.004))
    assert liquidation_price(D("0.1"), D("50000"), D("500"), BTC) == D("4500") / D("0.0996")
    # short: LP = (500 + 0 + 0.1*50000) / (0.1*(1 + 0.004))
    assert liquidation_price(D("-0.1"), D("50000"), D("500"), BTC) == D("5500") / D("0.1004")


def test_liquidation_price_hand_computed_tier2_and_balance_equals_maintenance_there():
    # long 2 BTC at 50,000, 10,000 USDT isolated: LP = (100000 - 10000 - 50) / (2 * 0.995) = 45,201.005...
    lp = liquidation_price(D("2"), D("50000"), D("10000"), BTC)
    assert lp == D("89950") / D("1.990")
    assert BTC.for_notional(2 * lp).bracket == 2
    balance = D("10000") + unrealized_pnl_usdt(D("2"), D("50000"), lp)
    assert abs(balance - maintenance_margin_usdt(D("2"), lp, BTC)) < D("1e-20")
    assert abs(margin_ratio(maintenance_margin_usdt(D("2"), lp, BTC), balance) - 1) < D("1e-20")


def test_eth_short_in_tier3():
    eth = BRACKETS["ETHUSDT"]
    # short 500 ETH at 2,000 (1,000,000 notional), 100,000 USDT isolated: the notional at LP is in tier 3
    lp = liquidation_price(D("-500"), D("2000"), D("100000"), eth)
    assert lp == (D("100000") + D("950") + D("1000000")) / (D("500") * D("1.0065"))
    assert eth.for_notional(500 * lp).bracket == 3


def test_fully_collateralised_long_has_no_liquidation_price():
    assert liquidation_price(D("0.1"), D("50000"), D("5000"), BTC) is None     # 1x long
    assert liquidation_price(D("0"), D("50000"), D("5000"), BTC) is None
    assert liquidation_price(D("-0.1"), D("50000"), D("5000"), BTC) == D("10000") / D("0.1004")   # a 1x short can


def test_margin_ratio_past_zero_balance_is_infinite():
    assert margin_ratio(D("10"), D("100")) == D("0.1")
    assert margin_ratio(D("10"), D("0")) == D("Infinity")


# --------------------------------------------------------------------------- contract examples
def test_position_risk_v3_example_margins():
    """positionRisk.v3.oneway.json (ADAUSDT, doc example, cross): maintMargin = notional x MMR - cum with the
    bracket the example implies (MMR 0.65 %, cum 0: ADA's 2024-10 table says 0.5 %, brackets move), initial
    margin = notional / 20, unrealised = qty x (mark - entry)."""
    row = example("positionRisk.v3.oneway.json")[0]
    qty, entry, mark = D(row["positionAmt"]), D(row["entryPrice"]), D(row["markPrice"])
    q8 = D("0.00000001")
    assert unrealized_pnl_usdt(qty, entry, mark) == D(row["unRealizedProfit"])
    assert qty * mark == D(row["notional"])
    assert initial_margin_usdt(qty, mark, 20).quantize(q8) == D(row["initialMargin"])
    ada = LeverageBrackets("ADAUSDT", (Bracket(1, D(0), D("5000"), 75, D("0.0065"), D(0)),))
    assert maintenance_margin_usdt(qty, mark, ada).quantize(q8) == D(row["maintMargin"])
    assert row["liquidationPrice"] == "0"   # cross, no isolated wallet: "0" means none


def test_position_risk_v2_flat_example_reads_as_no_liquidation():
    row = example("positionRisk.v2.oneway.json")[0]
    assert D(row["positionAmt"]) == 0 and row["liquidationPrice"] == "0"
    assert liquidation_price(D(row["positionAmt"]), D(row["entryPrice"]), D(row["isolatedWallet"]), BTC) is None


# --------------------------------------------------------------------------- stop vs liquidation
def test_stop_beyond_the_liquidation_price_is_refused():
    lp = liquidation_price(D("0.1"), D("50000"), D("500"), BTC)            # 45,180.72 (10x long)
    assert not stop_inside_liquidation(Side.BUY, D("50000"), D("45000"), lp, D("0.5"))    # beyond it
    assert not stop_inside_liquidation(Side.BUY, D("50000"), D("45300"), lp, D("0.5"))    # 0.26 % above: too near
    assert stop_inside_liquidation(Side.BUY, D("50000"), D("46000"), lp, D("0.5"))
    assert not stop_inside_liquidation(Side.BUY, D("50000"), lp, lp, D("0"))                # at it: a race
    slp = liquidation_price(D("-0.1"), D("50000"), D("500"), BTC)          # 54,780.88 (10x short)
    assert not stop_inside_liquidation(Side.SELL, D("50000"), D("55000"), slp, D("0.5"))
    assert stop_inside_liquidation(Side.SELL, D("50000"), D("54000"), slp, D("0.5"))
    assert stop_inside_liquidation(Side.BUY, D("50000"), D("1"), None, D("1"))               # cannot be liquidated
    with pytest.raises(ValueError, match="below its entry"):
        stop_inside_liquidation(Side.BUY, D("50000"), D("49000"), slp, D("0.5"))


# --------------------------------------------------------------------------- invariants
qty_st = st.decimals(min_value=D("0.001"), max_value=D("50"), places=3)
price_st = st.decimals(min_value=D("100"), max_value=D("150000"), places=1)


@settings(max_examples=200, deadline=None)
@given(qty=qty_st, entry=price_st, lev_a=st.integers(1, 125), lev_b=st.integers(1, 125))
def test_long_liquidation_below_entry_and_further_away_at_lower_leverage(qty, entry, lev_a, lev_b):
    lo, hi = sorted((lev_a, lev_b))
    notional = qty * entry
    lp_lo = liquidation_price(qty, entry, notional / lo, BTC)
    lp_hi = liquidation_price(qty, entry, notional / hi, BTC)
    if lp_hi is None:
        assert lp_lo is None
        return
    assert lp_hi < entry
    assert lp_lo is None or lp_lo <= lp_hi


@settings(max_examples=200, deadline=None)
@given(qty=qty_st, entry=price_st, lev=st.integers(1, 125))
def test_short_liquidation_above_entry_and_balance_meets_maintenance_there(qty, entry, lev):
    wallet = qty * entry / lev
    lp = liquidation_price(-qty, entry, wallet, BTC)
    assert lp > entry
    balance = wallet + unrealized_pnl_usdt(-qty, entry, lp)
    assert abs(balance - maintenance_margin_usdt(-qty, lp, BTC)) <= D("1e-15") * (1 + qty * lp)
