"""The perp module (#20): primitives on real episodes and on missing inputs, the tradability rules, leverage
governance, and the module running in the engine beside the equity book (funding and P&L booked once)."""
from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal

import pytest

from hydra_engine.data.replay import ReplayMarketData
from hydra_engine.domain import UTC, Side
from hydra_engine.gate import GateContext, GateState
from hydra_engine.perp.governance import (LeverageGovernance, exits_from_eae, governed_leverage)
from hydra_engine.perp.stats import PerpRegime, cascade_probability, perp_regime, perp_state, vol_regime
from hydra_engine.perp.tradability import PerpCascadeRule, PerpDataHealthRule, PerpFundingRule
from strategies.perp_primitives import (CrowdingFade, FundingCarry, FundingSqueeze, LiquidationReversal,
                                        OIDivergence)

from .conftest import SHIPPED_DATA, make_settings


def snap(folder, symbol, when: datetime, *, drop: str | None = None, days: int = 30):
    from hydra_engine.data.catalog import POINT_SOURCES
    sources = [s for s in POINT_SOURCES if s.kind != drop]
    m = ReplayMarketData(folder, [symbol], start=(when - timedelta(days=days)).date(), end=when.date() + timedelta(days=1),
                         point_sources=sources)
    return m.snapshot(when)


def at(*a) -> datetime:
    return datetime(*a, tzinfo=UTC)


# ------------------------------------------------------------------ primitives on real episodes (shared data)
@pytest.fixture(scope="module")
def may_2021(shared_data):
    return ReplayMarketData(shared_data, ["BTCUSDT"], start=date(2021, 4, 1), end=date(2021, 5, 21))


def test_funding_squeeze_fades_longs_paying_while_open_interest_grows(may_2021):
    s = may_2021.snapshot(at(2021, 5, 3, 16))
    st = perp_state(s, "BTCUSDT")
    assert st.funding == pytest.approx(0.000673, abs=1e-6) and st.oi_delta_8h > 0
    idea = FundingSqueeze().idea(s, "BTCUSDT")
    assert idea.side is Side.SELL and idea.confidence == pytest.approx(min(0.8, st.funding * 500))
    # an hour earlier the settlement was the previous one (below 0.05 %): no squeeze yet
    assert FundingSqueeze().idea(may_2021.snapshot(at(2021, 5, 3, 15)), "BTCUSDT") is None


def test_liquidation_reversal_buys_after_a_long_flush_once_the_cascade_is_over(may_2021):
    s = may_2021.snapshot(at(2021, 5, 4, 2))
    st = perp_state(s, "BTCUSDT")
    assert st.liq_source == "proxy:oi_flush" and st.liq_imbalance == 1.0 and st.cascade_probability < 0.3
    idea = LiquidationReversal().idea(s, "BTCUSDT")
    assert idea.side is Side.BUY and idea.confidence == 0.65 and "proxy" in idea.thesis


def test_the_19_may_2021_crash_is_a_cascade_the_gate_blocks_and_flattens(may_2021):
    s = may_2021.snapshot(at(2021, 5, 19, 13))
    st = perp_state(s, "BTCUSDT")
    assert st.liquidation_velocity > 0.05 and st.cascade_probability == 0.9
    assert perp_regime(s, "BTCUSDT")[0] is PerpRegime.CASCADE_RISK
    rule = PerpCascadeRule(["BTCUSDT"])
    verdict = rule.check(GateContext(s.now, s, None), "BTCUSDT", Side.BUY)
    assert verdict.state is GateState.BLOCK and rule.can_block
    # during the cascade the reversal waits
    assert LiquidationReversal().idea(s, "BTCUSDT") is None
    assert rule.check(GateContext(s.now, s, None), "BTC/USD", Side.BUY) is None   # not a perp symbol


def test_oi_divergence_shorts_a_rally_on_falling_open_interest(may_2021):
    s = may_2021.snapshot(at(2021, 5, 1, 14))
    st = perp_state(s, "BTCUSDT")
    assert st.price_change_24h > 0.02 and st.oi_delta_24h < -0.02
    idea = OIDivergence().idea(s, "BTCUSDT")
    assert idea.side is Side.SELL and idea.confidence == 0.55


def test_funding_carry_receives_funding_in_a_ranging_market(may_2021):
    s = may_2021.snapshot(at(2021, 5, 3, 16))
    assert perp_regime(s, "BTCUSDT")[0] is PerpRegime.RANGING
    idea = FundingCarry().idea(s, "BTCUSDT")
    assert idea.side is Side.SELL and idea.confidence == 0.5


def test_crowding_fade_uses_the_labelled_proxy_on_the_february_2024_rally():
    s = snap(SHIPPED_DATA, "BTCUSDT", at(2024, 2, 27, 2))
    st = perp_state(s, "BTCUSDT")
    assert st.taker_buy_sell_24h > 1.10 and st.funding_z > 2 and st.funding > 0.0003
    idea = CrowdingFade().idea(s, "BTCUSDT")
    assert idea.side is Side.SELL and idea.thesis.startswith("proxy crowding")


# ------------------------------------------------------------------ missing inputs: no signal, never a guess
@pytest.mark.parametrize("drop, primitive", [("funding_rate", FundingSqueeze), ("open_interest", FundingSqueeze),
                                             ("open_interest", LiquidationReversal), ("open_interest", OIDivergence),
                                             ("funding_rate", CrowdingFade), ("taker_buy_ratio", CrowdingFade),
                                             ("funding_rate", FundingCarry)])
def test_a_primitive_without_its_input_gives_no_signal(drop, primitive):
    when = at(2024, 2, 27, 2)
    s = snap(SHIPPED_DATA, "BTCUSDT", when, drop=drop)
    assert primitive().idea(s, "BTCUSDT") is None
    assert not perp_state(s, "BTCUSDT").healthy or drop == "taker_buy_ratio"


def test_data_health_blocks_entries_but_never_flattens_without_funding():
    s = snap(SHIPPED_DATA, "BTCUSDT", at(2024, 2, 27, 2), drop="funding_rate")
    rule = PerpDataHealthRule(["BTCUSDT"])
    v = rule.check(GateContext(s.now, s, None), "BTCUSDT", Side.BUY)
    assert v.state is GateState.BLOCK and "funding" in v.reason and not rule.can_block


def test_funding_above_a_tenth_of_a_percent_restricts(shared_data):
    # BTC funding 0.3 % per 8 h, the largest in the shared history (2021)
    import pandas as pd
    f = pd.read_parquet(shared_data / "crypto_perp/binance_usdm/funding/BTCUSDT_funding_8h.parquet").funding_rate
    t = f.abs().idxmax().to_pydatetime().replace(microsecond=0) + timedelta(hours=1)
    s = snap(shared_data, "BTCUSDT", t)
    v = PerpFundingRule(["BTCUSDT"]).check(GateContext(s.now, s, None), "BTCUSDT", Side.BUY)
    assert v.state is GateState.RESTRICT and "0.1 %" in v.reason


# ------------------------------------------------------------------ the specification's numbers
def test_layer_spec_thresholds():
    assert [vol_regime(p) for p in (0.3, 0.6, 0.9, 0.97, None)] == ["normal", "elevated", "high", "extreme", None]
    assert cascade_probability(0.06) == 0.9 and cascade_probability(0.03) == 0.6
    assert cascade_probability(0.01) == pytest.approx(0.1) and cascade_probability(None) is None


def test_governed_leverage_follows_the_layer_spec():
    assert governed_leverage(1.0, "normal", 0.0001, PerpRegime.RANGING, 0.0) == 5.0
    assert governed_leverage(0.6, "high", 0.0006, None, 0.0) == pytest.approx(5 * 0.5 * 0.7 * 0.6)
    assert governed_leverage(0.8, "extreme", 0.002, PerpRegime.CASCADE_RISK, 0.0) == 1.0        # clamped at 1x
    assert governed_leverage(1.0, None, None, None, 0.09) == pytest.approx(5 * (1 - 0.09 / 0.15))
    assert governed_leverage(1.0, None, None, None, 0.0, base=20, max_leverage=10) == 10


def test_exits_from_the_expected_adverse_excursion():
    stop, target, eae = exits_from_eae(100.0, Side.BUY, 0.01, "extreme")
    assert eae == pytest.approx(0.015) and stop == pytest.approx(98.5) and target == pytest.approx(103.0)
    stop, target, eae = exits_from_eae(100.0, Side.SELL, 0.5, None)
    assert eae == 0.10 and stop == pytest.approx(110.0) and target == pytest.approx(80.0)
    assert exits_from_eae(100.0, Side.BUY, 0.001, None)[2] == 0.01


# ------------------------------------------------------------------ in the engine, beside the equity book
def test_the_perp_module_runs_in_the_engine_and_books_funding_and_pnl_once(tmp_path):
    names = ["funding_squeeze", "liquidation_reversal", "oi_divergence", "crowding_fade", "funding_carry"]
    settings = make_settings(tmp_path, start="2024-01-01", end="2024-03-01", perps={"enabled": True},
                             strategies={"enabled": names})
    from hydra_engine.app import build_sim_session, run_session
    session = build_sim_session(settings, persist=False)
    summary = run_session(session, progress=False)
    engine = session.engine
    venue = engine.broker.venues["perp"]
    perp_trades = [t for t in engine.closed_trades if t["symbol"].endswith("USDT")]
    assert perp_trades and not engine.positions   # something traded, and nothing is left open at the end?
    assert len(perp_trades) == len(venue.closed_trades)
    # every trade names its venue (issue #20); so does every order the router sent
    assert {t["venue"] for t in perp_trades} == {"perp"}
    assert {t["venue"] for t in engine.closed_trades if not t["symbol"].endswith("USDT")} <= {"alpaca"}
    assert all(o.venue == "perp" for o in venue._orders.values() if not o.client_order_id.startswith("liquidation-"))
    # the book's P&L of each trade is the venue's (price P&L - fees + funding), and funding is counted once
    book = sum(Decimal(t["pnl_usd"]) for t in perp_trades)
    ven = sum(t.pnl_usdt for t in venue.closed_trades)
    assert abs(book - ven) < Decimal("0.0001") * len(perp_trades)
    assert float(sum(Decimal(t["funding_usd"]) for t in perp_trades)) == pytest.approx(
        float(sum(t.funding_usdt for t in venue.closed_trades)), abs=1e-5)
    assert any(Decimal(t["funding_usd"]) != 0 for t in perp_trades)
    # the account is the sum of both venues: USD book + USDT perp wallet, moved only by the trades
    equity = float(summary["final_equity_usd"])
    assert equity == pytest.approx(float(Decimal(summary["starting_equity_usd"]) + book
                                         + sum(Decimal(t["pnl_usd"]) for t in engine.closed_trades
                                               if not t["symbol"].endswith("USDT"))), abs=0.02)
    # exits are reduce-only at the perp venue; every perp order went there with a governed leverage
    perp_orders = [o for o in venue._orders.values() if o.purpose == "exit"]
    assert perp_orders and all(o.reduce_only for o in perp_orders)
    assert 1 <= min(venue._leverage.values()) and max(venue._leverage.values()) <= settings.perps.max_leverage


def test_leverage_governance_lowers_a_plugins_leverage(tmp_path):
    from hydra_engine.domain import TradeProposal
    from hydra_engine.perp.margin import load_brackets
    from hydra_engine.risk import RiskManager
    s = snap(SHIPPED_DATA, "BTCUSDT", at(2024, 2, 27, 2))
    gov = LeverageGovernance(["BTCUSDT"], load_brackets(), base=5, max_leverage=10)
    p = TradeProposal("x", "BTCUSDT", Side.SELL, 57000.0, 58000.0, 55000.0, 0.6, timedelta(hours=24), leverage=50)
    rm = RiskManager(make_settings(tmp_path).risk)
    out, note = gov.adjust(rm, p, None, None, s)
    assert 1 <= out.leverage <= 5 * 0.6 and note["leverage"] == out.leverage
    assert gov.adjust(rm, TradeProposal("x", "BTC/USD", Side.BUY, 1.0, 0.9, 1.2, 0.6, timedelta(hours=1)),
                      None, None, s)[0].leverage == 1.0
