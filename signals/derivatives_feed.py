"""Live Binance derivatives feed: funding and open interest as ``PointSeries``, with a health verdict.

Why: the liquidation-cascade hunter reads ``("funding_rate", sym)`` and ``("open_interest", sym)``
from the :class:`~hydra_engine.ports.MarketSnapshot`. Replay builds those series from the files in
shared data; this feed builds the same shape from Binance's REST API, so the strategy code is the
same in replay and live. A broken or stale feed never raises into the cycle: it keeps what it had,
reports ``health() == (False, reason)`` and :meth:`stale` names the symbols whose crypto strategies
should stand down.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Mapping

import numpy as np

from hydra_engine.domain import UTC, require_utc
from hydra_engine.ports import PointSeries

from .binance import BinanceError, BinanceFuturesClient, binance_symbol

FUNDING = "funding_rate"        # fraction per funding interval (8h on BTC/ETH), known at settlement
OPEN_INTEREST = "open_interest"  # base-asset units (BTC, ETH), known at the snapshot time
DEFAULT_SYMBOLS: dict[str, str] = {"BTC/USD": "BTCUSDT", "ETH/USD": "ETHUSDT"}


@dataclass(frozen=True, slots=True)
class FeedLimits:
    """How much to pull per refresh and when data counts as stale."""

    max_points: int = 500                                 # kept per (kind, symbol)
    funding_backfill: int = 100                           # first refresh: ~33 days of 8h settlements
    funding_limit: int = 5                                # later refreshes: the latest few
    oi_period: str = "1h"
    oi_backfill: int = 500                                # first refresh: ~21 days of hours
    oi_limit: int = 3
    funding_stale_after: timedelta = timedelta(hours=8, minutes=30)   # one interval plus slack
    oi_stale_after: timedelta = timedelta(minutes=15)                 # live snapshot each refresh


class BinanceDerivativesFeed:
    """Polls funding and open interest for each engine symbol and keeps bounded histories in memory."""

    def __init__(self, client: BinanceFuturesClient, symbols: Mapping[str, str] | None = None,
                 limits: FeedLimits = FeedLimits()):
        self.client = client
        self.symbols = dict(DEFAULT_SYMBOLS if symbols is None else symbols)
        if not self.symbols:
            raise ValueError("symbols must map at least one engine symbol to a Binance symbol")
        for bsym in self.symbols.values():
            binance_symbol(bsym)
        self.limits = limits
        self._points: dict[tuple[str, str], dict[int, float]] = {
            (kind, sym): {} for sym in self.symbols for kind in (FUNDING, OPEN_INTEREST)}
        self._live_oi: dict[str, tuple[int, float]] = {}   # newest openInterest snapshot (ts_s, value)
        self._errors: dict[str, str] = {}                 # engine symbol -> last refresh error
        self._bad_live_oi: dict[str, str] = {}            # engine symbol -> why its newest OI was refused
        self._loaded: set[str] = set()                    # symbols whose backfill succeeded
        self._last_now: datetime | None = None

    def refresh(self, now: datetime) -> bool:
        """Pull the latest funding and open interest for every symbol; True when all succeeded.

        Never raises a BinanceError: the error is recorded per symbol and reported by ``health``.
        After a 429 or 418 the client refuses the other symbols locally, so nothing more is sent."""
        self._last_now = require_utc(now, "now")
        self._errors.clear()
        self._bad_live_oi.clear()
        for sym, bsym in self.symbols.items():
            try:
                self._refresh_symbol(sym, bsym)
            except BinanceError as exc:
                self._errors[sym] = f"{type(exc).__name__}: {exc}"
        return not self._errors

    def _refresh_symbol(self, sym: str, bsym: str) -> None:
        lim, first = self.limits, sym not in self._loaded
        # after the first load only the latest few points are asked for -- as many more as the time since the
        # newest stored point needs (a refresh after an outage or a 418 ban fills the hole, up to the
        # backfill depth), so no hole stays in the series while the feed reports itself healthy
        funding = self.client.funding_rate_history(bsym, limit=lim.funding_backfill if first else self._catch_up(
            (FUNDING, sym), 8 * 3600, lim.funding_limit, lim.funding_backfill))
        hist = self.client.open_interest_history(bsym, period=lim.oi_period, limit=lim.oi_backfill if first else
                                                 self._catch_up((OPEN_INTEREST, sym), _period_s(lim.oi_period),
                                                                lim.oi_limit, lim.oi_backfill))
        live = self.client.open_interest(bsym)
        # merge only once every call succeeded, so a half refresh never mixes into the history
        self._merge((FUNDING, sym), ((_epoch_s(f.funding_time), float(f.rate)) for f in funding))
        # open interest of zero or below is not a real figure: kept out of the series, as replay keeps it out
        self._merge((OPEN_INTEREST, sym), ((_epoch_s(p.timestamp), float(p.sum_open_interest)) for p in hist
                                           if p.sum_open_interest > 0))
        if live.open_interest > 0:
            self._live_oi[sym] = (_epoch_s(live.time), float(live.open_interest))
        else:   # the newest figure is bad: the symbol is stale, as replay makes a symbol whose newest bar is bad
            self._bad_live_oi[sym] = (f"newest open_interest from Binance is invalid ({live.open_interest} at "
                                      f"{live.time:%Y-%m-%d %H:%M}Z)")
        self._loaded.add(sym)

    def _catch_up(self, key: tuple[str, str], step_s: int, usual: int, most: int) -> int:
        """How many of the latest points cover the time since the newest stored one (at least ``usual``)."""
        stored = self._points[key]
        if not stored or self._last_now is None:
            return most
        missing = math.ceil((self._last_now.timestamp() - max(stored)) / step_s) + 1
        return max(usual, min(most, missing))

    def _merge(self, key: tuple[str, str], points) -> None:
        store = self._points[key]
        store.update(points)
        for ts in sorted(store)[:-self.limits.max_points]:
            del store[ts]

    def _sorted(self, kind: str, sym: str) -> list[tuple[int, float]]:
        """History oldest first; for open interest the live snapshot is appended when newer."""
        points = sorted(self._points[(kind, sym)].items())
        live = self._live_oi.get(sym) if kind == OPEN_INTEREST else None
        if live and (not points or live[0] > points[-1][0]):
            points.append(live)
        return points[-self.limits.max_points:]

    def series(self, now: datetime) -> dict[tuple[str, str], PointSeries]:
        """Every non-empty series keyed ``(kind, engine symbol)``, only points known at or before ``now``."""
        cutoff = require_utc(now, "now").timestamp()
        out = {}
        for (kind, sym) in self._points:
            points = [p for p in self._sorted(kind, sym) if p[0] <= cutoff]
            if points:
                out[(kind, sym)] = PointSeries(kind=kind, symbol=sym,
                                               ts=np.array([p[0] for p in points], dtype=np.int64),
                                               values=np.array([p[1] for p in points], dtype=np.float64))
        return out

    def stale(self, now: datetime | None = None) -> dict[str, str]:
        """Engine symbol -> why its Binance data cannot be trusted right now (empty when healthy)."""
        now = self._last_now if now is None else require_utc(now, "now")
        if now is None:
            return {sym: "Binance feed never refreshed" for sym in self.symbols}
        out: dict[str, str] = {}
        for sym in self.symbols:
            if sym in self._errors:
                out[sym] = f"Binance refresh failed: {self._errors[sym]}"
                continue
            if sym in self._bad_live_oi:
                out[sym] = self._bad_live_oi[sym]
                continue
            for kind, limit in ((FUNDING, self.limits.funding_stale_after),
                                (OPEN_INTEREST, self.limits.oi_stale_after)):
                known = [ts for ts, _ in self._sorted(kind, sym) if ts <= now.timestamp()]
                if not known:
                    out[sym] = f"no {kind} data from Binance"
                    break
                age = now - datetime.fromtimestamp(known[-1], UTC)
                if age > limit:
                    out[sym] = f"{kind} stale: newest point is {age} old (limit {limit})"
                    break
        return out

    def health(self, now: datetime | None = None) -> tuple[bool, str]:
        """(ok, reason). ``now`` defaults to the time of the last refresh."""
        problems = self.stale(now)
        if not problems:
            return True, "ok"
        return False, "; ".join(f"{sym}: {why}" for sym, why in problems.items())


def _period_s(period: str) -> int:
    """Seconds in a Binance period like ``5m``, ``1h``, ``1d``."""
    return int(period[:-1]) * {"m": 60, "h": 3600, "d": 86400}[period[-1]]


def _epoch_s(moment: datetime) -> int:
    """Whole epoch seconds (Binance funding times carry a few ms of jitter)."""
    return int(moment.timestamp())
