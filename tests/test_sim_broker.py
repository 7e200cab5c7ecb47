"""SimulatedBroker (issue #2): exact Decimal accounting under random trading, Alpaca's refusal rules
with HYDRA's typed errors, and next-bar-open fills with slippage against the trader.

The property tests drive the broker with a fake ``MarketData`` (only ``next_bar_open``; prices reach
the broker through ``update_marks``, no snapshot) and keep an independent average-cost ledger in exact
rationals (``Fraction``) to check the broker's cash, equity, fees and P&L to the last digit.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hydra_engine.brokers.capabilities import DEFAULT_ASSET_SPECS
from hydra_engine.brokers.sim import SimulatedBroker
from hydra_engine.domain import UTC, AssetClass, Order, OrderStatus, OrderType, Side, TimeInForce
from hydra_engine.ports import (Broker, BrokerError, HeldQuantity, InsufficientBuyingPower, InvalidOrder,
                                InvalidTimeInForce, ShortNotAllowed, WashTradeRejected)

from .conftest import SHIPPED_DATA

D = Decimal
HOUR = timedelta(hours=1)
T0 = datetime(2024, 3, 4, tzinfo=UTC)
BPS = D("0.0001")


class FakeMarket:
    """Hourly bars keyed by open time; ``next_bar_open`` honours the port's contract (the first bar
    opening at or after ``after`` that has closed by ``now``). Records every call."""

    def __init__(self) -> None:
        self.opens: dict[str, dict[datetime, float]] = {}
        self.calls: list[tuple[str, datetime, datetime]] = []

    def set_open(self, symbol: str, bar_open: datetime, price: float) -> None:
        self.opens.setdefault(symbol, {})[bar_open] = price

    def next_bar_open(self, symbol: str, after: datetime, now: datetime):
        self.calls.append((symbol, after, now))
        for ts in sorted(self.opens.get(symbol, {})):
            if ts >= after:
                return (ts, self.opens[symbol][ts]) if ts + HOUR <= now else None
        return None

    def snapshot(self, now):  # the broker must never need one
        raise AssertionError("SimulatedBroker asked for a snapshot")


def make_broker(cash=100_000, fee_bps=10.0, slippage_bps=5.0, market=None) -> tuple[SimulatedBroker, FakeMarket]:
    market = market or FakeMarket()
    return SimulatedBroker(market, DEFAULT_ASSET_SPECS, starting_cash_usd=cash, fee_bps=fee_bps,
                           slippage_bps=slippage_bps), market


_seq = iter(range(1, 10**9))


def mk_order(symbol: str, side: Side, qty, *, at: datetime = T0 + HOUR / 2, tif: TimeInForce | None = None,
             coid: str | None = None) -> Order:
    if tif is None:
        tif = TimeInForce.GTC if DEFAULT_ASSET_SPECS[symbol].asset_class is AssetClass.CRYPTO else TimeInForce.DAY
    return Order(coid or f"t-{next(_seq)}", symbol, side, D(str(qty)), OrderType.MARKET, tif, at, "test")


def state(b: SimulatedBroker):
    return (b.account(), b.positions(), [o.client_order_id for o in b.open_orders()], b.fees_paid, b.cash)


def fill_now(b: SimulatedBroker, m: FakeMarket, order: Order, open_price: float):
    """Submit ``order`` and fill it at the next bar's open."""
    b.submit(order)
    bar = order.created_at.replace(minute=0, second=0, microsecond=0) + HOUR
    m.set_open(order.symbol, bar, open_price)
    [f] = b.poll_fills(bar + HOUR)
    return f


def test_simulated_broker_implements_the_broker_port():
    b, _ = make_broker()
    assert isinstance(b, Broker)


# =========================================================================== the accounting property
SYMBOLS = {  # symbol: (base price, qty step used by the test, max steps)
    "BTC/USD": (62_000.0, D("0.0001"), 30_000),
    "ETH/USD": (3_400.0, D("0.001"), 40_000),
    "SPY": (510.0, D("0.5"), 400),     # half-shares: fractional and whole quantities
    "LZ": (12.0, D("1"), 9_000),       # not shortable
}


@dataclass
class Ledger:
    """Independent average-cost accounting in exact rationals."""

    start: Fraction
    fees: Fraction = Fraction(0)
    realised: Fraction = Fraction(0)

    def __post_init__(self):
        self.qty: dict[str, Fraction] = {}
        self.avg: dict[str, Fraction] = {}

    def apply(self, side: Side, symbol: str, qty: Decimal, price: Decimal, fee: Decimal) -> None:
        x, p, s = Fraction(qty), Fraction(price), side.sign
        q, avg = self.qty.get(symbol, Fraction(0)), self.avg.get(symbol, Fraction(0))
        self.fees += Fraction(fee)
        if q == 0 or (q > 0) == (s > 0):
            avg = (abs(q) * avg + x * p) / (abs(q) + x)
        else:
            closed = min(x, abs(q))
            self.realised += (p - avg) * closed * (1 if q > 0 else -1)
            if x > abs(q):
                avg = p  # flipped: the remainder opened at this price
        q += s * x
        self.qty[symbol], self.avg[symbol] = q, avg

    def equity(self, marks: dict[str, Decimal]) -> Fraction:
        unrealised = sum((Fraction(marks[s]) - self.avg[s]) * q for s, q in self.qty.items() if q)
        return self.start - self.fees + self.realised + unrealised


step = st.fixed_dictionaries({
    "moves": st.fixed_dictionaries({s: st.integers(-400, 400) for s in SYMBOLS}),   # bps per hour
    "gap": st.fixed_dictionaries({s: st.integers(-150, 150) for s in SYMBOLS}),     # open vs mark, bps
    "symbol": st.sampled_from(sorted(SYMBOLS)),
    "side": st.sampled_from([Side.BUY, Side.SELL]),
    "steps": st.integers(1, 40_000),
    "qty_mode": st.sampled_from(["steps", "steps", "all", "all_plus"]),  # all_plus: cover/close and flip
})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fee_bps=st.sampled_from([0.0, 1.0, 10.0, 25.5]), slippage_bps=st.sampled_from([0.0, 5.0, 12.5]),
       steps=st.lists(step, min_size=1, max_size=30))
def test_accounting_is_exact_under_random_trading(fee_bps, slippage_bps, steps):
    start = D("100000")
    b, m = make_broker(start, fee_bps, slippage_bps)
    ledger = Ledger(Fraction(start))
    fee_rate, slip = D(str(fee_bps)) * BPS, D(str(slippage_bps)) * BPS
    prices = {s: v[0] for s, v in SYMBOLS.items()}
    fee_sum = D(0)
    for k, st_ in enumerate(steps):
        # prices move; the broker only learns them through update_marks
        prices = {s: round(p * (1 + st_["moves"][s] / 10_000), 2) for s, p in prices.items()}
        b.update_marks(prices)
        marks = {s: D(str(p)) for s, p in prices.items()}

        sym, side = st_["symbol"], st_["side"]
        _, step_qty, max_steps = SYMBOLS[sym]
        held = b.positions()[sym].qty if sym in b.positions() else D(0)
        qty = step_qty * (st_["steps"] % max_steps + 1)
        if held and st_["qty_mode"] != "steps":
            qty = abs(held) + (qty if st_["qty_mode"] == "all_plus" else 0)
        at = T0 + k * 2 * HOUR + HOUR / 2
        order = mk_order(sym, side, qty, at=at)
        before = state(b)
        acct = before[0]
        try:
            b.submit(order)
        except BrokerError as exc:
            assert state(b) == before, f"refused order {order} changed the broker"
            spec = DEFAULT_ASSET_SPECS[sym]
            if isinstance(exc, InsufficientBuyingPower):
                assert qty * marks[sym] * (1 + slip + fee_rate) > acct.buying_power_usd
            elif isinstance(exc, ShortNotAllowed):
                assert side is Side.SELL and qty > max(D(0), held)
                assert (spec.asset_class is AssetClass.CRYPTO or not spec.shortable
                        or qty != qty.to_integral_value())
            elif isinstance(exc, HeldQuantity):
                assert side is Side.SELL and held > 0 and qty > held
            else:
                raise AssertionError(f"unexpected refusal {exc!r}")
            continue
        # accepted: what opens or grows exposure must have fitted the buying power
        opening_qty = qty if (held >= 0) == (side is Side.BUY) else max(D(0), qty - abs(held))
        if opening_qty:
            assert opening_qty * marks[sym] * (1 + slip + fee_rate) <= acct.buying_power_usd, \
                f"{side.value} {qty} {sym} with {held} held accepted beyond buying power {acct.buying_power_usd}"
        # the order fills at the open of the next bar, never before that bar closed
        bar = at.replace(minute=0) + HOUR
        open_price = round(prices[sym] * (1 + st_["gap"][sym] / 10_000), 2)
        m.set_open(sym, bar, open_price)
        assert b.poll_fills(bar + HOUR - timedelta(seconds=1)) == []
        fills = b.poll_fills(bar + HOUR)
        assert b.open_orders() == []
        if not fills:  # refused at fill time (the open gapped beyond the buying power)
            assert b.get_order(order.client_order_id).status is OrderStatus.REJECTED
            assert (b.account(), b.positions(), b.fees_paid) == (acct, before[1], before[3])
            continue
        [f] = fills
        expect_price = DEFAULT_ASSET_SPECS[sym].round_price(D(str(open_price)) * (1 + side.sign * slip),
                                                            ROUND_CEILING if side.sign > 0 else ROUND_FLOOR)
        expect_fee = (qty * expect_price * fee_rate).quantize(D("0.000001"), rounding=ROUND_HALF_UP)
        assert (f.ts, f.price, f.qty, f.fee_usd, f.side) == (bar, expect_price, qty, expect_fee, side)
        assert b.get_order(order.client_order_id).status is OrderStatus.FILLED
        fee_sum += expect_fee
        ledger.apply(side, sym, qty, f.price, f.fee_usd)

        acct = b.account()
        positions = b.positions()
        assert {s: Fraction(p.qty) for s, p in positions.items()} == {s: q for s, q in ledger.qty.items() if q}
        market_value = sum((p.qty * marks[s] for s, p in positions.items()), D(0))
        assert acct.equity_usd == acct.cash_usd + market_value                      # exact Decimal
        assert Fraction(acct.equity_usd) == ledger.equity(marks)                    # exact P&L identity
        assert b.fees_paid == fee_sum and Fraction(fee_sum) == ledger.fees
        assert acct.buying_power_usd >= 0
        gross = sum((abs(p.qty) * marks[s] for s, p in positions.items()), D(0))   # shorts count at |qty|
        assert acct.buying_power_usd == max(D(0), acct.equity_usd - gross)
        if all(q >= 0 for q in ledger.qty.values()):  # long-only book: buying power is the cash
            assert acct.cash_usd >= 0 and acct.buying_power_usd == acct.cash_usd


# =========================================================================== the refusal rules
def test_crypto_short_is_refused():
    b, _ = make_broker()
    b.update_marks({"BTC/USD": 62_000.0})
    before = state(b)
    with pytest.raises(ShortNotAllowed, match="crypto cannot be sold short") as err:
        b.submit(mk_order("BTC/USD", Side.SELL, "0.01"))
    assert err.value.symbol == "BTC/USD" and err.value.client_order_id.startswith("t-")
    assert state(b) == before


def test_selling_more_crypto_than_held_is_refused():
    b, m = make_broker()
    b.update_marks({"ETH/USD": 3_400.0})
    fill_now(b, m, mk_order("ETH/USD", Side.BUY, "0.5"), 3_400.0)
    before = state(b)
    with pytest.raises(ShortNotAllowed, match="0.5 available"):
        b.submit(mk_order("ETH/USD", Side.SELL, "0.6", at=T0 + 3 * HOUR))
    assert state(b) == before
    # ... and a second sell while the first is still working counts the reserved quantity
    b.submit(mk_order("ETH/USD", Side.SELL, "0.3", at=T0 + 3 * HOUR))
    with pytest.raises(ShortNotAllowed):
        b.submit(mk_order("ETH/USD", Side.SELL, "0.3", at=T0 + 3 * HOUR))


def test_fractional_equity_short_is_refused_but_whole_shares_are_accepted():
    b, _ = make_broker()
    b.update_marks({"SPY": 510.0})
    with pytest.raises(ShortNotAllowed, match="fractional short"):
        b.submit(mk_order("SPY", Side.SELL, "1.5"))
    accepted = b.submit(mk_order("SPY", Side.SELL, "2"))
    assert accepted.status is OrderStatus.ACCEPTED


def test_non_shortable_equity_short_is_refused():
    assert DEFAULT_ASSET_SPECS["LZ"].shortable is False
    b, _ = make_broker()
    b.update_marks({"LZ": 12.0})
    with pytest.raises(ShortNotAllowed, match="LZ is not shortable"):
        b.submit(mk_order("LZ", Side.SELL, "10"))
    assert b.open_orders() == []


def test_selling_more_equity_than_held_is_held_quantity():
    b, m = make_broker()
    b.update_marks({"SPY": 510.0})
    fill_now(b, m, mk_order("SPY", Side.BUY, "5"), 510.0)
    with pytest.raises(HeldQuantity, match="available: 5"):
        b.submit(mk_order("SPY", Side.SELL, "6", at=T0 + 3 * HOUR))


def test_insufficient_buying_power_is_refused():
    b, _ = make_broker(cash=100_000)
    b.update_marks({"BTC/USD": 62_000.0})
    before = state(b)
    with pytest.raises(InsufficientBuyingPower, match="need \\$124"):
        b.submit(mk_order("BTC/USD", Side.BUY, "2"))
    assert state(b) == before
    b.submit(mk_order("BTC/USD", Side.BUY, "1"))  # $62k fits ...
    with pytest.raises(InsufficientBuyingPower):   # ... but not another $62k while it is working
        b.submit(mk_order("BTC/USD", Side.BUY, "1"))


def test_buy_covering_a_short_and_opening_a_long_needs_buying_power():
    b, m = make_broker(cash=10_000, fee_bps=0, slippage_bps=0)
    b.update_marks({"SPY": 100.0})
    fill_now(b, m, mk_order("SPY", Side.SELL, "10"), 100.0)  # short $1,000
    before = state(b)
    # buys back the 10 short shares and opens a 990-share ($99,000) long on $10,000 of equity
    with pytest.raises(InsufficientBuyingPower):
        b.submit(mk_order("SPY", Side.BUY, "1000", at=T0 + 3 * HOUR))
    assert state(b) == before
    fill_now(b, m, mk_order("SPY", Side.BUY, "10", at=T0 + 5 * HOUR), 100.0)  # a plain cover is fine
    assert b.positions() == {}


def test_opposite_working_order_is_a_wash_trade():
    b, _ = make_broker()
    b.update_marks({"SPY": 510.0})
    b.submit(mk_order("SPY", Side.BUY, "3"))
    with pytest.raises(WashTradeRejected, match="opposite buy order"):
        b.submit(mk_order("SPY", Side.SELL, "1"))
    b.submit(mk_order("SPY", Side.BUY, "1"))  # the same side is not a wash
    assert len(b.open_orders()) == 2


def test_duplicate_client_order_id_is_invalid():
    b, _ = make_broker()
    b.update_marks({"SPY": 510.0})
    b.submit(mk_order("SPY", Side.BUY, "1", coid="dup-1"))
    with pytest.raises(InvalidOrder, match="dup-1 must be unique"):
        b.submit(mk_order("SPY", Side.BUY, "1", coid="dup-1"))
    assert [o.client_order_id for o in b.open_orders()] == ["dup-1"]


def test_day_time_in_force_on_crypto_is_refused():
    b, _ = make_broker()
    b.update_marks({"BTC/USD": 62_000.0})
    with pytest.raises(InvalidTimeInForce, match="time_in_force day") as err:
        b.submit(mk_order("BTC/USD", Side.BUY, "0.01", tif=TimeInForce.DAY))
    assert isinstance(err.value, InvalidOrder)
    b.submit(mk_order("BTC/USD", Side.BUY, "0.01", tif=TimeInForce.GTC))


@pytest.mark.parametrize("symbol,qty,why", [("BTC/USD", "0.00005", "multiple of 0.0001"),
                                            ("ETH/USD", "0", "positive"), ("SPY", "-1", "positive")])
def test_quantities_off_the_increment_are_invalid(symbol, qty, why):
    b, _ = make_broker()
    b.update_marks({symbol: 100.0})
    with pytest.raises(InvalidOrder, match=why):
        b.submit(mk_order(symbol, Side.BUY, qty))


def test_non_market_orders_and_unknown_symbols_are_invalid():
    b, _ = make_broker()
    b.update_marks({"SPY": 510.0})
    limit = mk_order("SPY", Side.BUY, "1")
    limit.order_type, limit.limit_price = OrderType.LIMIT, D("500")
    with pytest.raises(InvalidOrder, match="market orders only"):
        b.submit(limit)
    with pytest.raises(InvalidOrder, match="unknown asset 'DOGE/USD'"):
        b.submit(Order("doge-1", "DOGE/USD", Side.BUY, D(1), OrderType.MARKET, TimeInForce.GTC, T0, "test"))


# =========================================================================== fill timing and price
def test_fill_at_next_bar_open_with_slippage_against_the_trader_fake_market():
    b, m = make_broker(fee_bps=10, slippage_bps=5)
    b.update_marks({"BTC/USD": 62_000.0, "ETH/USD": 3_400.0})
    at = T0 + timedelta(hours=10, minutes=30)
    m.set_open("BTC/USD", T0 + timedelta(hours=10), 61_000.0)   # opened before the order: not used
    m.set_open("BTC/USD", T0 + timedelta(hours=11), 62_100.0)
    m.set_open("BTC/USD", T0 + timedelta(hours=12), 65_000.0)
    b.submit(mk_order("BTC/USD", Side.BUY, "0.1", at=at, coid="buy-1"))
    assert b.poll_fills(at) == []
    assert b.poll_fills(T0 + timedelta(hours=11, minutes=59, seconds=59)) == []  # bar still open
    assert b.get_order("buy-1").status is OrderStatus.ACCEPTED
    [f] = b.poll_fills(T0 + timedelta(hours=12))
    assert m.calls[-1] == ("BTC/USD", at, T0 + timedelta(hours=12))
    assert f.ts == T0 + timedelta(hours=11)
    assert f.price == D("62132")           # 62,100 × 1.0005 = 62,131.05 → up to the $1 tick (against the buyer)
    assert f.price > D("62100")            # against the buyer
    assert f.fee_usd == D("6.213200")      # 10 bps of 0.1 × 62,132
    assert b.poll_fills(T0 + timedelta(hours=20)) == []  # filled once

    m.set_open("ETH/USD", T0 + timedelta(hours=13), 3_400.0)
    fill_now(b, m, mk_order("ETH/USD", Side.BUY, "1", at=T0 + timedelta(hours=12, minutes=5)), 3_400.0)
    sell = mk_order("ETH/USD", Side.SELL, "1", at=T0 + timedelta(hours=14))  # exactly at a bar open
    b.submit(sell)
    m.set_open("ETH/USD", T0 + timedelta(hours=14), 3_500.0)
    [f] = b.poll_fills(T0 + timedelta(hours=15))
    assert f.ts == T0 + timedelta(hours=14)            # the bar opening *at* the order time counts
    assert f.price == D("3498.2")                      # 3,500 × 0.9995 = 3,498.25 → down to the 0.1 tick
    assert f.price < D("3500")                         # against the seller


def test_fill_timing_and_price_on_real_replay_data():
    from hydra_engine.data.replay import ReplayMarketData

    market = ReplayMarketData(SHIPPED_DATA, ["BTC/USD", "SPY"], start=None, end=None)
    b = SimulatedBroker(market, DEFAULT_ASSET_SPECS, starting_cash_usd=100_000, fee_bps=10, slippage_bps=5)
    sent = datetime(2024, 3, 5, 10, 30, tzinfo=UTC)
    snap = market.snapshot(sent)
    b.update_marks({s: snap.price(s) for s in snap.bars})
    b.submit(mk_order("BTC/USD", Side.BUY, "0.01", at=sent, coid="real-1"))

    bar_open = datetime(2024, 3, 5, 11, tzinfo=UTC)
    assert b.poll_fills(bar_open + HOUR - timedelta(seconds=1)) == []   # 11:00 bar not closed yet
    after = market.snapshot(bar_open + HOUR).bars["BTC/USD"]
    assert int(after.ts[-1]) == int(bar_open.timestamp())
    open_price = D(str(float(after.open[-1])))
    [f] = b.poll_fills(bar_open + HOUR)
    assert f.ts == bar_open
    assert f.price == DEFAULT_ASSET_SPECS["BTC/USD"].round_price(open_price * D("1.0005"), ROUND_CEILING)
    assert f.price >= open_price
    assert f.fee_usd == (f.qty * f.price * D("0.001")).quantize(D("0.000001"), rounding=ROUND_HALF_UP)

    # an equity order sent on a Saturday fills at Monday's open, once Monday's daily bar has closed
    saturday = datetime(2024, 3, 9, 12, tzinfo=UTC)
    b.update_marks({"SPY": market.snapshot(saturday).price("SPY")})
    b.submit(mk_order("SPY", Side.BUY, "1", at=saturday, coid="real-2"))
    monday_open, monday_close = datetime(2024, 3, 11, 13, 30, tzinfo=UTC), datetime(2024, 3, 11, 20, tzinfo=UTC)
    assert b.poll_fills(monday_close - timedelta(seconds=1)) == []
    [f] = b.poll_fills(monday_close)
    assert (f.client_order_id, f.ts) == ("real-2", monday_open)
    monday = market.snapshot(monday_close).bars["SPY"]
    assert int(monday.ts[-1]) == int(monday_open.timestamp())
    assert f.price == DEFAULT_ASSET_SPECS["SPY"].round_price(D(str(float(monday.open[-1]))) * D("1.0005"), ROUND_CEILING)


def test_cancel_removes_a_working_order():
    b, m = make_broker()
    b.update_marks({"SPY": 510.0})
    b.submit(mk_order("SPY", Side.BUY, "1", coid="c-1"))
    b.cancel("c-1")
    assert b.open_orders() == [] and b.get_order("c-1").status is OrderStatus.CANCELED
    m.set_open("SPY", T0 + HOUR, 510.0)
    assert b.poll_fills(T0 + 5 * HOUR) == []
    b.submit(mk_order("SPY", Side.SELL, "1"))  # no longer a wash trade once cancelled


def test_state_round_trip():
    b, m = make_broker()
    b.update_marks({"ETH/USD": 3_400.0})
    fill_now(b, m, mk_order("ETH/USD", Side.BUY, "1.5"), 3_400.0)
    b2, _ = make_broker()
    b2.load_state(b.to_state())
    b2.update_marks({"ETH/USD": 3_400.0})
    assert b2.account() == b.account() and b2.positions() == b.positions() and b2.fees_paid == b.fees_paid


# =========================================================================== marks
def _one_pass(b: SimulatedBroker, marks: dict[str, Decimal]) -> tuple[Decimal, Decimal]:
    """Equity and buying power summed afresh from the positions and the expected marks."""
    mv = gross = D(0)
    for s, p in b.positions().items():
        mark = marks.get(s, p.avg_entry_price)
        mv += p.qty * mark
        gross += abs(p.qty) * mark
    equity = b.cash + mv
    return equity, max(D(0), equity - gross)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), 0.0, -3.0])
def test_marks_keep_the_last_valid_price_and_the_account_follows_held_marks_only(bad):
    b, m = make_broker(slippage_bps=0.0)
    b.update_marks({"BTC/USD": 62_000.0, "ETH/USD": 3_400.0, "SPY": 510.0})
    fill_now(b, m, mk_order("BTC/USD", Side.BUY, "0.5"), 62_000.0)
    fill_now(b, m, mk_order("ETH/USD", Side.BUY, "2", at=T0 + 5 * HOUR), 3_400.0)
    marks = {"BTC/USD": D("62000.0"), "ETH/USD": D("3400.0")}
    assert (b.account().equity_usd, b.account().buying_power_usd) == _one_pass(b, marks)

    # every price valid: held marks move, the unheld one is remembered for later orders
    b.update_marks({"BTC/USD": 62_100.5, "ETH/USD": 3_390.25, "SPY": 512.0})
    marks = {"BTC/USD": D("62100.5"), "ETH/USD": D("3390.25")}
    assert (b.account().equity_usd, b.account().buying_power_usd) == _one_pass(b, marks)

    # a bad price keeps the last valid one; the other symbols still move
    b.update_marks({"BTC/USD": bad, "ETH/USD": 3_395.5, "SPY": bad})
    marks["ETH/USD"] = D("3395.5")
    assert (b.account().equity_usd, b.account().buying_power_usd) == _one_pass(b, marks)
    assert b._mark_of("SPY") == D("512.0") and b._mark_of("BTC/USD") == D("62100.5")

    # only an unheld price changed: the account is the cached one, and still right
    before = b.account()
    b.update_marks({"BTC/USD": 62_100.5, "ETH/USD": 3_395.5, "SPY": 515.0})
    assert b.account() is before and (before.equity_usd, before.buying_power_usd) == _one_pass(b, marks)

    # a position closes: its later marks no longer move the account
    fill_now(b, m, mk_order("BTC/USD", Side.SELL, "0.5", at=T0 + 9 * HOUR), 62_000.0)
    del marks["BTC/USD"]
    after_close = b.account()
    assert (after_close.equity_usd, after_close.buying_power_usd) == _one_pass(b, marks)
    b.update_marks({"BTC/USD": 70_000.0, "ETH/USD": 3_395.5, "SPY": 515.0})
    assert b.account() is after_close

    # re-opened: the buying-power check and the account use the newest BTC price seen while flat
    fill_now(b, m, mk_order("BTC/USD", Side.BUY, "0.25", at=T0 + 13 * HOUR), 70_000.0)
    marks["BTC/USD"] = D("70000.0")
    assert (b.account().equity_usd, b.account().buying_power_usd) == _one_pass(b, marks)


def test_submit_returns_an_accepted_copy_with_every_field_kept():
    from dataclasses import replace
    b, _ = make_broker()
    b.update_marks({"SPY": 510.0})
    order = replace(mk_order("SPY", Side.BUY, "2"), limit_price=D("1.5"), stop_price=D("2.5"), trail_percent=D("3"),
                    take_profit_price=D("600"), stop_loss_price=D("400"), reject_reason="x", purpose="exit")
    accepted = b.submit(order)
    assert accepted is not order and order.status is OrderStatus.NEW and order.broker_order_id is None
    assert accepted == replace(order, status=OrderStatus.ACCEPTED, broker_order_id="sim-1")


def test_a_day_order_after_the_last_bar_of_its_data_expires_and_one_before_a_long_weekend_fills():
    """SPY's data ends on Thursday: a DAY order sent on Friday can never fill and expires a day later,
    freeing whoever waited on it. A GLD order sent mid-session on the Friday before Labor Day fills at
    Tuesday's open (four days and more later: a fixed wait would have expired it). A crypto GTC order
    keeps working."""

    class EndingMarket(FakeMarket):   # daily session bars: 13:30 -> 20:00 UTC
        def next_bar_open(self, symbol, after, now):
            ts = min((t for t in self.opens.get(symbol, {}) if t >= after), default=None)
            return (ts, self.opens[symbol][ts]) if ts is not None and ts + timedelta(hours=6.5) <= now else None

        def last_bar_times(self, symbol):
            last = max(self.opens.get(symbol, {}), default=None)
            return (last, last + timedelta(hours=6.5)) if last else None

    b, m = make_broker(market=EndingMarket())
    b.update_marks({"SPY": 500.0, "BTC/USD": 60_000.0, "GLD": 190.0})
    m.set_open("SPY", datetime(2020, 9, 3, 13, 30, tzinfo=UTC), 345.0)          # the data's last SPY bar
    friday = datetime(2020, 9, 4, 15, tzinfo=UTC)
    for o in (mk_order("SPY", Side.BUY, "2", at=friday, coid="spy-day"),
              mk_order("GLD", Side.BUY, "2", at=friday, coid="gld-day"),
              mk_order("BTC/USD", Side.BUY, "0.01", at=friday, coid="btc-gtc")):
        b.submit(o)
    m.set_open("GLD", datetime(2020, 9, 4, 13, 30, tzinfo=UTC), 191.0)          # opened before the order
    m.set_open("GLD", datetime(2020, 9, 8, 13, 30, tzinfo=UTC), 190.5)          # Tuesday: the next session
    assert b.poll_fills(friday + timedelta(hours=23)) == [] and b.get_order("spy-day").status.is_open
    assert b.poll_fills(friday + timedelta(days=1)) == []
    expired = b.get_order("spy-day")
    assert expired.status is OrderStatus.EXPIRED and "no SPY session to fill in" in expired.reject_reason
    for hour in range(25, 24 * 4 + 8):                                           # hourly polls to Tue 23:00
        fills = b.poll_fills(friday + timedelta(hours=hour))
        if fills:
            break
    assert [f.client_order_id for f in fills] == ["gld-day"] and fills[0].ts == datetime(2020, 9, 8, 13, 30, tzinfo=UTC)
    assert [o.client_order_id for o in b.open_orders()] == ["btc-gtc"]
    assert b.poll_fills(friday + timedelta(days=30)) == [] and b.get_order("btc-gtc").status.is_open
