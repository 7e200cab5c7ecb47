"""Alpaca market data behind HYDRA's ``MarketData`` protocol (REST polling, one round per cycle).

Each ``snapshot(now)`` fetches the bars that closed since the last call (one multi-symbol request for
stocks on the configured feed, IEX by default, one for crypto) and the latest quotes, and appends
them to bounded numpy buffers (``history_bars``, 500 by default). Bars follow the replay layout so
strategies see the same thing live and in backtests: crypto hourly bars keyed by their open time,
equity daily bars keyed 09:30 New York of their session and visible from 16:00 New York. A bar
still forming at ``now`` is never included.

Staleness watchdog: a symbol whose freshest information (newest bar close or quote) is older than its
limit, that has no data yet, or whose request failed this cycle goes into ``snapshot.stale`` with the
reason; the engine then blocks entries on it and keeps managing exits on the last good price.
"""
from __future__ import annotations

import logging
import math
from datetime import datetime, time as dtime, timedelta
from typing import Any, Callable, Iterable
from zoneinfo import ZoneInfo

import numpy as np
import requests
from alpaca.common.exceptions import APIError
from alpaca.data.enums import DataFeed
from alpaca.data.historical import CryptoHistoricalDataClient, StockHistoricalDataClient
from alpaca.data.requests import CryptoBarsRequest, CryptoLatestQuoteRequest, StockBarsRequest, StockLatestQuoteRequest
from alpaca.data.timeframe import TimeFrame, TimeFrameUnit
from pydantic import ValidationError

from ..config import AlpacaKeys
from ..domain import UTC, require_utc
from ..ports import BarSeries, MarketSnapshot, PointSeries
from ..brokers.ratelimit import RateLimiter, install

log = logging.getLogger(__name__)
NY = ZoneInfo("America/New_York")
_FIELDS = ("ts", "open", "high", "low", "close", "volume")


def _redact(text: str, secrets: Iterable[str | None]) -> str:
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, "***")
    return text


class BarBuffer:
    """The last ``capacity`` closed bars of one symbol in numpy arrays. Appending builds new arrays,
    so a ``BarSeries`` handed out earlier keeps its (immutable) view."""

    def __init__(self, symbol: str, interval_s: int, capacity: int = 500):
        self.symbol, self.interval_s, self.capacity = symbol, interval_s, capacity
        self.cols = {f: np.empty(0, dtype=np.int64 if f == "ts" else np.float64) for f in _FIELDS}
        self.bad_ts: int | None = None   # open time of the newest bar refused for a bad price

    def __len__(self) -> int:
        return len(self.cols["ts"])

    @property
    def last_ts(self) -> int | None:
        return int(self.cols["ts"][-1]) if len(self) else None

    def extend(self, rows: list[tuple[int, float, float, float, float, float]]) -> int:
        """Append rows newer than the last bar (sorted, de-duplicated, finite positive prices); return how many."""
        last = self.last_ts if len(self) else -1
        fresh = {}
        for r in rows:
            if r[0] <= last:
                continue
            if all(math.isfinite(p) and p > 0 for p in r[1:5]):
                fresh[r[0]] = r
            else:  # remembered, so the watchdog can say the newest bar is bad (as replay does)
                self.bad_ts = max(self.bad_ts or r[0], r[0])
        if not fresh:
            return 0
        new = np.array([fresh[k] for k in sorted(fresh)], dtype=np.float64)
        for i, f in enumerate(_FIELDS):
            col = new[:, i].astype(self.cols[f].dtype)
            self.cols[f] = np.concatenate([self.cols[f], col])[-self.capacity:]
        return len(fresh)

    def series(self, last: int | None = None) -> BarSeries:
        """The buffered bars, or the newest ``last`` of them (views)."""
        c = self.cols if last is None else {f: v[-last:] for f, v in self.cols.items()}
        return BarSeries(self.symbol, self.interval_s, c["ts"], c["open"], c["high"], c["low"], c["close"], c["volume"])


class AlpacaMarketData:
    """``MarketData`` on Alpaca's historical REST endpoints, polled once per engine cycle."""

    def __init__(self, keys: AlpacaKeys | None, *, symbols: Iterable[str], feed: str = "iex",
                 url_override: str | None = None, history_bars: int = 500,
                 crypto_timeframe: TimeFrame = TimeFrame(1, TimeFrameUnit.Hour),
                 equity_timeframe: TimeFrame = TimeFrame(1, TimeFrameUnit.Day),
                 crypto_stale_after_s: int = 2 * 3600 + 300, equity_stale_after_s: int = 4 * 24 * 3600,
                 data_only: Iterable[str] = (), limiter: RateLimiter | None = None, timeout_s: float = 10.0,
                 regime_history_days: dict[str, int] | None = None):
        key, secret = ((keys.api_key.get_secret_value() if keys and keys.api_key else None),
                       (keys.secret_key.get_secret_value() if keys and keys.secret_key else None))
        self._secrets = [key, secret]
        symbols = list(symbols)
        self.crypto = [s for s in symbols if "/" in s]
        self.equities = [s for s in symbols if "/" not in s]
        self.data_only = [s for s in data_only if s not in symbols]
        self.feed = DataFeed(feed)
        self.history_bars = history_bars
        self.timeframes = {"crypto": crypto_timeframe, "equity": equity_timeframe}
        self.stale_after = {"crypto": timedelta(seconds=crypto_stale_after_s),
                            "equity": timedelta(seconds=equity_stale_after_s)}
        self.limiter = limiter or RateLimiter(180)       # the data API allows 200/min on the free plan
        self._crypto_client = install(CryptoHistoricalDataClient(key, secret, url_override=url_override),
                                      self.limiter, timeout_s=timeout_s)
        self._stock_client = (install(StockHistoricalDataClient(key, secret, url_override=url_override),
                                      self.limiter, timeout_s=timeout_s) if self.equities else None)
        self._bars = {}
        for s in symbols:
            interval = self._interval_s(self._kind(s))
            # the regime detector's intraday feature symbols keep more days than history_bars (see
            # MarketSnapshot.regime_bars); strategies still see the last history_bars of them
            days = (regime_history_days or {}).get(s, 0) if interval < 86_400 else 0
            self._bars[s] = BarBuffer(s, interval, max(history_bars, math.ceil(days * 86_400 / interval)))
        self._quotes: dict[str, BarBuffer] = {}          # quote mids: ts + (mid, bid, ask, spread_bps, 0)
        self._errors: dict[str, str] = {}
        self._key_secret, self._url_override, self._timeout_s = (key, secret), url_override, timeout_s
        self.intraday = None                             # AlpacaIntradayCandles once a plugin asks (issue #18)

    def set_intraday(self, symbols: Iterable[str], **kw) -> None:
        """Serve ``MarketSnapshot.intraday`` for ``symbols`` (the plugins' ``DataNeed("intraday", ...)``):
        15-minute candles from Alpaca 1-minute bars, as the replay serves them. No symbols: none served."""
        from .alpaca_intraday import AlpacaIntradayCandles
        symbols = list(dict.fromkeys(symbols))
        if not symbols:
            self.intraday = None
            return
        if self._stock_client is None and any("/" not in s for s in symbols):
            key, secret = self._key_secret
            self._stock_client = install(StockHistoricalDataClient(key, secret, url_override=self._url_override),
                                         self.limiter, timeout_s=self._timeout_s)
        self.intraday = AlpacaIntradayCandles(symbols, stock_client=self._stock_client,
                                              crypto_client=self._crypto_client, feed=self.feed, guard=self._guard, **kw)

    def __repr__(self) -> str:
        return f"AlpacaMarketData(crypto={self.crypto}, equities={self.equities}, feed={self.feed.value!r})"

    # ------------------------------------------------------------------ timing
    @staticmethod
    def _kind(symbol: str) -> str:
        return "crypto" if "/" in symbol else "equity"

    def _interval_s(self, kind: str) -> int:
        tf = self.timeframes[kind]
        unit = {TimeFrameUnit.Minute: 60, TimeFrameUnit.Hour: 3600, TimeFrameUnit.Day: 86400,
                TimeFrameUnit.Week: 7 * 86400}[tf.unit_value]
        return tf.amount_value * unit

    def _span_s(self, kind: str) -> int:
        """Seconds from a bar's open to its close (a daily equity bar spans the 09:30-16:00 session)."""
        daily_equity = kind == "equity" and self.timeframes[kind].unit_value is TimeFrameUnit.Day
        return 6 * 3600 + 1800 if daily_equity else self._interval_s(kind)

    def _open_close(self, kind: str, t: datetime) -> tuple[datetime, datetime]:
        """A bar's (open, close) in UTC. Daily equity bars (Alpaca stamps them at midnight New York)
        open 09:30 and close 16:00 New York on their date, like the replay data."""
        t = t.astimezone(UTC)
        if kind == "equity" and self.timeframes[kind].unit_value is TimeFrameUnit.Day:
            day = t.astimezone(NY).date()
            return (datetime.combine(day, dtime(9, 30), NY).astimezone(UTC),
                    datetime.combine(day, dtime(16, 0), NY).astimezone(UTC))
        return t, t + timedelta(seconds=self._interval_s(kind))

    def _start(self, kind: str, symbols: list[str], now: datetime) -> datetime:
        lasts = [self._bars[s].last_ts for s in symbols]
        if all(x is not None for x in lasts):
            return datetime.fromtimestamp(min(lasts), UTC)             # refetch from the oldest last bar
        span = self._interval_s(kind) * max(self._bars[s].capacity for s in symbols)
        return now - timedelta(seconds=span * (1.5 if span >= 86400 * 30 else 1.05))  # weekends, holidays

    # ------------------------------------------------------------------ fetching
    def _guard(self, what: str, symbols: list[str], call: Callable[[], Any], errors: dict | None = None) -> Any:
        try:
            return call()
        except (APIError, requests.RequestException, ValidationError, ValueError, TypeError, AttributeError,
                KeyError) as exc:   # alpaca-py raises the last three on a body of the wrong shape ("bars": null)
            reason = _redact(f"{what} failed: {type(exc).__name__}: {str(exc)[:200]}", self._secrets)
            log.warning(reason)
            for s in symbols:
                (self._errors if errors is None else errors)[s] = reason
            return None

    def _fetch_bars(self, kind: str, symbols: list[str], now: datetime) -> None:
        if not symbols:
            return
        start, tf = self._start(kind, symbols, now), self.timeframes[kind]
        if kind == "crypto":
            req = CryptoBarsRequest(symbol_or_symbols=symbols, timeframe=tf, start=start, end=now)
            barset = self._guard("crypto bars", symbols, lambda: self._crypto_client.get_crypto_bars(req))
        else:
            req = StockBarsRequest(symbol_or_symbols=symbols, timeframe=tf, start=start, end=now, feed=self.feed)
            barset = self._guard("stock bars", symbols, lambda: self._stock_client.get_stock_bars(req))
        if barset is None:
            return
        for symbol in symbols:
            rows = []
            for b in barset.data.get(symbol, []):
                opened, closed = self._open_close(kind, b.timestamp)
                if closed <= now:                                      # never a bar still forming
                    rows.append((int(opened.timestamp()), b.open, b.high, b.low, b.close, b.volume))
            self._bars[symbol].extend(rows)

    def _fetch_quotes(self, kind: str, symbols: list[str]) -> None:
        if not symbols:
            return
        if kind == "crypto":
            req = CryptoLatestQuoteRequest(symbol_or_symbols=symbols)
            quotes = self._guard("crypto quotes", symbols, lambda: self._crypto_client.get_crypto_latest_quote(req))
        else:
            req = StockLatestQuoteRequest(symbol_or_symbols=symbols, feed=self.feed)
            quotes = self._guard("stock quotes", symbols, lambda: self._stock_client.get_stock_latest_quote(req))
        for symbol, q in (quotes or {}).items():
            bid, ask = float(q.bid_price or 0), float(q.ask_price or 0)
            if bid > 0 and ask >= bid:
                mid = (bid + ask) / 2
                buf = self._quotes.setdefault(symbol, BarBuffer(symbol, 0, self.history_bars))
                buf.extend([(int(q.timestamp.timestamp()), mid, bid, ask, mid, (ask - bid) / mid * 1e4)])

    # ------------------------------------------------------------------ the port
    def snapshot(self, now: datetime) -> MarketSnapshot:
        require_utc(now, "now")
        self._errors = {}
        for kind, symbols in (("crypto", self.crypto), ("equity", self.equities)):
            self._fetch_bars(kind, symbols, now)
            self._fetch_quotes(kind, symbols)
        snap = MarketSnapshot(now=now)
        for symbol in self.crypto + self.equities:
            kind, buf = self._kind(symbol), self._bars[symbol]
            if len(buf):
                snap.bars[symbol] = buf.series(last=self.history_bars)
                if buf.capacity > self.history_bars:
                    snap.regime_bars[symbol] = buf.series()
            q = self._quotes.get(symbol)
            if q is not None and len(q):
                snap.series[("quote_mid", symbol)] = PointSeries("quote_mid", symbol, q.cols["ts"], q.cols["open"])
                snap.series[("quote_spread_bps", symbol)] = PointSeries("quote_spread_bps", symbol, q.cols["ts"],
                                                                        q.cols["volume"])
            reason = self._staleness(symbol, kind, now)
            if reason:
                snap.stale[symbol] = reason
        for symbol in self.data_only:
            snap.stale[symbol] = f"no Alpaca feed for data-only series {symbol}"
        if self.intraday is not None:
            self.intraday.refresh(now)
            self.intraday.into(snap, now)
        return snap

    def _staleness(self, symbol: str, kind: str, now: datetime) -> str | None:
        if symbol in self._errors:
            return self._errors[symbol]
        buf, q = self._bars[symbol], self._quotes.get(symbol)
        if buf.bad_ts is not None and (not len(buf) or buf.bad_ts > buf.last_ts):
            return (f"newest bar has an invalid price (opened "
                    f"{datetime.fromtimestamp(buf.bad_ts, UTC):%Y-%m-%d %H:%M}Z)")
        times = []
        if len(buf):
            bar_closed = datetime.fromtimestamp(buf.last_ts, UTC) + timedelta(seconds=self._span_s(kind))
            times.append(("bar closed", bar_closed))
        if q is not None and len(q):
            times.append(("quote", datetime.fromtimestamp(q.last_ts, UTC)))
        if not times:
            return "no bars or quotes received yet"
        label, newest = max(times, key=lambda x: x[1])
        age, limit = now - newest, self.stale_after[kind]
        if len(buf):
            # a fresh quote must not make stopped bars look fresh: strategies read the bars. It may excuse
            # a quiet crypto hour (Alpaca sends no bar without trades), up to twice the limit; never equities
            bar_limit = limit * 2 if kind == "crypto" and label == "quote" and age <= limit else limit
            bar_age = now - bar_closed
            if bar_age > bar_limit:
                return (f"newest bar closed {bar_closed.isoformat()} is {bar_age.total_seconds() / 3600:.1f} h old, "
                        f"limit {bar_limit.total_seconds() / 3600:.1f} h (quotes do not replace bars)")
        if age > limit:
            return (f"newest data ({label} {newest.isoformat()}) is {age.total_seconds() / 3600:.1f} h old, "
                    f"limit {limit.total_seconds() / 3600:.1f} h")
        return None

    def next_bar_open(self, symbol: str, after: datetime, now: datetime) -> tuple[datetime, float] | None:
        """Not used live (Alpaca fills real orders); the simulated broker needs it only in replay."""
        return None
