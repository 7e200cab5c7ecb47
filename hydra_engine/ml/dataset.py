"""The training data, made by the engine itself.

* Signal scorer: :func:`collect_signals` is a replay run of every enabled plugin (the configured
  strategies, the perp module, the modifiers) over the span, with a recording scorer in the engine's
  scorer slot: each signal is recorded with the features the live scorer would compute at that cycle
  (the same ``scorer_features`` call on the same snapshot), then labelled by :func:`~.labels.signal_outcome`
  from the replay's closes, never past the span's end. A signal re-emitted unchanged on later cycles
  (same source, symbol and ``created_at``) is one opinion and is kept once, at its first cycle.
* Regime classifier: :func:`regime_rows` walks the hourly perp bars of each symbol: at each hour the
  classifier's features, the regime of the window that just ended (the naive baseline) and — from the
  snapshot 24 h later — the regime of the next window (the label).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np

from ..domain import UTC
from ..plugin_kinds import SignalScorer
from .features import SCORER_BASE_FEATURES, regime_features, scorer_features
from .labels import CLASS_INDEX, REGIME_WINDOW_H, holding_period, regime_label, signal_outcome


class RecordingScorer(SignalScorer):
    """Sits in the engine's scorer slot during a training replay: records, never scores."""

    name = "training_recorder"
    interface_version = 1

    def __init__(self):
        self.rows: list[dict] = []
        self._seen: set = set()
        self.abstain_reason = "recording signals for training"

    def score(self, signal, ctx):
        key = (signal.source, signal.symbol, signal.created_at, signal.score > 0)
        if key not in self._seen:
            self._seen.add(key)
            self.rows.append({"t": ctx.now, "symbol": signal.symbol, "source": signal.source,
                              "score": signal.score, "confidence": signal.confidence,
                              "half_life_s": signal.half_life.total_seconds(),
                              "features": scorer_features(signal, ctx.market, ctx.now)})
        return None


@dataclass
class SignalSet:
    t: np.ndarray                   # epoch s the signal was scored at
    label_end: np.ndarray           # epoch s its holding period ends
    X_base: np.ndarray              # SCORER_BASE_FEATURES columns
    sources: list[str]
    symbols: list[str]
    y: np.ndarray
    net: np.ndarray                 # net return after costs
    meta: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)   # the replay's session summary (a backtest's figures)


def replay_settings(settings, data_dir: Path, start: date, end: date):
    d = settings.data.model_copy(update={"replay_dir": str(data_dir), "start": start, "end": end})
    e = settings.engine.model_copy(update={"regime_refit_days": settings.engine.regime_refit_days})
    sc = settings.scorers.model_copy(update={"enabled": []})
    return settings.model_copy(update={"data": d, "engine": e, "scorers": sc})


def round_trip_costs(settings) -> tuple[set[str], float, float]:
    """(perp symbols, round-trip cost fraction on the perp venue, on the other venue): the label's costs
    (the replay's rows and the recorded rows of :mod:`.recorded` use the same)."""
    perps = set(settings.perps.symbols) if settings.perps.enabled else set()
    return (perps, 2 * (settings.perps.taker_fee_bps + settings.perps.slippage_bps) / 1e4,
            2 * (settings.broker.fee_bps + settings.broker.slippage_bps) / 1e4)


def collect_signals(settings, data_dir: Path, start: date, end: date, *, progress: bool = True) -> SignalSet:
    from ..app import build_sim_session, run_session
    s = replay_settings(settings, data_dir, start, end)
    session = build_sim_session(s, mode="backtest", data_dir=data_dir, persist=False)
    recorder = RecordingScorer()
    session.engine.scorers = [recorder]
    summary = run_session(session, progress=progress)
    market = session.engine.market
    end_dt = datetime.combine(end, datetime.min.time(), UTC)
    perps, cost_perp, cost_spot = round_trip_costs(s)
    rows, t, ends, y, net = [], [], [], [], []
    for r in recorder.rows:
        hold = holding_period(timedelta(seconds=r["half_life_s"]))
        last = market.last_bar_times(r["symbol"])
        data_end = min(end_dt, last[1]) if last else end_dt
        out = signal_outcome(market.bar_close_at, r["symbol"], math.copysign(1.0, r["score"]) if r["score"] else 0.0,
                             r["t"], hold, cost_perp if r["symbol"] in perps else cost_spot, data_end)
        if out is None:
            continue
        rows.append(r)
        t.append(r["t"].timestamp())
        ends.append((r["t"] + hold).timestamp())
        net.append(out[0])
        y.append(out[1])
    order = np.argsort(np.asarray(t), kind="stable")
    X = np.array([[r["features"][f] for f in SCORER_BASE_FEATURES] for r in rows], dtype=float).reshape(-1, len(SCORER_BASE_FEATURES))
    return SignalSet(np.asarray(t)[order], np.asarray(ends)[order], X[order], [rows[i]["source"] for i in order],
                     [rows[i]["symbol"] for i in order], np.asarray(y)[order], np.asarray(net)[order],
                     {"signals_recorded": len(recorder.rows), "signals_labelled": len(rows),
                      "replay_cycles": summary.get("cycles"), "strategies": list(s.strategies.enabled),
                      "cost_round_trip_perp": cost_perp, "cost_round_trip_other": cost_spot}, summary)


@dataclass
class RegimeSet:
    t: np.ndarray
    label_end: np.ndarray
    X: np.ndarray
    y: np.ndarray                   # class index of the next window's regime
    y_now: np.ndarray               # class index of the window that just ended (the naive baseline)
    symbols: list[str]


def regime_rows(data_dir: Path | None, symbols: list[str], start: date, end: date, *, step_h: int = 1,
                progress: bool = True, market=None) -> RegimeSet:
    """Features at each hour t, the regime of (t-24h, t] and the regime of (t, t+24h], for t in [start, end)
    with t + 24 h <= end (labels never read past ``end``)."""
    from ..data.replay import ReplayMarketData
    # history: from 30 days before start (warm-up of the features), bars up to end only
    if market is None:
        market = ReplayMarketData(data_dir, symbols, history_bars=500, start=start - timedelta(days=30), end=end)
    ticks = [x for x in market.timeline() if x.minute == 0]
    start_dt = datetime.combine(start, datetime.min.time(), UTC)
    end_dt = datetime.combine(end, datetime.min.time(), UTC)
    by_t: dict[tuple[str, datetime], int] = {}
    feats, now_lab, ts, syms = [], [], [], []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(ticks), unit="hour", desc="regime rows", file=sys.stderr, mininterval=0.5)
    for i, now in enumerate(ticks):
        if bar is not None:
            bar.update(1)
        if now < start_dt or now >= end_dt or (now.hour % step_h):
            continue
        snap = market.snapshot(now)
        for s in symbols:
            f = regime_features(snap, s)
            lab = regime_label(snap, s, now - timedelta(hours=REGIME_WINDOW_H))
            by_t[(s, now)] = len(feats)
            feats.append([f[k] for k in f])
            now_lab.append(-1 if lab is None else CLASS_INDEX[lab])
            ts.append(now)
            syms.append(s)
    if bar is not None:
        bar.close()
    X, yn = np.asarray(feats, dtype=float), np.asarray(now_lab)
    y = np.full(len(ts), -1)
    for k, (s, now) in enumerate(zip(syms, ts)):
        later = by_t.get((s, now + timedelta(hours=REGIME_WINDOW_H)))
        if later is not None and now + timedelta(hours=REGIME_WINDOW_H) <= end_dt:
            y[k] = yn[later]
    keep = (y >= 0) & (yn >= 0)
    t = np.array([x.timestamp() for x in ts])
    order = np.lexsort((np.array(syms), t))
    order = order[keep[order]]
    return RegimeSet(t[order], t[order] + REGIME_WINDOW_H * 3600, X[order], y[order], yn[order],
                     [syms[i] for i in order])
