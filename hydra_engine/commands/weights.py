"""``hydra weights [--log LOG.json] [--out DIR]``: strategy weights and how they moved.

Recomputes the adaptive weights by replaying a session log's closed trades in the order the engine
booked them (the log's order: a daily bar's exit can be booked after a later crypto exit) through
the same :class:`~hydra_engine.weights.StrategyWeights` the engine uses, prints the current weights
and their history as tables, and writes ``weights_history.csv``, ``weights.json`` and
``weights.png`` (weight over time per strategy, floor and cap marked).
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from . import config_option

EXIT_OK, EXIT_USAGE = 0, 2
SHOWN_ROWS = 20


def register(subparsers) -> None:
    p = subparsers.add_parser("weights", help="show adaptive strategy weights replayed from a session log",
                              description="Replay the closed trades of a session log through the adaptive "
                              "strategy weights; print current weights and their history; write CSV, JSON and "
                              "a PNG chart into --out (default: <log stem>-weights/ next to the log).",
                              parents=[config_option()])
    p.add_argument("--log", default=None, help="session-*.json log (default: the newest in the log folder)")
    p.add_argument("--out", default=None, help="output folder")
    p.add_argument("--floor", type=float, default=0.05, help="minimum weight per strategy (default 0.05)")
    p.add_argument("--cap", type=float, default=0.6, help="maximum weight per strategy (default 0.6)")
    p.add_argument("--halflife", type=float, default=20.0, help="half-life in trades of the EWM statistics")
    p.set_defaults(func=handle)


def _read_log(path: Path) -> dict:
    """The session document; through tradelog.load_session (journal recovery) when it accepts it.
    A log it finds damaged (a corrupt journal line, a malformed trade) is refused, not read around."""
    from ..tradelog import CorruptLog, check_trades, load_session
    try:
        return load_session(path)
    except CorruptLog:
        raise
    except (ValueError, KeyError):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:   # ValueError: bad JSON or bytes that are not UTF-8
            raise ValueError(f"{path}: not a readable session log ({exc})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("trades"), list):
            raise ValueError(f"{path}: no 'trades' list; not a HYDRA session log") from None
        check_trades(doc["trades"], path)
        return doc


def replay(doc: dict, floor: float = 0.05, cap: float = 0.6, halflife: float = 20.0):
    """A StrategyWeights fed with every closed trade of ``doc``, plus its starting point in history."""
    from ..domain import ClosedTrade
    from ..weights import StrategyWeights

    trades = list(doc.get("trades", []))   # booking order, the order the engine's weights learned in
    names = list((doc.get("session") or {}).get("strategies") or []) + [t["strategy"] for t in trades]
    w = StrategyWeights(list(dict.fromkeys(names)), floor=floor, cap=cap, halflife_trades=halflife)
    start = (doc.get("session") or {}).get("data_start") or (trades[0]["entry_time"] if trades else "start")
    w.history.append((start, w.as_dict()))
    for t in trades:
        missing = [k for k in ("strategy", "exit_time", "pnl_usd", "r_multiple") if k not in t]
        if missing:
            raise ValueError(f"trade {t!r} lacks {missing}")
        r = t["r_multiple"]   # null: a NaN R (to_jsonable writes NaN as null), which update() counts as 0
        w.update(ClosedTrade(**{f: t.get(f, "") for f in ClosedTrade.__slots__ if f != "r_multiple"},
                             r_multiple=float("nan") if r is None else float(r)))
    return w, len(trades)


def _chart(w, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    times = pd.to_datetime([t for t, _ in w.history], utc=True, errors="coerce")
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name in w.strategies:
        ax.step(times, [h.get(name, 0.0) for _, h in w.history], where="post", label=name)
    ax.axhline(w.floor, color="grey", ls=":", lw=1, label=f"floor {w.floor:g}")
    ax.axhline(w.cap, color="grey", ls="--", lw=1, label=f"cap {w.cap:g}")
    ax.set_ylim(0, 1)
    ax.set_ylabel("weight")
    ax.set_title("HYDRA strategy weights (replayed from closed trades)")
    ax.legend(loc="upper left", fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def handle(args) -> int:
    if args.log:
        log = Path(args.log)
    else:
        from ..config import load_settings
        from ..tradelog import newest_session
        settings = load_settings(args.config)
        log = newest_session(settings.resolve_path(settings.engine.log_dir))
        if log is None:
            print(f"error: no session-*.json in {settings.resolve_path(settings.engine.log_dir)}; pass --log",
                  file=sys.stderr)
            return EXIT_USAGE
    try:
        from ..weights import StrategyWeights
        StrategyWeights([], args.floor, args.cap, args.halflife)   # the bounds first: their error is not the log's
        doc = _read_log(log)
    except (OSError, ValueError) as exc:   # the message names the bound, or the file and the reason
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        w, n = replay(doc, args.floor, args.cap, args.halflife)
        return _report(w, n, log, args.out)
    except (TypeError, AttributeError, ValueError, LookupError) as exc:
        # a record of a shape the loader does not check (session.data_start 12): name the file, no traceback
        print(f"error: {log}: cannot replay the weights of this log ({type(exc).__name__}: {exc})", file=sys.stderr)
        return EXIT_USAGE


def _report(w, n: int, log: Path, out_dir: str | None) -> int:
    """Print the weights and their history; write CSV, JSON and the chart."""
    if not w.strategies:
        print(f"error: {log} names no strategies and has no trades", file=sys.stderr)
        return EXIT_USAGE
    names = w.strategies
    print(f"strategy weights from {log} ({n} closed trades; floor {w.floor:g}, cap {w.cap:g}, "
          f"half-life {w.halflife_trades:g} trades)")
    nw = max([26, *(len(s) + 2 for s in names)])
    print(f"{'strategy':<{nw}}{'trades':>7}{'win (ewm)':>11}{'avg R (ewm)':>13}{'weight':>9}")
    for s in names:
        st = w.stats[s]
        print(f"{s:<{nw}}{st['trades']:>7}{st['win_rate']:>11.1%}{st['avg_r']:>+13.3f}{w.weight(s):>9.3f}")
    print(f"\nhistory ({len(w.history)} points{', last ' + str(SHOWN_ROWS) if len(w.history) > SHOWN_ROWS else ''})")
    widths = {s: max(15, len(s) + 2) for s in names}   # a strategy's full name, never cut
    print(f"{'time':<22}" + "".join(f"{s:>{widths[s]}}" for s in names))
    for t, h in w.history[-SHOWN_ROWS:]:
        print(f"{str(t)[:21]:<22}" + "".join(f"{h.get(s, 0.0):>{widths[s]}.3f}" for s in names))
    out = Path(out_dir) if out_dir else log.with_name(log.stem + "-weights")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "weights_history.csv", "w", newline="", encoding="utf-8") as fh:
        wr = csv.writer(fh)
        wr.writerow(["time", *names])
        for t, h in w.history:
            wr.writerow([t, *(f"{h.get(s, 0.0):.6f}" for s in names)])
    (out / "weights.json").write_text(json.dumps({"log": str(log), "trades": n, "weights": w.as_dict(),
                                                  **w.to_state()}, indent=1), encoding="utf-8")
    _chart(w, out / "weights.png")
    print(f"\nwritten to {out}: weights_history.csv, weights.json, weights.png")
    return EXIT_OK
