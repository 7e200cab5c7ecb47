"""``hydra graph --at DATE``: the cross-asset lead-lag graph (``signals/cross_asset.py``) as estimated on
the data known at DATE's end (past-only, the modifier's own estimate): nodes and edges with lag and
strength as text, and with ``--png FILE`` as a picture."""
from __future__ import annotations

import sys
from datetime import datetime, time, timedelta
from pathlib import Path

EXIT_OK, EXIT_USAGE = 0, 2


def register(subparsers) -> None:
    from . import config_option
    p = subparsers.add_parser("graph", parents=[config_option()], help="draw the cross-asset lead-lag graph as of a date",
                              description="Estimate the cross-asset graph on the replay data known at the end of "
                              "--at (UTC), with the [modifiers.params.cross_asset] settings, and print its edges.")
    p.add_argument("--at", required=True, help="date, YYYY-MM-DD")
    p.add_argument("--data", default=None, help="data folder (default: data.replay_dir)")
    p.add_argument("--png", default=None, help="also draw the graph to this PNG file")
    p.add_argument("--method", choices=("lagcorr", "granger"), default=None, help="override the test")
    p.set_defaults(func=handle)


def handle(args) -> int:
    from ..config import load_settings
    from ..data.replay import DataFolderError, ReplayMarketData
    from ..domain import UTC
    from signals.cross_asset import GraphCache, GraphParams, describe_graph, draw_graph
    try:
        day = datetime.strptime(args.at, "%Y-%m-%d").date()
    except ValueError:
        print(f"error: --at {args.at!r} is not a date YYYY-MM-DD", file=sys.stderr)
        return EXIT_USAGE
    settings = load_settings(getattr(args, "config", None))
    params = dict(settings.modifiers.params.get("cross_asset", {}))
    if args.method:
        params["method"] = args.method
    gp = GraphParams(**params)
    folder = Path(args.data) if args.data else settings.resolve_path(settings.data.replay_dir)
    syms = [s for s in gp.nodes if s != "VIX"]
    try:
        market = ReplayMarketData(folder, syms, data_only=[s for s in gp.nodes if s == "VIX"],
                                  history_bars=max(settings.engine.history_bars, gp.window + 5))
    except DataFolderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    now = datetime.combine(day + timedelta(days=1), time(0), UTC)
    graph = GraphCache(gp).refresh(market.snapshot(now))
    if graph is None:
        print(f"error: no session data known at {now:%Y-%m-%d %H:%M}Z in {folder}", file=sys.stderr)
        return EXIT_USAGE
    print("\n".join(describe_graph(graph)))
    if args.png:
        draw_graph(graph, args.png)
        print(f"picture: {args.png}")
    return EXIT_OK
