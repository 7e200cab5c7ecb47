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
import csv
import html
import itertools
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .config import Settings

# the columns of the results table, after the parameters: comparison_row's metrics
METRICS = ["total_return", "cagr", "max_drawdown", "sharpe", "sortino", "calmar", "cvar_95", "exposure",
           "trades", "fills", "fees_usd", "final_equity_usd"]


class SweepError(ValueError):
    """A bad sweep argument; the message names the argument, the value and what is allowed."""


# ================================================================== parameters
def _literal(text: str) -> Any:
    """``3`` → 3, ``2.5`` → 2.5, ``true`` → True, ``"x"``/``x`` → "x", ``[1,2]`` (JSON) → [1, 2]."""
    text = text.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _range(text: str, name: str) -> list:
    """``LOW:HIGH:STEP`` → LOW, LOW+STEP, ... up to HIGH inclusive (ints stay ints)."""
    parts = [_literal(p) for p in text.split(":")]
    if len(parts) != 3 or not all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in parts):
        raise SweepError(f"--param {name}={text!r}: a range is LOW:HIGH:STEP with three numbers")
    low, high, step = parts
    if step <= 0 or high < low:
        raise SweepError(f"--param {name}={text!r}: STEP must be > 0 and HIGH >= LOW")
    n = int(math.floor((high - low) / step + 1e-9)) + 1
    if n > 10_000:
        raise SweepError(f"--param {name}={text!r} gives {n} values (at most 10,000)")
    if all(isinstance(p, int) for p in parts):
        return [low + k * step for k in range(n)]
    decimals = max(len(repr(float(p)).split(".")[1]) for p in parts)
    return [round(low + k * step, decimals) for k in range(n)]


def parse_param(spec: str, sections: Iterable[str] = ()) -> tuple[str, dict]:
    """``NAME=V1,V2,...`` (values), ``NAME=LOW:HIGH:STEP`` (a grid range) or ``NAME=LOW..HIGH`` (a continuous
    range, random search only). NAME is a dotted settings path (``risk.max_position_pct``) or
    ``PLUGIN.KEY``, short for ``strategies.params.PLUGIN.KEY``. Returns (full path, {"values": [...]} or
    {"low": x, "high": y})."""
    if "=" not in spec:
        raise SweepError(f"--param {spec!r} must be NAME=VALUES, e.g. risk.max_position_pct=1,2,3 or "
                         "liquidation_cascade.stop_pct=1.0:3.0:0.5")
    name, text = (s.strip() for s in spec.split("=", 1))
    parts = name.split(".")
    if len(parts) < 2 or not all(parts):
        raise SweepError(f"--param {name!r}: NAME is SECTION.KEY (e.g. risk.max_position_pct) or PLUGIN.KEY "
                         "(e.g. liquidation_cascade.stop_pct)")
    sections = set(sections) or set(Settings.model_fields)
    if parts[0] not in sections:
        parts = ["strategies", "params", *parts]
    full = ".".join(parts)
    if not text:
        raise SweepError(f"--param {name}: no values")
    if ".." in text and ":" not in text:
        low, high = (_literal(p) for p in text.split("..", 1))
        if not all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in (low, high)) or high < low:
            raise SweepError(f"--param {name}={text!r}: a continuous range is LOW..HIGH with LOW <= HIGH")
        return full, {"low": low, "high": high}
    if ":" in text and not text.startswith(("[", "{", '"')):
        return full, {"values": _range(text, name)}
    return full, {"values": [_literal(v) for v in text.split(",")]}


def grid(params: dict[str, dict]) -> list[dict]:
    """Every combination of the parameters' values, in the order given (the last parameter varies fastest)."""
    for name, p in params.items():
        if "values" not in p:
            raise SweepError(f"--param {name}: a LOW..HIGH range needs --search random (a grid needs values)")
    names = list(params)
    return [dict(zip(names, combo)) for combo in itertools.product(*(params[n]["values"] for n in names))]


def random_configs(params: dict[str, dict], samples: int, seed: int) -> list[dict]:
    """``samples`` draws (seeded): a value list is drawn from uniformly, a LOW..HIGH range uniformly (whole
    numbers when both ends are whole). Duplicated draws are kept once."""
    if samples < 1:
        raise SweepError(f"--samples {samples} must be >= 1")
    rng = random.Random(seed)
    out, seen = [], set()
    for _ in range(samples):
        draw = {}
        for name, p in params.items():
            if "values" in p:
                draw[name] = rng.choice(p["values"])
            elif isinstance(p["low"], int) and isinstance(p["high"], int):
                draw[name] = rng.randint(p["low"], p["high"])
            else:
                draw[name] = round(rng.uniform(p["low"], p["high"]), 6)
        key = json.dumps(draw, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(draw)
    return out


def settings_with(settings: Settings, overrides: dict[str, Any]) -> Settings:
    """The settings with each dotted path replaced, validated as a whole (so a bad value is refused with
    the field's own message). A path must exist, except below ``strategies.params.PLUGIN`` (a plugin's
    parameters are its own: the plugin refuses an unknown one when it is built)."""
    from pydantic import ValidationError
    data = settings.model_dump(mode="json")
    for path, value in overrides.items():
        node, parts = data, path.split(".")
        for k, part in enumerate(parts[:-1]):
            if part not in node:
                if parts[:2] == ["strategies", "params"] and k >= 2:
                    node[part] = {}
                else:
                    raise SweepError(f"--param {path}: {'.'.join(parts[:k + 1])} is not a setting")
            node = node[part]
            if not isinstance(node, dict):
                raise SweepError(f"--param {path}: {'.'.join(parts[:k + 1])} is a value, not a section")
        if parts[-1] not in node and parts[:2] != ["strategies", "params"]:
            raise SweepError(f"--param {path}: {parts[-1]!r} is not a key of [{'.'.join(parts[:-1])}] "
                             f"(keys: {', '.join(sorted(node))})")
        node[parts[-1]] = value
    try:
        out = Settings.model_validate(data)
    except ValidationError as exc:
        raise SweepError(f"configuration {overrides}: {exc}") from None
    object.__setattr__(out, "_toml_path", getattr(settings, "_toml_path", None))
    return out


def check_configuration(settings: Settings, overrides: dict) -> None:
    """Refuse, before anything runs, what a run would refuse at its start: unknown plugins or plugin
    parameters, and risk limits looser than the hard ones."""
    from .plugins import PluginError, build_strategies
    from .risk import RiskConfigError, RiskManager
    try:
        build_strategies(settings.strategies.enabled, settings.strategies.params)
        RiskManager(settings.risk)
    except (PluginError, RiskConfigError, ValueError, TypeError) as exc:
        raise SweepError(f"configuration {overrides}: {exc}") from None


def sweep_hash(settings: Settings) -> str:
    """The configuration's hash as every session log records it (``Settings.config_hash``)."""
    return settings.config_hash()


# ================================================================== tasks
def make_tasks(settings: Settings, configs: list[dict], *, data_dir: Path, start: date, end: date,
               windows: list | None = None, seed: int = 0, keep_doc: bool = False,
               log_dirs: list[Path | None] | None = None) -> list[dict]:
    """One task per configuration (× walk-forward window). Every configuration is validated here."""
    tasks = []
    for cfg_index, overrides in enumerate(configs):
        s = settings_with(settings, overrides)
        check_configuration(s, overrides)
        # the span is part of the hash a session log records: hash the configuration over the whole sweep span
        spanned = s.model_copy(update={"data": s.data.model_copy(update={"start": start, "end": end})})
        config_hash = sweep_hash(spanned)
        spans = ([(None, None, start, end)] if not windows else
                 [(w.index, (str(w.train_start), str(w.train_end)), w.test_start, w.test_end) for w in windows])
        for k, (index, train, a, b) in enumerate(spans):
            key = f"{config_hash}-{'span' if index is None else f'w{index:02d}'}-{a}-{b}-s{seed}"
            tasks.append({"key": key, "config_index": cfg_index, "config": s.model_dump(mode="json"),
                          "config_hash": config_hash, "params": dict(overrides), "data_dir": str(data_dir),
                          "sweep_span": [str(start), str(end)], "start": str(a), "end": str(b), "window": index,
                          "train": train, "seed": seed, "keep_doc": keep_doc,
                          "log_dir": str(log_dirs[k]) if log_dirs and log_dirs[k] is not None else None})
    return tasks


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
def flat_row(res: dict, params: list[str]) -> dict:
    """A results-table row: identity, parameters, metrics, status."""
    row = {"key": res["key"], "config_index": res["config_index"], "config_hash": res["config_hash"],
           "seed": res["seed"], "window": res["window"], "start": res["start"], "end": res["end"]}
    row.update({p: res["params"].get(p) for p in params})
    row.update({k: (res.get("metrics_row") or {}).get(k) for k in METRICS})
    row.update({"cycles": res.get("cycles"), "status": res["status"], "error": res.get("error"),
                "runtime_s": res.get("runtime_s"), "worker": res.get("worker")})
    return row


def read_done(path: Path) -> dict[str, dict]:
    """The finished tasks of an earlier run of this sweep (``results.jsonl``): key → its last result."""
    done: dict[str, dict] = {}
    if not path.is_file():
        return done
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            res = json.loads(line)
        except json.JSONDecodeError:
            # only a torn last line can come from an interrupted sweep; that task simply runs again
            continue
        done[res["key"]] = res
    return done


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


def _full_name(name: str, names: list[str]) -> str:
    if name in names:
        return name
    matches = [n for n in names if n.endswith("." + name) or n == f"strategies.params.{name}"]
    if len(matches) != 1:
        raise SweepError(f"--heatmap {name!r} is not one of the swept parameters ({', '.join(names)})")
    return matches[0]


def combine_windows(settings: Settings, results: list[dict], names: list[str]) -> list[dict]:
    """Per configuration, its walk-forward windows stitched into one out-of-sample run (as
    ``hydra backtest --walk-forward`` does); a configuration with a failed window has no combined row."""
    from . import metrics as M
    from .backtest import comparison_row
    by_config: dict[int, list[dict]] = {}
    for r in results:
        by_config.setdefault(r["config_index"], []).append(r)
    rows = []
    for index, rs in sorted(by_config.items()):
        rs = sorted(rs, key=lambda r: r["window"])
        base = {"config_index": index, "config_hash": rs[0]["config_hash"], "seed": rs[0]["seed"],
                "windows": len(rs), **{p: rs[0]["params"].get(p) for p in names}}
        if any(r["status"] != "ok" or "_doc" not in r for r in rs):
            bad = [r for r in rs if r["status"] != "ok"]
            rows.append({**base, "status": "failed" if bad else "not recombined (resumed without documents)",
                         "error": bad[0]["error"] if bad else None})
            continue
        doc = stitch([r["_doc"] for r in rs], settings)
        m = M.compute_all(doc)
        row = comparison_row("combined", doc, m)
        in_sample = [r["window"] for r in rs if r.get("initial_trained_to") and r["initial_trained_to"] >= r["start"]]
        rows.append({**base, **{k: row.get(k) for k in METRICS}, "status": "ok",
                     "label": "out of sample" if not in_sample else f"regimes in-sample in window(s) {in_sample}"})
    return rows


def stitch(docs: list[dict], settings: Settings) -> dict:
    """Walk-forward test windows chained into one document: each window's equity is scaled to start where
    the previous one ended."""
    scale = float(settings.broker.starting_cash_usd)
    cycles, trades, fills, fees = [], [], [], 0.0
    for doc in docs:
        start_eq = float(doc["session"]["starting_equity_usd"])
        last = scale
        for c in doc["cycles"]:
            last = float(c["equity_usd"]) / start_eq * scale
            cycles.append({"ts": c["ts"], "equity_usd": last, "regime": c.get("regime")})
        scale = last
        trades += doc.get("trades", [])
        fills += doc.get("fills", [])
        fees += float((doc.get("summary") or {}).get("fees_usd") or 0.0)
    return {"session": {"started_at": cycles[0]["ts"] if cycles else None,
                        "ended_at": cycles[-1]["ts"] if cycles else None,
                        "starting_equity_usd": str(settings.broker.starting_cash_usd),
                        "symbols": list(settings.universe.symbols)},
            "cycles": cycles, "trades": trades, "fills": fills, "summary": {"fees_usd": fees}}


# ================================================================== outputs
def _write_csv(rows: list[dict], path: Path) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, keys)
        w.writeheader()
        w.writerows(rows)


def write_results(rows: list[dict], out: Path) -> None:
    """``results.csv`` and ``results.parquet`` (same rows)."""
    import pandas as pd
    _write_csv(rows, out / "results.csv")
    frame = pd.DataFrame(rows)
    for col in frame.columns:   # parameters may mix types across rows (1, 1.5): parquet needs one per column
        if frame[col].dtype == object:
            frame[col] = frame[col].map(lambda v: v if v is None or isinstance(v, str) else json.dumps(v))
    frame.to_parquet(out / "results.parquet", index=False)


def _colour(v: float | None, lo: float, hi: float) -> str:
    if v is None or not math.isfinite(v):
        return "#eeeeee"
    x = 0.5 if hi <= lo else (v - lo) / (hi - lo)
    r, g = int(230 - 130 * x), int(110 + 120 * x)   # red (low) → green (high)
    return f"rgb({r},{g},120)"


def write_heatmap(rows: list[dict], x: str, y: str, metric: str, path: Path, *, title: str = "HYDRA sweep") -> Path:
    """A self-contained HTML table: ``metric`` over parameters ``x`` (columns) and ``y`` (rows), the mean
    over every other parameter's values and window (the count is in each cell's tooltip)."""
    cells: dict[tuple, list[float]] = {}
    for r in rows:
        v = r.get(metric)
        if r.get("status") != "ok" or v is None or (isinstance(v, float) and not math.isfinite(v)):
            continue
        cells.setdefault((json.dumps(r.get(y)), json.dumps(r.get(x))), []).append(float(v))
    xs = sorted({k[1] for k in cells}, key=_sort_key)
    ys = sorted({k[0] for k in cells}, key=_sort_key)
    means = {k: sum(v) / len(v) for k, v in cells.items()}
    lo, hi = (min(means.values()), max(means.values())) if means else (0.0, 0.0)
    short = lambda n: n.replace("strategies.params.", "")   # noqa: E731
    head = "".join(f"<th>{html.escape(v)}</th>" for v in xs)
    body = []
    for yv in ys:
        tds = []
        for xv in xs:
            m = means.get((yv, xv))
            n = len(cells.get((yv, xv), ()))
            text = "n/a" if m is None else f"{m:.4g}"
            tds.append(f'<td style="background:{_colour(m, lo, hi)}" title="mean of {n} run(s)">{text}</td>')
        body.append(f"<tr><th>{html.escape(yv)}</th>{''.join(tds)}</tr>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif}} table{{border-collapse:collapse}} td,th{{border:1px solid #999;padding:4px 8px;
text-align:right}} caption{{font-weight:bold;margin:6px}}</style></head><body>
<table><caption>{html.escape(title)}: {html.escape(metric)} (mean over the other parameters and windows)</caption>
<tr><th>{html.escape(short(y))} \\ {html.escape(short(x))}</th>{head}</tr>
{''.join(body)}</table></body></html>
"""
    path.write_text(page, encoding="utf-8")
    return path


def _sort_key(text: str):
    try:
        v = json.loads(text)
        return (0, float(v), "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0.0, text)
    except (json.JSONDecodeError, TypeError, ValueError):
        return (1, 0.0, text)


__all__ = ["SweepError", "MemoryLog", "parse_param", "grid", "random_configs", "settings_with", "make_tasks",
           "run_task", "run_tasks", "open_executor", "InlineExecutor", "DaskExecutor", "run_sweep",
           "combine_windows", "stitch", "write_heatmap", "write_results"]
