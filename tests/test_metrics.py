"""hydra_engine.metrics: cross-checked against empyrical-reloaded (1e-9) on real SPY and BTC data, edge
cases, and trade/exposure/turnover grouping on the hand-built fixture session (tests/fixtures/build.py)."""
from __future__ import annotations

import json
import math

import empyrical as ep
import numpy as np
import pandas as pd
import pytest

from hydra_engine import metrics as M
from hydra_engine.tradelog import load_session
from tests.fixtures.build import EMPTY, EQUITY, SMALL

TOL = 1e-9


@pytest.fixture(scope="module")
def spy_equity(shared_data) -> pd.Series:
    """SPY adjusted closes as a $100k equity curve, stamped at the 21:00 UTC close."""
    df = pd.read_csv(shared_data / "equities/daily/adjclose_factor_attribution/SPY.csv.gz")
    idx = pd.to_datetime(df["Date"]).dt.tz_localize("UTC") + pd.Timedelta(hours=21)
    return pd.Series(100_000 * df["Close"].to_numpy() / df["Close"].iloc[0], index=idx.to_numpy())


@pytest.fixture(scope="module")
def btc_hourly(shared_data) -> pd.DataFrame:
    df = pd.read_csv(shared_data / "crypto_spot/binance_spot_inferred/BTC_USDT_1h.csv.gz").iloc[:24 * 400]
    df["ts"] = pd.to_datetime(df["timestamp"], unit="ms", utc=True)
    return df


PAIRS = [(M.sharpe_ratio, ep.sharpe_ratio), (M.sortino_ratio, ep.sortino_ratio),
         (M.annual_volatility, ep.annual_volatility), (M.cagr, ep.cagr), (M.cagr, ep.annual_return),
         (M.calmar_ratio, ep.calmar_ratio)]


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=0, abs=TOL)


def _check_against_empyrical(ours: pd.Series, ref: pd.Series, ppy: int) -> None:
    for mine, theirs in PAIRS:
        assert _same(mine(ours, ppy), theirs(ref, annualization=ppy)), (mine.__name__, ppy)
    assert _same(M.max_drawdown(ours), ep.max_drawdown(ref))
    assert _same(M.cvar(ours), ep.conditional_value_at_risk(ref))


@pytest.mark.parametrize("ppy", [252, 365])
def test_daily_metrics_match_empyrical_on_spy(spy_equity, ppy):
    ours = M.daily_returns(spy_equity)
    ref = spy_equity.pct_change().dropna()  # one close per day: the reference returns
    assert len(ours) == len(ref) > 8000
    np.testing.assert_array_equal(ours.to_numpy(), ref.to_numpy())
    _check_against_empyrical(ours, ref, ppy)
    assert M.max_drawdown(ours) == pytest.approx(-0.5519, abs=1e-4)  # 2007-10 → 2009-03


def test_intraday_curve_resamples_to_last_equity_per_utc_day(btc_hourly):
    """Hourly BTC closes as equity: returns are between each UTC day's last value; the first day
    counts from the first hour. Reference built independently by grouping on the date string."""
    eq = pd.Series(btc_hourly["close"].to_numpy(), index=pd.DatetimeIndex(btc_hourly["ts"]))
    closes = btc_hourly.groupby(btc_hourly["ts"].dt.strftime("%Y-%m-%d"))["close"].last()
    base = np.concatenate([[btc_hourly["close"].iloc[0]], closes.to_numpy()[:-1]])
    ref = pd.Series(closes.to_numpy() / base - 1)
    ours = M.daily_returns(eq)
    assert len(ours) == len(closes) and ours.index[0] == pd.Timestamp(closes.index[0], tz="UTC")
    np.testing.assert_allclose(ours.to_numpy(), ref.to_numpy(), rtol=0, atol=1e-15)
    _check_against_empyrical(ours, ref, 365)
    # the intraday drawdown is at least as deep as the close-to-close one
    assert M.drawdown_episode(eq)["max_drawdown"] <= M.max_drawdown(ours) - 1e-6


def _curve(values, start="2024-01-01T00:00Z", freq="6h"):
    return pd.Series(values, index=pd.date_range(start, periods=len(values), freq=freq), dtype=float)


@pytest.mark.parametrize("values", [[100.0] * 12, [100.0, 101.0, 99.5], [100.0]],
                         ids=["flat", "one-day", "single-point"])
def test_edge_cases_match_empyrical(values):
    r = M.daily_returns(_curve(values))
    assert len(r) == {12: 3, 3: 1, 1: 0}[len(values)]
    for ppy in (252, 365):
        _check_against_empyrical(r, r.copy(), ppy)


def test_flat_equity_has_no_risk_and_undefined_ratios():
    r = M.daily_returns(_curve([100.0] * 12))
    assert math.isnan(M.sharpe_ratio(r)) and math.isnan(M.sortino_ratio(r)) and math.isnan(M.calmar_ratio(r))
    assert M.annual_volatility(r) == 0.0 and M.max_drawdown(r) == 0.0 and M.cvar(r) == 0.0


def test_missing_days_are_dropped_not_filled():
    eq = pd.Series([100.0, 110.0, 99.0], index=pd.to_datetime(["2024-01-01T12:00Z", "2024-01-02T12:00Z",
                                                               "2024-01-05T12:00Z"]))
    r = M.daily_returns(eq)
    assert list(r.index.day) == [2, 5] and r.iloc[1] == pytest.approx(99 / 110 - 1)


def test_naive_timestamps_are_refused():
    with pytest.raises(ValueError, match="UTC"):
        M.daily_returns(pd.Series([1.0, 2.0], index=pd.to_datetime(["2024-01-01", "2024-01-02"])))


def test_drawdown_episode_peak_trough_recovery():
    eq = _curve([100, 110, 110, 99, 105, 111, 90])
    ep_ = M.drawdown_episode(eq)
    assert ep_["max_drawdown"] == pytest.approx(90 / 111 - 1)
    assert not ep_["recovered"] and ep_["peak"] == eq.index[5] and ep_["duration_days"] == 0.25
    ep_ = M.drawdown_episode(eq.iloc[:6])
    assert ep_["max_drawdown"] == pytest.approx(99 / 110 - 1)
    assert ep_["peak"] == eq.index[2]  # the last time at the high, not the first
    assert ep_["recovery"] == eq.index[5] and ep_["duration_days"] == pytest.approx(0.75)


def test_exposure_is_the_union_of_intervals():
    t = lambda h: pd.Timestamp("2024-01-01T00:00Z") + pd.Timedelta(hours=h)  # noqa: E731
    start, end = t(0), t(10)
    assert M.exposure([(t(1), t(3)), (t(2), t(4)), (t(6), None)], start, end) == pytest.approx(0.7)
    assert M.exposure([], start, end) == 0.0
    assert M.exposure([(t(-5), t(20))], start, end) == 1.0


def test_trade_stats_edge_cases():
    empty = M.trade_stats([])
    assert empty["trades"] == 0 and math.isnan(empty["win_rate"]) and math.isnan(empty["profit_factor"])
    winners = M.trade_stats([{"pnl_usd": "10", "r_multiple": 1.0, "fees_usd": "1"}] * 2)
    assert winners["win_rate"] == 1.0 and winners["profit_factor"] == math.inf and math.isnan(winners["payoff_ratio"])
    even = M.trade_stats([{"pnl_usd": "0", "r_multiple": 0.0}])
    assert even["wins"] == even["losses"] == 0 and even["win_rate"] == 0.0


# ---------------------------------------------------------------- the hand-built session
@pytest.fixture(scope="module")
def small():
    return M.compute_all(load_session(SMALL))


def test_fixture_equity_and_daily_returns():
    doc = load_session(SMALL)
    eq = M.equity_curve(doc)
    assert len(eq) == 17 and eq.iloc[0] == 100_000 and eq.iloc[-1] == 100_300  # anchor + 16 cycles
    closes = [100_000, 100_120, 100_150, 100_180, 100_300]  # start, then the 18:00 cycle of each day
    np.testing.assert_allclose(M.daily_returns(eq).to_numpy(), np.array(closes[1:]) / closes[:-1] - 1, atol=1e-15)


def test_fixture_return_metrics(small):
    assert small["days"] == 4 and small["cycles"] == 16 and small["losing_days"] == 0
    assert small["total_return"] == pytest.approx(0.003)
    assert small["cagr"] == pytest.approx(1.003 ** (365 / 4) - 1)
    # daily closes only rise, but intraday equity fell from 100,260 (03-02 06:00) to 100,050 (03-04 00:00)
    assert small["max_drawdown"] == pytest.approx(100_050 / 100_260 - 1)
    assert small["max_drawdown_peak"] == "2024-03-02T06:00:00Z" and small["max_drawdown_trough"] == "2024-03-04T00:00:00Z"
    assert small["max_drawdown_recovery"] == "2024-03-04T18:00:00Z" and small["max_drawdown_duration_days"] == 2.5
    assert small["calmar"] == pytest.approx(small["cagr"] / abs(small["max_drawdown"]))
    assert small["sortino"] is None  # no losing day: infinite, reported as undefined


def test_fixture_trades_grouped_per_strategy_regime_and_exit(small):
    t = small["trades"]
    assert (t["trades"], t["wins"], t["losses"]) == (5, 3, 2)
    assert t["pnl_usd"] == pytest.approx(300) and t["fees_usd"] == pytest.approx(10)
    assert t["profit_factor"] == pytest.approx(550 / 250) and t["avg_r"] == pytest.approx(0.4)
    tf, mr = small["per_strategy"]["trend_follow"], small["per_strategy"]["mean_revert"]
    assert tf["win_rate"] == pytest.approx(2 / 3) and tf["pnl_usd"] == pytest.approx(400)
    assert tf["avg_r"] == pytest.approx((1.5 - 1 + 2) / 3) and tf["profit_factor"] == pytest.approx(5)
    assert tf["avg_win_usd"] == pytest.approx(250) and tf["avg_loss_usd"] == pytest.approx(-100)
    assert tf["payoff_ratio"] == pytest.approx(2.5)
    assert mr["win_rate"] == 0.5 and mr["pnl_usd"] == pytest.approx(-100) and mr["avg_r"] == pytest.approx(-0.25)
    assert {k: v["pnl_usd"] for k, v in small["per_regime"].items()} == pytest.approx(
        {"HIGH_VOL": 200, "MEAN_REVERTING": -100, "TRENDING_UP": 200})
    assert small["per_regime"]["HIGH_VOL"]["profit_factor"] is None  # no loser: JSON cannot hold inf
    assert {k: v["trades"] for k, v in small["exit_reasons"].items()} == {"stop": 2, "target": 2, "time": 1}
    assert small["regime_time"] == pytest.approx({"TRENDING_UP": 6 / 16, "MEAN_REVERTING": 5 / 16,
                                                  "UNKNOWN": 1 / 16, "HIGH_VOL": 4 / 16})
    assert small["vetoes_by_rule"] == {"max_position_pct": 2, "one_position_per_symbol": 1, "regime_unknown": 1}


def test_fixture_exposure_and_turnover(small):
    assert small["exposure"] == pytest.approx(72 / 90)  # positions open 72 h of the 90 h session
    notional = 6000 + 6302 + 3500 + 3402 + 5100 + 5048 + 5050 + 4902 + 3100 + 3302
    avg_equity = (100_000 + sum(float(e) for e in EQUITY)) / 17
    assert small["traded_notional_usd"] == pytest.approx(notional)
    assert small["turnover"] == pytest.approx(notional / avg_equity)


def test_exposure_falls_back_to_trades_without_fills():
    doc = load_session(SMALL)
    doc["fills"] = []
    assert M.compute_all(doc)["exposure"] == pytest.approx(72 / 90)  # the same round trips


def test_zero_trade_session_is_json_safe():
    m = M.compute_all(load_session(EMPTY))
    json.dumps(m, allow_nan=False)
    assert m["trades"]["trades"] == 0 and m["trades"]["win_rate"] is None and m["per_strategy"] == {}
    assert m["total_return"] == 0.0 and m["sharpe"] is None and m["exposure"] == 0.0 and m["turnover"] == 0.0
    assert m["vetoes_by_rule"] == {"observe": 2}


def test_annualisation_is_a_parameter():
    doc = load_session(SMALL)
    a, b = M.compute_all(doc, 365), M.compute_all(doc, 252)
    assert a["sharpe"] / b["sharpe"] == pytest.approx(math.sqrt(365 / 252))


def test_annualisation_follows_the_book_when_not_given(spy_equity):
    """An equity-only book has returns on exchange days only: 365 would count its ~250 returns a year
    as 0.7 years and inflate CAGR. Left out, the periods per year are 252 for it and 365 for a book
    with weekend returns (the fixture session cycles through a weekend)."""
    year = spy_equity["2022-12-30":"2023-12-29"]
    doc = {"cycles": [{"ts": t.strftime("%Y-%m-%dT%H:%M:%SZ"), "equity_usd": str(v)} for t, v in year.items()]}
    m = M.compute_all(doc)
    calendar_years = (year.index[-1] - year.index[0]).days / 365
    assert m["periods_per_year"] == 252 and m["days"] == 250
    assert m["cagr"] == pytest.approx((1 + m["total_return"]) ** (1 / calendar_years) - 1, abs=0.003)
    assert M.compute_all(doc, 365)["cagr"] > m["cagr"] + 0.005
    assert M.compute_all(load_session(SMALL))["periods_per_year"] == 365


def _hours(h: float) -> str:
    return (pd.Timestamp("2024-03-04T00:00Z") + pd.Timedelta(hours=h)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _paper_doc(fills, trades, open_positions=None, symbols=("BTC/USD",)):
    """A ten-hour session (Monday), flat equity, with the given fills and trades."""
    return {"session": {"symbols": list(symbols), "starting_equity_usd": "1000", "started_at": _hours(0)},
            "cycles": [{"ts": _hours(h), "equity_usd": "1000"} for h in range(0, 11)],
            "fills": fills, "trades": trades, "summary": {"open_positions": open_positions or {}}}


def test_exposure_of_a_crypto_round_trip_whose_fee_was_taken_in_coins():
    """Alpaca keeps its crypto fee in coins: buy 0.0599, sell the 0.0597 held. The fills never net to
    zero, yet the book was flat after the sell: 2 h held out of 10, not 8."""
    fills = [{"ts": _hours(2), "symbol": "BTC/USD", "side": "buy", "qty": "0.0599", "price": "60000"},
             {"ts": _hours(4), "symbol": "BTC/USD", "side": "sell", "qty": "0.0597", "price": "60100"}]
    trade = {"symbol": "BTC/USD", "strategy": "s", "entry_time": _hours(2), "exit_time": _hours(4),
             "pnl_usd": "1", "fees_usd": "0.3", "r_multiple": 0.1}
    assert M.compute_all(_paper_doc(fills, [trade]))["exposure"] == pytest.approx(0.2)


def test_exposure_counts_a_position_carried_in_from_the_start_and_one_left_open_to_the_end():
    """A restart: the position opened in the earlier session is sold at hour 6 (its trade's entry lies
    before this session); a new one bought at hour 8 is still open at the end; an adopted one with no
    fill in this session is held throughout."""
    fills = [{"ts": _hours(6), "symbol": "BTC/USD", "side": "sell", "qty": "0.05", "price": "60000"},
             {"ts": _hours(8), "symbol": "ETH/USD", "side": "buy", "qty": "1", "price": "3000"}]
    carried = {"symbol": "BTC/USD", "strategy": "s", "entry_time": "2024-03-01T00:00:00Z", "exit_time": _hours(6),
               "pnl_usd": "-1", "fees_usd": "0.3", "r_multiple": -0.1}
    doc = _paper_doc(fills, [carried], {"ETH/USD": "1"}, symbols=("BTC/USD", "ETH/USD"))
    assert M.compute_all(doc)["exposure"] == pytest.approx(0.6 + 0.2 - 0.0)   # [0, 6] and [8, 10]
    doc["summary"]["open_positions"]["SOL/USD"] = "3"                          # adopted: held from the start
    assert M.compute_all(doc)["exposure"] == 1.0


def test_a_book_watching_crypto_is_annualised_over_calendar_days_even_without_a_weekend():
    doc = _paper_doc([], [])
    doc["cycles"] = [{"ts": _hours(24 * d + 20), "equity_usd": str(1000 + d)} for d in range(5)]   # Mon-Fri
    assert M.compute_all(doc)["periods_per_year"] == 365
    doc["session"]["symbols"] = ["SPY", "GLD"]
    assert M.compute_all(doc)["periods_per_year"] == 252


def test_a_trade_without_a_recorded_r_is_left_out_of_the_r_averages():
    trades = [{"pnl_usd": "10", "r_multiple": None}, {"pnl_usd": "20", "r_multiple": 2.0},
              {"pnl_usd": "-5", "r_multiple": -1.0}]
    s = M.trade_stats(trades)
    assert s["avg_r"] == pytest.approx(0.5) and s["avg_win_r"] == 2.0 and s["avg_loss_r"] == -1.0
    assert s["trades"] == 3 and s["wins"] == 2 and s["pnl_usd"] == 25.0
    assert math.isnan(M.trade_stats([{"pnl_usd": "1", "r_multiple": None}])["avg_r"])
