"""``hydra sweep --start DATE --end DATE --param NAME=VALUES ... [--search grid|random] [--walk-forward TRAIN:TEST]
[--workers N | --scheduler tcp://HOST:8786] [--out DIR] [--resume]``: a parameter sweep on dask.distributed."""
from __future__ import annotations

import sys
from pathlib import Path

from . import config_option

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sweep", help="grid or random search over plugin and risk parameters, each run a task on a dask cluster",
        description="Backtest every configuration of a grid (or a seeded random sample) over [--start, --end) or "
        "over walk-forward windows. Each run is a task on dask.distributed: a LocalCluster on this machine by "
        "default, or the cluster at --scheduler. Workers run persistence off (no database, no session log) and "
        "return their results; the table goes to --out as results.csv, results.parquet and heatmap.html.",
        parents=[config_option()])
    p.add_argument("--start", required=True, help="first day, YYYY-MM-DD (UTC)")
    p.add_argument("--end", required=True, help="end day, YYYY-MM-DD (UTC, exclusive)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUES",
                   help="a swept parameter, repeatable: risk.max_position_pct=1,2,3 (values), "
                   "liquidation_cascade.stop_pct=1.0:3.0:0.5 (LOW:HIGH:STEP), or NAME=LOW..HIGH (random search); "
                   "PLUGIN.KEY is short for strategies.params.PLUGIN.KEY")
    p.add_argument("--search", choices=["grid", "random"], default="grid", help="every combination, or --samples draws")
    p.add_argument("--samples", type=int, default=20, help="random search: number of configurations (default 20)")
    p.add_argument("--seed", type=int, default=0, help="random search draws and walk-forward HMM fits (default 0)")
    p.add_argument("--walk-forward", default=None, metavar="TRAIN:TEST",
                   help="each configuration over rolling windows (regime model fitted on TRAIN), e.g. 365d:90d")
    p.add_argument("--data", default=None, help="data folder (default: data.replay_dir); a path every worker can read")
    p.add_argument("--out", default=None, help="results folder (default: <engine.log_dir>/sweep-<UTC stamp>/)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="LocalCluster worker processes (default: one per core; 0: in this process, no dask)")
    p.add_argument("--scheduler", default=None, metavar="tcp://HOST:8786", help="use an existing dask cluster")
    p.add_argument("--wait-workers", type=int, default=0, metavar="N",
                   help="with --scheduler: wait (up to 60 s) until N workers have joined")
    p.add_argument("--resume", action="store_true", help="continue the sweep in --out: run only tasks without an ok row")
    p.add_argument("--metric", default="sharpe", help="the heatmap's metric (default sharpe)")
    p.add_argument("--heatmap", default=None, metavar="X,Y", help="the heatmap's two parameters (default: the first two)")
    p.add_argument("--run-logs", action="store_true", help="also write each run's document to --out/runs/")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=handle)


def handle(args) -> int:
    from ..backtest import BacktestError, parse_date
    from ..config import load_settings
    from ..sweep import SweepError, parse_param, run_sweep
    from datetime import datetime
    from ..domain import UTC
    settings = load_settings(args.config)
    try:
        start, end = parse_date(args.start, "--start"), parse_date(args.end, "--end")
        data_dir = Path(args.data) if args.data else settings.resolve_path(settings.data.replay_dir)
        if not data_dir.is_dir():
            raise SweepError(f"--data {data_dir} is not a folder")
        params: dict = {}
        for spec in args.param:
            name, values = parse_param(spec)
            if name in params:
                raise SweepError(f"--param {name} is given twice")
            params[name] = values
        heatmap = tuple(h.strip() for h in args.heatmap.split(",")) if args.heatmap else None
        if heatmap is not None and len(heatmap) != 2:
            raise SweepError(f"--heatmap {args.heatmap!r} must name two parameters: X,Y")
        out = Path(args.out) if args.out else \
            settings.resolve_path(settings.engine.log_dir) / f"sweep-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
        res = run_sweep(settings, data_dir=data_dir, start=start, end=end, params=params, out=out,
                        search=args.search, samples=args.samples, seed=args.seed, walk_forward=args.walk_forward,
                        workers=args.workers, scheduler=args.scheduler, wait_workers=args.wait_workers,
                        resume=args.resume, run_logs=args.run_logs, metric=args.metric, heatmap=heatmap,
                        progress=not args.no_progress)
    except (BacktestError, SweepError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"\n=== HYDRA sweep {start} .. {end}: {res['configs']} configurations, {res['tasks']} tasks "
          f"({res['ran']} run, {res['skipped']} already done) on {res['executor']}, {res['elapsed_s']} s ===")
    ok = [r for r in (res["combined"] or res["rows"]) if r["status"] == "ok"]
    best = sorted(ok, key=lambda r: -(r.get(args.metric) if r.get(args.metric) is not None else float("-inf")))[:5]
    names = list(params)
    for r in best:
        shown = ", ".join(f"{n.replace('strategies.params.', '')}={r.get(n)}" for n in names)
        print(f"  {args.metric} {r.get(args.metric)!s:>10}  total return {r.get('total_return')}  trades "
              f"{r.get('trades')}  [{shown}]  {r['config_hash']}")
    for note in res["notes"]:
        print(f"note: {note}")
    for r in res["failed"]:
        shown = ", ".join(f"{n.replace('strategies.params.', '')}={r.get(n)}" for n in names)
        print(f"FAILED {r['key']} [{shown}]: {r['error']}", file=sys.stderr)
    print(f"results in {res['out']}: results.csv, results.parquet, results.jsonl"
          + (", combined.csv" if res["combined"] else "") + (", heatmap.html" if res["heatmap"] else ""))
    return EXIT_ERROR if res["failed"] else EXIT_OK
