"""Live intraday candles for paper (issue #18): Alpaca one-minute bars, extended hours included, aggregated to
the same 15-minute candles the replay serves in ``MarketSnapshot.intraday``.

The replay builds its candles from one-minute files by flooring each minute's start to the 15-minute grid
(first open, highest high, lowest low, last close, summed volume; ``catalog.read_intraday``). This source does
the same with the minutes Alpaca's bars endpoints return (``/v2/stocks/bars?timeframe=1Min&feed=...`` for
equities, whose minute bars cover 04:00-20:00 New York; ``/v1beta3/crypto/us/bars`` for crypto): so a plugin
judges a release candle the same way in a backtest and on paper.

A candle is served once it is *sealed*: its 15 minutes are over and ``settle_s`` more have passed (a minute
bar is published shortly after its minute ends). Until then its minutes are kept and refetched each cycle, so
a late minute still lands in its candle; a sealed candle never changes. A bucket without a single minute bar
(a quiet IEX quarter-hour) has no candle, as in the replay's files. The first call backfills
``backfill_days`` of minutes, enough for the scalper's typical-range look-back.

``intraday_missing`` names, per symbol, why its candles cannot be trusted now: the request failed this cycle,
nothing received yet, or the newest candle is older than ``stale_after_s`` (the replay's five days).
"""
from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable

import numpy as np
from alpaca.data.requests import CryptoBarsRequest, StockBarsRequest
from alpaca.data.timeframe import TimeFrame, TimeFrameUnit

from ..domain import UTC
from ..ports import BarSeries

_FIELDS = ("ts", "open", "high", "low", "close", "volume")
ONE_MINUTE = TimeFrame(1, TimeFrameUnit.Minute)


def aggregate_minutes(rows: Iterable[tuple], minutes: int = 15) -> list[tuple]:
    """(open ts, o, h, l, c, v) one-minute rows -> ``minutes``-minute candles keyed by their open time, the
    replay's rule: floor each minute's start to the grid; first open, max high, min low, last close, sum
    volume. Rows with a non-finite or non-positive price are dropped; a repeated minute keeps its last row."""
    step = minutes * 60
    by_ts: dict[int, tuple] = {}
    for r in rows:
        if all(math.isfinite(p) and p > 0 for p in r[1:5]):
            by_ts[int(r[0])] = r
    out: list[list] = []
    for ts in sorted(by_ts):
        _, o, h, l, c, v = by_ts[ts]
        bucket = ts - ts % step
        if out and out[-1][0] == bucket:
            cur = out[-1]
            cur[2], cur[3], cur[4], cur[5] = max(cur[2], h), min(cur[3], l), c, cur[5] + v
        else:
            out.append([bucket, o, h, l, c, v])
    return [tuple(x) for x in out]


class _Symbol:
    """One symbol: its sealed candles (numpy, bounded) and the minutes of the buckets not sealed yet."""

    def __init__(self, symbol: str, interval_s: int, keep: int):
        self.symbol, self.interval_s, self.keep = symbol, interval_s, keep
        self.cols = {f: np.empty(0, dtype=np.int64 if f == "ts" else np.float64) for f in _FIELDS}
        self.open_minutes: dict[int, tuple] = {}     # minute open ts -> row, for buckets not sealed
        self.sealed_until: int | None = None         # every bucket ending at or before this is sealed

    def add_minutes(self, rows: list[tuple]) -> None:
        for r in rows:
            if self.sealed_until is None or r[0] >= self.sealed_until:
                self.open_minutes[int(r[0])] = r

    def seal(self, upto_s: int) -> None:
        """Seal every bucket that ends at or before ``upto_s``: its minutes become a candle."""
        upto = upto_s - upto_s % self.interval_s
        done = [r for t, r in self.open_minutes.items() if t < upto]
        if done:
            candles = aggregate_minutes(done, self.interval_s // 60)
            new = np.array(candles, dtype=np.float64)
            for i, f in enumerate(_FIELDS):
                self.cols[f] = np.concatenate([self.cols[f], new[:, i].astype(self.cols[f].dtype)])[-self.keep:]
            for r in done:
                del self.open_minutes[int(r[0])]
        self.sealed_until = upto if self.sealed_until is None else max(self.sealed_until, upto)

    def series(self) -> BarSeries:
        c = self.cols
        return BarSeries(self.symbol, self.interval_s, c["ts"], c["open"], c["high"], c["low"], c["close"], c["volume"])


class AlpacaIntradayCandles:
    """The paper session's ``MarketSnapshot.intraday``: 15-minute candles from Alpaca one-minute bars.

    ``stock_client`` / ``crypto_client``: alpaca-py historical data clients (already rate limited);
    ``guard(what, symbols, call, errors)``: the data adapter's error wrapper (None on a failed request, the
    reason recorded per symbol in ``errors``: this source's own dict, so a failed minute request stands the
    intraday plugins down without marking the symbol's daily price stale)."""

    def __init__(self, symbols: Iterable[str], *, stock_client: Any, crypto_client: Any, feed: Any,
                 guard: Callable[[str, list[str], Callable[[], Any], dict], Any],
                 minutes: int = 15, keep: int = 64 * 35, backfill_days: int = 35, settle_s: int = 60,
                 stale_after_s: int = 5 * 86_400):
        self.symbols = list(dict.fromkeys(symbols))
        self.stock_client, self.crypto_client, self.feed = stock_client, crypto_client, feed
        self._guard = guard
        self.errors: dict[str, str] = {}
        self.interval_s = minutes * 60
        self.backfill = timedelta(days=backfill_days)
        self.settle_s, self.stale_after_s = settle_s, stale_after_s
        self._state = {s: _Symbol(s, self.interval_s, keep) for s in self.symbols}

    def _start(self, symbols: list[str], now: datetime) -> datetime:
        sealed = [self._state[s].sealed_until for s in symbols]
        if any(x is None for x in sealed):   # from a candle boundary: a first candle is never partial
            s = int((now - self.backfill).timestamp())
            return datetime.fromtimestamp(s - s % self.interval_s, UTC)
        return datetime.fromtimestamp(min(sealed), UTC)       # refetch every bucket not sealed yet

    def refresh(self, now: datetime) -> None:
        now_s = int(now.timestamp())
        self.errors = {}
        for kind in ("equity", "crypto"):
            symbols = [s for s in self.symbols if ("/" in s) == (kind == "crypto")]
            if not symbols:
                continue
            start = self._start(symbols, now)
            if kind == "crypto":
                req = CryptoBarsRequest(symbol_or_symbols=symbols, timeframe=ONE_MINUTE, start=start, end=now)
                barset = self._guard("crypto 1-minute bars", symbols,
                                     lambda: self.crypto_client.get_crypto_bars(req), self.errors)
            else:
                req = StockBarsRequest(symbol_or_symbols=symbols, timeframe=ONE_MINUTE, start=start, end=now,
                                       feed=self.feed)
                barset = self._guard("stock 1-minute bars", symbols, lambda: self.stock_client.get_stock_bars(req),
                                     self.errors)
            if barset is None:
                continue   # the reason is in errors; unsealed minutes are kept and refetched next cycle
            for symbol in symbols:
                rows = []
                for b in barset.data.get(symbol, []):
                    t = int(b.timestamp.timestamp())
                    if t + 60 <= now_s:                        # never a minute still forming
                        rows.append((t, float(b.open), float(b.high), float(b.low), float(b.close), float(b.volume)))
                st = self._state[symbol]
                st.add_minutes(rows)
                st.seal(now_s - self.settle_s)

    def into(self, snap, now: datetime) -> None:
        """Set ``snap.intraday`` and ``snap.intraday_missing`` (after :meth:`refresh`)."""
        now_s = int(now.timestamp())
        errors = self.errors
        intraday, missing = {}, {}
        for symbol, st in self._state.items():
            if len(st.cols["ts"]):
                intraday[symbol] = st.series()
            if symbol in errors:
                missing[symbol] = errors[symbol]
            elif not len(st.cols["ts"]):
                missing[symbol] = f"no 1-minute bars received for {symbol} yet"
            elif now_s - (int(st.cols["ts"][-1]) + self.interval_s) > self.stale_after_s:
                missing[symbol] = (f"newest {self.interval_s // 60}-minute candle of {symbol} closed "
                                   f"{datetime.fromtimestamp(int(st.cols['ts'][-1]) + self.interval_s, UTC):%Y-%m-%d %H:%M}Z, "
                                   f"over {self.stale_after_s // 86_400} days ago")
        snap.intraday, snap.intraday_missing = intraday, missing
