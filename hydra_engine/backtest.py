"""Backtests: the very same engine (simulated clock, replay data, simulated broker) over any span of a
data folder, compared with baselines that pay the same costs, plus walk-forward evaluation.

Why it is built this way:

* HYDRA runs through :func:`app.build_sim_session` with ``mode="backtest"``; only the data folder, the
  span and where logs go are overridden. No separate "backtest engine" exists that could drift from
  the one that trades.
* Baselines (:mod:`hydra_engine.baselines`) step HYDRA's own clock ticks through a fresh
  :class:`SimulatedBroker` with the configured fees and slippage, so every column of the comparison
  table is measured on identical data, fills and costs.
* Metrics come from :func:`hydra_engine.metrics.compute_all` on the session document. A replay
  session's ``started_at``/``ended_at`` are wall-clock times, so the document handed to the metrics is
  re-anchored on the simulated clock (first and last cycle) — otherwise exposure and the opening
  equity point would be measured against the wrong span.
* Walk-forward fits the HMM regime model on each train window only (data strictly before the test
  window) and runs the engine on the test window: every reported number is out of sample -- unless a
  window's fit fails and the configured model, fitted on data overlapping its test span, runs instead;
  the result is then labelled in-sample and says which windows.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from . import metrics as M
from .baselines import BASELINES, run_baseline
from .config import Settings
from .data.replay import ReplayMarketData
from .domain import UTC
from .tradelog import load_session


from .backtest_report import (  # noqa: E402,F401  (re-exported)
    regime_returns, curve, COLUMNS, comparison_row, _fmt, write_table, plot_equity, kill_rows, exit_r)


class BacktestError(ValueError):
    """A bad backtest argument; the message names the argument, the value and what is allowed."""


# ------------------------------------------------------------------ arguments
def parse_date(value: str, name: str) -> date:
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError):
        raise BacktestError(f"{name} {value!r} is not a date (expected YYYY-MM-DD)") from None


_DURATION = re.compile(r"^\s*(\d+)\s*([dwmy])\s*$", re.I)


def parse_duration(text: str, name: str = "duration") -> pd.DateOffset:
    """``365d``, ``8w``, ``12m``, ``1y`` → a calendar offset (months and years are calendar months)."""
    m = _DURATION.match(text or "")
    if not m or int(m.group(1)) == 0:
        raise BacktestError(f"{name} {text!r} is not a positive duration like 365d, 8w, 12m or 1y")
    n, unit = int(m.group(1)), m.group(2).lower()
    return {"d": pd.DateOffset(days=n), "w": pd.DateOffset(weeks=n), "m": pd.DateOffset(months=n),
            "y": pd.DateOffset(years=n)}[unit]


@dataclass(frozen=True)
class Window:
    index: int
    train_start: date
    train_end: date      # exclusive; equals test_start
    test_start: date
    test_end: date       # exclusive


def walk_forward_windows(start: date, end: date, spec: str) -> list[Window]:
    """Roll ``TRAIN:TEST`` over [start, end): the first test window starts at start + TRAIN, each next one
    where the previous ended (cut at ``end``); each trains on the TRAIN span just before its test window,
    so train and test never overlap."""
    if ":" not in (spec or ""):
        raise BacktestError(f"--walk-forward {spec!r} must be TRAIN:TEST, e.g. 365d:90d or 12m:3m")
    train_s, test_s = spec.split(":", 1)
    train, test = parse_duration(train_s, "--walk-forward TRAIN"), parse_duration(test_s, "--walk-forward TEST")
    edge = lambda k: (pd.Timestamp(start) + train + test * k).date()  # noqa: E731 (no month-end drift)
    out = []
    while edge(len(out)) < end:  # window k tests [edge(k), edge(k+1)): contiguous by construction
        te0 = edge(len(out))
        out.append(Window(len(out) + 1, max(start, (pd.Timestamp(te0) - train).date()), te0, te0,
                          min(edge(len(out) + 1), end)))
    if not out:
        raise BacktestError(f"--walk-forward {spec}: the span {start}..{end} is shorter than one train window "
                            f"plus a test day")
    return out


def _replay(settings: Settings, data_dir: Path) -> ReplayMarketData:
    return ReplayMarketData(data_dir, settings.universe.symbols, data_only=settings.universe.data_only)


def data_span(settings: Settings, data_dir: Path) -> tuple[datetime, datetime]:
    return _replay(settings, data_dir).span()


def _utc_midnight(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def check_span(settings: Settings, data_dir: Path, start: date, end: date,
               windows: list | None = None) -> list[str]:
    """Refuse empty or inverted spans, spans entirely outside the data (naming the data's span) and spans
    (or walk-forward test windows) holding fewer than two cycles. Returns warnings: each traded symbol
    whose data ends before ``end`` (nothing on it can fill afterwards; its DAY orders expire)."""
    if start >= end:
        raise BacktestError(f"--start {start} must be before --end {end}")
    market = _replay(settings, data_dir)
    first, last = market.span()
    if end <= first.date() or start > last.date():
        raise BacktestError(f"--start {start} .. --end {end} is outside the data in {data_dir} "
                            f"({first:%Y-%m-%d} .. {last:%Y-%m-%d})")
    ticks = np.array([t.timestamp() for t in market.timeline()])
    spans = [(f"--start {start} .. --end {end}", start, end)]
    spans += [(f"walk-forward window #{w.index} (test {w.test_start} .. {w.test_end})", w.test_start, w.test_end)
              for w in windows or ()]
    for what, a, b in spans:
        n = int(((ticks >= _utc_midnight(a).timestamp()) & (ticks < _utc_midnight(b).timestamp())).sum())
        if n < 2:
            raise BacktestError(f"{what} holds {n} cycle(s) of data in {data_dir} (data: {first:%Y-%m-%d} .. "
                                f"{last:%Y-%m-%d}); a backtest needs at least two")
    warnings = []
    for symbol in settings.universe.symbols:
        ends = (market.last_bar_times(symbol) or (None, None))[1]
        if symbol not in settings.universe.data_only and ends is not None and \
                _utc_midnight(start) <= ends < _utc_midnight(end) - timedelta(days=4):
            warnings.append(f"{symbol}: its data ends {ends:%Y-%m-%d %H:%M}Z, before --end {end}: from then on it "
                            "is stale (no entries), held positions keep their last price, orders on it cannot fill")
    return warnings


def backtest_settings(settings: Settings, data_dir: Path, start: date, end: date, out: Path) -> Settings:
    """The configured settings with the span and data folder replaced; database and logs go to ``out``."""
    return settings.model_copy(update={
        "data": settings.data.model_copy(update={"replay_dir": str(data_dir), "start": start, "end": end}),
        "engine": settings.engine.model_copy(update={"log_dir": str(out)}),
        "storage": settings.storage.model_copy(update={"url": f"sqlite:///{(out / 'hydra.db').resolve()}"}),
    })


# ------------------------------------------------------------------ running
def on_sim_clock(doc: dict) -> dict:
    """The document with started_at/ended_at on the simulated clock (first and last cycle)."""
    cycles = doc.get("cycles") or []
    if not cycles:
        return doc
    session = {**doc["session"], "started_at": cycles[0]["ts"], "ended_at": cycles[-1]["ts"]}
    return {**doc, "session": session}


def _defer_snapshots(log) -> None:
    """Write the session document once, at close, instead of after every cycle with orders or fills.

    The document holds every cycle so far, so rewriting it on each change is quadratic: profiled, it was
    half of a six-month backtest's time and dominates five years. Decisions do not change, and crash
    safety is kept by the journal, from which ``load_session`` rebuilds the document."""
    log.write_snapshot = lambda: None                 # instance attribute shadows the method
    # the journal is flushed every cycle and fsynced every 500: a backtest is a deterministic replay, so one
    # that dies with its machine is run again; paper and live keep fsyncing every cycle (tradelog.SessionLog)
    log.fsync_every = 500

    def close(ended_at, summary):
        del log.write_snapshot
        type(log).close(log, ended_at, summary)
    log.close = close


def run_hydra(settings: Settings, data_dir: Path, out: Path, *, progress: bool = True, detector=None,
              before_run=None) -> tuple[dict, list]:
    """Run the engine over ``settings``' span; return the loaded session document and the clock's ticks.
    ``before_run(session)`` is called once the session is built, before its first cycle."""
    from .app import build_sim_session, run_session
    session = build_sim_session(settings, mode="backtest", data_dir=data_dir, log_dir=out)
    _defer_snapshots(session.session_log)
    if detector is not None:
        session.engine.regime_detector = detector
    if before_run is not None:
        before_run(session)
    initial = ((getattr(session.engine.regime_detector, "params", None) or {}).get("training") or {})
    ticks = list(session.clock.ticks)
    summary = run_session(session, progress=progress)
    doc = load_session(summary["log"])
    doc["log_path"] = summary["log"]
    doc["regime_model"] = regime_model_record(session.engine, initial, ticks)
    return doc, ticks


def regime_model_record(engine, initial: dict, ticks: list) -> dict:
    """Which regime model a finished run used (``initial``: the starting model's training span); the
    sweep's persistence-off runs (:mod:`hydra_engine.sweep`) record the same."""
    det = engine.regime_detector
    trained = ((getattr(det, "params", None) or {}).get("training") or {})
    refits = engine.regime_refits
    # the starting model's readings were used unless a refit replaced it at the very first cycle -- with
    # a fresh fit, or, when that fit failed, with an unfitted model (regime UNKNOWN) because the loaded
    # one was fitted on days of this span
    replaced_at_start = (bool(refits) and refits[0]["at"] == ticks[0].isoformat()
                         and (refits[0]["ok"] or refits[0].get("set_aside", False)))
    return {"detector": getattr(det, "name", type(det).__name__),
            "trained_from": trained.get("start"), "trained_to": trained.get("end"),
            "initial_trained_to": None if replaced_at_start else initial.get("end"),
            "refits": refits}


def run_backtest(settings: Settings, *, data_dir: Path, start: date, end: date, out: Path,
                 progress: bool = True, baselines: bool = True, say=None) -> dict:
    """HYDRA and the baselines over [start, end); writes the results folder and returns its metrics.
    ``say(text)`` (e.g. ``print``) hears the coverage table and its notes before the first cycle."""
    data_notes = check_span(settings, data_dir, start, end)
    out.mkdir(parents=True, exist_ok=True)
    s = backtest_settings(settings, data_dir, start, end, out)
    coverage: dict = {}

    def announce(session) -> None:   # issue #17: every gap said before the run, not found in the JSON after
        from .coverage import announce as said
        coverage.update(said(session.engine.market, session.engine.strategies, _utc_midnight(start),
                             _utc_midnight(end), say))

    t0 = time.perf_counter()
    doc, ticks = run_hydra(s, data_dir, out, progress=progress, before_run=announce)
    t_hydra = time.perf_counter() - t0
    docs = {"hydra": doc}
    if baselines:
        (out / "baselines").mkdir(exist_ok=True)
        for name, cls in BASELINES.items():
            docs[name] = run_baseline(cls(), s, data_dir, ticks=ticks, progress=progress)
            (out / "baselines" / f"{name}.json").write_text(
                json.dumps({k: v for k, v in docs[name].items() if k != "cycles"}, indent=1), encoding="utf-8")
        if s.perps.enabled:   # issue #20: the perp benchmarks, on the same simulated USD-M venue and ticks
            from .perp.baselines import PERP_BASELINES, run_perp_baseline
            for name, cls in PERP_BASELINES.items():
                docs[name] = run_perp_baseline(cls(), s, data_dir, ticks=ticks, progress=progress)
                (out / "baselines" / f"{name}.json").write_text(
                    json.dumps({k: v for k, v in docs[name].items() if k != "cycles"}, indent=1), encoding="utf-8")
    metrics = {"hydra": M.compute_all(on_sim_clock(doc))}
    # every row annualised alike: HYDRA's book decides (its universe's crypto trades every calendar day)
    metrics.update({name: M.compute_all(on_sim_clock(d), metrics["hydra"]["periods_per_year"])
                    for name, d in docs.items() if name != "hydra"})
    curves = {name: curve(d) for name, d in docs.items()}
    regimes = pd.Series([c.get("regime") or "UNKNOWN" for c in doc["cycles"]])
    by_regime = {name: regime_returns(c, regimes) for name, c in curves.items()}
    labels = sorted({k for v in by_regime.values() for k in v})
    rows = [{**comparison_row(n, d, metrics[n]), **{f"regime:{r}": by_regime[n].get(r) for r in labels}}
            for n, d in docs.items()]
    frame = pd.DataFrame({n: c.to_numpy() for n, c in curves.items()}, index=curves["hydra"].index)
    frame.insert(0, "regime", regimes.to_numpy())
    frame.index.name = "ts"
    frame.to_csv(out / "equity.csv")
    plot_equity(curves, out / "equity.png", f"HYDRA vs baselines, {start} .. {end} (fees {s.broker.fee_bps} bps, "
                                            f"slippage {s.broker.slippage_bps} bps)")
    regime_share = metrics["hydra"].get("regime_time", {})
    summary = doc.get("summary") or {}
    kills = kill_rows(summary, ticks[0], ticks[-1]) if ticks else []
    kill_policy = (f"auto-resume after {s.truth.backtest_auto_resume_days:g} days"
                   if s.truth.backtest_auto_resume_days > 0 else "no auto-resume (entries wait for `resume`, as in paper)")
    rows[0]["kills"] = ("; ".join(f"{k['rule']} {str(k['at'])[:10]}, {100 * k['share_of_span_blocked']:.0f}% blocked"
                                  for k in kills) or "none")
    table = write_table(rows, out / "comparison", [("kills", "kills (share of span blocked)", "str"),
                                                   *((f"regime:{r}", f"{r} ({100 * regime_share.get(r, 0):.0f}% of time)", "pct")
                                                     for r in labels)])
    result = {"start": str(start), "end": str(end), "data_dir": str(data_dir), "cycles": len(ticks),
              "session_log": Path(doc["log_path"]).name,
              "hydra_runtime_s": round(t_hydra, 1), "total_runtime_s": round(time.perf_counter() - t0, 1),
              "fee_bps": s.broker.fee_bps, "slippage_bps": s.broker.slippage_bps,
              "regime_model": doc["regime_model"], "notes": data_notes + coverage.get("notes", []),
              "coverage": coverage, "kills": kills, "kill_policy": kill_policy,
              "regime_stale_cycles": int(summary.get("regime_stale_cycles") or 0),
              "regime_stale_from": summary.get("regime_stale_from"), "exit_r": exit_r(doc),
              "metrics": metrics, "regime_returns": by_regime, "comparison": rows, "comparison_md": table}
    for k in kills:   # issue #17: a kill is said, with what it cost
        result["notes"].append(f"kill switch {k['rule']} fired {k['at']}: {k['reason']}; entries blocked "
                               f"{'until ' + str(k['resumed_at']) + ' (' + str(k['resumed_by']) + ')' if k.get('resumed_at') else 'to the end'}"
                               f", {100 * k['share_of_span_blocked']:.0f}% of the span ({kill_policy})")
    result["notes"] += summary.get("library_notes") or []   # hmmlearn / refit warnings, folded (#17)
    if result["regime_stale_cycles"]:
        result["notes"].append(f"{result['regime_stale_cycles']} cycles from {result['regime_stale_from']} read the "
                               f"regime UNKNOWN because its inputs were stale (older than "
                               f"{s.truth.regime_max_age_days:g} days): no entries on them")
    trained_to = doc["regime_model"]["initial_trained_to"]
    if trained_to and trained_to >= str(start):  # say it: the regime labels were fitted on the test span
        result["notes"].append(f"regime model {doc['regime_model']['detector']} was fitted on data up to {trained_to}, "
                               f"overlapping this span: its regimes are in-sample here; use --walk-forward or "
                               f"engine.regime_refit_days for out-of-sample results")
    failed = [r for r in doc["regime_model"]["refits"] if not r["ok"]]
    if failed:   # e.g. a span too short to train on: the regime read UNKNOWN (no entries) until a refit worked
        unknown = regime_share.get("UNKNOWN", 0.0)
        result["notes"].append(f"{len(failed)} of {len(doc['regime_model']['refits'])} in-loop regime refits failed "
                               f"(first: {failed[0]['error']}); regime UNKNOWN, which allows no entries, for "
                               f"{100 * unknown:.0f}% of the run")
    (out / "metrics.json").write_text(json.dumps(M.json_safe({k: v for k, v in result.items() if k != "comparison_md"}),
                                                 indent=1), encoding="utf-8")
    return result


# ------------------------------------------------------------------ walk-forward
def fit_regime_detector(data_dir: Path, window: Window, seed: int = 0):
    """An HMM fitted on the train window only (features from data strictly before ``test_start``).

    Returns (detector or None, note). None means the engine's configured detector is used; a rule-based
    detector needs no fit, and a data folder without the feature files cannot train one."""
    try:
        from .regime import HMMRegimeDetector
        from .regime_features import load_feature_frame
    except ImportError as exc:
        return None, f"no HMM detector available ({exc}); the configured rule needs no fit"
    try:
        frame = load_feature_frame(data_dir, end=pd.Timestamp(window.train_end))
        frame = frame[frame.index >= pd.Timestamp(window.train_start, tz="UTC")]
        det = HMMRegimeDetector().fit(frame, seed=seed)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        return None, f"HMM not fitted ({exc}); the configured detector was used"
    t = det.params["training"]
    return det, f"HMM fitted on {t['start']} .. {t['end']} ({t['days']} days)"


def run_walk_forward(settings: Settings, *, data_dir: Path, start: date, end: date, spec: str, out: Path,
                     progress: bool = True, workers: int | None = 0, scheduler: str | None = None,
                     say=None) -> dict:
    """Fit on each train window, run HYDRA on its test window; per-window and stitched OOS metrics.

    Each window is a task of the sweep machinery (:mod:`hydra_engine.sweep`): ``workers=0`` runs them one
    after another in this process, ``workers=N`` on a dask LocalCluster, ``scheduler`` on an existing cluster
    (whose workers run persistence off: the windows' session logs are then not written). ``say(text)``
    hears the coverage table of all the test windows together, once, before the first runs."""
    from .sweep import make_tasks, open_executor, run_tasks
    windows = walk_forward_windows(start, end, spec)
    notes = check_span(settings, data_dir, start, end, windows)   # every window has data before any runs
    out.mkdir(parents=True, exist_ok=True)
    coverage: dict = {}

    if say is not None:   # issue #17: once, for the span the windows replay (train spans only fit)
        from .app import build_sim_session
        from .coverage import announce as said
        span = build_sim_session(backtest_settings(settings, data_dir, windows[0].test_start, windows[-1].test_end,
                                                   out), mode="backtest", data_dir=data_dir, log_dir=out, persist=False)
        coverage.update(said(span.engine.market, span.engine.strategies, _utc_midnight(windows[0].test_start),
                             _utc_midnight(windows[-1].test_end), say))
    rows, per_window, stitched, all_trades, all_fills, in_sample = [], [], [], [], [], []
    scale = float(settings.broker.starting_cash_usd)
    wdirs = [None if scheduler else (out / f"window-{w.index:02d}").resolve() for w in windows]
    tasks = make_tasks(settings, [{}], data_dir=data_dir.resolve(), start=start, end=end, windows=windows,
                       keep_doc=True, log_dirs=wdirs)
    executor = open_executor(workers=workers, scheduler=scheduler)
    try:
        results = run_tasks(tasks, executor, progress=progress, desc="walk-forward windows")
    finally:
        executor.close()
    failed = [r for r in results if r["status"] != "ok"]
    if failed:   # a combined out-of-sample result needs every window
        raise RuntimeError(f"walk-forward window #{failed[0]['window']} failed: {failed[0]['error']}\n"
                           f"{failed[0].get('traceback', '')}")
    for w, res in zip(windows, results):
        detector, note, doc, m = res["detector"], res["regime_note"], res["doc"], res["metrics"]
        trained_to = doc["regime_model"]["initial_trained_to"]
        if trained_to and trained_to >= str(w.test_start):   # e.g. the fit failed: the configured model ran
            note += f"; IN-SAMPLE: that model was fitted on data up to {trained_to}, overlapping this test window"
            in_sample.append(w.index)
        name = f"#{w.index} {w.test_start}..{w.test_end}"
        rows.append(comparison_row(name, doc, m))
        per_window.append({"window": w.index, "train": [str(w.train_start), str(w.train_end)],
                           "test": [str(w.test_start), str(w.test_end)], "regime_model": note,
                           "detector": detector, "metrics": m})
        eq = curve(doc)   # chain: each window starts where the previous one ended
        start_eq = float(doc["session"]["starting_equity_usd"])
        stitched.append(eq / start_eq * scale)
        scale = float(stitched[-1].iloc[-1]) if len(eq) else scale
        all_trades += doc.get("trades", [])
        all_fills += doc.get("fills", [])
    combined_eq = pd.concat(stitched)
    first = combined_eq.index[0].isoformat().replace("+00:00", "Z")
    combined_doc = {"session": {"started_at": first, "ended_at": combined_eq.index[-1].isoformat().replace("+00:00", "Z"),
                                "starting_equity_usd": str(settings.broker.starting_cash_usd),
                                "symbols": list(settings.universe.symbols)},
                    "cycles": [{"ts": t.isoformat().replace("+00:00", "Z"), "equity_usd": v} for t, v in combined_eq.items()],
                    "trades": all_trades, "fills": all_fills,
                    "summary": {"fees_usd": sum(r["fees_usd"] for r in rows)}}
    cm = M.compute_all(combined_doc)
    label = "out of sample"
    if in_sample:
        which = ", ".join(f"#{i}" for i in in_sample)
        label = f"regimes in-sample in window(s) {which}"
        notes.append(f"the regime model of window(s) {which} was fitted on data "
                     "overlapping their test span (its fit on the train span failed; see each window's regime "
                     "model): the combined result is not out of sample")
    rows.append(comparison_row(f"combined ({label})", combined_doc, cm))
    table = write_table(rows, out / "walk_forward")
    combined_eq.rename("equity_usd").rename_axis("ts").to_csv(out / "walk_forward_equity.csv")
    plot_equity({"hydra": combined_eq}, out / "walk_forward_equity.png", f"HYDRA walk-forward {spec}, {label}")
    result = {"spec": spec, "start": str(start), "end": str(end), "label": label,
              "notes": notes + coverage.get("notes", []), "coverage": coverage,
              "windows": per_window, "combined": cm, "table": rows}
    (out / "walk_forward.json").write_text(json.dumps(M.json_safe(result), indent=1), encoding="utf-8")
    result["table_md"] = table
    return result


def default_out_dir(root: Path) -> Path:
    return root / f"backtest-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"


__all__ = ["BacktestError", "Window", "parse_date", "parse_duration", "walk_forward_windows", "check_span",
           "backtest_settings", "run_backtest", "run_walk_forward", "regime_returns", "fit_regime_detector"]
