"""Parameter sweeps and walk-forward windows as tasks on dask.distributed (issue #24).

A sweep is a list of *tasks*; each task is one backtest of one configuration over one span (the whole
``--start .. --end``, or one walk-forward test window whose regime model is fitted on the train window just
before it). :func:`run_task` runs a task; it is a module-level function of this module, so any worker that
can import ``hydra_engine`` can run it, and its argument is a plain dict (the configuration as JSON-able
values, the data folder as a path string).

Why it is built this way:

* **The same engine.** A task goes through :func:`app.build_sim_session` (the one composition root) with
  ``persist=False``: no SQLite store, no session log on disk. What the engine decided is recorded in memory by
  :class:`MemoryLog` (the session log's in-memory twin, fed by the engine's own ``_persist`` hook) and the
  metrics come from :func:`metrics.compute_all` on the same kind of document a backtest reads back from its
  log -- so a sweep row equals ``hydra backtest``'s HYDRA row for that configuration and span
  (``tests/test_sweep.py`` checks it).
* **Configurations travel as data.** The client validates every configuration before anything runs (pydantic,
  the plugins' parameters, the risk layer's never-loosen rule) and sends ``Settings.model_dump(mode="json")``;
  the worker rebuilds it with ``Settings.model_validate`` (no environment or ``.env`` read on the worker) and
  refuses to run when its config hash differs from the client's.
* **Data once per worker.** A worker process keeps the bar and point files it has read (keyed by path, size
  and modification time) and the HMM fits of the walk-forward train windows it has made, so the second task on
  a worker reads nothing from disk. Each task still builds its own replay object and engine: nothing a run
  changes is shared between runs.
* **Failures are rows.** A task that raises, or whose worker dies, becomes a row with ``status = "failed"``
  and the error; the sweep goes on. Every finished task is appended to ``results.jsonl`` as it arrives, and
  ``--resume`` skips the tasks that already have an ``ok`` row there.
* **Executors.** ``workers=0`` runs the tasks one after another in this process (no dask; what ``hydra
  backtest --walk-forward`` does unless told otherwise), ``workers=N`` starts a dask ``LocalCluster`` of N
  worker processes on 127.0.0.1, ``scheduler="tcp://HOST:8786"`` uses an existing cluster.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Callable, Iterator

from .config import Settings
from .sweep_outputs import (METRICS, _full_name, _write_csv, combine_windows, flat_row, read_done,  # noqa: F401
                            stitch, write_heatmap, write_results)
from .sweep_params import (SweepError, check_configuration, grid, make_tasks, parse_param,  # noqa: F401
                           random_configs, settings_with, sweep_hash)

# the columns of the results table, after the parameters: comparison_row's metrics


class MemoryLog:
    """The session log's in-memory twin: what ``SessionLog.record_cycle`` keeps in its document (each cycle's
    time, regime and equity, every order, fill and closed trade) plus each cycle's decisions (what the metrics'
    veto counts read from the journal). The engine feeds it through its ordinary persistence hook."""

    def __init__(self) -> None:
        self.cycles: list[dict] = []
        self.fills: list[dict] = []
        self.trades: list[dict] = []
        self.orders: dict[str, dict] = {}
        self.details: list[dict] = []

    def __bool__(self) -> bool:   # the engine asks `if self.session_log`: an empty log is still a log
        return True

    def record_cycle(self, report: dict, trades: list[dict]) -> None:
        for order in report.get("orders", ()):
            self.orders[order["client_order_id"]] = order
        self.fills.extend(report.get("fills", ()))
        self.trades.extend(trades)
        regime = report.get("regime") or {}
        self.cycles.append({"cycle": report["cycle"], "ts": report["ts"], "mode": report.get("mode"),
                            "regime": regime.get("regime"), "regime_confidence": regime.get("confidence"),
                            "equity_usd": report.get("equity_usd")})
        if report.get("decisions"):
            self.details.append({"cycle": report["cycle"], "decisions": report["decisions"]})

    def record_span(self, reports: list[dict]) -> None:
        """A run of quiet cycles caught up by the event-horizon replay: the same records, one per cycle."""
        for report in reports:
            self.record_cycle(report, [])

    def document(self, session: dict, summary: dict) -> dict:
        return {"session": session, "cycles": self.cycles, "orders": list(self.orders.values()),
                "fills": self.fills, "trades": self.trades, "summary": summary, "cycle_details": self.details}


# ------------------------------------------------------------------ per-worker caches
_FILES: dict = {}      # (path, size, mtime_ns, source) -> frame read by the replay data
_FITS: dict = {}       # (data_dir, train_start, train_end, seed) -> (detector, note)
FILE_READS = {"disk": 0, "cached": 0}   # counted, so a test can see the second task read nothing


def _cached(reader: Callable) -> Callable:
    def read(path, src, *args, **kwargs):
        st = os.stat(path)
        key = (str(path), st.st_size, st.st_mtime_ns, src, reader.__name__, args, tuple(sorted(kwargs.items())))
        frame = _FILES.get(key)
        if frame is None:
            FILE_READS["disk"] += 1
            frame = _FILES[key] = reader(path, src, *args, **kwargs)
        else:
            FILE_READS["cached"] += 1
        return frame.copy()   # a run may not change what the next run reads
    read.__wrapped__ = reader
    return read


@contextmanager
def worker_file_cache() -> Iterator[None]:
    """While open, the replay data's bar and point files are read once per process (see module doc)."""
    from .data import replay
    saved = replay.read_bars, replay.read_points
    if not hasattr(saved[0], "__wrapped__"):
        replay.read_bars, replay.read_points = _cached(saved[0]), _cached(saved[1])
    try:
        yield
    finally:
        replay.read_bars, replay.read_points = saved


def _fit(data_dir: Path, train: tuple[str, str], seed: int):
    """The walk-forward window's regime model fitted on its train span, once per worker (a copy per run:
    a detector keeps per-run caches)."""
    from .backtest import Window, fit_regime_detector
    key = (str(data_dir), *train, seed)
    if key not in _FITS:
        t0, t1 = (date.fromisoformat(d) for d in train)
        _FITS[key] = fit_regime_detector(data_dir, Window(0, t0, t1, t1, t1), seed=seed)
    detector, note = _FITS[key]
    return copy.deepcopy(detector), note


def _worker_name() -> str:
    try:
        from distributed import get_worker
        w = get_worker()
        return str(w.name)
    except (ImportError, ValueError):
        return "in-process"


def run_task(task: dict) -> dict:
    """Run one task (see :func:`make_tasks`) and return its result row; never raises for a failed run:
    the row then has ``status = "failed"`` and the error."""
    t0 = time.perf_counter()
    base = {"key": task["key"], "config_index": task["config_index"], "config_hash": task["config_hash"],
            "seed": task["seed"], "window": task["window"], "start": task["start"], "end": task["end"],
            "params": task["params"], "worker": _worker_name(), "pid": os.getpid()}
    try:
        with worker_file_cache():
            out = _run(task)
        return {**base, "status": "ok", "error": None, "runtime_s": round(time.perf_counter() - t0, 3), **out}
    except Exception as exc:   # reported as a row: one bad configuration does not end the sweep
        tail = traceback.format_exc(limit=-3)
        return {**base, "status": "failed", "error": f"{type(exc).__name__}: {exc}", "traceback": tail,
                "runtime_s": round(time.perf_counter() - t0, 3)}


def _run(task: dict) -> dict:
    from . import metrics as M
    from .app import build_sim_session, run_session
    from .backtest import backtest_settings, comparison_row, on_sim_clock, regime_model_record, run_hydra

    settings = Settings.model_validate(task["config"])
    span = [date.fromisoformat(d) for d in task["sweep_span"]]
    spanned = settings.model_copy(update={"data": settings.data.model_copy(update={"start": span[0], "end": span[1]})})
    if sweep_hash(spanned) != task["config_hash"]:
        raise RuntimeError(f"configuration hash {sweep_hash(spanned)} on this worker differs from the client's "
                           f"{task['config_hash']} (another HYDRA version on the worker?)")
    data_dir = Path(task["data_dir"])
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data folder {data_dir} not found on worker {_worker_name()}")
    start, end = date.fromisoformat(task["start"]), date.fromisoformat(task["end"])
    detector, note = (None, None)
    if task["train"]:   # a walk-forward window: the regime model of its train span only
        detector, note = _fit(data_dir, tuple(task["train"]), task["seed"])
    tmp = None
    out = Path(task["log_dir"]) if task["log_dir"] else Path(tmp := tempfile.mkdtemp(prefix="hydra-sweep-"))
    try:
        out.mkdir(parents=True, exist_ok=True)
        s = backtest_settings(settings, data_dir, start, end, out)
        if detector is not None:   # the window keeps the model of its train span: no in-loop refit
            s = s.model_copy(update={"engine": s.engine.model_copy(update={"regime_refit_days": 0})})
        elif task["train"] and s.engine.regime_refit_days > 0:
            note += f", refitted in the loop every {s.engine.regime_refit_days} days on the data before each cycle"
        if task["log_dir"]:   # walk-forward on a shared disk: the window's session log and database, as before
            doc, _ = run_hydra(s, data_dir, out, progress=False, detector=detector)
        else:
            session = build_sim_session(s, mode="backtest", data_dir=data_dir, log_dir=out, persist=False)
            if detector is not None:
                session.engine.regime_detector = detector
            memory = session.engine.session_log = MemoryLog()
            initial = ((getattr(session.engine.regime_detector, "params", None) or {}).get("training") or {})
            ticks = list(session.clock.ticks)
            summary = run_session(session, progress=False)
            engine = session.engine
            header = {"session_id": engine.session_id, "mode": "backtest", "config_hash": s.config_hash(),
                      "symbols": s.universe.symbols, "strategies": [x.name for x in engine.strategies],
                      "starting_equity_usd": str(engine.starting_equity_usd), "data_folder": str(data_dir)}
            doc = memory.document(header, summary)
            doc["regime_model"] = regime_model_record(engine, initial, ticks)
        m = M.compute_all(on_sim_clock(doc))
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    row = comparison_row("hydra", doc, m)
    result = {"metrics_row": {k: row.get(k) for k in METRICS}, "cycles": m.get("cycles"),
              "regime_note": note, "detector": getattr(detector, "name", None) or "configured",
              "initial_trained_to": doc["regime_model"]["initial_trained_to"]}
    if task["keep_doc"]:   # walk-forward: what stitching the windows needs (no per-cycle decisions)
        result["metrics"] = m
        result["doc"] = {k: doc.get(k) for k in ("session", "cycles", "trades", "fills", "summary", "regime_model")}
        result["doc"]["log_path"] = doc.get("log_path")
    return result


# ================================================================== executors
class InlineExecutor:
    """The tasks one after another in this process (no dask)."""
    name = "in-process"
    workers = 1

    def run(self, fn: Callable, tasks: list[dict]) -> Iterator[tuple[int, dict]]:
        for i, task in enumerate(tasks):
            yield i, fn(task)

    def close(self) -> None:
        pass


class DaskExecutor:
    """Tasks as futures on a dask.distributed cluster: a LocalCluster of ``workers`` processes on 127.0.0.1,
    or the cluster whose scheduler is at ``scheduler``."""

    def __init__(self, *, workers: int | None = None, scheduler: str | None = None, wait_workers: int = 0,
                 timeout_s: float = 60.0):
        try:
            from distributed import Client, LocalCluster
        except ImportError as exc:   # pragma: no cover - dask is a dependency
            raise SweepError(f"the sweep needs dask.distributed ({exc}); pip install 'dask[distributed]'") from None
        self.cluster = None
        if scheduler:
            if not scheduler.startswith(("tcp://", "tls://", "inproc://", "ucx://")):
                raise SweepError(f"--scheduler {scheduler!r} must be an address like tcp://HOST:8786")
            try:
                self.client = Client(scheduler, timeout=timeout_s)
            except OSError as exc:
                raise SweepError(f"--scheduler {scheduler}: cannot reach the scheduler ({exc})") from None
            self.name = f"scheduler {scheduler}"
        else:
            n = workers or 1
            self.cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                                        scheduler_port=0, dashboard_address=None, silence_logs=40)
            self.client = Client(self.cluster)
            self.name = f"LocalCluster of {n} worker process{'es' if n > 1 else ''}"
        if wait_workers:
            self.client.wait_for_workers(wait_workers, timeout=timeout_s)
        self.workers = len(self.client.nthreads())   # worker address -> threads, every worker

    def run(self, fn: Callable, tasks: list[dict]) -> Iterator[tuple[int, dict]]:
        from distributed import as_completed
        futures = self.client.map(fn, tasks, pure=False)
        index = {f.key: i for i, f in enumerate(futures)}
        for fut in as_completed(futures):
            i = index[fut.key]
            if fut.status == "finished":
                yield i, fut.result()
            else:   # the worker died, the result could not be sent, ...: the task is reported, not fatal
                exc = fut.exception()
                t = tasks[i]
                yield i, {"key": t["key"], "config_index": t["config_index"], "config_hash": t["config_hash"],
                          "seed": t["seed"], "window": t["window"], "start": t["start"], "end": t["end"],
                          "params": t["params"], "worker": None, "pid": None, "status": "failed",
                          "error": f"{type(exc).__name__}: {exc}", "runtime_s": None}
            fut.release()

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def open_executor(*, workers: int | None, scheduler: str | None = None, wait_workers: int = 0):
    """``scheduler`` wins; else ``workers=0`` is in-process, ``workers=N`` a LocalCluster of N processes,
    ``None`` a LocalCluster of one process per core."""
    if scheduler:
        return DaskExecutor(scheduler=scheduler, wait_workers=wait_workers)
    if workers == 0:
        return InlineExecutor()
    if workers is not None and workers < 0:
        raise SweepError(f"--workers {workers} must be >= 0")
    return DaskExecutor(workers=workers or (os.cpu_count() or 1))


def run_tasks(tasks: list[dict], executor, *, progress: bool = True, desc: str = "tasks",
              on_result: Callable[[dict], None] | None = None) -> list[dict]:
    """Every task's result, in task order; ``on_result`` sees each as it arrives. A progress bar counts the
    tasks done (and failed)."""
    results: list[dict | None] = [None] * len(tasks)
    bar = None
    if progress and tasks:
        from tqdm import tqdm
        bar = tqdm(total=len(tasks), unit="task", desc=desc, file=sys.stderr, dynamic_ncols=True)
    failed = 0
    try:
        for i, res in executor.run(run_task, tasks):
            results[i] = res
            failed += res["status"] != "ok"
            if on_result is not None:
                on_result(res)
            if bar is not None:
                bar.update(1)
                if failed:
                    bar.set_postfix_str(f"{failed} failed")
    finally:
        if bar is not None:
            bar.close()
    return results   # type: ignore[return-value]


# ================================================================== the sweep
def run_sweep(settings: Settings, *, data_dir: Path, start: date, end: date, params: dict[str, dict],
              out: Path, search: str = "grid", samples: int = 20, seed: int = 0, walk_forward: str | None = None,
              workers: int | None = None, scheduler: str | None = None, wait_workers: int = 0,
              resume: bool = False, run_logs: bool = False, metric: str = "sharpe",
              heatmap: tuple[str, str] | None = None, progress: bool = True) -> dict:
    """Run every configuration (× walk-forward window) as a task; write ``results.jsonl`` (as results arrive),
    ``results.csv``/``results.parquet``, ``heatmap.html`` and ``sweep.json`` into ``out``."""
    from .backtest import check_span, walk_forward_windows
    if not params:
        raise SweepError("no --param given: name at least one parameter to sweep")
    if metric not in METRICS:
        raise SweepError(f"--metric {metric!r} is not one of {', '.join(METRICS)}")
    configs = grid(params) if search == "grid" else random_configs(params, samples, seed) \
        if search == "random" else None
    if configs is None:
        raise SweepError(f"--search {search!r} must be grid or random")
    names = list(params)
    if heatmap is None and len(names) >= 2:
        heatmap = (names[0], names[1])
    if heatmap is not None:
        heatmap = tuple(_full_name(h, names) for h in heatmap)
    windows = walk_forward_windows(start, end, walk_forward) if walk_forward else None
    notes = check_span(settings, data_dir, start, end, windows)
    tasks = make_tasks(settings, configs, data_dir=data_dir.resolve(), start=start, end=end, windows=windows,
                       seed=seed, keep_doc=bool(walk_forward) or run_logs)
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / "results.jsonl"
    done = read_done(jsonl) if resume else {}
    if not resume and jsonl.exists():
        raise SweepError(f"{out} already holds a sweep (results.jsonl): pass --resume to continue it, or another --out")
    todo = [t for t in tasks if done.get(t["key"], {}).get("status") != "ok"]
    spec = {"search": search, "samples": samples if search == "random" else None, "seed": seed,
            "params": params, "start": str(start), "end": str(end), "walk_forward": walk_forward,
            "data_dir": str(data_dir), "configs": len(configs), "tasks": len(tasks), "metric": metric,
            "heatmap": list(heatmap) if heatmap else None, "notes": notes}
    (out / "sweep.json").write_text(json.dumps(spec, indent=1, default=str), encoding="utf-8")
    if run_logs:
        (out / "runs").mkdir(exist_ok=True)
    t0 = time.perf_counter()
    executor = open_executor(workers=workers, scheduler=scheduler, wait_workers=wait_workers) if todo else None
    new: dict[str, dict] = {}
    try:
        with open(jsonl, "a", encoding="utf-8") as fh:
            def keep(res: dict) -> None:
                doc, metrics = res.pop("doc", None), res.pop("metrics", None)
                if run_logs and doc is not None:
                    (out / "runs" / f"{res['key']}.json").write_text(
                        json.dumps({"task": res, "metrics": metrics, "document": doc}, default=str), encoding="utf-8")
                if doc is not None:
                    res["_doc"] = doc
                new[res["key"]] = res
                fh.write(json.dumps({k: v for k, v in res.items() if k != "_doc"}, default=str) + "\n")
                fh.flush()
            if todo:
                run_tasks(todo, executor, progress=progress, desc=f"HYDRA sweep ({executor.name})", on_result=keep)
    finally:
        if executor is not None:
            executor.close()
    elapsed = time.perf_counter() - t0
    results = [new.get(t["key"]) or done[t["key"]] for t in tasks]
    rows = [flat_row(r, names) for r in results]
    write_results(rows, out)
    combined = combine_windows(settings, results, names) if walk_forward else []
    if combined:
        _write_csv(combined, out / "combined.csv")
    if heatmap is not None:
        table = combined if combined else [r for r in rows if r["status"] == "ok"]
        write_heatmap(table, heatmap[0], heatmap[1], metric, out / "heatmap.html",
                      title=f"HYDRA sweep {start} .. {end}" + (f", walk-forward {walk_forward} (combined)"
                                                              if walk_forward else ""))
    failed = [r for r in rows if r["status"] != "ok"]
    return {"out": str(out), "configs": len(configs), "tasks": len(tasks), "ran": len(todo),
            "skipped": len(tasks) - len(todo), "failed": failed, "elapsed_s": round(elapsed, 2),
            "executor": executor.name if executor else "none (every task was already done)",
            "workers": getattr(executor, "workers", 0), "rows": rows, "combined": combined, "notes": notes,
            "heatmap": str(out / "heatmap.html") if heatmap else None}


__all__ = ["SweepError", "MemoryLog", "parse_param", "grid", "random_configs", "settings_with", "make_tasks",
           "run_task", "run_tasks", "open_executor", "InlineExecutor", "DaskExecutor", "run_sweep",
           "combine_windows", "stitch", "write_heatmap", "write_results"]
