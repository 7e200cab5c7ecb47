"""``hydra backtest --start DATE --end DATE [--data DIR] [--out DIR] [--walk-forward TRAIN:TEST]``."""
from __future__ import annotations

import sys
from pathlib import Path

from . import config_option

EXIT_OK, EXIT_USAGE = 0, 2


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "backtest", help="backtest HYDRA against baselines over a span of the data (or walk-forward)",
        description="Run the same engine (simulated clock, replay data, simulated broker, configured fees and "
        "slippage) over [--start, --end), plus buy-and-hold, momentum and mean-reversion baselines on the same "
        "data and costs. Writes the trade log, equity.csv/png, metrics.json and comparison.csv/md into --out.",
        parents=[config_option()])
    p.add_argument("--start", required=True, help="first day, YYYY-MM-DD (UTC)")
    p.add_argument("--end", required=True, help="end day, YYYY-MM-DD (UTC, exclusive)")
    p.add_argument("--data", default=None, help="data folder (default: data.replay_dir; ../shared/data for the full set)")
    p.add_argument("--out", default=None, help="results folder (default: <engine.log_dir>/backtest-<UTC stamp>/)")
    p.add_argument("--walk-forward", default=None, metavar="TRAIN:TEST",
                   help="rolling windows, e.g. 365d:90d or 12m:3m: fit the regime model on TRAIN, test on TEST")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="walk-forward: run the windows on a dask LocalCluster of N worker processes (0: one after "
                   "another in this process, the default)")
    p.add_argument("--scheduler", default=None, metavar="tcp://HOST:8786",
                   help="walk-forward: run the windows on an existing dask cluster (see README, parameter sweeps)")
    p.add_argument("--no-baselines", action="store_true", help="skip the baselines (HYDRA only)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=handle)


def handle(args) -> int:
    from ..backtest import BacktestError, default_out_dir, parse_date, run_backtest, run_walk_forward
    from ..config import load_settings
    from ..sweep import SweepError
    settings = load_settings(args.config)
    try:
        start, end = parse_date(args.start, "--start"), parse_date(args.end, "--end")
        data_dir = Path(args.data) if args.data else settings.resolve_path(settings.data.replay_dir)
        if not data_dir.is_dir():
            raise BacktestError(f"--data {data_dir} is not a folder")
        out = Path(args.out) if args.out else default_out_dir(settings.resolve_path(settings.engine.log_dir))
        if args.walk_forward:
            res = run_walk_forward(settings, data_dir=data_dir, start=start, end=end, spec=args.walk_forward,
                                   out=out, progress=not args.no_progress, workers=args.workers,
                                   scheduler=args.scheduler, say=print)
            print(f"\n=== HYDRA walk-forward {args.walk_forward}: {len(res['windows'])} windows, {res['label']} ===")
            for w in res["windows"]:
                print(f"window {w['window']}: train {w['train'][0]}..{w['train'][1]}  test {w['test'][0]}..{w['test'][1]}"
                      f"  regime model: {w['regime_model']}")
            print(res["table_md"])
            for note in res["notes"]:
                print(f"note: {note}")
            print(f"results in {out}: walk_forward.json, walk_forward.csv/.md, walk_forward_equity.csv/.png, window-*/")
            return EXIT_OK
        res = run_backtest(settings, data_dir=data_dir, start=start, end=end, out=out,
                           progress=not args.no_progress, baselines=not args.no_baselines, say=print)
    except (BacktestError, SweepError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"\n=== HYDRA backtest {res['start']} .. {res['end']} ({res['cycles']} cycles, fees {res['fee_bps']} bps, "
          f"slippage {res['slippage_bps']} bps) ===")
    print(res["comparison_md"])
    stop_r = res.get("exit_r", {})
    if stop_r:
        print("exits (trades, mean R): " + ", ".join(f"{k} {v['trades']} ({v['mean_r']:+.2f} R)" for k, v in stop_r.items()))
    print(f"kills: {res.get('kill_policy')}")
    for note in res["notes"]:
        print(f"note: {note}")
    print(f"runtime: HYDRA {res['hydra_runtime_s']} s, total {res['total_runtime_s']} s")
    written = [res["session_log"], "equity.csv", "equity.png", "metrics.json", "comparison.csv", "comparison.md",
               *(["baselines/"] if not args.no_baselines else [])]   # --no-baselines creates no baselines/
    print(f"results in {out}: {', '.join(written)}")
    return EXIT_OK
