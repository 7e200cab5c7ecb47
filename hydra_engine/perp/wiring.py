"""The perp module in the composition root: the simulated USD-M account beside the Alpaca (or simulated)
book behind one :class:`~hydra_engine.venues.VenueRouter`, the perp instruments, and the perp members
of the entry gate and of the risk lists. ``app.py`` calls :func:`build_perp_module` when
``perps.enabled``; nothing else in the engine knows about perps.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

from ..domain import UTC, Instrument, InstrumentKind
from ..risk import RiskManager
from ..risk_rules import ENTRY_RULES, KILL_SWITCHES, SIZE_MODIFIERS
from ..venues import VenueRouter
from .bars import PerpBars
from .funding import load_funding_history
from .governance import LeverageGovernance, LiquidationBuffer, PerpFundingSpikeKill, PerpKillRule, PerpSizing
from .margin import load_brackets
from .tradability import perp_gate_rules
from .venue import DEFAULT_PERP_SPECS, SimulatedPerpVenue

PERP_VENUE = "perp"
USDM_DIR = Path("crypto_perp/binance_usdm")


@dataclass
class PerpModule:
    venue: SimulatedPerpVenue
    router: VenueRouter
    instruments: dict[str, Instrument]
    gate_rules: list = field(default_factory=list)
    risk_kwargs: dict = field(default_factory=dict)


def perp_instruments(settings, brackets) -> dict[str, Instrument]:
    out = {}
    for s in settings.perps.symbols:
        first = brackets[s].tiers[0]
        cap = min(settings.perps.max_leverage, brackets[s].max_leverage)
        out[s] = Instrument(s, InstrumentKind.PERP, venue=PERP_VENUE, max_leverage=float(cap),
                            initial_margin_rate=1.0 / cap, maintenance_margin_rate=float(first.maint_margin_rate),
                            funding_interval=timedelta(hours=8))
    return out


def perp_risk_manager(settings, brackets) -> RiskManager:
    p = settings.perps
    symbols = p.symbols
    kills = (PerpFundingSpikeKill(symbols),) if p.kill_switches else ()
    return RiskManager(settings.risk, entry_rules=(*ENTRY_RULES, LiquidationBuffer(symbols, brackets, p.liquidation_buffer)),
                       size_modifiers=(*SIZE_MODIFIERS, PerpSizing(symbols)), kill_switches=(*KILL_SWITCHES, *kills),
                       proposal_adjusters=(LeverageGovernance(symbols, brackets, base=p.base_leverage,
                                                              max_leverage=p.max_leverage),))


def build_perp_venue(settings, *, market, folder: Path, start: datetime | None = None, end: datetime | None = None,
                     brackets=None) -> SimulatedPerpVenue:
    """The simulated USD-M account of ``[perps]`` over ``market`` (also used alone by the perp benchmarks)."""
    p = settings.perps
    brackets = brackets if brackets is not None else load_brackets()
    from ..data.catalog import BAR_SOURCES
    usdm = Path(folder) / USDM_DIR
    funding = {s: load_funding_history(s, usdm) for s in p.symbols}
    # the wick bars: a day before the span (a fill's own bar) to the end
    lo = start - timedelta(days=1) if start else None
    bars = PerpBars.from_sources(folder, {s: BAR_SOURCES[s] for s in p.symbols}, start=lo, end=end)
    return SimulatedPerpVenue(market, funding, starting_balance_usdt=Decimal(repr(p.starting_balance_usdt)),
                              bars=bars, brackets={s: brackets[s] for s in p.symbols},
                              assets={s: DEFAULT_PERP_SPECS[s] for s in p.symbols},
                              taker_fee_bps=Decimal(repr(p.taker_fee_bps)), maker_fee_bps=Decimal(repr(p.maker_fee_bps)),
                              slippage_bps=Decimal(repr(p.slippage_bps)))


def build_perp_module(settings, *, market, folder: Path, main_broker, main_venue: str = "alpaca",
                      start: datetime | None = None, end: datetime | None = None) -> PerpModule:
    """The simulated perp account over the replay ``market`` (fills at the next bar's open, liquidation on
    the bars' highs and lows from the kline files, funding at the real settlements under ``folder``)."""
    p = settings.perps
    brackets = load_brackets()
    venue = build_perp_venue(settings, market=market, folder=folder, start=start, end=end, brackets=brackets)
    instruments = perp_instruments(settings, brackets)
    worked = venue
    if p.post_only_entries or p.post_only_exits or p.twap_volume_share > 0:   # issue #20 (g)
        from .execution import ExecutionConfig, PerpExecution
        worked = PerpExecution(venue, ExecutionConfig.from_settings(p))
    router = VenueRouter({main_venue: main_broker, PERP_VENUE: worked}, instruments, default=main_venue)
    rules = [*perp_gate_rules(p.symbols)]
    if p.kill_switches:
        rules.append(PerpKillRule(p.symbols))
    return PerpModule(venue, router, instruments, rules, {"risk": perp_risk_manager(settings, brackets)})


def replay_span(market) -> tuple[datetime | None, datetime | None]:
    start = getattr(market, "start", None)
    end = getattr(market, "end", None)
    return start, (end + timedelta(days=1) if end else None)
