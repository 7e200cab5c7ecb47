"""Funding (issue #20): the real Binance settlement history as a schedule, and one settlement's amount
and sign against hand computation and the contract examples (fundingRate, income FUNDING_FEE)."""
from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal

import pytest

from hydra_engine.domain import UTC
from hydra_engine.perp.funding import (FundingDataError, load_funding_history, nominal_time,
                                       schedule_from_binance_rows, settle)
from hydra_engine.ports import BrokerPosition

from .conftest import PROJECT_ROOT

D = Decimal
EXAMPLES = PROJECT_ROOT.parent / "shared" / "contracts" / "binance" / "examples"


def example(name: str):
    path = EXAMPLES / name
    if not path.is_file():
        pytest.skip(f"contract example {path} not found")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def btc_funding(shared_data):
    return load_funding_history("BTCUSDT", shared_data / "crypto_perp" / "binance_usdm")


def test_real_history_is_sorted_nominal_and_exact(btc_funding):
    times = [s.ts for s in btc_funding.settlements]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert all(t.microsecond == 0 and t.tzinfo is UTC for t in times)
    assert all(s.rate == s.rate.quantize(D("0.00000001")) for s in btc_funding.settlements)
    day = btc_funding.between(datetime(2024, 2, 29, 23, tzinfo=UTC), datetime(2024, 3, 1, 16, tzinfo=UTC))
    assert [(s.ts.hour, s.rate) for s in day] == [(0, D("0.00053322")), (8, D("0.00064824")), (16, D("0.00046010"))]
    # the cut data has no mark at settlement (the one-year mark file starts after the cut)
    assert all(s.mark_price is None for s in day)


def test_millisecond_jitter_is_stripped_but_kept(btc_funding):
    s = btc_funding.at(datetime(2021, 9, 7, 16, tzinfo=UTC))
    assert s is not None and s.rate == D("0.00022977")
    assert s.recorded_at == datetime(2021, 9, 7, 16, 0, 0, 1000, tzinfo=UTC)
    assert nominal_time(s.recorded_at) == s.ts


def test_a_long_pays_positive_funding_and_a_short_receives_it():
    # 0.1 BTC at a mark of 61,203.3 and a rate of 0.053322 %: 6,120.33 x 0.00053322 = 3.2634823626 USDT
    ts = datetime(2024, 3, 1, tzinfo=UTC)
    long_ = settle(BrokerPosition("BTCUSDT", D("0.1"), D("61000")), D("0.00053322"), D("61203.3"), ts)
    short = settle(BrokerPosition("BTCUSDT", D("-0.1"), D("61000")), D("0.00053322"), D("61203.3"), ts)
    assert long_.amount_usd == D("-3.2634823626")
    assert short.amount_usd == D("3.2634823626")
    assert (long_.position_qty, long_.mark_price, long_.rate, long_.ts) == (D("0.1"), D("61203.3"), D("0.00053322"), ts)
    # negative funding: the long receives
    assert settle(BrokerPosition("BTCUSDT", D("0.1"), D("1")), D("-0.0001"), D("50000"), ts).amount_usd == D("0.5")


def test_binance_funding_rows_and_the_income_example_agree_on_sign_time_and_units():
    schedules = schedule_from_binance_rows(example("fundingRate.json"))
    s = schedules["BTCUSDT"].at(datetime.fromtimestamp(1570636800, UTC))
    assert (s.rate, s.mark_price) == (D("0.00010000"), D("34287.54619963"))
    income = example("income.funding_fee.constructed_from_documented_schema.json")[0]
    assert income["incomeType"] == "FUNDING_FEE" and income["asset"] == "USDT"
    # the income row is at the same settlement time; its negative income is a payment, the sign a long at a
    # positive rate gets from settle(); the numbers of the constructed row are illustrative, so only
    # sign, time and 8-decimal USDT units are compared
    payment = settle(BrokerPosition("BTCUSDT", D("0.001"), D("0")), s.rate, s.mark_price, s.ts)
    assert int(payment.ts.timestamp() * 1000) == income["time"]
    assert (payment.amount_usd < 0) == (D(income["income"]) < 0)
    assert D(income["income"]) == D(income["income"]).quantize(D("0.00000001"))
    assert payment.amount_usd == D("-0.003428754619963")


def test_empty_mark_is_no_mark_and_bad_rates_are_refused():
    rows = [{"symbol": "BTCUSDT", "fundingRate": "0.00010000", "fundingTime": 1570608000000, "markPrice": ""}]
    assert schedule_from_binance_rows(rows)["BTCUSDT"].settlements[0].mark_price is None
    with pytest.raises(FundingDataError, match="more than 8 decimals"):
        schedule_from_binance_rows([{**rows[0], "fundingRate": "0.000100001"}])
    with pytest.raises(FundingDataError, match="two settlements"):
        schedule_from_binance_rows(rows + rows)


def test_settle_refuses_a_bad_mark_and_naive_time():
    pos = BrokerPosition("BTCUSDT", D("1"), D("1"))
    with pytest.raises(ValueError, match="mark price"):
        settle(pos, D("0.0001"), D("0"), datetime(2024, 1, 1, tzinfo=UTC))
    with pytest.raises(ValueError, match="UTC"):
        settle(pos, D("0.0001"), D("1"), datetime(2024, 1, 1))
