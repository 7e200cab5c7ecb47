"""Position manager (issue #5): protects every open trade with its stop, target, trailing stop and
time limit, and flattens everything on a kill. It only decides; the engine turns each
:class:`ExitInstruction` into an order and records ``reason`` as the trade's exit reason.

Seeds: strategy bible, the loop's step 8 "MANAGE — stop/target/trailing stop"; layer specifications,
"Kill Switches" (immediate flattening). Checks run identically in backtest, simulation and paper trading.

Exits inside the bar (issue #17). Each bar that closed since the last check (and opened at or after the
entry) is walked as a resting stop and target order would see it: the open first (a bar that *opens*
beyond the stop exits at that open: the gap), then the adverse extreme against the stop in force at the
open and the favourable extreme against the target (both touched in one bar: the stop, the pessimistic
reading), then the trail ratchets on the favourable extreme (the high for a long), and a close beyond the
ratcheted stop exits at that stop (the close certainly came after the high). A low beyond the ratcheted
stop with the close back inside is undecidable from one bar: no exit, unless finer bars of the symbol
(``MarketSnapshot.fine_path``: BTC 5-minute, SPY 1-minute) replay the path, which is also asked when the
stop and target share a bar. The exit carries the level it triggered at (``fill_price``: the stop, the
target, or the open when gapped) and the simulated broker fills it there, in the bar that triggered it; a
venue that does not know it (Alpaca) sends a market order, as before. Without bars the last close decides
and the exit fills at the next open. A close-only series (open = high = low = close) reduces to
close-to-close: a close beyond the stop exits at that close.

Trailing stops ratchet: the high-water mark (highest close since entry; lowest for shorts) only
improves, and the stop only moves toward the price, never away. A position may trail by a percentage
(``trailing_stop_pct``), by an ATR multiple (``trailing_atr_mult``, ATR = mean true range over
``atr_period`` bars of the symbol's series, in price units) or both, in which case the tighter wins.
Positions restored after a restart with ``high_water_mark == 0`` rebuild it from the closes since
``opened_at`` (never before entry, never past ``now``), falling back to the entry price.
"""
from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from .domain import AssetClass, OrderType, Position
from .ports import AssetSpec, BarSeries, MarketSnapshot

EXIT_REASONS = ("kill", "stop", "trailing_stop", "target", "time", "strategy")


@dataclass(frozen=True, slots=True)
class ExitInstruction:
    symbol: str
    reason: str          # one of EXIT_REASONS: the trade's exit_reason
    trigger_price: float  # the price that triggered it (NaN for a kill without a usable price)
    detail: str = ""
    # the level a resting order would have filled at inside the bar that triggered it (the stop, the target,
    # or the bar's open when it gapped through); None: a market exit at the next price
    fill_price: float | None = None
    fill_kind: str = ""   # "stop" (adverse: a stop order) or "limit" (the target) when fill_price is set


def average_true_range(high: np.ndarray, low: np.ndarray, close: np.ndarray, period: int = 14) -> float | None:
    """Mean true range over the last ``period`` bars (price units); None with too few bars."""
    if len(close) < period + 1:
        return None
    h, lo, c = (np.asarray(a[-(period + 1):], dtype=float) for a in (high, low, close))
    tr = np.maximum(h[1:] - lo[1:], np.maximum(np.abs(h[1:] - c[:-1]), np.abs(lo[1:] - c[:-1])))
    value = float(np.mean(tr))
    return value if math.isfinite(value) and value > 0 else None


def trailing_candidate(long: bool, high_water: float, pct: float | None, atr_mult: float | None,
                       atr: float | None) -> float | None:
    """The stop the trailing rules ask for at ``high_water`` (the tighter of percent and ATR)."""
    cands = []
    if pct:
        cands.append(high_water * (1 - pct / 100) if long else high_water * (1 + pct / 100))
    if atr_mult and atr:
        cands.append(high_water - atr_mult * atr if long else high_water + atr_mult * atr)
    if not cands:
        return None
    return max(cands) if long else min(cands)


def uses_native_trailing(asset: AssetSpec, trailing_stop_pct: float | None) -> bool:
    """True when the broker can hold the trail itself: an equity with a percent trail (Alpaca's
    ``trailing_stop`` order with ``trail_percent``). Crypto and ATR trails are engine-managed. The
    engine decides whether to use it (e.g. only on the Alpaca broker) and passes those symbols to
    :meth:`PositionManager.manage` as ``native_stops``."""
    return (asset.asset_class is AssetClass.EQUITY and bool(trailing_stop_pct) and trailing_stop_pct > 0
            and (not asset.order_types or OrderType.TRAILING_STOP in asset.order_types))


@dataclass(slots=True)
class BarStep:
    """What one bar did to a position: an exit (``event`` "stop"/"target", at ``fill``) or none, the stop
    and high-water mark after it, and whether one bar could not tell the order of its extremes."""
    event: str | None
    fill: float | None
    stop: float
    hwm: float
    ambiguous: bool = False
    gapped: bool = False


def bar_step(long: bool, o: float, h: float, lo: float, c: float, stop: float, target: float, hwm: float,
             trail_pct: float | None, atr_mult: float | None, atr: float | None) -> BarStep:
    """Walk one bar as resting orders see it (module docstring): open, extremes, ratchet, close."""
    def stop_hit(x: float) -> bool:
        return x <= stop if long else x >= stop

    def target_hit(x: float) -> bool:
        return x >= target if long else x <= target

    fav, adv = (h, lo) if long else (lo, h)
    if stop_hit(o):
        return BarStep("stop", o, stop, hwm, gapped=True)
    if target_hit(o):
        return BarStep("target", o, stop, hwm, gapped=True)
    s_hit, t_hit = stop_hit(adv), target_hit(fav)
    if s_hit:   # with the target also touched: the pessimistic reading, unless finer bars say otherwise
        return BarStep("stop", stop, stop, hwm, ambiguous=t_hit)
    if t_hit:
        return BarStep("target", target, stop, hwm)
    hwm = max(hwm, fav) if long else min(hwm, fav)
    ambiguous = False
    if trail_pct or atr_mult:
        cand = trailing_candidate(long, hwm, trail_pct, atr_mult, atr)
        if cand is not None:
            new = max(stop, cand) if long else min(stop, cand)
            if new != stop:
                stop = new
                if stop_hit(c):      # the close came after the high: it crossed the ratcheted stop
                    return BarStep("stop", stop, stop, hwm)
                ambiguous = stop_hit(adv)   # the low before or after the high? one bar cannot say
    return BarStep(None, None, stop, hwm, ambiguous)


def walk_path(long: bool, path, stop: float, target: float, hwm: float, trail_pct, atr_mult, atr) -> BarStep:
    """:func:`bar_step` over consecutive bars (a finer path); the first exit ends it."""
    step = BarStep(None, None, stop, hwm)
    for o, h, lo, c in path:
        step = bar_step(long, o, h, lo, c, step.stop, target, step.hwm, trail_pct, atr_mult, atr)
        if step.event:
            return step
    return BarStep(None, None, step.stop, step.hwm)


class PositionManager:
    def __init__(self, atr_period: int = 14):
        self.atr_period = atr_period
        self._scanned: dict[str, tuple[float, int]] = {}   # symbol -> (opened_at s, newest bar open s walked)
        self.fine_resolutions = 0                          # bars a finer path decided (reported by backtests)

    def _atr(self, bars: BarSeries | None) -> float | None:
        if bars is None:
            return None
        return average_true_range(bars.high, bars.low, bars.close, self.atr_period)

    @staticmethod
    def restore_high_water(pos: Position, bars: BarSeries | None, now: datetime) -> None:
        """Rebuild an unset (0) high-water mark from the highs (lows for a short) of the bars held
        through since entry, else the entry price."""
        entry, long = float(pos.avg_entry_price), pos.qty > 0
        hwm = entry
        if bars is not None and len(bars):
            closes_at = bars.ts + bars.interval_s
            mask = (closes_at > pos.opened_at.timestamp()) & (closes_at <= now.timestamp())
            seen = (bars.high if long else bars.low)[mask & (bars.ts >= pos.opened_at.timestamp())]
            seen = seen[np.isfinite(seen) & (seen > 0)]
            if len(seen):
                hwm = max(entry, float(seen.max())) if long else min(entry, float(seen.min()))
        pos.high_water_mark = hwm

    def update_high_water(self, pos: Position, price: float, atr: float | None = None) -> bool:
        """Move the high-water mark with ``price`` and ratchet the trailing stop (never loosened).
        Returns True when the stop moved."""
        long = pos.qty > 0
        hwm = pos.high_water_mark or price
        pos.high_water_mark = max(hwm, price) if long else min(hwm, price)
        if not (pos.trailing_stop_pct or pos.trailing_atr_mult):
            return False   # no trailing rule: only the mark moves (the common case, every cycle)
        cand = trailing_candidate(long, pos.high_water_mark, pos.trailing_stop_pct, pos.trailing_atr_mult, atr)
        if cand is None:
            return False
        new = max(pos.stop_price, cand) if long else min(pos.stop_price, cand)
        moved, pos.stop_price = new != pos.stop_price, new
        return moved

    def scan_bars(self, symbol: str, pos: Position, market: MarketSnapshot, now: datetime,
                  atr: float | None) -> ExitInstruction | None:
        """Walk the bars of ``symbol`` that closed since the last walk and opened at or after the entry
        (module docstring); ratchet the position's trail and high-water mark as they go. Returns the exit
        one of them triggered, with its fill level, or None."""
        opened_s = pos.opened_at.timestamp()
        seen = self._scanned.get(symbol)
        after = seen[1] if seen is not None and seen[0] == opened_s else -math.inf
        since = max(opened_s, after + 1) if after > -math.inf else opened_s
        rows = market.rows_since(symbol, since) if market.rows_since is not None else market.bars_since(symbol, since)
        if rows is None:
            return None
        if after == -math.inf:
            # first sight of this position: only its newest closed bar. In a replay that is the bar it was
            # filled in; after a restart, the older bars are summed up in the restored stop and high-water
            # mark, and walking them again would set the ratcheted stop against lows that came before it
            rows = rows[-1:]
        long = pos.qty > 0
        hwm = pos.high_water_mark or float(pos.avg_entry_price)
        stop, target = pos.stop_price, pos.target_price
        trail, mult = pos.trailing_stop_pct, pos.trailing_atr_mult
        fine = getattr(market, "fine_path", None)
        for open_s, o, h, lo, c in rows:   # a snapshot holds closed bars only
            if not (0 < o < math.inf and 0 < h < math.inf and 0 < lo < math.inf and 0 < c < math.inf):
                continue
            if not (trail or mult) and (stop < lo and stop < o and h < target and o < target if long else
                                        stop > h and stop > o and lo > target and o > target):
                # float pre-check: neither level reached at the open or the extremes, no trail to ratchet --
                # exactly bar_step's "no event" answer, without building it (most bars of a held position)
                self._scanned[symbol] = (opened_s, open_s)
                hwm = max(hwm, h) if long else min(hwm, lo)
                continue
            self._scanned[symbol] = (opened_s, open_s)
            step = bar_step(long, o, h, lo, c, stop, target, hwm, trail, mult, atr)
            resolved = ""
            # finer bars, where the data has them, decide an undecidable bar and say whether a stop or
            # target touched in it was touched continuously or jumped through (a finer bar's open beyond it)
            if fine is not None and (step.ambiguous or (step.event and not step.gapped)):
                interval_s = market.bars[symbol].interval_s   # (a daily bar's interval is not its session)
                path = fine(symbol, open_s, min(open_s + interval_s, int(now.timestamp())), (o, h, lo, c))
                if path:
                    step = walk_path(long, path, stop, target, hwm, trail, mult, atr)
                    self.fine_resolutions += 1
                    resolved = f" (resolved on {len(path)} finer bars)"
            if step.event is None:
                stop, hwm = step.stop, step.hwm
                continue
            pos.high_water_mark = step.hwm
            moved = step.stop != pos.initial_stop_price
            pos.stop_price = step.stop
            when = datetime.fromtimestamp(open_s, now.tzinfo)
            if step.event == "target":
                return ExitInstruction(symbol, "target", step.fill, (
                    f"bar {when:%Y-%m-%d %H:%M} {'opened at' if step.gapped else 'reached'} {step.fill:g}, "
                    f"target {target:g}{resolved}"), fill_price=step.fill, fill_kind="limit")
            reason = "trailing_stop" if moved else "stop"
            how = (f"opened at {step.fill:g} beyond" if step.gapped else
                   f"{'low' if long else 'high'} {(lo if long else h):g} crossed")
            both = " (target also touched: the stop, pessimistically)" if step.ambiguous and not resolved else ""
            return ExitInstruction(symbol, reason, step.fill, (
                f"bar {when:%Y-%m-%d %H:%M} {how} {'trailing ' if moved else ''}stop {step.stop:g} "
                f"(high-water {step.hwm:g}){both}{resolved}"), fill_price=step.fill, fill_kind="stop")
        if (pos.trailing_stop_pct or pos.trailing_atr_mult) and stop != pos.stop_price:
            pos.stop_price = stop
        pos.high_water_mark = hwm
        return None

    def manage(self, positions: dict[str, Position], market: MarketSnapshot, now: datetime,
               kill: bool = False, native_stops: Collection[str] = ()) -> list[ExitInstruction]:
        """Exit decisions for this cycle, at most one per position, in priority order
        kill > stop / trailing_stop > target > time. ``kill=True`` exits everything with reason "kill"
        (even without a price). Symbols in ``native_stops`` have a trailing stop held by the broker: the
        manager keeps their mirror stop up to date and leaves the stop exit to the broker once the trail
        has passed the plan's fixed stop; before that the fixed stop is the tighter one and exits here."""
        exits: list[ExitInstruction] = []
        for symbol, pos in positions.items():
            qty = pos.qty
            if qty == 0:
                continue
            price = market.price(symbol)
            valid = 0 < price < math.inf   # finite and positive (NaN compares False)
            if kill:
                exits.append(ExitInstruction(symbol, "kill", price if valid else math.nan, "kill switch: flatten"))
                continue
            if not valid:
                continue  # no trustworthy price: keep the stop where it is, decide next cycle
            if not pos.initial_stop_price:
                pos.initial_stop_price = pos.stop_price
            if pos.high_water_mark <= 0:
                self.restore_high_water(pos, market.bars.get(symbol), now)
            long = qty > 0
            atr = self._atr(market.bars.get(symbol)) if pos.trailing_atr_mult else None
            if symbol not in native_stops:   # a broker-held trail is the broker's to trigger
                inside = self.scan_bars(symbol, pos, market, now, atr)
                if inside is not None:
                    exits.append(inside)
                    continue
            # the bar history is read only when a rule needs it (a snapshot may build it on demand)
            self.update_high_water(pos, price, atr)
            moved = pos.stop_price != pos.initial_stop_price
            # a broker-held trail protects only from its own level: until the trail passes the plan's fixed
            # stop (the mirror has not moved), the fixed stop is the tighter one and is enforced here
            if (symbol not in native_stops or not moved) and ((long and price <= pos.stop_price) or
                                                              (not long and price >= pos.stop_price)):
                exits.append(ExitInstruction(symbol, "trailing_stop" if moved else "stop", price,
                                             f"price {price:g} crossed {'trailing ' if moved else ''}stop "
                                             f"{pos.stop_price:g} (high-water {pos.high_water_mark:g})"))
            elif (long and price >= pos.target_price) or (not long and price <= pos.target_price):
                exits.append(ExitInstruction(symbol, "target", price,
                                             f"price {price:g} reached target {pos.target_price:g}"))
            elif pos.max_holding is not None and now - pos.opened_at >= pos.max_holding:
                exits.append(ExitInstruction(symbol, "time", price, f"held {now - pos.opened_at} >= {pos.max_holding}"))
        return exits
