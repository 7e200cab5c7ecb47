"""The perp module in paper (and live) sessions: the simulated USD-M account marked with live public
Binance data, or the Binance USD-M demo account (``perps.execution``), beside Alpaca behind one
:class:`~hydra_engine.venues.VenueRouter`.

Public data (no key): ``/fapi/v1/klines`` hourly bars for the engine's snapshot (the replay layout:
hourly bars keyed by their open time, only closed ones), one-minute bars for the simulated venue's fills
(the open of the first minute bar at or after the order) and liquidation checks (their highs and lows), and
``/fapi/v1/fundingRate`` settlements for its funding. The base URL is ``HYDRA_BINANCE_URL`` (default
``https://fapi.binance.com``), as for the derivatives feed. A symbol whose data could not be read, or
whose newest closed hourly bar is older than ``stale_after_s``, is marked stale: entries stop, exits go on.

What the paper account does not see: minute bars older than the last ``fill_bars`` (a restart after a
longer gap checks liquidation only on the bars still served), and Binance's real mark price (the traded
price stands in, as in the simulation).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np

from ..domain import UTC, require_utc
from ..ports import BarSeries, MarketSnapshot
from .bars import PriceBar
from .funding import FundingSchedule, FundingSettlement, nominal_time

log = logging.getLogger(__name__)
HOUR_S = 3600


@dataclass
class _Bars:
    open_s: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    close_s: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    o: np.ndarray = field(default_factory=lambda: np.zeros(0))
    h: np.ndarray = field(default_factory=lambda: np.zeros(0))
    lo: np.ndarray = field(default_factory=lambda: np.zeros(0))
    c: np.ndarray = field(default_factory=lambda: np.zeros(0))
    v: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @classmethod
    def of(cls, klines, now: datetime) -> "_Bars":
        rows = [k for k in klines if k.close_time <= now]        # the forming bar is never used
        f = lambda a, dt=float: np.array(a, dtype=dt)            # noqa: E731
        return cls(f([int(k.open_time.timestamp()) for k in rows], np.int64),
                   f([int(k.close_time.timestamp()) for k in rows], np.int64),
                   f([k.open for k in rows]), f([k.high for k in rows]), f([k.low for k in rows]),
                   f([k.close for k in rows]), f([k.volume for k in rows]))

    def merged(self, newer: "_Bars", keep: int) -> "_Bars":
        """Older bars this one has that ``newer`` no longer serves, then ``newer``; the last ``keep``."""
        first = newer.open_s[0] if len(newer.open_s) else None
        cut = len(self.open_s) if first is None else int(self.open_s.searchsorted(first, "left"))
        cat = lambda a, b: np.concatenate([a[:cut], b])[-keep:]   # noqa: E731
        return _Bars(*(cat(getattr(self, n), getattr(newer, n)) for n in ("open_s", "close_s", "o", "h", "lo", "c", "v")))


class LivePerpData:
    """Live public Binance data for the perp symbols: what the simulated venue reads (``next_bar_open``,
    ``bars_between``, ``funding``) and the hourly bars the engine's snapshot gets."""

    def __init__(self, client, symbols, *, history_bars: int = 500, fill_interval: str = "1m", fill_bars: int = 180,
                 stale_after_s: float = 2 * HOUR_S):
        self.client, self.symbols = client, list(symbols)
        self.history_bars, self.fill_interval, self.fill_bars = min(history_bars, 1499), fill_interval, fill_bars
        self.stale_after = timedelta(seconds=stale_after_s)
        self.hourly: dict[str, _Bars] = {s: _Bars() for s in self.symbols}
        self.minute: dict[str, _Bars] = {s: _Bars() for s in self.symbols}
        self.funding: dict[str, FundingSchedule] = {s: FundingSchedule(s, []) for s in self.symbols}
        self.problems: dict[str, str] = {}
        self.refreshed_at: datetime | None = None

    def refresh(self, now: datetime) -> None:
        """Read each symbol's bars and settlements; a failure is recorded per symbol (never raised)."""
        require_utc(now, "now")
        for s in self.symbols:
            try:
                # one more than kept: Binance's newest row is the bar still forming
                hourly = _Bars.of(self.client.klines(s, "1h", self.history_bars + 1), now)
                minute = _Bars.of(self.client.klines(s, self.fill_interval, self.fill_bars), now)
                rows = self.client.funding_rate_history(s, limit=20)
            except Exception as exc:  # noqa: BLE001 -- a data failure stales the symbol, never the loop
                self.problems[s] = f"Binance public data for {s} unavailable: {type(exc).__name__}: {exc}"
                log.warning(self.problems[s])
                continue
            self.hourly[s] = hourly
            self.minute[s] = self.minute[s].merged(minute, 5000)
            known = {x.ts: x for x in self.funding[s].settlements}
            for r in rows:
                ts = nominal_time(r.funding_time)
                known[ts] = FundingSettlement(s, ts, r.rate, r.mark_price, r.funding_time)
            self.funding[s] = FundingSchedule(s, known.values())
            newest = self.hourly[s].close_s[-1] if len(self.hourly[s].close_s) else None
            if newest is None:
                self.problems[s] = f"no closed hourly bar for {s}"
            elif now - datetime.fromtimestamp(int(newest), UTC) > self.stale_after:
                self.problems[s] = f"{s}: newest closed hourly bar ended {datetime.fromtimestamp(int(newest), UTC):%Y-%m-%d %H:%M}Z"
            else:
                self.problems.pop(s, None)
        self.refreshed_at = now

    # ------------------------------------------------------------------ the venue's bar contract
    def next_bar_open(self, symbol: str, after: datetime, now: datetime) -> tuple[datetime, float] | None:
        b = self.minute.get(symbol)
        if b is None or not len(b.open_s):
            return None
        k = int(b.open_s.searchsorted(int(after.timestamp()), "left"))
        if k < len(b.open_s) and b.close_s[k] <= int(now.timestamp()):
            return datetime.fromtimestamp(int(b.open_s[k]), UTC), float(b.o[k])
        return None

    def bars_between(self, symbol: str, start: datetime, now: datetime) -> list[PriceBar]:
        b = self.minute.get(symbol)
        if b is None or not len(b.open_s):
            return []
        i = int(b.open_s.searchsorted(int(start.timestamp()), "left"))
        j = int(b.close_s.searchsorted(int(now.timestamp()), "right"))
        return [PriceBar(datetime.fromtimestamp(int(b.open_s[k]), UTC), datetime.fromtimestamp(int(b.close_s[k]), UTC),
                         float(b.o[k]), float(b.h[k]), float(b.lo[k])) for k in range(i, j)]

    def series(self, symbol: str) -> BarSeries:
        b = self.hourly[symbol]
        return BarSeries(symbol, HOUR_S, b.open_s, b.o, b.h, b.lo, b.c, b.v)


class PerpMarketData:
    """The session's market data plus the perp symbols' live hourly bars (and staleness). ``venue``: the
    simulated account whose funding schedules are kept current. Other symbols pass through to ``base``."""

    def __init__(self, base, data: LivePerpData, venue=None):
        self.base, self.data, self.venue = base, data, venue

    def snapshot(self, now: datetime) -> MarketSnapshot:
        snap = self.base.snapshot(now)
        self.data.refresh(now)
        if self.venue is not None and hasattr(self.venue, "funding"):
            self.venue.funding.update(self.data.funding)
        bars = dict(snap.bars)
        for s in self.data.symbols:
            series = self.data.series(s)
            if len(series):
                bars[s] = series
                snap.closes[s] = float(series.close[-1])
                snap.newest_ts[s] = int(series.ts[-1])
            if s in self.data.problems:
                snap.stale[s] = self.data.problems[s]
        snap.bars = bars
        return snap

    def next_bar_open(self, symbol, after, now):
        if symbol in self.data.symbols:
            return self.data.next_bar_open(symbol, after, now)
        return self.base.next_bar_open(symbol, after, now)

    def __getattr__(self, name):      # the base's other attributes (data_only, regime bars...)
        return getattr(self.base, name)


# --------------------------------------------------------------------------- wiring (paper.py)
@dataclass
class LivePerpWiring:
    router: object
    market: PerpMarketData
    venue: object
    gate_rules: list
    risk_kwargs: dict
    venue_label: str
    restore: object = None       # (engine state dict) -> None: the simulated account's saved state


def build_live_perp_module(settings, *, market, main_broker, client, live: bool = False, log_dir: Path,
                           binance_keys=None, binance_session=None) -> LivePerpWiring:
    """``perps.execution``: ``sim`` = :class:`~.venue.SimulatedPerpVenue` over :class:`LivePerpData`;
    ``binance_demo`` / ``binance_live`` = :class:`~hydra_engine.adapters.binance_usdm.BinanceUsdmBroker`
    (keys from the environment; live also needs --live and HYDRA_ENABLE_LIVE_TRADING)."""
    from ..config import ConfigError
    from ..venues import VenueRouter
    from .margin import load_brackets
    from .tradability import perp_gate_rules
    from .governance import PerpKillRule
    from .venue import DEFAULT_PERP_SPECS, SimulatedPerpVenue
    from .wiring import PERP_VENUE, perp_instruments, perp_risk_manager

    p = settings.perps
    brackets = load_brackets()
    data = LivePerpData(client, p.symbols, history_bars=settings.engine.history_bars)
    if p.execution == "sim":
        venue = SimulatedPerpVenue(data, data.funding, starting_balance_usdt=Decimal(repr(p.starting_balance_usdt)),
                                   bars=data, brackets={s: brackets[s] for s in p.symbols},
                                   assets={s: DEFAULT_PERP_SPECS[s] for s in p.symbols},
                                   taker_fee_bps=Decimal(repr(p.taker_fee_bps)),
                                   maker_fee_bps=Decimal(repr(p.maker_fee_bps)),
                                   slippage_bps=Decimal(repr(p.slippage_bps)))
        label = "simulated Binance USD-M on live public Binance data"
    else:
        from ..adapters.binance_usdm import BinanceKeys, build_binance_usdm
        want_live = p.execution == "binance_live"
        if want_live != live:
            raise ConfigError(f"perps.execution = {p.execution!r} " + ("needs the --live flag" if want_live else
                              "is the demo account; a --live session needs perps.execution = \"binance_live\""))
        venue = build_binance_usdm(settings, live=want_live, state_path=log_dir / f"binance_usdm_{p.execution}.json",
                                   keys=binance_keys or BinanceKeys(), session=binance_session)
        venue.start({s: max(1, min(int(p.base_leverage), p.max_leverage)) for s in p.symbols})
        brackets = {**brackets, **venue.brackets}     # the venue's own leverage brackets (read at start)
        label = f"Binance USD-M {'LIVE' if want_live else 'demo'} account ({venue.base_url})"
    instruments = perp_instruments(settings, brackets)
    router = VenueRouter({"alpaca": main_broker, PERP_VENUE: venue}, instruments, default="alpaca")
    rules = [*perp_gate_rules(p.symbols)]
    if p.kill_switches:
        rules.append(PerpKillRule(p.symbols))
    wrapped = PerpMarketData(market, data, venue if p.execution == "sim" else None)
    return LivePerpWiring(router, wrapped, venue, rules, {"risk": perp_risk_manager(settings, brackets)}, label)


def keep_venue_state(engine, venue, key: str = "perp_venue") -> None:
    """The simulated account's state travels inside the engine's saved state (one record, one commit), so
    a restart finds the account as the book that was saved with it; restored here when present."""
    if not hasattr(venue, "to_state"):
        return
    state_of = engine.state

    def state() -> dict:
        return {**state_of(), key: venue.to_state()}
    engine.state = state


def restore_venue_state(previous: dict | None, venue, key: str = "perp_venue") -> bool:
    if previous and key in previous and hasattr(venue, "load_state"):
        venue.load_state(previous[key])
        return True
    return False


@dataclass
class PaperPerps:
    """What ``paper.py`` wires: the engine's broker and market (the router and the perp-aware market when
    ``perps.enabled``, else Alpaca's own), ``build_core``'s extra arguments and header, and how often
    to reconcile (every cycle for a Binance account)."""

    broker: object
    market: object
    symbols: list = field(default_factory=list)
    core_kwargs: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    venue: object = None
    reconcile_every: int | None = None

    def keep_state(self, previous: dict | None, engine) -> None:
        engine.startup_notes += [f"perp venue specs: {n}" for n in getattr(self.venue, "spec_notes", [])]
        if self.venue is not None:
            restore_venue_state(previous, self.venue)
            keep_venue_state(engine, self.venue)


def paper_perps(settings, *, market, main_broker, client, live: bool, log_dir: Path) -> PaperPerps:
    if not settings.perps.enabled:
        return PaperPerps(main_broker, market)
    w = build_live_perp_module(settings, market=market, main_broker=main_broker, client=client, live=live,
                               log_dir=log_dir)
    return PaperPerps(w.router, w.market, list(settings.perps.symbols), {"gate_rules": w.gate_rules, **w.risk_kwargs},
                      {"venues": {"alpaca": "Alpaca", "perp": w.venue_label}, "perp_symbols": list(settings.perps.symbols)},
                      w.venue, None if settings.perps.execution == "sim" else 1)
