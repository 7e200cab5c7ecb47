"""Perp execution (#20 (g)) on real BTCUSDT hourly bars (shipped data, 2024): post-only limits at the
venue (refused when crossing, rejected when the arrival bar opens through them, filled at the limit with
the maker fee when a bar trades through), and the execution layer's post-only entries with a timeout,
reduce-only exits falling back to market, and TWAP slicing above a share of recent volume. The expected
bars are found here from the parquet with pandas, independently of the venue's own scan."""
from __future__ import annotations

from datetime import datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

import pandas as pd
import pytest

from hydra_engine.data.replay import ReplayMarketData
from hydra_engine.domain import UTC, Order, OrderStatus, OrderType, Side, TimeInForce
from hydra_engine.perp.bars import PerpBars
from hydra_engine.perp.execution import ExecutionConfig, PerpExecution
from hydra_engine.perp.funding import load_funding_history
from hydra_engine.perp.venue import DEFAULT_PERP_SPECS, SimulatedPerpVenue
from hydra_engine.ports import InvalidOrder
from hydra_engine.ports import InvalidTimeInForce

from .conftest import SHIPPED_DATA

D = Decimal
HOUR = timedelta(hours=1)
SYM = "BTCUSDT"
USDM = SHIPPED_DATA / "crypto_perp" / "binance_usdm"
SPAN = (datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 15, tzinfo=UTC))
TICK = DEFAULT_PERP_SPECS[SYM].price_increment


@pytest.fixture(scope="module")
def frame():
    f = pd.read_parquet(USDM / "klines" / "BTCUSDT_1h.parquet")
    f = f[(f.ts >= pd.Timestamp(SPAN[0])) & (f.ts < pd.Timestamp(SPAN[1]))].reset_index(drop=True)
    f["t"] = [t.to_pydatetime() for t in f.ts]
    return f


@pytest.fixture(scope="module")
def market():
    return ReplayMarketData(SHIPPED_DATA, [SYM], start=SPAN[0].date(), end=SPAN[1].date())


def venue_on(market):
    bars = PerpBars.from_parquet({SYM: USDM / "klines" / "BTCUSDT_1h.parquet"}, HOUR, start=SPAN[0] - HOUR, end=SPAN[1])
    v = SimulatedPerpVenue(market, {SYM: load_funding_history(SYM, USDM)}, starting_balance_usdt="100000", bars=bars)
    v.set_leverage(SYM, 5)
    return v


def touch(close: float, side: Side) -> Decimal:
    return DEFAULT_PERP_SPECS[SYM].round_price(D(repr(float(close))), ROUND_FLOOR if side is Side.BUY else ROUND_CEILING)


def limit(coid, side, qty, price, at, reduce_only=False) -> Order:
    return Order(coid, SYM, side, D(qty), OrderType.LIMIT, TimeInForce.GTX, at, "test", limit_price=price,
                 reduce_only=reduce_only)


def market_order(coid, side, qty, at, reduce_only=False, purpose="entry") -> Order:
    return Order(coid, SYM, side, D(qty), OrderType.MARKET, TimeInForce.GTC, at, "test", purpose=purpose,
                 reduce_only=reduce_only)


def find(frame, side: Side, *, rests: bool, within: int | None = None, fills_within: int | None = None):
    """The first bar index k >= 1 where a post-only order at the touch (close of bar k-1) arriving at bar k's
    open rests (or crosses), and (optionally) is / is not traded through within ``within`` bars."""
    for k in range(1, len(frame) - 10):
        L = float(touch(frame.close[k - 1], side))
        crosses = frame.open[k] < L if side is Side.BUY else frame.open[k] > L
        if crosses == rests:
            continue
        if not rests:
            return k, D(repr(L))
        through = [(frame.low[j] < L) if side is Side.BUY else (frame.high[j] > L) for j in range(k, len(frame))]
        first = through.index(True) if True in through else None
        if within is not None and (first is None or first >= within):
            return k, D(repr(L))
        if fills_within is not None and first is not None and first >= 1 and first < fills_within:
            return k, D(repr(L))
    raise AssertionError("no such bar in the span")


# ------------------------------------------------------------------ the venue's post-only limits
def test_post_only_buy_rests_and_fills_at_the_limit_with_the_maker_fee_when_a_bar_trades_through(frame, market):
    k, L = find(frame, Side.BUY, rests=True, fills_within=6)     # rests, and a later bar (1..5 on) goes below
    t0 = frame.t[k]
    v = venue_on(market)
    v.update_marks({SYM: frame.close[k - 1]}, t0)
    sent = v.submit(limit("b1", Side.BUY, "0.01", L, t0))
    assert sent.status is OrderStatus.ACCEPTED
    j = next(j for j in range(k, len(frame)) if frame.low[j] < float(L))
    assert j > k
    assert v.poll_fills(frame.t[j]) == [] and v.get_order("b1").status is OrderStatus.ACCEPTED   # bar j not closed
    fills = v.poll_fills(frame.t[j] + HOUR)
    assert len(fills) == 1
    f = fills[0]
    assert (f.price, f.ts) == (L, frame.t[j])                       # at the limit, no slippage, that bar
    assert f.fee_usd == (D("0.01") * L * D("0.0002")).quantize(D("0.00000001"))   # maker 2 bps
    assert v.positions()[SYM].qty == D("0.01")


def test_post_only_is_refused_when_it_crosses_the_mark_and_rejected_when_the_arrival_bar_opens_through(frame, market):
    v = venue_on(market)
    k, L = find(frame, Side.BUY, rests=False)                       # bar k opens below the previous close
    t0 = frame.t[k]
    v.update_marks({SYM: frame.close[k - 1]}, t0)
    with pytest.raises(InvalidOrder, match="-5022"):
        v.submit(limit("x", Side.BUY, "0.01", L + 100 * TICK, t0))   # above the mark: would take
    v.submit(limit("b2", Side.BUY, "0.01", L, t0))
    assert v.poll_fills(t0 + HOUR) == []
    o = v.get_order("b2")
    assert o.status is OrderStatus.REJECTED and "-5022" in o.reject_reason and SYM not in v.positions()
    with pytest.raises(InvalidTimeInForce):
        v.submit(Order("g", SYM, Side.BUY, D("0.01"), OrderType.LIMIT, TimeInForce.GTC, t0 + HOUR, "t", limit_price=L))
    with pytest.raises(InvalidTimeInForce):
        v.submit(Order("m", SYM, Side.BUY, D("0.01"), OrderType.MARKET, TimeInForce.GTX, t0 + HOUR, "t"))


# ------------------------------------------------------------------ the execution layer
def test_post_only_entry_times_out_and_is_canceled_not_chased(frame, market):
    k, L = find(frame, Side.BUY, rests=True, within=1)               # not traded through in its arrival bar
    t0 = frame.t[k]
    ex = PerpExecution(venue_on(market), ExecutionConfig(post_only_entries=True, timeout=HOUR))
    ex.update_marks({SYM: frame.close[k - 1]}, t0)
    parent = ex.submit(market_order("e1", Side.BUY, "0.01", t0))
    assert parent.status is OrderStatus.ACCEPTED and [o.client_order_id for o in ex.open_orders()] == ["e1"]
    child = ex.child_orders[0]
    assert (child["type"], D(child["limit_price"])) == ("limit", L)
    assert ex.poll_fills(t0 + HOUR) == []
    assert ex.get_order("e1").status is OrderStatus.CANCELED and "not filled within" in ex.get_order("e1").reject_reason
    assert ex.open_orders() == [] and ex.venue.open_orders() == [] and SYM not in ex.positions()
    assert ex.poll_fills(t0 + 5 * HOUR) == []                         # nothing fills later either


def test_post_only_entry_fills_under_the_parent_id(frame, market):
    k, L = find(frame, Side.BUY, rests=True, fills_within=6)         # traded through 1-5 bars after arrival
    ex = PerpExecution(venue_on(market), ExecutionConfig(post_only_entries=True, timeout=6 * HOUR))
    ex.update_marks({SYM: frame.close[k - 1]}, frame.t[k])
    ex.submit(market_order("e2", Side.BUY, "0.01", frame.t[k]))
    got = []
    for j in range(k + 1, k + 7):
        got += ex.poll_fills(frame.t[j])
    assert [f.client_order_id for f in got] == ["e2"] and got[0].price == L
    assert ex.get_order("e2").status is OrderStatus.FILLED and ex.positions()[SYM].qty == D("0.01")


def test_reduce_only_exit_falls_back_to_market_after_the_timeout(frame, market):
    k, L = find(frame, Side.SELL, rests=True, within=1)              # a sell at the touch not taken in an hour
    v = venue_on(market)
    ex = PerpExecution(v, ExecutionConfig(post_only_exits=True, timeout=HOUR))
    t_in = frame.t[k - 1]
    ex.update_marks({SYM: frame.close[k - 2]}, t_in)
    ex.submit(market_order("in", Side.BUY, "0.01", t_in))              # a market entry (post-only entries off)
    ex.poll_fills(frame.t[k])
    assert ex.positions()[SYM].qty == D("0.01")
    ex.update_marks({SYM: frame.close[k - 1]}, frame.t[k])
    ex.submit(market_order("out", Side.SELL, "0.01", frame.t[k], reduce_only=True, purpose="exit"))
    assert ex.child_orders[-1]["type"] == "limit" and ex.child_orders[-1]["reduce_only"]
    assert ex.poll_fills(frame.t[k + 1]) == []                          # timed out: the market child goes out
    assert ex.child_orders[-1]["type"] == "market" and ex.child_orders[-1]["reduce_only"]
    fills = ex.poll_fills(frame.t[k + 2])
    assert [f.client_order_id for f in fills] == ["out"]
    expected = DEFAULT_PERP_SPECS[SYM].round_price(D(repr(float(frame.open[k + 1]))) * (1 - D("0.0005")), ROUND_FLOOR)
    assert fills[0].price == expected and fills[0].ts == frame.t[k + 1]   # next open, 5 bps slippage
    assert SYM not in ex.positions() and ex.get_order("out").status is OrderStatus.FILLED


def test_stop_exits_go_to_market_at_once(frame, market):
    ex = PerpExecution(venue_on(market), ExecutionConfig(post_only_exits=True))
    t = frame.t[5]
    ex.update_marks({SYM: frame.close[4]}, t)
    ex.submit(market_order("in", Side.BUY, "0.01", t))
    ex.poll_fills(frame.t[6])
    stop = market_order("st", Side.SELL, "0.01", frame.t[6], reduce_only=True, purpose="exit")
    stop.stop_price = D("1")
    ex.submit(stop)
    assert ex.venue.get_order("st").order_type is OrderType.MARKET


def test_twap_slices_an_order_above_the_volume_share_into_one_market_child_per_bar(frame, market):
    v = venue_on(market)
    ex = PerpExecution(v, ExecutionConfig(twap_volume_share=0.0001, twap_slices=4, twap_volume_bars=24))
    k = 30
    t0 = frame.t[k]
    mean_vol = float(frame.volume_base[k - 24:k].mean())
    assert ex.recent_volume(SYM, t0) == pytest.approx(mean_vol)
    qty = DEFAULT_PERP_SPECS[SYM].round_qty(D(repr(float(0.0002 * mean_vol))))   # 0.02 % of recent volume: above 0.01 %
    ex.update_marks({SYM: frame.close[k - 1]}, t0)
    ex.submit(market_order("tw", Side.BUY, str(qty), t0))
    fills = []
    for j in range(k + 1, k + 6):
        fills += ex.poll_fills(frame.t[j])
    assert [(c["type"], c["status"]) for c in ex.child_orders] == [("market", "sent")] * 4
    assert [f.ts for f in fills] == [frame.t[k + i] for i in range(4)]        # one slice per bar
    assert {f.client_order_id for f in fills} == {"tw"}
    assert sum(f.qty for f in fills) == qty and ex.get_order("tw").status is OrderStatus.FILLED
    for i, f in enumerate(fills):
        assert f.price == DEFAULT_PERP_SPECS[SYM].round_price(D(repr(float(frame.open[k + i]))) * D("1.0005"), ROUND_CEILING)
    small = PerpExecution(venue_on(market), ExecutionConfig(twap_volume_share=0.5))
    small.update_marks({SYM: frame.close[k - 1]}, t0)
    small.submit(market_order("sm", Side.BUY, "0.01", t0))
    assert small.child_orders == [] and small.venue.get_order("sm") is not None   # below the share: as is


def test_the_engine_trades_perps_post_only_and_books_every_fill_once(tmp_path):
    """Post-only entries and exits (market fallback) in the engine, Jan-Feb 2024 on the shipped data: fills
    come back under the executor's order ids, the book's P&L is the venue's, maker fees where limits filled."""
    from hydra_engine.app import build_sim_session, run_session

    from .conftest import make_settings
    names = ["funding_squeeze", "liquidation_reversal", "oi_divergence", "crowding_fade", "funding_carry"]
    settings = make_settings(tmp_path, start="2024-01-01", end="2024-03-01", strategies={"enabled": names},
                             perps={"enabled": True, "post_only_entries": True, "post_only_exits": True,
                                    "post_only_timeout_minutes": 120})
    session = build_sim_session(settings, persist=False)
    run_session(session, progress=False)
    engine = session.engine
    ex = engine.broker.venues["perp"]
    assert isinstance(ex, PerpExecution)
    kinds = {(c["type"], c["status"]) for c in ex.child_orders}
    assert ("limit", "sent") in kinds                                  # post-only children went out
    canceled = [a for a in ex._algos.values() if a.parent.status is OrderStatus.CANCELED]
    perp_trades = [t for t in engine.closed_trades if t["symbol"].endswith("USDT")]
    assert perp_trades and len(perp_trades) == len(ex.closed_trades)
    book = sum(Decimal(t["pnl_usd"]) for t in perp_trades)
    assert abs(book - sum(t.pnl_usdt for t in ex.closed_trades)) < Decimal("0.0001") * len(perp_trades)
    limit_fills = [o for o in ex._orders.values() if o.order_type is OrderType.LIMIT and o.status is OrderStatus.FILLED]
    assert limit_fills                                                  # some entries or exits filled as maker
    # every executor order id the book waited on was one the layer knows as a parent (no child id leaked)
    assert all(c in ex._algos or c.startswith("liquidation-") or ex.venue.get_order(c) is not None
               for c in {**engine.book.plans, **engine.book.exit_reasons})
    assert not engine.book.plans and not engine.positions              # every entry ended, nothing left open
    print(f"post-only: {len(ex._algos)} parents, {len(canceled)} entries canceled at the timeout, "
          f"{len(limit_fills)} maker fills, {len(perp_trades)} trades, P&L {book:.2f}")
