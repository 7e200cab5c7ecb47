"""The peer-benchmark wiring reproduces the numpy reference exactly (bench/README.md).

The seeded 100,000-bar one-minute series of ``shared/bench-peers/gen_data.py`` goes through HYDRA's own
engine core — BarFileMarketData → SimulatedClock → Engine.run_cycle → SimulatedBroker with the
``signal_close`` fill model — with the ``sma_crossover`` plugin and the benchmark's all-in sleeve risk
layer: 1124 entries and a final equity of 8,287.345153, as every peer engine and the reference loop.
No timing here: benchmarks live in bench/.
"""
from __future__ import annotations

from decimal import Decimal

import pytest

from .conftest import peer_gen_data


def test_sma_crossover_signal_close_reproduces_the_100k_reference(hydra_peer):
    gen = peer_gen_data()
    frame = gen.make(100_000, gen.SEED)
    engine, clock, _ = hydra_peer.build({"SYN": frame})
    assert clock.run(lambda now: engine.run_cycle(now) and None) == 100_000
    trades, equity = hydra_peer.results(engine)
    assert trades == 1124
    assert equity.quantize(Decimal("0.000001")) == Decimal("8287.345153")
    assert engine.stats.errors == 0 and engine.stats.rejected == 0
    # every fill is at the close of the bar the order was decided on
    fills = {o.client_order_id: o for o in engine.broker._orders.values()}
    closes = dict(zip((frame.index + __import__("pandas").Timedelta(minutes=1)).to_pydatetime(), frame["close"]))
    some = list(fills.values())[:50]
    assert all(float(o.filled_avg_price) == closes[o.created_at] for o in some if o.filled_avg_price is not None)


def test_signal_close_fill_model_is_opt_in(hydra_peer):
    from hydra_engine.brokers.sim import SimulatedBroker
    import pandas as pd
    gen = peer_gen_data()
    _, _, market = hydra_peer.build({"SYN": gen.make(200, gen.SEED)})
    assert SimulatedBroker(market, {}, starting_cash_usd=1000).fill_model == "next_open"
    with pytest.raises(ValueError, match="fill_model"):
        SimulatedBroker(market, {}, starting_cash_usd=1000, fill_model="same_bar_high")
