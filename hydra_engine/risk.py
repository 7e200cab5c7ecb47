"""Risk brain (issue #5): the last gate before money moves. "HYDRA prefers not trading over dying."

Seeds: strategy bible, "Risk Management: The Actual Edge" (half-Kelly, volatility scaling, the hard
limits table) and layer specifications, "LAYER 4: RISK BRAIN" (sizing order, correlation penalty,
kill switches). The maths lives in :mod:`hydra_engine.sizing`; this module holds the state.

Every proposal gets either an approved quantity (rounded down with ``AssetSpec.round_qty``) or a veto;
both name the rule (``RiskDecision.rule``) and carry the numbers (``reason``, ``details``).

Engine contract, each cycle (see README "Risk brain"):

1. ``on_equity(equity_usd, now)`` and ``on_market(regime, None, now)``: either may fire a kill switch
   and return its reason;
2. ``kill_requested()`` not None → flatten: ``PositionManager.manage(..., kill=True)`` and submit every
   exit; repeat every cycle until flat (the kill persists until ``resume()``);
3. ``entries_blocked(now)`` not None → skip proposals (kill, cooldown or daily trade count);
4. for each ranked proposal, ``evaluate(proposal, asset, view, market)``; an approval reserves its
   notional in ``view`` so the next proposal in the same cycle sees it;
5. ``on_entry_filled(now)`` once per filled entry order; ``on_trade_closed(trade, now)`` per round trip;
6. persist ``to_state()``; after a restart ``load_state(saved)`` restores kill, peak, day and cooldown.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, Decimal


from .config import RiskConfig
from .domain import ClosedTrade, Position, Regime, RegimeReading, RiskDecision, Side, TradeProposal, require_utc
from .ports import AssetClass, AssetSpec, MarketSnapshot, to_decimal
from .risk_rules import ENTRY_RULES, KILL_SWITCHES, SIZE_MODIFIERS, DailyLoss, Drawdown, ExtremeVolRegimeBreak
from .sizing import CENT, ZERO, SizingInputs, kelly_f, size_notional

HARD_LIMITS = {  # the strategy bible's table: config may lower these ceilings, never raise them
    "max_position_pct": 3.0, "max_asset_pct": 5.0, "max_total_exposure_pct": 25.0,
    "max_trades_per_day": 30, "max_consecutive_losses": 3, "max_daily_loss_pct": 5.0,
    "max_drawdown_pct": 10.0,
    # not in that table, but the bible's sizing is HALF-Kelly ("full Kelly ... has enormous drawdowns"):
    # a larger fraction loosens every Kelly-bound size; the layer spec's quarter Kelly (0.25) tightens it
    "kelly_fraction": 0.5,
}
HARD_FLOORS = {"cooldown_hours": 4.0}  # config may lengthen the cooldown, never shorten it
# kill switches whose firing the replay promise (``RiskManager.horizon_until``) can rule out on a flat book:
# exact types only (a subclass may fire on anything)
HORIZON_SWITCHES = (DailyLoss, Drawdown, ExtremeVolRegimeBreak)


class RiskConfigError(ValueError):
    """A risk setting loosens a hard limit. ``key``, ``value`` and ``limit`` name it."""

    def __init__(self, key: str, value, limit, direction: str):
        self.key, self.value, self.limit = key, value, limit
        super().__init__(f"risk.{key} = {value} loosens the hard limit {limit} (it may only be "
                         f"{direction}); config may tighten the bible's limits, never loosen them")


def check_hard_limits(cfg: RiskConfig) -> None:
    """Refuse at start-up any config that loosens a hard limit (bible: "Cannot Be Overridden")."""
    for key, ceiling in HARD_LIMITS.items():
        if getattr(cfg, key) > ceiling:
            raise RiskConfigError(key, getattr(cfg, key), ceiling, f"<= {ceiling}")
    for key, floor in HARD_FLOORS.items():
        if getattr(cfg, key) < floor:
            raise RiskConfigError(key, getattr(cfg, key), floor, f">= {floor}")


@dataclass(slots=True)
class PortfolioView:
    """What the risk brain sees of the book at ``now``. Exposure counts held positions at their marks
    plus pending (submitted, unfilled) entry notional, so limits hold before fills arrive."""

    now: datetime
    equity_usd: Decimal
    buying_power_usd: Decimal
    positions: dict[str, Position]
    marks: dict[str, float]
    pending_entries_usd: dict[str, Decimal] = field(default_factory=dict)  # symbol -> unfilled entry notional
    pending_entry_count: int = 0                                           # unfilled entry orders
    unpriced: list[str] = field(default_factory=list)   # held or pending symbols without a price this cycle

    @classmethod
    def of(cls, now: datetime, account, open_orders, book, market: MarketSnapshot) -> "PortfolioView":
        """The view at the start of a cycle's filter step: the account, the book's positions at their
        marks, and working entry orders as pending exposure. A price that is missing is never counted as
        $0: the symbol is listed as unpriced and entries are refused (``exposure_unknown``)."""
        pending: dict[str, Decimal] = {}
        count, unpriced = 0, []
        for o in open_orders:
            # after a restart the adapter labels every working order it did not send "entry"; the saved
            # exit reasons know the stops and exits among them (they reduce exposure, never add to it)
            if o.purpose == "entry" and o.client_order_id not in book.exit_reasons:
                price = market.price(o.symbol)
                if not math.isfinite(price):
                    unpriced.append(o.symbol)
                    price = 0.0
                pending[o.symbol] = pending.get(o.symbol, ZERO) + o.qty * to_decimal(price)
                count += 1
        marks = {}
        for s in book.positions:
            price = market.price(s)
            if math.isfinite(price):
                marks[s] = price
            else:
                unpriced.append(s)
        return cls(now, account.equity_usd, account.buying_power_usd, book.positions, marks,
                   pending_entries_usd=pending, pending_entry_count=count, unpriced=unpriced)

    def exposure_usd(self, symbol: str | None = None) -> Decimal:
        total = ZERO
        for sym, pos in self.positions.items():
            if symbol is None or sym == symbol:
                total += abs(pos.qty) * to_decimal(self.marks.get(sym, float(pos.avg_entry_price)))
        for sym, usd in self.pending_entries_usd.items():
            if symbol is None or sym == symbol:
                total += usd
        return total

    def reserve(self, symbol: str, notional_usd: Decimal) -> None:
        """Count an approved, not yet filled entry against the limits (done by ``evaluate``)."""
        self.pending_entries_usd[symbol] = self.pending_entries_usd.get(symbol, ZERO) + notional_usd
        self.buying_power_usd -= notional_usd
        self.pending_entry_count += 1


@dataclass(slots=True)
class RiskState:
    """Everything that must survive a restart. Money is Decimal USD, times UTC."""

    day: str = ""                         # UTC date the daily counters belong to
    day_start_equity: Decimal = ZERO      # first equity seen that UTC day (daily-loss base)
    peak_equity: Decimal = ZERO           # highest equity seen (drawdown base)
    last_equity: Decimal = ZERO
    trades_today: int = 0                 # filled entries this UTC day
    loss_streak: int = 0                  # consecutive losing round trips
    cooldown_until: datetime | None = None
    killed: bool = False
    kill_rule: str = ""                   # daily_loss | drawdown | extreme_vol_regime_break | manual
    kill_reason: str = ""
    killed_at: datetime | None = None
    last_regime: str = ""                 # last known (non-UNKNOWN) regime, for regime breaks


class RiskManager:
    name = "half_kelly_vol_corr"

    def __init__(self, cfg: RiskConfig, *, entry_rules=ENTRY_RULES, size_modifiers=SIZE_MODIFIERS,
                 kill_switches=KILL_SWITCHES, proposal_adjusters=()):
        check_hard_limits(cfg)
        self.cfg = cfg
        # adjusters may only make a proposal safer (perp leverage governance lowers the leverage):
        # ``adjust(rm, proposal, asset, portfolio, market) -> (proposal, details)``, asked before the rules
        self.proposal_adjusters = list(proposal_adjusters)
        self.last_market: MarketSnapshot | None = None   # the snapshot on_market saw (market kill switches)
        self.entry_rules = list(entry_rules)          # vetoes, asked in order
        self.size_modifiers = list(size_modifiers)    # multipliers on the Kelly/risk size
        self.kill_switches = list(kill_switches)
        self.state = RiskState()
        self._vetoes: Counter[str] = Counter()
        self._bindings: Counter[str] = Counter()

    # ------------------------------------------------------------------ accounting
    def _roll_day(self, now: datetime, equity: Decimal | None = None) -> None:
        day = require_utc(now, "now").date().isoformat()
        if day > self.state.day:   # forward only: a fill stamped on an earlier day must not rebase today
            base = equity if equity is not None else self.state.last_equity
            self.state.day, self.state.day_start_equity, self.state.trades_today = day, base, 0

    def on_equity(self, equity_usd: Decimal, now: datetime) -> str | None:
        """Track the day's start, the peak and the last equity; return a kill reason when the
        daily-loss or drawdown-from-peak switch fires now (bible table; status assessment kill list)."""
        eq = to_decimal(equity_usd, "equity_usd")
        self._roll_day(now, eq)
        s = self.state
        if s.day_start_equity <= 0:
            s.day_start_equity = eq
        s.last_equity, s.peak_equity = eq, max(s.peak_equity, eq)
        if s.killed:
            return None
        for switch in self.kill_switches:
            if switch.on == "equity" and (why := switch.fire(self, eq)):
                return self.kill(why, now, rule=switch.name)
        return None

    def on_market(self, regime: RegimeReading | None, realised_vol_percentile: float | None,
                  now: datetime, regime_break: bool | None = None,
                  market: MarketSnapshot | None = None) -> str | None:
        """Kill on "regime break + extreme vol" (layer spec, Kill Switches).

        ``realised_vol_percentile`` is a fraction in [0, 1] (where current realised volatility ranks in
        its own history); None reads ``regime.details["vol_percentile"]`` (the TrendVolRule detector
        provides it). ``regime_break`` None means: the regime differs from the last known one (UNKNOWN
        readings neither break nor reset). Returns the kill reason when it fires now."""
        s = self.state
        self.last_market = market
        pct = realised_vol_percentile
        if pct is None and regime is not None:
            pct = regime.details.get("vol_percentile")
        if pct is not None and not 0.0 <= float(pct) <= 1.0:
            raise ValueError(f"realised_vol_percentile must be a fraction in [0, 1], got {pct!r}")
        known = regime is not None and regime.regime is not Regime.UNKNOWN
        if regime_break is None:
            regime_break = known and bool(s.last_regime) and regime.regime.value != s.last_regime
        previous = s.last_regime
        if known:
            s.last_regime = regime.regime.value
        if s.killed:
            return None
        for switch in self.kill_switches:
            if switch.on == "market" and (why := switch.fire(self, regime, pct, regime_break, previous)):
                return self.kill(why, now, rule=switch.name)
        return None

    def kill(self, reason: str, now: datetime | None = None, rule: str = "manual") -> str:
        """Trip the kill switch (the first cause is kept). Entries stay blocked and the engine keeps
        flattening until :meth:`resume`. Returns the active kill reason."""
        s = self.state
        if not s.killed:
            s.killed, s.kill_rule, s.kill_reason, s.killed_at = True, rule, reason, now
        return s.kill_reason

    def resume(self, now: datetime | None = None) -> None:
        """Explicit operator resume. The peak and the day's start are rebased to the last equity so the
        same loss does not trip the switch again at once; a running cooldown is NOT cleared."""
        s = self.state
        s.killed, s.kill_rule, s.kill_reason, s.killed_at = False, "", "", None
        if s.last_equity > 0:
            s.peak_equity = s.day_start_equity = s.last_equity

    def kill_requested(self) -> str | None:
        """Non-None while killed: the engine must flatten everything (every cycle, until flat)."""
        return f"{self.state.kill_rule}: {self.state.kill_reason}" if self.state.killed else None

    @property
    def pending_flatten(self) -> bool:
        return self.state.killed

    def _blocked(self, now: datetime) -> tuple[str, str] | None:
        self._roll_day(now)
        s = self.state
        if s.killed:
            return "kill_switch", f"kill switch ({s.kill_rule}): {s.kill_reason}"
        if s.cooldown_until is not None and now < s.cooldown_until:
            left = (s.cooldown_until - now).total_seconds() / 3600
            return "cooldown", (f"cooldown after {self.cfg.max_consecutive_losses} consecutive losses until "
                                f"{s.cooldown_until.isoformat()} ({left:.2f} h left)")
        if s.trades_today >= self.cfg.max_trades_per_day:
            return "max_trades_per_day", f"{s.trades_today} trades today >= {self.cfg.max_trades_per_day}"
        return None

    def blocked(self, now: datetime) -> tuple[str, str] | None:
        """(rule, reason) when no entry may be taken now -- kill switch, cooldown, the day's trade count."""
        return self._blocked(now)

    def entries_blocked(self, now: datetime) -> str | None:
        """Why no entry may be taken now (kill, cooldown, day's trade count), or None."""
        blocked = self._blocked(now)
        return blocked[1] if blocked else None

    def on_entry_filled(self, now: datetime) -> None:
        """Call once per entry order that (first) fills: counts toward the daily trade limit."""
        self._roll_day(now)
        self.state.trades_today += 1

    def on_trade_closed(self, trade: ClosedTrade, now: datetime) -> None:
        """A losing round trip (pnl_usd < 0) extends the streak, anything else resets it; at
        ``max_consecutive_losses`` entries pause for ``cooldown_hours`` (bible: 3 losses → 4 hours)."""
        s = self.state
        if to_decimal(trade.pnl_usd, "pnl_usd") < 0:
            s.loss_streak += 1
            if s.loss_streak >= self.cfg.max_consecutive_losses:
                until = require_utc(now, "now") + timedelta(hours=self.cfg.cooldown_hours)
                s.cooldown_until = max(until, s.cooldown_until) if s.cooldown_until else until
                s.loss_streak = 0
        else:
            s.loss_streak = 0

    def veto_counts(self) -> dict[str, int]:
        """Vetoes per rule in this process's run (for the run summary; not persisted)."""
        return dict(self._vetoes)

    def binding_counts(self) -> dict[str, int]:
        """Approvals per binding rule in this run."""
        return dict(self._bindings)

    # ------------------------------------------------------------------ event-horizon replay
    def horizon_until(self, engine, now: datetime) -> datetime | None:
        """Event-horizon replay (``hydra_engine/horizon.py``): the earliest time this layer could act
        (fire a kill switch or block entries), or None for "no promise" (the next tick is visited).

        Promised only on a flat book: the equity is then the constant cash, so the daily-loss and
        drawdown switches see the same equity as at ``now`` (a day roll only rebases the day's start to
        that same equity: a loss of 0); the regime-break switch needs a changed label (the regime promise
        rules that out). Killed or blocked (cooldown, the day's trade count) is promised too (issue #24):
        a kill stops the switches (``on_equity``/``on_market`` only keep the accounts then), a block only
        changes with time (the cooldown's end, the day roll), and the skipped cycles' mode and note are
        the gate's, asked per skipped tick (``horizon.catch_up``); a kill's automatic resume is the kill
        log's promise (``KillLog.horizon_until``). Any other kill switch, a held position, or an equity
        other than the one ``on_equity`` last saw: no promise.
        The skipped ticks' effect on the state is :meth:`horizon_catch_up`."""
        cls = type(self)
        if (cls.on_equity, cls.on_market, cls._blocked, cls._roll_day) != (
                RiskManager.on_equity, RiskManager.on_market, RiskManager._blocked, RiskManager._roll_day):
            return None   # a subclass that checks otherwise: its own promise or none
        s = self.state
        if engine.book.positions:
            return None
        if not s.killed and any(type(sw) not in HORIZON_SWITCHES for sw in self.kill_switches):
            return None   # killed: on_equity / on_market return before asking any switch
        if engine.broker.account().equity_usd != s.last_equity:
            return None
        return datetime.max.replace(tzinfo=now.tzinfo) - timedelta(days=2)

    def horizon_catch_up(self, engine, now: datetime, market: MarketSnapshot) -> str | None:
        """The state the skipped ticks up to ``now`` (the last one, with its snapshot ``market``) leave, as
        running ``on_equity`` and ``on_market`` on each would: with a constant equity and regime label
        those calls are idempotent except for the day roll, whose base is that same equity, so the last
        tick's calls reproduce it exactly (day, day start, trade count, peak, last equity, last regime,
        last snapshot). Returns a kill reason if one fired (the promise was wrong: the driver stops)."""
        why = self.on_equity(engine.broker.account().equity_usd, now)
        return why or self.on_market(engine.regime, engine._vol_percentile(market), now, market=market)

    # ------------------------------------------------------------------ persistence
    def to_state(self) -> dict:
        """JSON-ready snapshot of everything in :class:`RiskState` (Decimal and datetimes as strings)."""
        out = {}
        for key in RiskState.__slots__:
            value = getattr(self.state, key)
            out[key] = value.isoformat() if isinstance(value, datetime) else (
                str(value) if isinstance(value, Decimal) else value)
        return {"version": 2, **out}

    def load_state(self, data: dict) -> None:
        """Restore :meth:`to_state` output (also the interim version-less dict)."""
        fresh = RiskState()
        for key in RiskState.__slots__:
            if key not in data or data[key] is None:
                continue
            default, value = getattr(fresh, key), data[key]
            if isinstance(default, Decimal):
                value = to_decimal(value, key)
            elif key in ("cooldown_until", "killed_at"):
                value = require_utc(datetime.fromisoformat(value) if isinstance(value, str) else value, key)
            setattr(fresh, key, value)
        self.state = fresh

    # ------------------------------------------------------------------ sizing
    def _veto(self, proposal: TradeProposal, rule: str, reason: str, details: dict | None = None) -> RiskDecision:
        self._vetoes[rule] += 1
        return RiskDecision(proposal, False, rule=rule, reason=f"veto {rule}: {reason}", details=details or {})

    def evaluate(self, proposal: TradeProposal, asset: AssetSpec, portfolio: PortfolioView,
                 market: MarketSnapshot | None = None) -> RiskDecision:
        """Approve a rounded quantity or veto, naming the rule and the numbers. With ``market`` the
        size is scaled by the symbol's realised volatility (``market.bars[symbol].close``) and by its
        return correlation with the open positions; without it both multipliers are 1."""
        cfg = self.cfg
        adjusted: dict = {}
        for adjuster in self.proposal_adjusters:
            proposal, note = adjuster.adjust(self, proposal, asset, portfolio, market)
            adjusted.update(note)
        for rule in self.entry_rules:
            veto = rule.check(self, proposal, asset, portfolio, market)
            if veto:
                return self._veto(proposal, *veto)
        equity = portfolio.equity_usd
        mults = {"vol_mult": 1.0, "corr_mult": 1.0}
        info: dict = {}
        for modifier in self.size_modifiers:
            mult, details = modifier.multiplier(self, proposal, portfolio, market)
            mults[modifier.field] = mults.get(modifier.field, 1.0) * mult
            info.update(details)
        vol_mult, corr_mult = mults["vol_mult"], mults["corr_mult"]
        inputs = SizingInputs(
            equity_usd=equity, buying_power_usd=portfolio.buying_power_usd, win_prob=proposal.confidence,
            reward_risk=proposal.reward_risk, stop_distance=proposal.stop_distance_pct,
            kelly_fraction=cfg.kelly_fraction, risk_per_trade_pct=cfg.risk_per_trade_pct,
            max_position_pct=cfg.max_position_pct, max_asset_pct=cfg.max_asset_pct,
            max_total_exposure_pct=cfg.max_total_exposure_pct,
            asset_exposure_usd=portfolio.exposure_usd(proposal.symbol), total_exposure_usd=portfolio.exposure_usd(),
            buying_power_buffer_pct=cfg.buying_power_buffer_pct, vol_mult=vol_mult, corr_mult=corr_mult,
            max_notional_usd=None if proposal.max_notional_usd is None else to_decimal(proposal.max_notional_usd))
        result = size_notional(inputs)
        details = {**result.details(), "equity_usd": str(equity.quantize(CENT)),
                   "win_prob": proposal.confidence, "reward_risk": round(proposal.reward_risk, 4),
                   "stop_distance_pct": round(proposal.stop_distance_pct * 100, 4),
                   "kelly_f_star": round(kelly_f(proposal.confidence, proposal.reward_risk), 6),
                   "kelly_fraction": cfg.kelly_fraction, "vol_mult": round(vol_mult, 4), "corr_mult": corr_mult,
                   **info, **adjusted, "binding": result.rule}
        rule, notional = result.rule, result.notional_usd
        if notional <= 0:
            why = ("no edge: Kelly f* = 0" if rule == "kelly"
                   else f"no room under {rule} (${result.candidates[rule].quantize(CENT)})")
            return self._veto(proposal, rule, why, details)
        price = to_decimal(proposal.entry_price, "entry_price")
        qty = asset.round_qty(notional / price)
        if proposal.side is Side.SELL and asset.asset_class is AssetClass.EQUITY:
            qty = qty.to_integral_value(rounding=ROUND_DOWN)   # no fractional short sales (NOTES §1.6)
        final = qty * price
        details.update(price=str(price), qty=str(qty))
        if qty <= 0 or qty < asset.min_order_size or final < to_decimal(proposal.min_notional_usd):
            return self._veto(proposal, "min_size", f"{qty} {asset.symbol} (${final.quantize(CENT)}) after "
                              f"{rule} ${notional.quantize(CENT)} is below the minimum (min qty "
                              f"{asset.min_order_size}, min notional ${proposal.min_notional_usd})", details)
        self._bindings[rule] += 1
        portfolio.reserve(proposal.symbol, final)
        return RiskDecision(proposal, True, qty=qty, notional_usd=final.quantize(CENT, ROUND_DOWN), rule=rule,
                            reason=(f"sized by {rule}: {qty} {asset.symbol} = ${final.quantize(CENT)} "
                                    f"(kelly ${result.candidates['kelly'].quantize(CENT)}, risk_per_trade "
                                    f"${result.candidates['risk_per_trade'].quantize(CENT)}, vol x{vol_mult:.2f}, "
                                    f"corr x{corr_mult}, cap {rule} ${notional.quantize(CENT)})"),
                            details=details)
