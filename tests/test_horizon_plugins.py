"""Event-horizon replay (issue #24 item 1): the shipped plugins' promises (``horizon_next_wake``).

On real data (``/work/shared/data``): for every hourly (and extra) tick of a span, each plugin's promise is
checked against ``wants_cycle`` itself on every later tick -- never True before the promised time -- and
required not to be vacuous (it wakes in the span, and it promises skips). Then the plugin runs through the
whole engine both ways (tick by tick and skipping, ``[horizon] check`` on some): identical orders, fills,
trades, equity, positions, statistics, summary and last report.
"""
from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

import pytest

from hydra_engine import horizon
from hydra_engine.domain import UTC

ROOT = Path(__file__).resolve().parents[1]


def _session(shared_data, tmp_path, start, end, strategies, perps=False, mode="on", params=None, engine=None):
    from hydra_engine.app import build_sim_session
    from hydra_engine.backtest import _defer_snapshots, backtest_settings
    from hydra_engine.config import load_settings
    s = backtest_settings(load_settings(ROOT / "hydra.toml"), shared_data, date.fromisoformat(start),
                          date.fromisoformat(end), tmp_path / mode)
    s = s.model_copy(update={
        "strategies": s.strategies.model_copy(update={"enabled": list(strategies),
                                                      "params": {**s.strategies.params, **(params or {})}}),
        "perps": s.perps.model_copy(update={"enabled": perps}),
        "modifiers": s.modifiers.model_copy(update={"enabled": []}),
        "engine": s.engine.model_copy(update=engine or {})})
    session = build_sim_session(s, mode="backtest", data_dir=shared_data, log_dir=tmp_path / mode)
    _defer_snapshots(session.session_log)
    return session


def _walk(session, plugin):
    """(ticks, wants_cycle per tick, promise per tick) over the session's clock, a fresh snapshot each."""
    data = session.engine.market
    ticks = list(session.clock.ticks)
    wants, promises = [], []
    for t in ticks:
        snap = data.snapshot(t)
        wants.append(plugin.wants_cycle(snap))
        promises.append(plugin.horizon_next_wake(snap, data=data))
    return ticks, wants, promises


# (plugin, start, end, perps, wakes at least, ticks skipped at least): spans where each wakes and sleeps
CASES = [
    ("macro_events", "2024-01-01", "2024-03-01", False, 100, 1000),     # CPI, NFP, FOMC with 15-min ticks
    ("metals_margin", "2023-01-01", "2023-07-01", False, 1000, 500),     # the ratio's |z| around z_exit
    # the March 2020 gold margin hikes, the ratio rule out of reach (z_exit 50): the margin windows alone
    ("metals_margin", "2020-03-01", "2020-05-01", False, 40, 500, {"metals_margin": {"z_exit": 50.0}}),
    ("ai_disruption", "2023-01-01", "2024-01-01", False, 3000, 2000),    # launches with gaps over 40 days
    ("funding_squeeze", "2021-03-01", "2021-05-01", True, 100, 500),     # funding above 0.05 % in spring 2021
    ("funding_carry", "2021-03-01", "2021-05-01", True, 100, 500),
    ("crowding_fade", "2024-02-01", "2024-04-01", True, 5, 500),         # funding above 0.03 % in March 2024
    ("liquidation_reversal", "2022-05-01", "2022-07-01", True, 100, 300),  # LUNA, 3AC: open-interest flushes
    ("oi_divergence", "2022-05-01", "2022-07-01", True, 100, 300),
]


@pytest.mark.parametrize("name,start,end,perps,min_wakes,min_skipped,params", [c + (None,) * (7 - len(c)) for c in CASES])
def test_promise_holds_against_wants_cycle(shared_data, tmp_path, name, start, end, perps, min_wakes, min_skipped,
                                           params):
    session = _session(shared_data, tmp_path, start, end, [name], perps=perps, params=params)
    plugin = session.engine.strategies[0]
    assert plugin.name == name and getattr(plugin, "horizon_reads_data", False)
    ticks, wants, promises = _walk(session, plugin)
    n = len(ticks)
    first_true = [None] * (n + 1)   # first tick index >= i on which wants_cycle is True
    for i in range(n - 1, -1, -1):
        first_true[i] = i if wants[i] else first_true[i + 1]
    skipped = 0
    for i in range(n - 1):
        p = promises[i]
        if p is None:
            continue
        assert p.tzinfo is not None
        j = first_true[i + 1]
        assert j is None or ticks[j] >= p, f"{name}: promised {p} at {ticks[i]}, but wants_cycle at {ticks[j]}"
        k = i + 1
        while k < n and ticks[k] < p:
            k += 1
        skipped += k > i + 1        # this promise lets the driver jump at least one tick
    assert sum(wants) >= min_wakes, (name, sum(wants))
    assert skipped >= min_skipped, (name, skipped)


def test_metals_margin_promise_leaves_the_ratio_cache_as_it_was(shared_data, tmp_path):
    """The promise reads the z-score without touching the plugin's cache (its report notes name the newest
    z it computed: a tick-by-tick run and a skipping one must leave the same)."""
    session = _session(shared_data, tmp_path, "2023-03-01", "2023-03-15", ["metals_margin"])
    plugin, data = session.engine.strategies[0], session.engine.market
    plugin.wants_cycle(data.snapshot(datetime(2023, 3, 2, 15, tzinfo=UTC)))
    before = (plugin._z_key, plugin._z, plugin._z_why)
    for h in range(24 * 5):
        plugin.horizon_next_wake(data.snapshot(datetime(2023, 3, 3, tzinfo=UTC) + timedelta(hours=h)), data=data)
    assert (plugin._z_key, plugin._z, plugin._z_why) == before


def test_no_replay_source_or_a_changed_predicate_promises_nothing(shared_data, tmp_path):
    from strategies.ai_disruption import AiDisruption
    from strategies.perp_primitives import FundingSqueeze
    session = _session(shared_data, tmp_path, "2023-05-01", "2023-05-10", ["ai_disruption"])
    plugin, data = session.engine.strategies[0], session.engine.market
    snap = data.snapshot(datetime(2023, 5, 2, tzinfo=UTC))
    assert plugin.horizon_next_wake(snap, data=data) is not None          # between launches: a promise
    assert plugin.horizon_next_wake(snap, data=None) is None              # no replay source

    class Wider(AiDisruption):
        def wants_cycle(self, market):
            return True
    assert Wider({}).horizon_next_wake(snap, data=data) is None

    class Looser(FundingSqueeze):
        def _idea(self, st, market):
            return None
    assert Looser({}).horizon_next_wake(snap, data=data) is None
    assert FundingSqueeze({}).horizon_next_wake(snap, data=object()) is None


# ---------------------------------------------------------------- the whole engine both ways
def _run(shared_data, tmp_path, start, end, strategies, mode, perps=False, engine=None):
    session = _session(shared_data, tmp_path, start, end, strategies, perps=perps, mode=mode, engine=engine)
    spans = []
    real = horizon.catch_up
    horizon.catch_up = lambda e, t: (spans.append(len(t)), real(e, t))
    try:
        horizon.run(session.engine, session.clock, mode=mode)
    finally:
        horizon.catch_up = real
    return horizon.outcome(session.engine), spans, len(session.clock.ticks)


BOTH_WAYS = [
    # (plugins, start, end, perps, check mode too, skipped at least (share of the ticks), trades at least)
    (("macro_events",), "2024-01-01", "2024-03-01", False, True, 0.5, 3),
    (("metals_margin",), "2023-01-01", "2023-04-01", False, True, 0.1, 3),
    (("ai_disruption",), "2023-08-01", "2023-10-15", False, True, 0.2, 0),    # no launch 2023-07-19 .. 09-26
    (("macro_events", "ai_disruption", "liquidation_cascade"), "2023-08-01", "2023-10-15", False, True, 0.1, 3),
    # the perp module's venue settles funding: it never promises, so these runs visit every tick (the perp
    # primitives' promises take effect once the engine lets a perp venue skip); still identical both ways
    (("funding_squeeze", "funding_carry", "crowding_fade", "liquidation_reversal", "oi_divergence"),
     "2022-05-01", "2022-06-01", True, False, 0.0, 0),
]


@pytest.mark.parametrize("strategies,start,end,perps,check,min_share,min_trades", BOTH_WAYS)
def test_real_data_skipping_equals_every_tick(shared_data, tmp_path, strategies, start, end, perps, check,
                                              min_share, min_trades):
    off, _, n = _run(shared_data, tmp_path, start, end, strategies, "off", perps)
    on, spans, _ = _run(shared_data, tmp_path, start, end, strategies, "on", perps)
    assert [k for k in off if off[k] != on[k]] == []
    if check:
        checked, _, _ = _run(shared_data, tmp_path, start, end, strategies, "check", perps)
        assert checked == off
    assert sum(spans) >= min_share * n, (strategies, sum(spans), n)
    assert len(off["trades"]) >= min_trades, (strategies, len(off["trades"]))
    if min_share == 0.0:
        assert off["stats"]["cycles"] == n


def test_real_data_ai_disruption_trades_and_skips(shared_data, tmp_path):
    """The Llama 3.1 405B shock (2024-07, dips bought) under the contract's trend/volatility detector (the
    HMM reads no shock regime then), re-read every 10 cycles: trades, the launch gap of 2024-04-14 .. 04-19
    skipped, identical both ways."""
    args = (shared_data, tmp_path, "2024-03-15", "2024-08-20", ("ai_disruption",))
    engine = {"regime_detector": "trend_vol_rule", "regime_refresh_cycles": 10}
    off, _, n = _run(*args, "off", engine=engine)
    on, spans, _ = _run(*args, "on", engine=engine)
    assert [k for k in off if off[k] != on[k]] == []
    assert len(off["trades"]) >= 2 and sum(spans) >= 50, (len(off["trades"]), sum(spans), n)


def test_metals_margin_forgets_a_trade_not_held_a_week_past_its_window_and_decides_the_same(shared_data, tmp_path,
                                                                                           monkeypatch):
    """A recorded trade (set at proposal, also when the risk layer refuses it) is read only while its symbol
    is held; forgetting it a week past its window changes no order, fill or trade over a real half-year
    with trades (tick by tick both runs), and lets ``wants_cycle`` go quiet again (more quiet cycles)."""
    import strategies.metals_margin as M
    runs = {}
    for forget in ("default", "never"):
        if forget == "never":
            monkeypatch.setattr(M, "FORGET_AFTER", timedelta(days=100_000))
        out, _, n = _run(shared_data, tmp_path / forget, "2023-01-01", "2023-07-01", ("metals_margin",), "off")
        runs[forget] = out
    a, b = runs["default"], runs["never"]
    assert len(a["trades"]) >= 3
    for key in ("trades", "orders", "equity_usd", "cash_usd", "positions"):
        assert a[key] == b[key], key
    assert a["stats"]["quiet_cycles"] > b["stats"]["quiet_cycles"]


def test_metals_margin_keeps_a_held_or_recent_trade():
    from hydra_engine.strategy import StrategyContext
    from strategies.metals_margin import FORGET_AFTER, MetalsMarginTrader

    class _Market:   # only what propose reads when no view and no ratio are there
        events = ()
        bars: dict = {}
        now = None

        def price(self, symbol):
            return float("nan")

    plugin = MetalsMarginTrader()
    plugin.ratio_z = lambda market: None
    until = datetime(2024, 3, 1, tzinfo=UTC)
    for held, now, kept in (({}, until + FORGET_AFTER, True), ({"GLD": 1.0}, until + FORGET_AFTER * 3, True),
                            ({}, until + FORGET_AFTER + timedelta(seconds=1), False)):
        plugin._trades = {"GLD": ("cme_margin", until)}
        ctx = StrategyContext(now, _Market(), None, held)
        plugin.propose(ctx, {})
        assert ("GLD" in plugin._trades) is kept, (held, now)
