"""Replay market data: historical files served as if they arrived live, without look-ahead.

A bar is visible only once it has closed (``close_time <= now``); a funding or open-interest value only
once it was published. Rows with a non-finite, zero or negative price are kept out of the series but
remembered: if the newest period of a symbol is such a row, the symbol is marked stale with the reason,
so no new entry is taken on it (exits are still managed on the last good price). Duplicated timestamps
keep the last row, out-of-order rows are sorted; both are counted in ``quality``.
"""
from __future__ import annotations

import math

import logging
from dataclasses import dataclass, field
from functools import partial
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..domain import UTC, require_utc
from ..events import EventFeed
from ..ports import BarSeries, MarketSnapshot, PointSeries
from .catalog import (BAR_SOURCES, INTRADAY_SOURCES, POINT_SOURCES, BarSource, IntradaySource, PointSource,
                      read_bars, read_intraday, read_points)
from .fine_bars import FineBars
from .snapshot_parts import _LazyBars, rows_since
from .time_index import _count_closed, _sorted_unique  # noqa: F401  (tests import _count_closed from here)

log = logging.getLogger(__name__)


class DataFolderError(Exception):
    """The replay folder is missing a file or a file cannot be read; the message names it."""


def _epoch_s(values: pd.Series) -> np.ndarray:
    return (pd.to_datetime(values, utc=True).astype("datetime64[ns, UTC]").astype("int64") // 1_000_000_000).to_numpy()


@dataclass
class _Bars:
    symbol: str
    interval_s: int
    open_ts: np.ndarray
    close_ts: np.ndarray
    o: np.ndarray
    h: np.ndarray
    l: np.ndarray
    c: np.ndarray
    v: np.ndarray
    bad_close_ts: np.ndarray          # close times of rows refused for bad prices


NEVER = np.iinfo(np.int64).max
INTRADAY_KEEP = 64 * 35     # 15-minute candles kept in a snapshot: ~35 days of 04:00-20:00 sessions
NEW_YORK = ZoneInfo("America/New_York")
from .intraday import _Intraday  # noqa: E402  (the 15-minute candles of issue #18)


@dataclass
class _Clock:
    """Symbols whose bars open and close at the same times: one ``searchsorted`` a cycle serves them all.

    ``closes`` holds their closes side by side (Fortran order: column k is ``symbols[k]``'s ``_Bars.c``,
    contiguous), so the newest closes of the whole group are one row read. ``checks`` are the per-symbol
    staleness inputs: (symbol, stale_after_s, next_bad), where ``next_bad[k]`` is the close time of the
    first refused row after bar k's close (NEVER if none), or None for a symbol without refused rows."""
    symbols: tuple[str, ...]
    open_ts: np.ndarray
    close_ts: np.ndarray
    closes: np.ndarray
    checks: tuple[tuple[str, int, np.ndarray | None], ...]
    fresh_for_s: int       # no member is stale while its newest bar closed at most this long ago ...
    any_bad: bool          # ... unless a member has refused rows (then each is checked)
    at: list = field(default_factory=list)   # the last count of closed bars (see _count_closed)


@dataclass
class _Points:
    kind: str
    symbol: str
    ts: np.ndarray
    values: np.ndarray


@dataclass
class DataQuality:
    dropped_bad_price: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    out_of_order: dict[str, int] = field(default_factory=dict)
    leading_fragment: dict[str, int] = field(default_factory=dict)


def clean_bars(frame: pd.DataFrame, symbol: str, quality: DataQuality) -> tuple[pd.DataFrame, np.ndarray]:
    """Sort, de-duplicate and split off rows whose prices are not finite and positive. The checks run on
    the open times as a numpy array; the frame is only copied (dropna, sort, drop_duplicates) when a
    check found something to fix, which clean files (the usual case) never need."""
    if frame["open_time"].isna().any():
        frame = frame.dropna(subset=["open_time"])
    opened = frame["open_time"].to_numpy(dtype="datetime64[ns]")
    unsorted = int((np.diff(opened) < np.timedelta64(0)).sum())
    if unsorted:
        quality.out_of_order[symbol] = unsorted
        frame = frame.sort_values("open_time", kind="stable")
        opened = frame["open_time"].to_numpy(dtype="datetime64[ns]")
    step = np.diff(opened)
    dupes = int((step == np.timedelta64(0)).sum())   # sorted: a duplicate follows its twin
    if dupes:
        quality.duplicates[symbol] = dupes
        frame = frame.drop_duplicates("open_time", keep="last")
        step = np.diff(frame["open_time"].to_numpy(dtype="datetime64[ns]"))
    limit = 30 * (frame["close_time"] - frame["open_time"]).median()   # NaT without bars: no gap
    gaps = step > limit.to_timedelta64() if not pd.isna(limit) else np.zeros(len(step), dtype=bool)
    first_gap = int(np.argmax(gaps)) + 1 if gaps.any() else 0   # gaps[k] is the gap before row k + 1
    if 0 < first_gap <= 5:  # a stray leading fragment (e.g. one 2018 SPY row before a 634-day gap)
        quality.leading_fragment[symbol] = first_gap
        frame = frame.iloc[first_gap:]
    return split_bad_prices(frame, symbol, quality)


def split_bad_prices(frame: pd.DataFrame, symbol: str, quality: DataQuality) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows whose prices are all finite and positive, and the close times (epoch s) of the others."""
    prices = frame[["open", "high", "low", "close"]].to_numpy(dtype=float)
    good = np.isfinite(prices).all(axis=1) & (prices > 0).all(axis=1)
    if (~good).any():
        quality.dropped_bad_price[symbol] = int((~good).sum())
    return frame[good], _epoch_s(frame.loc[~good, "close_time"])


class ReplayMarketData:
    """Implements the ``MarketData`` port over a data folder with the shared-data layout."""

    def __init__(self, folder: str | Path, symbols: list[str], *, data_only: list[str] = (),
                 history_bars: int = 500, start: date | None = None, end: date | None = None,
                 crypto_stale_after_s: int = 7500, equity_stale_after_s: int = 4 * 86400,
                 bar_sources: dict[str, BarSource] | None = None,
                 point_sources: list[PointSource] | None = None, regime_history_days: dict[str, int] | None = None,
                 event_feeds: Sequence[EventFeed] = (), intraday: Sequence[str] = (),
                 intraday_sources: dict[str, IntradaySource] | None = None, fine_bars: bool = True,
                 series_needs: Sequence[tuple[str, str]] = ()):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DataFolderError(f"replay data folder not found: {self.folder}")
        self.history_bars = history_bars
        self.quality = DataQuality()
        sources = bar_sources or BAR_SOURCES
        wanted = list(dict.fromkeys([*symbols, *data_only]))
        self._data_only = set(wanted) - set(symbols)
        unknown = [s for s in wanted if s not in sources]
        if unknown:
            raise DataFolderError(f"no replay source for symbols {unknown}; known: {sorted(sources)}")
        self._bars: dict[str, _Bars] = {}
        self._stale_after: dict[str, int] = {}
        self.bar_source_notes: dict[str, str] = {}     # symbol -> which files (spliced daily sources, #17)
        self.source_notes: list[str] = []               # sources left out, and why
        for symbol in wanted:
            src = sources[symbol]
            raw = self._read(src.path, read_bars, src)
            self.bar_source_notes[symbol] = raw.attrs.get("source_note") or src.path
            self.source_notes += raw.attrs.get("source_notes") or []
            frame, bad = clean_bars(raw, symbol, self.quality)
            self._bars[symbol] = _Bars(
                symbol, int(src.interval.total_seconds()), _epoch_s(frame["open_time"]), _epoch_s(frame["close_time"]),
                *(frame[c].to_numpy(dtype=float) for c in ("open", "high", "low", "close", "volume")), bad)
            # a bar longer than an hour (BNBUSDT's 8-hour candles, #20) is not stale while the next one is due
            self._stale_after[symbol] = (crypto_stale_after_s + max(0, int(src.interval.total_seconds()) - 3600)
                                         if src.interval < timedelta(days=1) else equity_stale_after_s)
        self._points: dict[tuple[str, str], _Points] = {}
        for src in point_sources if point_sources is not None else POINT_SOURCES:
            # a point series of a traded or data-only symbol, or one a plugin declared (FRED rates, #17)
            if (src.symbol not in wanted and (src.kind, src.symbol) not in series_needs) or \
                    (src.optional and not (self.folder / src.path).is_file()):
                continue
            frame = self._read(src.path, read_points, src)
            bad = ~np.isfinite(frame["value"].to_numpy()) | ((frame["value"] <= 0).to_numpy() & src.positive)
            if bad.any():  # kept out of the series and counted, like bad bars
                self.quality.dropped_bad_price[f"{src.kind}:{src.symbol}"] = int(bad.sum())
            frame = frame[~bad].dropna().sort_values("known_at", kind="stable")
            frame = frame.drop_duplicates("known_at", keep="last")
            self._points[(src.kind, src.symbol)] = _Points(src.kind, src.symbol, _epoch_s(frame["known_at"]),
                                                           frame["value"].to_numpy(dtype=float))
        # finer bars (BTC 5-minute, SPY 1-minute) for the position manager's intrabar exits, read on first use
        self._fine = FineBars(self.folder, symbols) if fine_bars else None
        self._clocks = self._group_clocks()
        # the snapshot fills its dicts clock by clock; when that is not the symbol order (clocks interleave)
        # it re-orders them, so reports list symbols in the same order whatever the grouping
        self._clock_order_is_symbol_order = [s for c in self._clocks for s in c.symbols] == list(self._bars)
        self._series_cache: dict[str, tuple[int, int, BarSeries]] = {}   # symbol -> (i, j, last BarSeries)
        self._point_memo: dict[tuple[str, str], list] = {}   # key -> [count state, last PointSeries and its rows]
        self._intraday_at: dict[str, tuple[list, list]] = {}   # symbol -> count states (intraday, daily closes)
        # intraday symbols the regime detector wants more days of than history_bars holds: bars to keep
        self._regime_bars = {s: math.ceil(days * 86_400 / self._bars[s].interval_s)
                             for s, days in (regime_history_days or {}).items()
                             if s in self._bars and self._bars[s].interval_s < 86_400
                             and math.ceil(days * 86_400 / self._bars[s].interval_s) > history_bars}
        self._regime_cache: dict[str, tuple[int, int, BarSeries]] = {}
        self._intraday: dict[str, _Intraday] = {}
        self.intraday_missing: dict[str, str] = {}
        self._extra_ticks = np.empty(0, dtype=np.int64)
        self._load_intraday(intraday, intraday_sources if intraday_sources is not None else INTRADAY_SOURCES,
                            start, end)
        self.start = datetime.combine(start, datetime.min.time(), UTC) if start else None
        self.end = datetime.combine(end, datetime.min.time(), UTC) if end else None
        # dated events (build_event_feeds in data/event_feeds.py): without feeds the snapshot pays one
        # falsy check; with them, one bisect per feed and the same tuple while nothing new became known
        self.event_feeds = tuple(event_feeds)
        self._events = None
        if self.event_feeds:
            from .event_feeds import EventMerger   # event_feeds imports this module: import here, not at the top
            self._events = EventMerger(self.event_feeds)
            # a feed whose file has ended (the macro calendar past its last release) is named in
            # feed_problems from this epoch second on: a number compared per cycle, no health() call
            self._event_limits = [(f.name, getattr(f, "unhealthy_from_s", math.inf)) for f in self.event_feeds]

    def _read(self, rel: str, reader, src):
        path = self.folder / rel
        if not path.exists():
            raise DataFolderError(f"replay data file missing: {path} (needed for {src.symbol})")
        try:
            return reader(path, src)
        except DataFolderError:
            raise
        except Exception as exc:  # a corrupt file must name itself, not surface as a pandas trace
            raise DataFolderError(f"cannot read {path}: {exc}") from exc

    # ------------------------------------------------------------------ bar clocks
    def _group_clocks(self) -> list[_Clock]:
        """Group the symbols by identical bar times (detected once, here), in symbol order. Each member's
        ``_Bars.c`` becomes a column view of its clock's ``closes``, so nothing is held twice."""
        groups: list[list[_Bars]] = []
        for b in self._bars.values():
            for g in groups:
                if np.array_equal(g[0].close_ts, b.close_ts) and np.array_equal(g[0].open_ts, b.open_ts):
                    g.append(b)
                    break
            else:
                groups.append([b])
        clocks = []
        for g in groups:
            # a clock of one symbol reads its own closes (a view: a 1M-bar backtest keeps one copy)
            closes = g[0].c[:, None] if len(g) == 1 else np.empty((len(g[0].close_ts), len(g)), dtype=float, order="F")
            checks = []
            for k, b in enumerate(g):
                if len(g) > 1:
                    closes[:, k] = b.c
                    b.c = closes[:, k]
                next_bad = None
                if len(b.bad_close_ts):   # the first refused row strictly after each bar's close
                    bad = np.sort(b.bad_close_ts)
                    next_bad = np.append(bad, NEVER)[bad.searchsorted(b.close_ts, "right")]
                checks.append((b.symbol, self._stale_after[b.symbol], next_bad))
            clocks.append(_Clock(tuple(b.symbol for b in g), g[0].open_ts, g[0].close_ts, closes, tuple(checks),
                                 min(c[1] for c in checks), any(c[2] is not None for c in checks)))
        return clocks

    # ------------------------------------------------------------------ the MarketData port
    def snapshot(self, now: datetime) -> MarketSnapshot:
        require_utc(now, "now")
        now_s = int(now.timestamp())
        n = self.history_bars
        spans: dict[str, tuple[int, int]] = {}
        stale: dict[str, str] = {}
        newest_ts: dict[str, int] = {}
        closes: dict[str, float] = {}
        for clock in self._clocks:   # the per-symbol work is dict updates, done in C
            i = _count_closed(clock.close_ts, now_s, clock.at)   # searchsorted(now_s, "right"), counted on
            symbols = clock.symbols
            if i == 0:
                stale.update(dict.fromkeys(symbols, "no closed bar yet"))
                continue
            span, opened = (i - n if i > n else 0, i), clock.open_ts.item(i - 1)   # .item(): a Python int
            if len(symbols) == 1:   # a clock of its own (e.g. a single-symbol backtest): plain assignments
                s = symbols[0]
                spans[s], newest_ts[s], closes[s] = span, opened, clock.closes.item(i - 1, 0)
            else:
                spans.update(dict.fromkeys(symbols, span))
                newest_ts.update(dict.fromkeys(symbols, opened))
                closes.update(zip(symbols, clock.closes[i - 1].tolist()))
            last_close = clock.close_ts.item(i - 1)
            if clock.any_bad or now_s - last_close > clock.fresh_for_s:
                for symbol, stale_after, next_bad in clock.checks:
                    if next_bad is not None and next_bad.item(i - 1) <= now_s:   # a refused row is newer
                        bad = self._bars[symbol].bad_close_ts
                        newest_bad = int(bad[bad <= now_s].max())
                        stale[symbol] = f"newest bar has an invalid price (closed {datetime.fromtimestamp(newest_bad, UTC):%Y-%m-%d %H:%M}Z)"
                    elif now_s - last_close > stale_after:
                        stale[symbol] = f"newest bar closed {(now_s - last_close) / 3600:.1f} h ago"
        if not self._clock_order_is_symbol_order:
            order = self._bars
            spans = {s: spans[s] for s in order if s in spans}
            stale = {s: stale[s] for s in order if s in stale}
            newest_ts = {s: newest_ts[s] for s in order if s in newest_ts}
            closes = {s: closes[s] for s in order if s in closes}
        snap = MarketSnapshot(now, _LazyBars(self._series, spans), {}, stale, {}, newest_ts, closes)
        snap.rows_since = partial(rows_since, spans, self._bars)
        if self._fine:
            snap.fine_path = self._fine.path
        if self._regime_bars:
            longer = {}
            for symbol, keep in self._regime_bars.items():
                if symbol in spans:
                    i = spans[symbol][1]
                    longer[symbol] = (i - keep if i > keep else 0, i)
            snap.regime_bars = _LazyBars(self._regime_series, longer)
        memo = self._point_memo
        for key, p in self._points.items():
            kept = memo.get(key)
            if kept is None:
                kept = memo[key] = [[], None]   # [the count's state, (j, i, p, ts, values, series)]
            i = _count_closed(p.ts, now_s, kept[0])
            j = i - n if i > n else 0
            last = kept[1]   # the same rows of the same arrays: the same (immutable) series of views
            if last is not None and last[0] == j and last[1] == i and last[2] is p and last[3] is p.ts \
                    and last[4] is p.values:
                snap.series[key] = last[5]
            else:
                series = snap.series[key] = PointSeries(p.kind, p.symbol, p.ts[j:i], p.values[j:i])
                kept[1] = (j, i, p, p.ts, p.values, series)
        if self._intraday or self.intraday_missing:
            self._intraday_into(snap, now_s)
        if self._events is not None:
            snap.events = self._events(now, snap.feed_problems)
            for name, limit_s in self._event_limits:
                if now_s >= limit_s:
                    ok, why = next(f for f in self.event_feeds if f.name == name).health(now)
                    if not ok:
                        snap.feed_problems[name] = why
        return snap

    def _series(self, symbol: str, j: int, i: int, cache: dict | None = None) -> BarSeries:
        """Bars j..i-1 of ``symbol`` as views; the last one is reused while no new bar has closed."""
        cache = self._series_cache if cache is None else cache
        hit = cache.get(symbol)
        if hit is not None and hit[0] == i and hit[1] == j:
            return hit[2]
        b = self._bars[symbol]
        series = BarSeries(symbol, b.interval_s, b.open_ts[j:i], b.o[j:i], b.h[j:i], b.l[j:i], b.c[j:i], b.v[j:i])
        cache[symbol] = (i, j, series)
        return series

    def _regime_series(self, symbol: str, j: int, i: int) -> BarSeries:
        return self._series(symbol, j, i, self._regime_cache)

    def history(self, symbol: str) -> BarSeries | None:
        """Every (cleaned) bar of ``symbol`` in the files, future ones included. Only for a plugin's
        vectorised pre-computation (``Strategy.prepare``), whose values at bar k must depend on bars
        <= k alone; cycles see ``snapshot``."""
        b = self._bars.get(symbol)
        if b is None:
            return None
        return BarSeries(symbol, b.interval_s, b.open_ts, b.o, b.h, b.l, b.c, b.v)

    def next_bar_open(self, symbol: str, after: datetime, now: datetime) -> tuple[datetime, float] | None:
        b = self._bars.get(symbol)
        if b is None:
            return None
        k = int(b.open_ts.searchsorted(int(after.timestamp()), "left"))   # ndarray method: no dispatch wrapper
        ib = self._intraday.get(symbol) if self._intraday else None
        if ib is not None:   # a regular-session candle that opens before the next daily bar fills first
            got = ib.next_regular(int(after.timestamp()), int(now.timestamp()),
                                  int(b.open_ts[k]) if k < len(b.open_ts) else NEVER)
            if got is not None:
                return got if got != "wait" else None
        if k < len(b.open_ts) and b.close_ts[k] <= int(now.timestamp()):
            return datetime.fromtimestamp(int(b.open_ts[k]), UTC), float(b.o[k])
        return None

    def bar_close_at(self, symbol: str, at: datetime) -> tuple[datetime, float] | None:
        """The last bar closed at or before ``at``: (close time, close). The simulated broker's
        ``signal_close`` fill model (benchmarks) fills at it; None before the first bar."""
        b = self._bars.get(symbol)
        if b is None:
            return None
        k = int(b.close_ts.searchsorted(int(at.timestamp()), "right")) - 1
        if k < 0:
            return None
        return datetime.fromtimestamp(int(b.close_ts[k]), UTC), float(b.c[k])

    # ------------------------------------------------------------------ intraday candles (issue #18)
    def _load_intraday(self, symbols, sources, start, end) -> None:
        for symbol in dict.fromkeys(symbols):
            src = sources.get(symbol)
            if src is None:
                self.intraday_missing[symbol] = f"no intraday source for {symbol} in the data catalog"
                continue
            try:
                frame = read_intraday(self.folder, src, start, end)
            except Exception as exc:   # a corrupt file names itself
                raise DataFolderError(f"cannot read intraday bars {self.folder / src.path}: {exc}") from exc
            if not len(frame):
                self.intraday_missing[symbol] = (f"no intraday bars for {symbol} in {self.folder / src.path} "
                                                 f"for {start or 'the start'} .. {end or 'the end'}")
                continue
            self._intraday[symbol] = _Intraday.from_frame(symbol, frame)

    def _intraday_into(self, snap: MarketSnapshot, now_s: int) -> None:
        spans = {}
        counts = self._intraday_at
        for symbol, ib in self._intraday.items():
            at = counts.get(symbol)
            if at is None:
                at = counts[symbol] = ([], [])   # (intraday closes, daily closes): _count_closed states
            i = _count_closed(ib.close_ts, now_s, at[0])
            if i:
                spans[symbol] = (i - INTRADAY_KEEP if i > INTRADAY_KEEP else 0, i)
        snap.intraday = _LazyBars(self._intraday_series, spans)
        for symbol, (_, i) in spans.items():   # a candle newer than the daily bar is the symbol's price now
            ib, daily = self._intraday[symbol], self._bars.get(symbol)
            if daily is None or symbol not in snap.closes:
                continue
            d = _count_closed(daily.close_ts, now_s, counts[symbol][1])
            if d and int(ib.close_ts[i - 1]) > int(daily.close_ts[d - 1]):
                snap.closes[symbol] = float(ib.c[i - 1])
        missing = dict(self.intraday_missing)
        for symbol, ib in self._intraday.items():
            if symbol not in spans or now_s - int(ib.close_ts[spans[symbol][1] - 1]) > 5 * 86_400:
                missing[symbol] = (f"no intraday bars for {symbol} near {datetime.fromtimestamp(now_s, UTC):%Y-%m-%d}; "
                                   f"the file covers {ib.first_day} .. {ib.last_day}")
        snap.intraday_missing = missing

    def _intraday_series(self, symbol: str, j: int, i: int) -> BarSeries:
        b = self._intraday[symbol]
        return BarSeries(symbol, b.interval_s, b.open_ts[j:i], b.o[j:i], b.h[j:i], b.l[j:i], b.c[j:i], b.v[j:i])

    def intraday_history(self, symbol: str) -> BarSeries | None:
        """Every intraday candle of ``symbol`` (future ones included): studies and ``prepare`` only."""
        b = self._intraday.get(symbol)
        return None if b is None else self._intraday_series(symbol, 0, len(b.open_ts))

    def add_ticks(self, times: Sequence[datetime]) -> None:
        """Extra clock ticks (a plugin's event windows: 15-minute closes around a release), merged into
        :meth:`timeline`. Ticks add cycles, never data: a snapshot still shows only what has closed."""
        extra = np.array(sorted({int(t.timestamp()) for t in times}), dtype=np.int64)
        self._extra_ticks = np.union1d(self._extra_ticks, extra)

    def premarket_bars(self, symbol: str, after: datetime, now: datetime) -> tuple[list[tuple], bool]:
        """The pre-market candles (04:00-09:30 New York) of the New York day of ``after`` that open at or after
        ``after`` and have closed by ``now``, as (open time, open, high, low); and whether that pre-market is
        over (``now`` at or past 09:30 that day). An extended-hours limit entry fills against these only."""
        b = self._intraday.get(symbol)
        after_s, now_s = int(after.timestamp()), int(now.timestamp())
        local = after.astimezone(NEW_YORK)
        bell_s = int(datetime.combine(local.date(), time(9, 30), NEW_YORK).timestamp())
        over = now_s >= bell_s
        if b is None:
            return [], over
        k = int(b.open_ts.searchsorted(after_s, "left"))
        out = []
        while k < len(b.open_ts) and b.open_ts[k] < bell_s and b.close_ts[k] <= now_s:
            out.append((datetime.fromtimestamp(int(b.open_ts[k]), UTC), float(b.o[k]), float(b.h[k]), float(b.l[k])))
            k += 1
        return out, over

    def bar_at(self, symbol: str, at: datetime) -> tuple[datetime, datetime, float, float, float, float] | None:
        """The last bar of ``symbol`` closed at or before ``at``: (open time, close time, open, high, low,
        close); None before the first. The simulated broker fills an intrabar stop or target exit in it."""
        b = self._bars.get(symbol)
        if b is None:
            return None
        k = int(b.close_ts.searchsorted(int(at.timestamp()), "right")) - 1
        if k < 0:
            return None
        return (datetime.fromtimestamp(int(b.open_ts[k]), UTC), datetime.fromtimestamp(int(b.close_ts[k]), UTC),
                float(b.o[k]), float(b.h[k]), float(b.l[k]), float(b.c[k]))

    # ------------------------------------------------------------------ the simulated clock's steps
    def timeline(self) -> list[datetime]:
        """Every moment a traded symbol's bar closes, within [start, end): the simulated clock's ticks (a
        data-only series, e.g. VIX at 16:15 New York, is read by the next tick, not given its own)."""
        traded = [c.close_ts for c in self._clocks if not set(c.symbols) <= self._data_only] or \
            [c.close_ts for c in self._clocks]
        closes = _sorted_unique(np.concatenate([*traded, self._extra_ticks]))   # a clock's symbols share them
        if self.start:
            closes = closes[closes >= int(self.start.timestamp())]
        if self.end:
            closes = closes[closes < int(self.end.timestamp())]
        return [datetime.fromtimestamp(t, UTC) for t in closes.tolist()]   # Python ints: no per-tick int()

    def last_bar_times(self, symbol: str) -> tuple[datetime, datetime] | None:
        """When ``symbol``'s last bar in the files opens and closes (None: no bars): where its data ends."""
        b = self._bars.get(symbol)
        if b is None or not len(b.open_ts):
            return None
        return datetime.fromtimestamp(int(b.open_ts[-1]), UTC), datetime.fromtimestamp(int(b.close_ts[-1]), UTC)

    def span(self) -> tuple[datetime, datetime]:
        closes = np.concatenate([c.close_ts for c in self._clocks])
        return datetime.fromtimestamp(int(closes.min()), UTC), datetime.fromtimestamp(int(closes.max()), UTC)
