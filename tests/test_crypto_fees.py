"""Alpaca takes a crypto fee out of the asset received (contracts NOTES §1.6): a buy of q coins leaves
q × (1 − fee) in the position, and the fee is on no order. Before, HYDRA booked the filled quantity,
so every exit asked to sell more coins than the account held: Alpaca refuses that with 403
"insufficient balance", and a stop on a crypto long never executed.

Through the real alpaca-py client against the HTTP-level double (which keeps 25 bps of the coins
bought, Alpaca's first-tier taker rate) and the real squeeze market of 2024-03-05.
"""
from __future__ import annotations

from datetime import datetime, timezone
from decimal import ROUND_DOWN, Decimal

import pytest

from hydra_engine.domain import Position
from hydra_engine.ports import BrokerPosition
from hydra_engine.reconcile import reconcile

from .test_fault_injection import double_env, paper_config, run_paper, session_doc  # noqa: F401 (fixture)

UTC = timezone.utc
BTC_MIN = Decimal("0.0001")       # asset.BTCUSD.get.json: min_order_size = min_trade_increment


def _orders(double, side):
    return [o for o in double.orders.values() if o["symbol"] == "BTC/USD" and o["side"] == side]


def fill_first_part_only(monkeypatch, double, wanted, limit: int = 1):
    """From now on the double fills only 40 % of the first ``limit`` orders that ``wanted(order)`` picks.
    Returns the real fill (for the rest) and {client_order_id: price} of the orders so split."""
    real_fill, split = double.fill, {}

    def fill(coid, price, qty=None):
        o = double.order(coid)
        if qty is None and len(split) < limit and coid not in split and wanted(o):
            split[coid] = price
            qty = str((Decimal(o["qty"]) * Decimal("0.4")).quantize(BTC_MIN))
        return real_fill(coid, price, qty)

    monkeypatch.setattr(double, "fill", fill)
    return real_fill, split


def after_the_next_poll(engine, act) -> None:
    """``act()`` runs once, right after the engine's next fill poll has read the orders."""
    broker, real_poll = engine.broker, engine.broker.poll_fills

    def poll_then_act(now):
        fills = real_poll(now)
        act()
        broker.poll_fills = real_poll
        return fills
    broker.poll_fills = poll_then_act


def test_a_crypto_round_trip_books_the_coin_fee_and_sells_what_the_broker_holds(tmp_path, monkeypatch, double_env,
                                                                                capsys):
    double, _ = double_env
    entries = []          # (position qty, entry fee, fee share) of each new position, as the engine booked it

    def steer(engine, cycle):
        pos = engine.positions.get("BTC/USD")
        if pos is not None and pos.stop_price < 10.0 ** 9:
            entries.append((pos.qty, pos.entry_fees_usd, pos.fee_share_of_received_asset))
            pos.stop_price = 10.0 ** 9            # a long's stop above the market: the next cycle exits

    code = run_paper(paper_config(tmp_path, symbols=("BTC/USD",)), monkeypatch, double, cycles=6, steer=steer)
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]

    buys, sells = _orders(double, "buy"), _orders(double, "sell")
    assert len(buys) >= 2 and len(sells) >= 1, (buys, sells)
    bought, entry_px = Decimal(buys[0]["filled_qty"]), Decimal(buys[0]["filled_avg_price"])
    kept_as_fee = double.crypto_fees_taken[buys[0]["id"]]
    received = bought - kept_as_fee
    assert kept_as_fee > 0

    # the position is what the broker holds, and the coins kept are the entry's fee in dollars
    qty, entry_fee, share = entries[0]
    assert qty == received
    assert entry_fee == kept_as_fee * entry_px
    assert share == kept_as_fee / bought

    # the exit asked for the coins held, rounded down to the increment -- never the filled quantity
    sold, exit_px = Decimal(sells[0]["filled_qty"]), Decimal(sells[0]["filled_avg_price"])
    assert sold == received.quantize(BTC_MIN, rounding=ROUND_DOWN) and sold < bought
    assert sells[0]["status"] == "filled"
    doc = session_doc(tmp_path)
    assert not [e for c in doc["cycle_details"] for e in c["errors"] if "nsufficient" in e]

    # what stayed behind is dust (below the minimum order size): it did not block the next entry, and that
    # entry's position is its own coins only -- measured against what the broker held before it
    dust = received - sold
    assert 0 < dust < BTC_MIN
    second = Decimal(buys[1]["filled_qty"]) - double.crypto_fees_taken[buys[1]["id"]]
    assert entries[1][0] == second

    # the trade's P&L is dollars out less dollars in less the (estimated) exit fee
    trade = doc["trades"][0]
    exit_fee = (sold * exit_px * share).quantize(Decimal("0.000001"))
    assert Decimal(trade["pnl_usd"]) == (sold * exit_px - bought * entry_px - exit_fee).quantize(Decimal("0.000001"))
    assert Decimal(trade["fees_usd"]) == entry_fee + exit_fee
    assert trade["exit_reason"] in ("stop", "trailing_stop") and Decimal(trade["qty"]) == received
    notes = [n for c in doc["cycle_details"] for n in c["notes"]]
    assert any("kept" in n and "as its fee" in n for n in notes), notes
    assert any("estimated" in n and "exit fee" in n for n in notes), notes

    # a restart reconciles without --adopt: the dust left at the broker is not a position HYDRA lost
    code = run_paper(paper_config(tmp_path, symbols=("BTC/USD",)), monkeypatch, double, cycles=1)
    err = capsys.readouterr().err
    assert code == 0 and "disagree" not in err, err[-3000:]


def positions_unreadable_as_the_entry_fills(double, state: dict):
    """A steer: once the entry is sent, every positions read fails for a cycle (the entry fills before it,
    so its coins cannot be measured); the cycle after, the broker answers again. ``state["booked"]`` keeps
    what the book then holds, whose stop is pushed out of reach so the strategy's own exit ends the trade."""
    def steer(engine, cycle):
        pos = engine.positions.get("BTC/USD")
        if _orders(double, "buy") and "failing" not in state:
            double.fail("GET", r"/v2/positions$", times=1000, status=503, body="Service Unavailable")
            state["failing"] = cycle
        elif "failing" in state and "cleared" not in state:
            double.faults.clear()
            state["cleared"] = cycle
            state["booked"] = pos.qty if pos else None
            if pos is not None:
                pos.stop_price = 10.0 ** 9
    return steer


def test_an_unmeasurable_coin_fee_is_said_and_the_exit_still_sells_what_the_broker_holds(tmp_path, monkeypatch,
                                                                                         double_env, capsys):
    double, _ = double_env
    state = {}
    steer = positions_unreadable_as_the_entry_fills(double, state)
    code = run_paper(paper_config(tmp_path, symbols=("BTC/USD",)), monkeypatch, double, cycles=6, steer=steer)
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]
    buy = _orders(double, "buy")[0]
    bought = Decimal(buy["filled_qty"])
    assert state["booked"] == bought                # not measured: the filled quantity stands ...
    doc = session_doc(tmp_path)
    errors = [e for c in doc["cycle_details"] for e in c["errors"]]
    assert any("could not be measured" in e for e in errors), errors     # ... and the log says so
    sell = _orders(double, "sell")[0]                # ... and the exit still sells what is there
    received = bought - double.crypto_fees_taken[buy["id"]]
    assert Decimal(sell["qty"]) == received.quantize(BTC_MIN, rounding=ROUND_DOWN) and sell["status"] == "filled"


def _pos(symbol, qty):
    return Position(symbol=symbol, qty=Decimal(qty), avg_entry_price=Decimal("60000"), strategy="s",
                    opened_at=datetime(2024, 3, 5, tzinfo=UTC), stop_price=1.0, target_price=2.0)


def _broker(qty):
    return BrokerPosition("BTCUSD", Decimal(qty), Decimal("60000"))


@pytest.mark.parametrize("broker_qty, local_qty, dust, ok", [
    ("0.032139", "0.0321195", BTC_MIN, True),      # the local book plus earlier dust
    ("0.0000195", None, BTC_MIN, True),            # dust alone
    ("0.0001", None, BTC_MIN, False),              # a sellable holding HYDRA does not know
    ("0.0322195", "0.0321195", BTC_MIN, False),    # one increment more is not dust
    ("0.032139", "0.0321195", Decimal(0), False),  # fees paid in dollars: quantities must match exactly
    (None, "0.0321195", BTC_MIN, False),           # flat at the broker, held locally
])
def test_reconcile_tolerates_dust_below_the_minimum_order_size_and_nothing_more(broker_qty, local_qty, dust, ok):
    broker = {"BTCUSD": _broker(broker_qty)} if broker_qty else {}
    local = {"BTC/USD": _pos("BTC/USD", local_qty)} if local_qty else {}
    report = reconcile(broker, [], local, [], known_symbols=["BTC/USD"], dust={"BTC/USD": dust})
    assert report.ok is ok, report.mismatches


@pytest.mark.parametrize("fee_bps", ["25", "0"])
def test_entries_and_exits_that_fill_in_parts_make_one_position_and_one_trade(tmp_path, monkeypatch, double_env,
                                                                               capsys, fee_bps):
    """An order can fill in slices (Alpaca paper simulates partial fills as well). Before, only an entry's
    first slice became the position -- the rest was left unmanaged -- and an exit's first slice closed the
    whole trade at its own price. Here the entry and the exit each fill 40 % first, the rest a cycle
    later at another price."""
    double, _ = double_env
    double.crypto_fee = Decimal(fee_bps) / Decimal(10000)
    seen = {}          # the first entry and the first exit:
    real_fill, split = fill_first_part_only(monkeypatch, double, lambda o: Decimal(o["filled_qty"]) == 0, limit=2)

    def steer(engine, cycle):
        for coid, price in split.items():          # the rest of a split order, one cycle after its first slice
            o = double.order(coid)
            if o["status"] == "partially_filled" and seen.get(coid) == "first":
                real_fill(coid, str(Decimal(price) + (25 if o["side"] == "buy" else 40)))
            seen.setdefault(coid, "first")
        pos = engine.positions.get("BTC/USD")
        buy = next(iter(split), None)
        if pos is not None and buy and double.order(buy)["status"] == "filled" and "position" not in seen:
            if buy not in engine.plans:              # both slices booked
                seen["position"] = (pos.qty, pos.avg_entry_price, pos.entry_fees_usd)
                pos.stop_price = 10.0 ** 9           # exit next cycle
        if pos is not None and pos.exit_qty and "partial" not in seen:
            seen["partial"] = pos.qty

    code = run_paper(paper_config(tmp_path, symbols=("BTC/USD",)), monkeypatch, double, cycles=7, steer=steer)
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]
    buy_coid, sell_coid = list(split)
    buy, sell = double.order(buy_coid), double.order(sell_coid)
    assert buy["status"] == sell["status"] == "filled"
    booked = session_doc(tmp_path)["fills"]
    slices = {c: [f for f in booked if f["client_order_id"] == c] for c in (buy_coid, sell_coid)}
    assert len(slices[buy_coid]) == 2 and len(slices[sell_coid]) == 2, slices

    bought = sum(Decimal(f["qty"]) for f in slices[buy_coid])
    paid = sum(Decimal(f["qty"]) * Decimal(f["price"]) for f in slices[buy_coid])
    received = bought - double.crypto_fees_taken.get(buy["id"], Decimal(0))
    qty, avg_entry, entry_fees = seen["position"]
    fee_coins = [(Decimal(f["qty"]) * double.crypto_fee).quantize(Decimal("1e-9")) for f in slices[buy_coid]]
    assert sum(fee_coins) == bought - received
    assert qty == received                           # both slices, less the coins kept as fees
    assert avg_entry == paid / bought                # per coin bought, weighted by slice
    assert entry_fees == sum(c * Decimal(f["price"]) for c, f in zip(fee_coins, slices[buy_coid]))
    assert 0 < seen["partial"] < qty                 # the first exit slice left the rest managed

    sold = sum(Decimal(f["qty"]) for f in slices[sell_coid])
    proceeds = sum(Decimal(f["qty"]) * Decimal(f["price"]) for f in slices[sell_coid])
    (trade,) = session_doc(tmp_path)["trades"]
    assert Decimal(trade["qty"]) == received
    assert Decimal(trade["exit_price"]) == (proceeds / sold).quantize(Decimal("0.000001"))
    exit_fee = Decimal(trade["fees_usd"]) - entry_fees
    # dollars out less dollars in less the exit fee (the entry's coin fee is in what was paid)
    assert abs(Decimal(trade["pnl_usd"]) - (proceeds - paid - exit_fee)) < Decimal("0.00001"), trade
    notes = [n for c in session_doc(tmp_path)["cycle_details"] for n in c["notes"]]
    assert any("filled a further" in n for n in notes) and any("still held" in n for n in notes), notes


def test_an_unmeasured_coin_fee_of_more_than_dust_still_ends_the_trade(tmp_path, monkeypatch, double_env, capsys):
    """0.06 BTC (the hunter capped at $5,000): the 25 bps the broker keeps is 0.00015 BTC, more than the
    minimum order size. Unmeasured (positions unreadable at the fill), the book holds the filled 0.0597,
    the exit sells what the broker holds, and the broker is left with dust: the trade must end there
    (dollars out less dollars in), not leave a phantom 0.0002 BTC position that no exit can sell."""
    double, _ = double_env
    state, engines = {}, []
    unreadable = positions_unreadable_as_the_entry_fills(double, state)

    def steer(engine, cycle):
        engines.append(engine)
        unreadable(engine, cycle)

    cfg = paper_config(tmp_path, symbols=("BTC/USD",), params="max_notional_usd = 5000.0")
    code = run_paper(cfg, monkeypatch, double, cycles=6, steer=steer)
    assert code == 0, capsys.readouterr().err[-3000:]
    buy, sell = _orders(double, "buy")[0], _orders(double, "sell")[0]
    bought, fee_coins = Decimal(buy["filled_qty"]), double.crypto_fees_taken[buy["id"]]
    assert state["booked"] == bought and fee_coins >= BTC_MIN               # unmeasured, and more than dust
    sold = Decimal(sell["filled_qty"])
    (trade,) = session_doc(tmp_path)["trades"][:1]
    assert Decimal(trade["qty"]) == bought
    paid, proceeds = bought * Decimal(buy["filled_avg_price"]), sold * Decimal(sell["filled_avg_price"])
    assert Decimal(trade["pnl_usd"]) == (proceeds - paid).quantize(Decimal("0.000001"))
    assert not [c for c in engines[-1].exit_reasons if c == sell["client_order_id"]]   # nothing left tracked


def test_a_slice_that_fills_as_the_entry_is_canceled_is_still_booked(tmp_path, monkeypatch, double_env, capsys):
    """The entry fills 40 %, is booked; between the next fill poll and the plan clean-up it fills another
    30 % and is canceled. The plan must wait for that slice (booked < filled), not drop on CANCELED."""
    double, _ = double_env
    double.crypto_fee = Decimal(0)
    engines, armed = [], []
    real_fill, split = fill_first_part_only(monkeypatch, double, lambda o: o["side"] == "buy")

    def steer(engine, cycle):
        engines.append(engine)
        coid = next(iter(split), None)
        if coid and coid in engine.plans and engine.plans[coid].booked_qty and not armed:
            armed.append(cycle)

            def another_part_then_canceled():
                o = double.order(coid)
                real_fill(coid, split[coid], str((Decimal(o["qty"]) * Decimal("0.3")).quantize(BTC_MIN)))
                o["status"] = "canceled"
            after_the_next_poll(engine, another_part_then_canceled)

    code = run_paper(paper_config(tmp_path, symbols=("BTC/USD",)), monkeypatch, double, cycles=5, steer=steer)
    assert code == 0, capsys.readouterr().err[-3000:]
    coid = next(iter(split))
    assert double.order(coid)["status"] == "canceled" and armed
    assert engines[-1].positions["BTC/USD"].qty == Decimal(double.positions["BTCUSD"]["qty"]) \
        == Decimal(double.order(coid)["filled_qty"])
    assert coid not in engines[-1].plans                 # dropped once every slice was booked


def test_a_coin_exit_whose_rest_fills_right_after_the_poll_is_one_trade(tmp_path, monkeypatch, double_env, capsys):
    """The exit fills 40 %; right after the poll has read the orders the exchange fills the rest, so the
    broker already holds only dust when the first part is booked. The trade must not end on that first
    part (writing off what the second sold): the exit order still has a part to report."""
    double, _ = double_env
    double.crypto_fee = Decimal(0)
    armed = []
    real_fill, split = fill_first_part_only(monkeypatch, double, lambda o: o["side"] == "sell")

    def steer(engine, cycle):
        pos = engine.positions.get("BTC/USD")
        if pos is not None and pos.stop_price < 10.0 ** 9:
            pos.stop_price = 10.0 ** 9
        coid = next(iter(split), None)
        if coid and double.order(coid)["status"] == "partially_filled" and not armed:
            armed.append(cycle)
            after_the_next_poll(engine, lambda: real_fill(coid, split[coid]))

    code = run_paper(paper_config(tmp_path, symbols=("BTC/USD",)), monkeypatch, double, cycles=7, steer=steer)
    assert code == 0, capsys.readouterr().err[-3000:]
    coid = next(iter(split))
    doc = session_doc(tmp_path)
    parts = [f for f in doc["fills"] if f["client_order_id"] == coid]
    assert armed and len(parts) == 2
    proceeds = sum(Decimal(f["qty"]) * Decimal(f["price"]) for f in parts)
    buy = _orders(double, "buy")[0]
    paid = Decimal(buy["filled_qty"]) * Decimal(buy["filled_avg_price"])
    trade = doc["trades"][0]
    assert Decimal(trade["pnl_usd"]) == (proceeds - paid).quantize(Decimal("0.000001")), trade


# A crypto entry filled 40 %, HYDRA stopped, the position was closed by hand at Alpaca while the rest of the
# entry still worked, and HYDRA restarted with --adopt: reconciliation dropped the local position but kept
# the entry's plan. When the rest filled, the engine read the vanished position's quantity and the paper
# session died with an AttributeError (found by mypy: Position | None).
def test_the_rest_of_an_entry_whose_position_was_closed_at_the_broker_is_booked_after_adopt(
        tmp_path, monkeypatch, double_env, capsys):
    double, _ = double_env
    cfg = paper_config(tmp_path, symbols=("BTC/USD",))
    real_fill, split = fill_first_part_only(monkeypatch, double, lambda o: o["side"] == "buy")
    engines = []

    def first(engine, cycle):
        engines.append(engine)

    code = run_paper(cfg, monkeypatch, double, cycles=3, steer=first)
    assert code == 0, capsys.readouterr().err[-3000:]
    coid = next(iter(split))
    plan = engines[-1].plans[coid]
    assert plan.booked_qty > 0 and plan.held_before is not None          # a booked first slice
    assert double.order(coid)["status"] == "partially_filled"            # the rest still works

    double.positions.pop("BTCUSD")                                      # closed by hand while HYDRA was down
    after = []

    def second(engine, cycle):
        after.append(engine)
        if double.order(coid)["status"] == "partially_filled":
            real_fill(coid, split[coid])                                 # the rest of the entry fills

    code = run_paper(cfg, monkeypatch, double, cycles=2, steer=second, args=("--adopt",))
    err = capsys.readouterr().err
    assert "AttributeError" not in err, err[-3000:]
    assert code == 0, err[-3000:]
    # the coins of the late slice are HYDRA's again: a managed position equal to what the broker holds
    assert after[-1].positions["BTC/USD"].qty == Decimal(double.positions["BTCUSD"]["qty"])
    assert double.order(coid)["status"] == "filled"
    assert coid not in after[-1].plans      # the order is done and every slice booked: the plan is dropped
