"""Perp benchmarks (buy-and-hold, momentum, mean-reversion perps) on the simulated USD-M venue over real
bars and funding, and the review's per-primitive perp table (#20 (e))."""
from __future__ import annotations

from decimal import Decimal
from types import SimpleNamespace

import numpy as np
import pytest

from hydra_engine.perp.baselines import (PerpBuyAndHold, PerpMeanReversion, PerpMomentum, perp_market,
                                         run_perp_baseline)
from hydra_engine.perp.review import perp_review, primitive_stats

from .conftest import SHIPPED_DATA, make_settings


@pytest.fixture(scope="module")
def jan_2024(tmp_path_factory):
    settings = make_settings(tmp_path_factory.mktemp("pb"), start="2024-01-01", end="2024-03-01",
                             perps={"enabled": True})
    ticks = perp_market(settings, SHIPPED_DATA, 0).timeline()
    return settings, ticks


def _funding_accounted(doc) -> Decimal:
    """Funding on the closed trades plus what the still-open positions carry."""
    s = doc["summary"]
    return sum((Decimal(t["funding_usd"]) for t in doc["trades"]), Decimal(0)) + Decimal(s["funding_open_usd"])


def test_perp_buy_and_hold_is_long_both_pays_funding_and_balances(jan_2024):
    settings, ticks = jan_2024
    doc = run_perp_baseline(PerpBuyAndHold(), settings, SHIPPED_DATA, ticks=ticks)
    s = doc["summary"]
    assert set(s["open_positions"]) == {"BTCUSDT", "ETHUSDT"}
    assert all(Decimal(q) > 0 for q in s["open_positions"].values())
    assert s["orders_refused"] == 0 and s["liquidations"] == 0
    # Jan-Feb 2024 funding was positive (longs paid): a long book pays, and every payment is on a trade or position
    assert Decimal(s["funding_usd"]) < 0
    assert abs(_funding_accounted(doc) - Decimal(s["funding_usd"])) <= Decimal("0.02")
    # the first order fills at the next bar's open; equity starts at the perp balance
    assert Decimal(doc["cycles"][0]["equity_usd"]) == Decimal("10000.00")
    assert doc["fills"][0]["ts"] >= doc["cycles"][0]["ts"]   # the open of the bar after the order


def test_perp_mean_reversion_shorts_an_overbought_market_and_the_books_add_up(jan_2024):
    settings, ticks = jan_2024
    doc = run_perp_baseline(PerpMeanReversion(), settings, SHIPPED_DATA, ticks=ticks)
    sides = {(t["symbol"], t["side"]) for t in doc["trades"]}
    assert any(side == "sell" for _, side in sides)          # the Feb 2024 rally took RSI above 70: shorts
    s = doc["summary"]
    pnl = sum((Decimal(t["pnl_usd"]) for t in doc["trades"]), Decimal(0))
    if not s["open_positions"]:   # flat at the end: equity = balance + every trade's net P&L (funding inside)
        assert abs(Decimal(s["final_equity_usd"]) - (Decimal("10000") + pnl)) <= Decimal("0.02")


def _snap(closes, symbols=("BTCUSDT",), interval_s=86_400):
    n = len(closes)
    bars = {s: SimpleNamespace(ts=np.arange(n) * interval_s, close=np.asarray(closes, float), interval_s=interval_s,
                               last_close=closes[-1]) for s in symbols}
    return SimpleNamespace(bars=bars, tradable=lambda s: True)


def test_perp_momentum_goes_long_after_a_rise_and_short_after_a_fall():
    up = _snap(list(np.linspace(100, 150, 120)))
    down = _snap(list(np.linspace(150, 100, 120)))
    short = _snap(list(np.linspace(100, 150, 40)))           # under 90 days of history: flat
    m = PerpMomentum()
    assert m.targets(up, ["BTCUSDT", "ETHUSDT"], {}) == {"BTCUSDT": 0.5}
    assert m.targets(down, ["BTCUSDT", "ETHUSDT"], {}) == {"BTCUSDT": -0.5}
    assert m.targets(short, ["BTCUSDT"], {}) == {}


def test_perp_mean_reversion_rsi_rules():
    mr = PerpMeanReversion()
    falling = _snap([100 - i + (0.3 if i % 2 else 0) for i in range(40)])
    rising = _snap([100 + i - (0.3 if i % 2 else 0) for i in range(40)])
    assert mr.targets(falling, ["BTCUSDT"], {}) == {"BTCUSDT": 1.0}           # RSI < 30: long
    assert mr.targets(rising, ["BTCUSDT"], {}) == {"BTCUSDT": -1.0}           # RSI > 70: short
    assert mr.targets(rising, ["BTCUSDT"], {"BTCUSDT": Decimal(1)}) == {}     # a long is closed above 50
    assert mr.targets(falling, ["BTCUSDT"], {"BTCUSDT": Decimal(-1)}) == {}   # a short is closed below 50


def test_review_per_primitive_table_counts_funding_r_and_liquidations():
    trades = [
        {"strategy": "funding_carry", "symbol": "BTCUSDT", "pnl_usd": "12.5", "r_multiple": 1.0, "funding_usd": "3.25",
         "exit_reason": "target", "fees_usd": "1"},
        {"strategy": "funding_carry", "symbol": "ETHUSDT", "pnl_usd": "-4", "r_multiple": -0.5, "funding_usd": "-1.5",
         "exit_reason": "stop", "fees_usd": "1"},
        {"strategy": "oi_divergence", "symbol": "BTCUSDT", "pnl_usd": "-50", "r_multiple": -2.5, "funding_usd": "-0.75",
         "exit_reason": "liquidation", "fees_usd": "1"},
        {"strategy": "sma_crossover", "symbol": "BTC/USD", "pnl_usd": "99", "r_multiple": 2.0, "funding_usd": "0",
         "exit_reason": "target", "fees_usd": "1"},   # spot: not a perp trade
    ]
    doc = {"session": {"perp_symbols": ["BTCUSDT", "ETHUSDT"]}, "trades": trades, "orders": []}
    st = primitive_stats(doc)
    assert set(st) == {"funding_carry", "oi_divergence", "all perps"}
    fc = st["funding_carry"]
    assert (fc["trades"], fc["win_rate"], fc["pnl_usd"], fc["avg_r"]) == (2, 0.5, 8.5, 0.25)
    assert (fc["funding_received_usd"], fc["funding_paid_usd"], fc["funding_net_usd"]) == (3.25, 1.5, 1.75)
    assert fc["liquidations"] == 0 and st["oi_divergence"]["liquidations"] == 1
    assert st["all perps"]["trades"] == 3 and st["all perps"]["funding_net_usd"] == 1.0
    tables, metrics = perp_review(doc)
    assert tables[0].rows[-1][0] == "all perps" and "perp_primitives" in metrics
    # a log without the header falls back to funding / reduce-only orders
    assert set(primitive_stats({"session": {}, "trades": trades, "orders": []})) == set(st)
    assert perp_review({"session": {}, "trades": trades[3:], "orders": []}) == ([], {})
