"""Risk brain: hard limits, vetoes with reasons, kill switches, cooldowns, persistence, and a
hypothesis-driven portfolio simulator with restarts that checks the invariants after every step."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hydra_engine.config import RiskConfig
from hydra_engine.domain import (AssetClass, ClosedTrade, Position, Regime, RegimeReading, Side,
                                 TradeProposal)
from hydra_engine.ports import AssetSpec, BarSeries, MarketSnapshot
from hydra_engine.positions import PositionManager
from hydra_engine.risk import HARD_LIMITS, PortfolioView, RiskConfigError, RiskManager, check_hard_limits

UTC = timezone.utc
D = Decimal
T0 = datetime(2024, 3, 4, 9, 0, tzinfo=UTC)
SPY = AssetSpec("SPY", AssetClass.EQUITY, shortable=True)
BTC = AssetSpec("BTC/USD", AssetClass.CRYPTO, fractionable=True, qty_increment=D("0.0001"),
                min_order_size=D("0.0001"))


def prop(symbol="SPY", conf=0.6, entry=100.0, stop=98.0, target=104.0, side=Side.BUY, **kw) -> TradeProposal:
    return TradeProposal("test", symbol, side, entry, stop, target, conf, timedelta(hours=4), **kw)


def view(equity=100_000, bp=None, positions=None, marks=None, now=T0) -> PortfolioView:
    return PortfolioView(now, D(equity), D(equity if bp is None else bp), positions or {}, marks or {})


def trade(pnl: str, symbol="SPY") -> ClosedTrade:
    return ClosedTrade("test", symbol, "buy", "1", T0.isoformat(), "100", T0.isoformat(), "99", pnl, "0",
                       -1.0, "UNKNOWN", "stop")


def pos(symbol: str, qty: str, price: float, when=T0) -> Position:
    return Position(symbol, D(qty), D(repr(price)), "test", when, price * 0.98, price * 1.04,
                    initial_stop_price=price * 0.98)


# --------------------------------------------------------------------------- hard limits
@pytest.mark.parametrize("key", sorted(HARD_LIMITS))
def test_loosening_any_hard_limit_fails_naming_it(key):
    loose = HARD_LIMITS[key] + (1 if isinstance(HARD_LIMITS[key], int) else 0.5)
    cfg = RiskConfig(**{key: loose})
    with pytest.raises(RiskConfigError) as err:
        RiskManager(cfg)
    assert err.value.key == key and err.value.value == loose and err.value.limit == HARD_LIMITS[key]
    assert f"risk.{key} = {loose}" in str(err.value)


def test_cooldown_may_not_be_shortened():
    with pytest.raises(RiskConfigError, match=r"risk.cooldown_hours = 3.5 .* >= 4.0"):
        check_hard_limits(RiskConfig(cooldown_hours=3.5))
    check_hard_limits(RiskConfig(cooldown_hours=8))


def test_more_than_half_kelly_is_a_refused_loosening():
    """Bible, "Modified Half-Kelly": full Kelly "has enormous drawdowns". The field let 1.0 through."""
    with pytest.raises(RiskConfigError) as err:
        RiskManager(RiskConfig(kelly_fraction=0.75))
    assert (err.value.key, err.value.value, err.value.limit) == ("kelly_fraction", 0.75, 0.5)
    assert "risk.kelly_fraction = 0.75 loosens the hard limit 0.5" in str(err.value)
    RiskManager(RiskConfig(kelly_fraction=0.25))   # the layer specification's quarter Kelly tightens it


def test_tightening_is_allowed():
    RiskManager(RiskConfig(max_position_pct=1, max_asset_pct=2, max_total_exposure_pct=10,
                           max_trades_per_day=5, max_consecutive_losses=2, max_daily_loss_pct=2,
                           max_drawdown_pct=5))


# --------------------------------------------------------------------------- sizing through evaluate
def test_seed_example_through_evaluate():
    rm = RiskManager(RiskConfig())
    d = rm.evaluate(prop(), SPY, view())
    assert d.approved and d.rule == "max_position_pct"
    assert (d.qty, d.notional_usd) == (D(30), D("3000.00"))
    assert d.details["kelly"] == "20000.00" and d.details["risk_per_trade"] == "50000.00"
    assert d.details["kelly_f_star"] == 0.4 and "max_position_pct" in d.reason


def test_crypto_quantity_rounds_down_to_increment():
    rm = RiskManager(RiskConfig())
    d = rm.evaluate(prop("BTC/USD", entry=61234.5, stop=60009.81, target=63683.88), BTC, view())
    assert d.approved and d.qty == D("0.0489")          # $3,000 / $61,234.50 = 0.04899… → 0.0489
    assert d.qty * D("61234.5") <= D(3000)


def test_below_min_size_is_vetoed_with_numbers():
    rm = RiskManager(RiskConfig())
    d = rm.evaluate(prop(entry=5000.0, stop=4900.0, target=5200.0), SPY, view())
    assert not d.approved and d.rule == "min_size"     # $3,000 buys 0 whole $5,000 shares
    assert "0 SPY ($0.00) after max_position_pct $3000.00" in d.reason
    d = rm.evaluate(prop(min_notional_usd=5000.0), SPY, view())   # the plugin's own floor
    assert d.rule == "min_size" and "min notional $5000.0" in d.reason
    assert rm.veto_counts() == {"min_size": 2}


def test_same_cycle_approvals_reserve_room():
    rm = RiskManager(RiskConfig())
    v = view()
    first, second = rm.evaluate(prop(), SPY, v), rm.evaluate(prop(), SPY, v)
    assert first.notional_usd == D(3000) and second.notional_usd == D(2000)   # 5 % asset cap − $3,000
    assert second.rule == "max_asset_pct"
    third = rm.evaluate(prop(), SPY, v)
    assert not third.approved and third.rule == "max_asset_pct" and "no room" in third.reason


def test_a_short_sale_is_sized_in_whole_shares():
    """Alpaca refuses fractional short sales (NOTES §1.6): a fractionable equity's short rounds down to
    whole shares, a long keeps its fraction."""
    spy = replace(SPY, fractionable=True, qty_increment=D("0.000000001"))
    short = RiskManager(RiskConfig()).evaluate(prop(entry=512.33, stop=522.0, target=490.0, side=Side.SELL), spy, view())
    long = RiskManager(RiskConfig()).evaluate(prop(entry=512.33, stop=502.0, target=530.0), spy, view())
    assert short.approved and short.qty == 5 and short.notional_usd == D("2561.65")
    assert long.approved and long.qty != long.qty.to_integral_value()


def test_a_short_smaller_than_one_share_is_vetoed_not_rounded_up():
    spy = replace(SPY, fractionable=True, qty_increment=D("0.000000001"))
    d = RiskManager(RiskConfig()).evaluate(prop(entry=5000.0, stop=5100.0, target=4800.0, side=Side.SELL), spy, view(equity=50_000))
    assert not d.approved and d.rule == "min_size"


def test_correlation_counts_entries_approved_earlier_in_the_same_cycle(shared_data):
    """BTC and ETH proposed together (FTX week, correlation ≈ 0.9): the second is sized as if the first
    were held -- it will be, once both fill."""
    until = "2022-11-10"
    btc, eth = daily_bars(shared_data, "BTC", until), daily_bars(shared_data, "ETH", until)
    now = datetime(2022, 11, 10, tzinfo=UTC)
    market = MarketSnapshot(now, {"BTC/USD": btc, "ETH/USD": eth})
    rm, v = RiskManager(RiskConfig()), view(now=now)
    first = rm.evaluate(prop("BTC/USD", entry=float(btc.close[-1]), stop=float(btc.close[-1]) * 0.98,
                             target=float(btc.close[-1]) * 1.04), BTC, v, market)
    eth_px = float(eth.close[-1])
    second = rm.evaluate(prop("ETH/USD", entry=eth_px, stop=eth_px * 0.98, target=eth_px * 1.04),
                         replace(BTC, symbol="ETH/USD"), v, market)
    assert first.approved and "corr" not in first.details
    assert second.approved and second.details["corr_mult"] == 0.3 and "BTC/USD" in second.details["corr"]


def test_vetoes_name_rules_and_are_counted():
    rm = RiskManager(RiskConfig(max_trades_per_day=2))
    assert rm.evaluate(prop(conf=0.3), SPY, view()).rule == "kelly"                    # no edge
    assert rm.evaluate(prop("BTC/USD", side=Side.SELL, entry=100, stop=102, target=96), BTC, view()).rule \
        == "not_shortable"
    assert rm.evaluate(prop(), replace(SPY, tradable=False), view()).rule == "not_tradable"
    stale = MarketSnapshot(T0, stale={"SPY": "last bar 5 days old"})
    d = rm.evaluate(prop(), SPY, view(), stale)
    assert d.rule == "stale_data" and "5 days" in d.reason
    rm.on_entry_filled(T0)
    rm.on_entry_filled(T0)
    d = rm.evaluate(prop(), SPY, view())
    assert d.rule == "max_trades_per_day" and "2 trades today >= 2" in d.reason
    assert rm.entries_blocked(T0 + timedelta(days=1)) is None      # a new UTC day resets the count
    rm.kill("operator", T0)
    assert rm.evaluate(prop(), SPY, view(now=T0 + timedelta(days=1))).rule == "kill_switch"
    assert rm.veto_counts() == {"kelly": 1, "not_shortable": 1, "not_tradable": 1, "stale_data": 1,
                                "max_trades_per_day": 1, "kill_switch": 1}


def test_pending_entries_count_toward_the_daily_limit():
    rm = RiskManager(RiskConfig(max_trades_per_day=1))
    v = view()
    assert rm.evaluate(prop(conf=0.35), SPY, v).approved
    assert rm.evaluate(prop("QQQ", conf=0.35), replace(SPY, symbol="QQQ"), v).rule == "max_trades_per_day"


# --------------------------------------------------------------------------- kill switches
def test_daily_loss_kill_and_day_rollover():
    rm = RiskManager(RiskConfig())
    assert rm.on_equity(D(100_000), T0) is None
    assert rm.on_equity(D("95001"), T0 + timedelta(hours=1)) is None        # −4.999 %
    reason = rm.on_equity(D(95_000), T0 + timedelta(hours=2))               # −5.00 %
    assert reason and "daily loss 5.00% >= 5.0%" in reason
    assert rm.kill_requested().startswith("daily_loss:") and rm.entries_blocked(T0) is not None
    assert rm.entries_blocked(T0 + timedelta(days=3)) is not None           # only resume() unblocks


def test_daily_loss_base_is_the_days_first_equity():
    rm = RiskManager(RiskConfig())
    rm.on_equity(D(100_000), T0)
    rm.on_equity(D(96_000), T0 + timedelta(hours=10))        # −4 % on day 1
    day2 = T0 + timedelta(days=1)
    assert rm.on_equity(D(96_000), day2) is None             # day 2 starts at 96,000
    assert rm.on_equity(D(92_000), day2 + timedelta(hours=1)) is None  # −4.17 % on day 2, −8 % from peak
    day3 = day2 + timedelta(days=1)
    assert rm.on_equity(D(92_000), day3) is None
    assert rm.on_equity(D(90_000), day3 + timedelta(hours=2)).startswith("drawdown 10.00% >= 10.0%")


def test_a_fill_stamped_on_an_earlier_day_does_not_rebase_today():
    """A fill reported late (a failed poll page, a start-up catch-up) carries yesterday's time: the day
    must not roll back and forth, or the daily-loss base resets and the kill switch never fires."""
    rm = RiskManager(RiskConfig())
    day2 = T0 + timedelta(days=1)
    rm.on_equity(D(100_000), day2)
    rm.on_entry_filled(day2)
    rm.on_entry_filled(T0 + timedelta(hours=3))              # yesterday's fill, learnt today
    assert rm.state.day == day2.date().isoformat() and rm.state.trades_today == 2
    reason = rm.on_equity(D(94_500), day2 + timedelta(hours=1))
    assert reason and "daily loss 5.50% >= 5.0%" in reason


def test_drawdown_kill_from_peak_over_days():
    rm = RiskManager(RiskConfig())
    for i, eq in enumerate([100_000, 104_000, 110_000, 106_000, 102_000, 100_000]):
        assert rm.on_equity(D(eq), T0 + timedelta(days=i)) is None   # each day within 5 %
    assert "from peak $110000.00" in rm.on_equity(D(99_000), T0 + timedelta(days=6))
    assert rm.state.kill_rule == "drawdown"


def test_resume_rebases_and_keeps_cooldown():
    rm = RiskManager(RiskConfig())
    rm.on_equity(D(100_000), T0)
    rm.on_equity(D(94_000), T0)
    for _ in range(3):
        rm.on_trade_closed(trade("-10"), T0)
    rm.resume(T0)
    assert rm.kill_requested() is None
    assert "cooldown" in rm.entries_blocked(T0 + timedelta(hours=1))
    assert rm.on_equity(D(94_000), T0 + timedelta(hours=1)) is None       # the same loss does not re-kill
    assert rm.state.peak_equity == D(94_000)


def reading(regime: Regime, pct: float | None = None, at=T0) -> RegimeReading:
    return RegimeReading(regime, 0.9, "test", at, {} if pct is None else {"vol_percentile": pct})


def test_extreme_vol_with_regime_break_kills():
    rm = RiskManager(RiskConfig())
    assert rm.on_market(reading(Regime.TRENDING_UP, 0.97), None, T0) is None     # first reading: no break
    assert rm.on_market(reading(Regime.TRENDING_UP, 0.99), None, T0) is None     # extreme, no break
    assert rm.on_market(reading(Regime.UNKNOWN, 0.99), None, T0) is None         # UNKNOWN is not a break
    assert rm.on_market(reading(Regime.HIGH_VOL, 0.90), None, T0) is None        # break, vol not extreme
    r = rm.on_market(reading(Regime.CRASH), 0.96, T0)                             # break + extreme
    assert r and "HIGH_VOL -> CRASH" in r and "96%" in r
    assert rm.state.kill_rule == "extreme_vol_regime_break"
    with pytest.raises(ValueError):
        rm.on_market(reading(Regime.CRASH), 96.0, T0)                             # percent, not fraction
    rm2 = RiskManager(RiskConfig())
    assert rm2.on_market(None, 0.99, T0, regime_break=True)                       # explicit break flag


# --------------------------------------------------------------------------- cooldown and persistence
def test_three_losses_cool_down_for_exactly_four_hours():
    rm = RiskManager(RiskConfig())
    rm.on_trade_closed(trade("-5"), T0)
    rm.on_trade_closed(trade("12"), T0)            # a win resets the streak
    for _ in range(2):
        rm.on_trade_closed(trade("-5"), T0)
    assert rm.entries_blocked(T0) is None
    rm.on_trade_closed(trade("-0.01"), T0)
    end = T0 + timedelta(hours=4)
    assert "cooldown" in rm.entries_blocked(end - timedelta(seconds=1))
    assert rm.evaluate(prop(), SPY, view(now=end - timedelta(seconds=1))).rule == "cooldown"
    assert rm.entries_blocked(end) is None
    assert rm.evaluate(prop(), SPY, view(now=end)).approved


def test_state_round_trip_keeps_everything():
    rm = RiskManager(RiskConfig())
    rm.on_equity(D(100_000), T0)
    rm.on_equity(D(101_500), T0 + timedelta(hours=1))
    rm.on_market(reading(Regime.TRENDING_UP, 0.5), None, T0)
    rm.on_entry_filled(T0)
    for _ in range(3):
        rm.on_trade_closed(trade("-1"), T0)
    rm.on_trade_closed(trade("-1"), T0)
    rm.kill("manual stop from the CLI", T0)
    saved = json.loads(json.dumps(rm.to_state()))
    back = RiskManager(RiskConfig())
    back.load_state(saved)
    assert back.to_state() == saved
    assert back.state == rm.state
    assert saved["peak_equity"] == "101500" and saved["day_start_equity"] == "100000"
    assert saved["trades_today"] == 1 and saved["loss_streak"] == 1 and saved["killed"] is True
    assert saved["cooldown_until"] == (T0 + timedelta(hours=4)).isoformat()
    assert back.kill_requested() == "manual: manual stop from the CLI"


def test_loads_the_interim_state_format():
    rm = RiskManager(RiskConfig())
    rm.load_state({"day": "2024-03-04", "day_start_equity": 100000.0, "trades_today": 3, "killed": True,
                   "kill_reason": "daily loss"})
    assert rm.state.day_start_equity == D("100000.0") and rm.state.trades_today == 3
    assert rm.entries_blocked(T0) is not None


# --------------------------------------------------------------------------- real market data
def daily_bars(folder: Path, base: str, until: str) -> BarSeries:
    import pandas as pd
    df = pd.read_csv(folder / "crypto_perp" / "binance_usdm" / "klines_daily" / f"{base}_USDT_1d.csv")
    df = df[df["datetime"] < until]
    a = lambda c: df[c].to_numpy(dtype=float)  # noqa: E731
    return BarSeries(f"{base}/USD", 86400, df["timestamp"].to_numpy() // 1000, a("open"), a("high"), a("low"),
                     a("close"), a("volume"))


def test_real_btc_eth_crash_scales_down_by_vol_and_correlation(shared_data):
    """Binance USD-M daily closes up to 2022-11-10 (FTX collapse): BTC/ETH 60-day return correlation
    ≈ 0.91 (≥ 0.8 → ×0.3) and ETH's 20-day vol well above its median (vol multiplier < 1)."""
    until = "2022-11-10"
    btc, eth = daily_bars(shared_data, "BTC", until), daily_bars(shared_data, "ETH", until)
    now = datetime(2022, 11, 10, tzinfo=UTC)
    market = MarketSnapshot(now, {"BTC/USD": btc, "ETH/USD": eth})
    eth_px = float(eth.close[-1])
    held = {"BTC/USD": pos("BTC/USD", "0.05", float(btc.close[-1]), now)}
    rm = RiskManager(RiskConfig())
    p = prop("ETH/USD", conf=0.35, entry=eth_px, stop=eth_px * 0.98, target=eth_px * 1.04)
    eth_spec = replace(BTC, symbol="ETH/USD")
    d = rm.evaluate(p, eth_spec, view(now=now, positions=held, marks={"BTC/USD": float(btc.close[-1])}), market)
    assert d.approved and d.rule == "correlation"
    assert d.details["corr_avg_abs"] >= 0.8 and d.details["corr_mult"] == 0.3
    assert 0.25 <= d.details["vol_mult"] < 1.0
    expected = D("1250") * D(repr(d.details["vol_mult"])) * D("0.3")    # Kelly $1,250 × vol × 0.3
    assert abs(d.notional_usd - expected) < D(eth_px) * D("0.0001") + 1


# --------------------------------------------------------------------------- property: simulator
SYMS = {"SPY": SPY, "BTC/USD": BTC, "GLD": replace(SPY, symbol="GLD", shortable=False)}


@dataclass
class Sim:
    """A tiny book: cash plus positions marked at the last price, no fees, fills at the entry price."""

    cfg: RiskConfig
    rng_seed: int
    now: datetime = T0
    cash: Decimal = D(100_000)
    positions: dict = field(default_factory=dict)
    prices: dict = field(default_factory=lambda: {"SPY": 100.0, "BTC/USD": 60_000.0, "GLD": 180.0})
    history: dict = field(default_factory=dict)
    streak: int = 0
    cooldown_end: datetime | None = None   # the simulator's own count, independent of the risk brain

    def __post_init__(self):
        self.rm, self.pm = RiskManager(self.cfg), PositionManager()
        rng = np.random.default_rng(self.rng_seed)
        for s, p in self.prices.items():     # 60 hourly bars of seeded history for vol/corr scaling
            walk = np.cumsum(rng.normal(0, 0.01, 61))
            closes = p * np.exp(walk - walk[-1])             # ends at today's price
            self.history[s] = [(self.now - timedelta(hours=60 - i), float(c)) for i, c in enumerate(closes)]

    def equity(self) -> Decimal:
        return self.cash + sum((p.qty * D(repr(self.prices[s])) for s, p in self.positions.items()), D(0))

    def exposure(self, symbol=None) -> Decimal:
        return sum((abs(p.qty) * D(repr(self.prices[s])) for s, p in self.positions.items()
                    if symbol in (None, s)), D(0))

    def market(self) -> MarketSnapshot:
        bars = {}
        for s, rows in self.history.items():
            ts = np.array([int(t.timestamp()) - 3600 for t, _ in rows])
            c = np.array([c for _, c in rows])
            bars[s] = BarSeries(s, 3600, ts, c, c, c, c, np.ones_like(c))
        return MarketSnapshot(self.now, bars)

    def close(self, symbol: str, reason: str) -> None:
        p = self.positions.pop(symbol)
        px = D(repr(self.prices[symbol]))
        self.cash += p.qty * px
        pnl = p.qty * (px - p.avg_entry_price)
        self.rm.on_trade_closed(ClosedTrade("test", symbol, p.side.value, str(p.qty), "", "", "", "", str(pnl),
                                            "0", 0.0, "UNKNOWN", reason), self.now)
        if pnl < 0:
            self.streak += 1
            if self.streak >= self.cfg.max_consecutive_losses:
                end = self.now + timedelta(hours=4)
                self.cooldown_end, self.streak = max(end, self.cooldown_end or end), 0
                event("cooldown started")
        else:
            self.streak = 0

    def cycle(self) -> None:
        """The engine's order: equity → kill switches → flatten or manage → exits."""
        self.rm.on_equity(self.equity(), self.now)
        kill = self.rm.kill_requested() is not None
        for ex in self.pm.manage(self.positions, self.market(), self.now, kill=kill):
            self.close(ex.symbol, ex.reason)
        if kill:
            event(f"kill {self.rm.state.kill_rule}")
            assert self.positions == {}, "a kill must end flat"
            assert self.rm.entries_blocked(self.now) is not None

    def tick(self, hours: float, moves: tuple[float, float, float]) -> None:
        self.now += timedelta(hours=hours)
        for (s, px), r in zip(list(self.prices.items()), moves):
            self.prices[s] = px * (1 + r)
            self.history[s].append((self.now, self.prices[s]))
        self.cycle()

    def propose(self, symbol, short, conf, rr, stop_pct, cap) -> None:
        px = self.prices[symbol]
        side = Side.SELL if short else Side.BUY
        stop = px * (1 + stop_pct) if short else px * (1 - stop_pct)
        target = px * (1 - min(0.9, stop_pct * rr)) if short else px * (1 + stop_pct * rr)
        held = self.positions.get(symbol)
        if held is not None and held.side is not side:
            return  # the engine never opens against its own position
        p = TradeProposal("test", symbol, side, px, stop, target, conf, timedelta(hours=8), max_notional_usd=cap,
                          trailing_stop_pct=2.0 if conf > 0.7 else None)
        eq = self.equity()
        v = PortfolioView(self.now, eq, max(D(0), eq - self.exposure()), dict(self.positions), dict(self.prices))
        blocked = self.rm.entries_blocked(self.now)
        d = self.rm.evaluate(p, SYMS[symbol], v, self.market())
        assert d.qty >= 0 and d.notional_usd >= 0
        if not d.approved:
            assert d.rule and d.reason
            event(f"veto {d.rule}")
            return
        event(f"approved by {d.rule}")
        assert blocked is None and not self.rm.state.killed
        assert self.cooldown_end is None or self.now >= self.cooldown_end, "entry during a cooldown"
        assert d.qty > 0 and (cap is None or d.qty * D(repr(px)) <= D(repr(cap)))
        pct = eq / 100
        new = d.qty * D(repr(px))
        assert new <= pct * D(repr(self.cfg.max_position_pct))
        qty = d.qty if side is Side.BUY else -d.qty
        if held is None:
            self.positions[symbol] = Position(symbol, qty, D(repr(px)), "test", self.now, stop, target,
                                              trailing_stop_pct=p.trailing_stop_pct, initial_stop_price=stop,
                                              max_holding=timedelta(hours=30))
        else:
            total = held.qty + qty
            held.avg_entry_price = (held.avg_entry_price * held.qty + D(repr(px)) * qty) / total
            held.qty = total
        self.cash -= qty * D(repr(px))
        self.rm.on_entry_filled(self.now)
        # after the trade, at the fill price: every limit holds
        assert self.exposure(symbol) <= pct * D(repr(self.cfg.max_asset_pct))
        assert self.exposure() <= pct * D(repr(self.cfg.max_total_exposure_pct))
        assert self.rm.state.trades_today <= self.cfg.max_trades_per_day

    def restart(self, keep_hwm: bool) -> None:
        saved = json.loads(json.dumps(self.rm.to_state()))
        blocked = self.rm.entries_blocked(self.now)
        self.rm, self.pm = RiskManager(self.cfg), PositionManager()
        self.rm.load_state(saved)
        assert self.rm.to_state() == saved
        assert (self.rm.entries_blocked(self.now) is None) == (blocked is None)
        self.positions = {s: replace(p, high_water_mark=p.high_water_mark if keep_hwm else 0.0)
                          for s, p in self.positions.items()}


pct_move = st.floats(-0.3, 0.2)
PROPOSE = st.tuples(st.just("propose"), st.sampled_from(sorted(SYMS)), st.sampled_from([False, False, True]),
                    st.floats(0.3, 0.95),
                    st.floats(0.5, 4.0), st.floats(0.005, 0.2), st.none() | st.floats(50, 20_000))
TICK = st.tuples(st.just("tick"), st.floats(0.1, 30.0), st.tuples(pct_move, pct_move, pct_move))
LOSS = st.tuples(st.just("loss"))
CRASH = st.tuples(st.just("tick"), st.floats(0.1, 2.0), st.tuples(*[st.floats(-0.6, -0.2)] * 3))
RESUME = st.tuples(st.just("resume"))
OPS = st.one_of(PROPOSE, PROPOSE, PROPOSE, PROPOSE, PROPOSE, PROPOSE, TICK, TICK, TICK, CRASH, LOSS, LOSS,
                st.tuples(st.just("restart"), st.booleans()), st.tuples(st.just("kill")), RESUME, RESUME, RESUME)
CONFIGS = st.builds(RiskConfig, max_position_pct=st.floats(0.5, 3.0), max_asset_pct=st.floats(1.0, 5.0),
                    max_total_exposure_pct=st.floats(2.0, 25.0), max_trades_per_day=st.integers(1, 30),
                    max_consecutive_losses=st.integers(1, 3), cooldown_hours=st.floats(4.0, 8.0),
                    max_daily_loss_pct=st.floats(0.3, 5.0), max_drawdown_pct=st.floats(0.5, 10.0))


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=CONFIGS, seed=st.integers(0, 2**16), ops=st.lists(OPS, min_size=10, max_size=60))
def test_random_sequences_never_break_a_limit(cfg, seed, ops):
    sim = Sim(cfg, seed)
    sim.cycle()
    for op in ops:
        kind = op[0]
        if kind == "propose":
            sim.propose(*op[1:])
        elif kind == "tick":
            sim.tick(*op[1:])
        elif kind == "loss":            # a losing exit the strategy asked for
            losers = [s for s, p in sim.positions.items() if p.qty * (D(repr(sim.prices[s])) - p.avg_entry_price) < 0]
            if losers:
                sim.close(losers[0], "strategy")
        elif kind == "restart":
            sim.restart(op[1])
        elif kind == "kill":
            sim.rm.kill("property test", sim.now)
            sim.cycle()
            assert sim.positions == {} and sim.rm.entries_blocked(sim.now) is not None
        elif kind == "resume":
            sim.rm.resume(sim.now)
        if sim.rm.state.killed:         # a kill holds until an explicit resume
            assert sim.rm.entries_blocked(sim.now) is not None
        if sim.cooldown_end is not None and sim.now < sim.cooldown_end:
            assert sim.rm.entries_blocked(sim.now) is not None, "cooldown released early"
        assert math.isfinite(float(sim.equity())) and sim.equity() > 0


@settings(max_examples=200, deadline=None, derandomize=True)
@given(daily=st.floats(0.3, 5.0), dd=st.floats(0.5, 10.0),
       steps=st.lists(st.tuples(st.floats(0.0, 14.0), st.floats(-0.03, 0.03), st.booleans()), min_size=1,
                      max_size=60))
def test_equity_kill_switches_fire_exactly_and_hold(daily, dd, steps):
    """Against a reference model: the daily-loss and drawdown kills fire at the first equity that
    reaches a limit, never before, and entries stay blocked afterwards, across restarts."""
    cfg = RiskConfig(max_daily_loss_pct=daily, max_drawdown_pct=dd)
    rm, now, eq = RiskManager(cfg), T0, D(100_000)
    day, start, peak, killed = None, None, D(0), False
    for hours, ret, restart in steps:
        now += timedelta(hours=hours)
        eq = (eq * (1 + D(repr(ret)))).quantize(D("0.01"))
        if now.date() != day:
            day, start = now.date(), eq
        peak = max(peak, eq)
        fires = not killed and ((start - eq) / start * 100 >= D(repr(daily)) or
                                (peak - eq) / peak * 100 >= D(repr(dd)))
        reason = rm.on_equity(eq, now)
        assert (reason is not None) == fires, (reason, start, peak, eq)
        killed = killed or fires
        assert (rm.entries_blocked(now) is not None) == killed or rm.state.trades_today >= cfg.max_trades_per_day
        if restart:
            saved = json.loads(json.dumps(rm.to_state()))
            rm = RiskManager(cfg)
            rm.load_state(saved)
        assert (rm.kill_requested() is not None) == killed
