"""SimulatedPerpVenue (issue #20): funding settled exactly once from the real BTC history, a long
liquidated by a real wick, reduce-only refusals, restarts between settlements, and bookkeeping that
conserves equity apart from fees and funding."""
from __future__ import annotations

import json
from datetime import datetime, timedelta
from decimal import Decimal

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hydra_engine.domain import UTC, Order, OrderStatus, OrderType, Side, TimeInForce
from hydra_engine.perp.bars import PerpBars
from hydra_engine.perp.funding import FundingSchedule, FundingSettlement, load_funding_history
from hydra_engine.perp.margin import stop_inside_liquidation
from hydra_engine.perp.venue import LeverageNotAllowed, ReduceOnlyRejected, SimulatedPerpVenue
from hydra_engine.ports import Broker, InsufficientBuyingPower, InvalidOrder

D = Decimal
HOUR = timedelta(hours=1)
SYM = "BTCUSDT"


@pytest.fixture(scope="module")
def perp_dir(shared_data):
    return shared_data / "crypto_perp" / "binance_usdm"


@pytest.fixture(scope="module")
def btc_funding(perp_dir):
    return {SYM: load_funding_history(SYM, perp_dir)}


def real_bars(perp_dir, start: datetime, end: datetime) -> PerpBars:
    return PerpBars.from_parquet({SYM: perp_dir / "klines" / "BTCUSDT_1h.parquet"}, HOUR, start=start, end=end)


def make_venue(bars, funding, leverage=10, balance="10000", **kw) -> SimulatedPerpVenue:
    venue = SimulatedPerpVenue(bars, funding, starting_balance_usdt=balance, bars=bars, **kw)
    venue.set_leverage(SYM, leverage)
    return venue


def order(coid, side, qty, at, reduce_only=False, symbol=SYM) -> Order:
    return Order(coid, symbol, side, D(qty), OrderType.MARKET, TimeInForce.GTC, at, "test", reduce_only=reduce_only)


# --------------------------------------------------------------------------- funding on real history
T_OPEN = datetime(2024, 2, 29, 23, tzinfo=UTC)
T_CLOSE = datetime(2024, 3, 1, 17, tzinfo=UTC)
# -qty x (open of the bar starting at the settlement) x rate, for 0.1 BTC long, by hand:
#   00:00  6,120.33 x 0.00053322 = 3.2634823626     08:00  6,148.59 x 0.00064824 = 3.9857619816
#   16:00  6,133.54 x 0.00046010 = 2.8220417540
LONG_PAYS = [D("-3.2634823626"), D("-3.9857619816"), D("-2.8220417540")]


def round_trip(venue, side: Side, qty="0.1"):
    venue.update_marks({SYM: 61290.4}, T_OPEN)
    venue.submit(order("open", side, qty, T_OPEN))
    opened = venue.poll_fills(T_OPEN + HOUR)
    venue.update_marks({SYM: 61490.0}, T_CLOSE)
    venue.submit(order("close", side.opposite(), qty, T_CLOSE, reduce_only=True))
    closed = venue.poll_fills(T_CLOSE + HOUR)
    return opened, closed


@pytest.mark.parametrize("leverage", [2, 10])
def test_a_long_pays_three_settlements_on_real_btc_funding(perp_dir, btc_funding, leverage):
    """2024-03-01, BTCUSDT: 0.1 BTC long from the 2024-02-29 23:00 open to the 2024-03-01 17:00 open pays
    the 00:00, 08:00 and 16:00 settlements, the same at 2x and 10x (never times leverage)."""
    venue = make_venue(real_bars(perp_dir, T_OPEN, T_CLOSE + 2 * HOUR), btc_funding, leverage=leverage)
    opened, closed = round_trip(venue, Side.BUY)
    assert [f.price for f in opened + closed] == [D("61321.1"), D("61459.2")]   # open +/- 5 bps, tick against us
    paid = [r.payment for r in venue.funding_log]
    assert [p.amount_usd for p in paid] == LONG_PAYS
    assert [p.ts.hour for p in paid] == [0, 8, 16] and {r.mark_source for r in venue.funding_log} == {"bar_open"}
    trade = venue.closed_trades[-1]
    assert trade.funding_usdt == sum(LONG_PAYS) == D("-10.0712860982")
    fees = D("3.06605500") + D("3.07296000")               # 0.05 % of 6,132.11 and of 6,145.92
    price_pnl = D("0.1") * (D("61459.2") - D("61321.1"))   # 13.81
    assert (trade.price_pnl_usdt, trade.fees_usdt) == (price_pnl, fees)
    assert trade.pnl_usdt == price_pnl - fees + sum(LONG_PAYS)
    # paid once: the balance moved by exactly the trade's P&L (funding is not charged again at exit)
    assert venue.account().cash_usd == D("10000") + trade.pnl_usdt
    assert venue.positions() == {}


def test_a_short_receives_the_same_settlements(perp_dir, btc_funding):
    venue = make_venue(real_bars(perp_dir, T_OPEN, T_CLOSE + 2 * HOUR), btc_funding, leverage=5)
    round_trip(venue, Side.SELL)
    assert [r.payment.amount_usd for r in venue.funding_log] == [-x for x in LONG_PAYS]
    assert venue.closed_trades[-1].funding_usdt == D("10.0712860982")


def test_funding_moves_the_isolated_wallet_and_settle_is_idempotent(perp_dir, btc_funding):
    venue = make_venue(real_bars(perp_dir, T_OPEN, T_CLOSE + 2 * HOUR), btc_funding)
    venue.update_marks({SYM: 61290.4}, T_OPEN)
    venue.submit(order("open", Side.BUY, "0.1", T_OPEN))
    venue.poll_fills(T_OPEN + HOUR)                         # fills at 23:00, then pays the 00:00 settlement
    margin0 = venue.perp_position(SYM).isolated_margin_usdt
    assert margin0 == D("613.211") + LONG_PAYS[0]           # 6,132.11 / 10, less the first payment
    liq0 = venue.liquidation_price(SYM)
    now = datetime(2024, 3, 1, 9, tzinfo=UTC)
    assert [p.amount_usd for p in venue.settle_funding(now)] == LONG_PAYS[1:2] and len(venue.funding_log) == 2
    assert venue.settle_funding(now) == [] and len(venue.funding_log) == 2
    pos = venue.perp_position(SYM)
    assert pos.isolated_margin_usdt == D("613.211") + sum(LONG_PAYS[:2]) == D("613.211") + pos.funding_usdt
    assert venue.liquidation_price(SYM) > liq0              # paying funding brings liquidation nearer


def test_funding_is_never_counted_twice_across_a_restart(perp_dir, btc_funding):
    bars = real_bars(perp_dir, T_OPEN, T_CLOSE + 2 * HOUR)
    first = make_venue(bars, btc_funding)
    first.update_marks({SYM: 61290.4}, T_OPEN)
    first.submit(order("open", Side.BUY, "0.1", T_OPEN))
    first.poll_fills(datetime(2024, 3, 1, 4, tzinfo=UTC))   # the 00:00 settlement is paid
    state = json.loads(json.dumps(first.to_state()))
    second = make_venue(bars, btc_funding)
    second.load_state(state)
    assert second.settle_funding(datetime(2024, 3, 1, 4, tzinfo=UTC)) == []
    assert [p.amount_usd for p in second.settle_funding(datetime(2024, 3, 1, 12, tzinfo=UTC))] == LONG_PAYS[1:2]
    second.update_marks({SYM: 61490.0}, T_CLOSE)
    second.submit(order("close", Side.SELL, "0.1", T_CLOSE, reduce_only=True))
    second.poll_fills(T_CLOSE + HOUR)
    assert second.closed_trades[-1].funding_usdt == sum(LONG_PAYS)
    # the same as a venue that never restarted
    straight = make_venue(bars, btc_funding)
    round_trip(straight, Side.BUY)
    assert second.account() == straight.account()


def test_an_order_dated_before_the_clock_is_refused(perp_dir, btc_funding):
    venue = make_venue(real_bars(perp_dir, T_OPEN, T_CLOSE), btc_funding)
    venue.update_marks({SYM: 61290.4}, T_OPEN + 2 * HOUR)
    with pytest.raises(InvalidOrder, match="before the venue's clock"):
        venue.submit(order("late", Side.BUY, "0.1", T_OPEN))


# --------------------------------------------------------------------------- liquidation on a real wick
WICK_T = datetime(2021, 9, 7, 14, tzinfo=UTC)   # El Salvador day: BTCUSDT 15:00 bar low 42,088 from a 47,367 open


@pytest.fixture
def wick_venue(perp_dir, btc_funding):
    bars = real_bars(perp_dir, datetime(2021, 9, 7, tzinfo=UTC), datetime(2021, 9, 8, tzinfo=UTC))
    return lambda leverage: make_venue(bars, btc_funding, leverage=leverage)


def test_a_10x_long_is_liquidated_by_the_2021_09_07_wick(wick_venue):
    venue = wick_venue(10)
    venue.update_marks({SYM: 50648.47}, WICK_T)
    venue.submit(order("long", Side.BUY, "0.1", WICK_T))
    [entry] = venue.poll_fills(WICK_T + HOUR)   # 14:00 bar: low 46,623 does not reach it
    assert entry.price == D("50673.8") and venue.positions()[SYM].qty == D("0.1")
    # LP = (0.1 x 50,673.8 - 506.738) / (0.1 x (1 - 0.004)) = 4,560.642 / 0.0996 = 45,789.578...
    lp = venue.liquidation_price(SYM)
    assert lp == D("4560.642") / D("0.0996")
    assert venue.position_risk(SYM)["liquidationPrice"] == str(lp)
    [liq] = venue.poll_fills(datetime(2021, 9, 7, 18, tzinfo=UTC))
    assert (liq.side, liq.qty, liq.price, liq.ts) == (Side.SELL, D("0.1"), D("45789.5"), datetime(2021, 9, 7, 15, tzinfo=UTC))
    assert liq.fee_usd == D("2.28947500")                  # taker 0.05 % of 4,578.95
    assert venue.exit_reasons[liq.client_order_id] == "liquidation"
    assert venue.get_order(liq.client_order_id).status is OrderStatus.FILLED
    trade = venue.closed_trades[-1]
    assert (trade.exit_reason, trade.exit_price, trade.funding_usdt) == ("liquidation", D("45789.5"), D("0"))
    assert trade.price_pnl_usdt == D("0.1") * (D("45789.5") - D("50673.8"))
    assert venue.positions() == {} and venue.funding_log == []   # gone before the 16:00 settlement
    assert venue.account().cash_usd == D("10000") + trade.pnl_usdt


def test_a_5x_long_survives_the_same_wick_and_pays_the_16h_settlement(wick_venue):
    venue = wick_venue(5)
    venue.update_marks({SYM: 50648.47}, WICK_T)
    venue.submit(order("long", Side.BUY, "0.1", WICK_T))
    venue.poll_fills(datetime(2021, 9, 7, 18, tzinfo=UTC))
    assert venue.liquidation_price(SYM) < D("42088") and venue.positions()[SYM].qty == D("0.1")
    [record] = venue.funding_log
    assert record.payment.ts == datetime(2021, 9, 7, 16, tzinfo=UTC)
    assert record.payment.amount_usd == -D("0.1") * D("46640.55") * D("0.00022977")


def test_a_stop_beyond_the_liquidation_price_is_refused(wick_venue):
    venue = wick_venue(10)
    venue.update_marks({SYM: 50648.47}, WICK_T)
    venue.submit(order("long", Side.BUY, "0.1", WICK_T))
    venue.poll_fills(WICK_T + HOUR)
    entry, lp = venue.perp_position(SYM).entry_price, venue.liquidation_price(SYM)
    assert not stop_inside_liquidation(Side.BUY, entry, D("45500"), lp, D("1"))   # beyond 45,789.58
    assert not stop_inside_liquidation(Side.BUY, entry, D("46000"), lp, D("1"))   # inside by 0.46 % < 1 %
    assert stop_inside_liquidation(Side.BUY, entry, D("47000"), lp, D("1"))


# --------------------------------------------------------------------------- order rules
def test_reduce_only_that_would_open_add_or_flip_is_refused(wick_venue):
    venue = wick_venue(10)
    venue.update_marks({SYM: 50648.47}, WICK_T)
    with pytest.raises(ReduceOnlyRejected, match="-2022"):
        venue.submit(order("r0", Side.SELL, "0.1", WICK_T, reduce_only=True))      # nothing to reduce
    venue.submit(order("long", Side.BUY, "0.1", WICK_T))
    venue.poll_fills(WICK_T + HOUR)
    with pytest.raises(ReduceOnlyRejected):
        venue.submit(order("r1", Side.BUY, "0.05", WICK_T + HOUR, reduce_only=True))  # would add
    with pytest.raises(ReduceOnlyRejected):
        venue.submit(order("r2", Side.SELL, "0.2", WICK_T + HOUR, reduce_only=True))  # would flip
    venue.submit(order("r3", Side.SELL, "0.1", WICK_T + HOUR, reduce_only=True))     # fills in the wick bar...
    fills = venue.poll_fills(WICK_T + 2 * HOUR)
    # ...at the 15:00 open, before that bar's low could liquidate the position
    assert [f.client_order_id for f in fills] == ["r3"] and venue.positions() == {}


def test_a_20x_long_is_liquidated_inside_its_own_entry_bar(wick_venue):
    venue = wick_venue(20)
    venue.update_marks({SYM: 50648.47}, WICK_T)
    venue.submit(order("long", Side.BUY, "0.1", WICK_T))
    [entry, liq] = venue.poll_fills(WICK_T + HOUR)          # 20x: the 14:00 bar's own low liquidates it
    assert venue.exit_reasons[liq.client_order_id] == "liquidation" and liq.ts == WICK_T


def test_leverage_caps_and_capabilities(wick_venue):
    venue = wick_venue(10)
    assert isinstance(venue, Broker)
    caps = venue.capabilities
    assert (caps.reduce_only, caps.max_leverage, caps.fee_currency, caps.short_crypto) == (True, 125.0, "USDT", True)
    with pytest.raises(LeverageNotAllowed, match="above the bracket cap 125"):
        venue.set_leverage(SYM, 126)
    with pytest.raises(LeverageNotAllowed, match="above the bracket cap 75"):
        venue.set_leverage("BNBUSDT", 76)
    assert venue.set_leverage("BNBUSDT", 75) == 75
    venue.set_leverage(SYM, 125)
    venue.update_marks({SYM: 50648.47}, WICK_T)
    with pytest.raises(LeverageNotAllowed, match="125x allows"):
        venue.submit(order("big", Side.BUY, "1", WICK_T))         # 50,673 USDT > 50,000 at 125x
    venue.set_leverage(SYM, 1)
    with pytest.raises(InsufficientBuyingPower, match="-2019"):
        venue.submit(order("huge", Side.BUY, "0.2", WICK_T))      # 1x needs ~10,135 USDT
    venue.update_marks({"SOLUSDT": 4.0})
    with pytest.raises(InvalidOrder, match="-4164"):
        venue.submit(order("tiny", Side.BUY, "1", WICK_T, symbol="SOLUSDT"))   # 4 USDT < 5 USDT minimum
    venue.submit(order("ok", Side.BUY, "0.1", WICK_T))
    venue.poll_fills(WICK_T + HOUR)
    with pytest.raises(LeverageNotAllowed, match="while a position is open"):
        venue.set_leverage(SYM, 2)


# --------------------------------------------------------------------------- bookkeeping invariant
def synthetic(closes: list[float], wick: float) -> tuple[PerpBars, dict]:
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    ts = [t0 + i * HOUR for i in range(len(closes))]
    opens = [closes[0]] + closes[:-1]
    frame = pd.DataFrame({"ts": pd.to_datetime(ts, utc=True), "open": opens, "close": closes,
                          "high": [max(o, c) * (1 + wick) for o, c in zip(opens, closes)],
                          "low": [min(o, c) * (1 - wick) for o, c in zip(opens, closes)]})
    rates = [D("0.0001"), D("-0.0003"), D("0.0007"), D("0.00025")]
    schedule = FundingSchedule(SYM, [FundingSettlement(SYM, t0 + timedelta(hours=8 * k), rates[k % 4])
                                     for k in range(1, len(closes) // 8 + 1)])
    return PerpBars({SYM: frame}, HOUR), {SYM: schedule}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(st.floats(-0.04, 0.04), min_size=30, max_size=60),
       trades=st.lists(st.tuples(st.sampled_from([Side.BUY, Side.SELL]), st.integers(1, 30), st.booleans()),
                       min_size=1, max_size=15),
       leverage=st.integers(1, 50), wick=st.floats(0, 0.05))
def test_equity_is_start_plus_price_pnl_minus_fees_plus_funding(steps, trades, leverage, wick):
    closes = [40000.0]
    for s in steps:
        closes.append(round(closes[-1] * (1 + s), 1))
    bars, funding = synthetic(closes, wick)
    venue = make_venue(bars, funding, leverage=leverage, balance="100000")
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    for i, (side, qty_milli, reduce) in enumerate(trades):
        at = t0 + (i * len(closes) // len(trades)) * HOUR
        venue.poll_fills(at)
        venue.update_marks({SYM: bars.next_bar_open(SYM, at, at + HOUR)[1]}, at)
        try:
            venue.submit(order(f"o{i}", side, D(qty_milli) / 1000, at, reduce_only=reduce))
        except (InvalidOrder, InsufficientBuyingPower):
            pass
    end = t0 + len(closes) * HOUR
    venue.poll_fills(end)
    venue.update_marks({SYM: closes[-1]})
    funding_total = sum((r.payment.amount_usd for r in venue.funding_log), D(0))
    realized = sum((t.price_pnl_usdt for t in venue.closed_trades), D(0))
    pos = venue.perp_position(SYM)
    unrealized = pos.qty * (D(repr(closes[-1])) - pos.entry_price) if pos else D(0)
    expected = D("100000") + realized + unrealized - venue.fees_paid_usdt + funding_total
    assert abs(venue.account().equity_usd - expected) < D("1e-12")
    # funding on closed trades + on the open position is every payment, each once
    on_trades = sum((t.funding_usdt for t in venue.closed_trades), D(0)) + (pos.funding_usdt if pos else 0)
    assert abs(on_trades - funding_total) < D("1e-12")
    assert len({r.payment.ts for r in venue.funding_log}) == len(venue.funding_log)


# --------------------------------------------------------------------------- event-horizon promise (issue #24)
def _drive(venue, ticks, orders: dict, skipping: bool) -> list:
    """Hourly ticks; ``orders``: tick -> (coid, side, qty, reduce_only), submitted at a visited tick (the
    engine only sends orders in cycles it runs). Skipping: a tick before the venue's last promise is not
    visited (no settle_funding / poll_fills), as the horizon driver does. Returns the visited ticks."""
    visited, until = [], None
    for t in ticks:
        if skipping and until is not None and t < until and t not in orders and t != ticks[-1]:
            continue
        visited.append(t)
        if t in orders:
            coid, side, qty, ro = orders[t]
            venue.update_marks({SYM: 61290.4}, t)
            venue.submit(order(coid, side, qty, t, reduce_only=ro))
        venue.settle_funding(t)
        venue.poll_fills(t)
        until = venue.horizon_until(t)
    return visited


@pytest.mark.parametrize("side", [Side.BUY, Side.SELL])
def test_flat_venue_promise_skipping_equals_every_tick(perp_dir, btc_funding, side):
    """Real BTCUSDT bars and funding, 2024-02-28 .. 2024-03-03 hourly: a round trip on 03-01 in the middle.
    Driven every hour and driven skipping what ``horizon_until`` promises, the venue pays the same
    settlements, books the same trade and ends with the same balance, positions and funding cursor; the flat
    days before and after are skipped (every settlement there is for a symbol not held: nothing recorded),
    and while a position or an order is held it promises nothing."""
    start, end = datetime(2024, 2, 28, tzinfo=UTC), datetime(2024, 3, 3, tzinfo=UTC)
    ticks = [start + k * HOUR for k in range(int((end - start) / HOUR))]
    orders = {T_OPEN: ("open", side, "0.1", False), T_CLOSE: ("close", side.opposite(), "0.1", True)}
    out = []
    for skipping in (False, True):
        venue = make_venue(real_bars(perp_dir, start, end + HOUR), btc_funding)
        visited = _drive(venue, ticks, orders, skipping)
        out.append((visited, [(r.payment.ts, r.payment.amount_usd) for r in venue.funding_log],
                    [(t.pnl_usdt, t.funding_usdt) for t in venue.closed_trades], venue.account(), venue.positions(),
                    venue._clock.funding_through, venue._now))
    (v_off, *every), (v_on, *skip) = out
    assert skip == every and len(every[0]) == 3 and every[1]
    assert len(v_off) == len(ticks) and len(v_on) < len(ticks) / 2
    held = [t for t in v_on if T_OPEN <= t <= T_CLOSE]
    assert len(held) == int((T_CLOSE - T_OPEN) / HOUR) + 1   # every tick visited while it holds


def test_venue_promises_nothing_while_it_holds_or_works(perp_dir, btc_funding):
    venue = make_venue(real_bars(perp_dir, T_OPEN, T_CLOSE + 2 * HOUR), btc_funding)
    assert venue.horizon_until(T_OPEN) is not None and venue.settle_funding(T_OPEN) == []
    venue.update_marks({SYM: 61290.4}, T_OPEN)
    venue.submit(order("open", Side.BUY, "0.1", T_OPEN))
    assert venue.horizon_until(T_OPEN) is None                 # a working order
    venue._advance(T_OPEN + HOUR)
    assert venue.horizon_until(T_OPEN + HOUR) is None          # a fill not handed out, a position
    venue.poll_fills(T_OPEN + HOUR)
    assert venue.positions() and venue.horizon_until(T_OPEN + HOUR) is None
