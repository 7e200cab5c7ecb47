"""Command line: ``python hydra_engine.py [command]``. With no command it runs the offline simulation.

Every subcommand is a thin layer over the same core. Commands beyond ``run``, ``status`` and
``version`` live in ``hydra_engine/commands/<name>.py`` and register themselves (``register(sub)``).
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import pkgutil
import sys
from decimal import Decimal

from . import __version__
from .commands import CONFIG_HELP, config_option
from .config import AlpacaKeys, ConfigError, load_settings

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
EXIT_BROKEN_PIPE = 128 + 13   # what a shell reports for a tool ended by SIGPIPE (e.g. `yes | head -1`)


def _print_summary(summary: dict) -> None:
    from .review import fmt_usd   # -$82.84, as the review writes a loss
    start = Decimal(summary["starting_equity_usd"])
    final = Decimal(summary["final_equity_usd"])
    print("\n=== HYDRA session summary ===")
    print(f"cycles            {summary['cycles']}")
    print(f"equity            ${start:,.2f} -> ${final:,.2f}  ({summary['return_pct']:+.2f}%)")
    if summary.get("fees_usd") is not None:
        print(f"fees paid         ${Decimal(summary['fees_usd']):,.2f}")
    print(f"proposals         {summary['proposals']} (approved {summary['approved']})")
    if summary.get("sizing_bound_by"):
        print("sizes bound by    " + ", ".join(f"{k}: {v}" for k, v in sorted(summary["sizing_bound_by"].items())))
    print("vetoes by rule    " + (", ".join(f"{k}: {v}" for k, v in sorted(summary["vetoes_by_rule"].items()))
                                  or ("none (every proposal was approved)" if summary["proposals"] else "none (no proposals)")))
    print(f"orders            {summary['orders']} sent, {summary['orders_refused']} refused")
    if summary.get("faults"):   # issue #16: retries and rate-limit waits, where an operator looks
        f = summary["faults"]
        print(f"faults            {int(f.get('retries', 0))} retried broker calls, {int(f.get('rate_limited', 0))} "
              f"rate-limit answers (429), {f.get('waited_s', 0):.1f} s waited, {int(f.get('slow_cycles', 0))} cycles "
              f"slower than the interval, {int(f.get('late_cycles', 0))} started late")
    print(f"closed trades     {summary['closed_trades']}")
    for name, s in summary["per_strategy"].items():
        win = 100 * s["wins"] / s["trades"] if s["trades"] else 0
        print(f"  {name:<24} {s['trades']:>4} trades  win {win:5.1f}%  P&L {fmt_usd(Decimal(s['pnl_usd']))}")
    for name, a in (summary.get("activity") or {}).items():   # every enabled strategy is accounted for
        if name not in summary["per_strategy"]:
            print(f"  {name:<24}    0 trades  (signals {a['signals']}, proposals {a['proposals']}, "
                  f"kept out by its regimes in {a['regime_gated_cycles']} awake cycles)")
    for name, notes in (summary.get("plugin_notes") or {}).items():
        traded = summary["per_strategy"].get(name, {}).get("trades", 0)
        print(f"  {name}: {traded} closed trades" + ("" if notes else "; no notes"))
        for line in notes[:3] + (["..."] if len(notes) > 6 else []) + notes[max(3, len(notes) - 3):]:
            print(f"    {line}")
    if summary["exit_reasons"]:
        print("exit reasons      " + ", ".join(f"{k}: {v}" for k, v in sorted(summary["exit_reasons"].items())))
    if summary.get("regime_stale_cycles"):
        print(f"stale regime      {summary['regime_stale_cycles']} cycles UNKNOWN from "
              f"{summary['regime_stale_from']}: regime inputs stale (no entries)")
    if summary.get("kill"):
        k = summary["kill"]
        print(f"kill              {k['rule']} at {k['at']}: {k['reason']} "
              f"({'resumed ' + k['resumed_at'] if k.get('resumed_at') else 'entries blocked until `resume`'})")
    for note in summary.get("library_notes") or ():
        print(f"note: {note}")
    if summary["open_positions"]:
        print("open positions    " + ", ".join(f"{k} {v}" for k, v in summary["open_positions"].items()))
    print(f"trade log         {summary['log']}")
    print(f"cycle journal     {summary['journal']}")
    print(f"database          {summary['database']}")


def _say_coverage(session) -> None:
    """Issue #17: a replay says, before its first cycle, what its data covers (on stdout, with the run's
    other output; stderr stays for errors). A reader already gone does not stop the run: the summary's
    write meets the closed pipe after the session is closed, and main() ends quietly then."""
    from .coverage import announce, tick_span
    start, end = tick_span(session.clock.ticks)

    def say(text: str) -> None:
        try:
            print(text)
        except BrokenPipeError:
            pass
    announce(session.engine.market, session.engine.strategies, start, end, say)


def cmd_run(args) -> int:
    settings = load_settings(args.config)
    mode = args.mode
    if settings.logs.retention_days:   # [logs] retention: old session logs go before a new one starts
        from .commands.logs import prune
        gone = prune(settings.resolve_path(settings.engine.log_dir), days=settings.logs.retention_days,
                     keep_last=settings.logs.keep_last)
        if gone:
            print(f"note: pruned {len(gone)} session log(s) older than {settings.logs.retention_days} days",
                  file=sys.stderr)
    if mode == "paper":
        missing = AlpacaKeys().missing()
        if missing:
            print("error: --mode paper needs Alpaca paper keys in the environment or .env; missing: "
                  + ", ".join(missing), file=sys.stderr)
            return EXIT_ERROR
        from .paper import build_paper_session  # imported only when trading on Alpaca
        if args.clock_start is not None and args.live:
            print("error: --clock-start is a test and dry-run setting: refused with --live", file=sys.stderr)
            return EXIT_USAGE
        session = build_paper_session(settings, live=args.live, adopt=args.adopt,
                                      **({"clock_start": args.clock_start} if args.clock_start else {}))
    elif args.clock_start is not None:
        print("error: --clock-start applies to --mode paper (a simulation runs on its data's own clock)",
              file=sys.stderr)
        return EXIT_USAGE
    else:
        from .app import build_sim_session
        alpaca = [f"{k}.kind = \"alpaca\"" for k in ("broker", "data") if getattr(settings, k).kind == "alpaca"]
        if alpaca:   # said, not silently ignored: the mode decides what trades
            print(f"note: {' and '.join(alpaca)} {'apply' if len(alpaca) > 1 else 'applies'} to --mode paper "
                  "(and status); this --mode sim run uses the simulated broker on replayed data", file=sys.stderr)
        session = build_sim_session(settings, max_cycles=args.cycles)
        _say_coverage(session)
    from .app import run_session
    summary = run_session(session, max_cycles=args.cycles, progress=not args.no_progress)
    _print_summary(summary)
    return EXIT_OK


def cmd_version(args) -> int:
    print(f"hydra-engine {__version__}")
    return EXIT_OK


def cmd_status(args) -> int:
    settings = load_settings(args.config)
    from .store import Store
    store = Store(settings.storage.url, root=settings.resolve_path("."))
    control = store.load_state("control") or {}
    state = store.load_state("engine:paper") or {}
    last = store.last_cycle()
    print(f"database      {store.url}")
    killed = control.get("state") == "killed" or state.get("risk", {}).get("killed")
    reason = control.get("reason") or state.get("risk", {}).get("kill_reason", "")
    print(f"kill state    {'KILLED: ' + reason + ' (run `resume` to allow entries)' if killed else 'armed (not killed)'}")
    if last:
        print(f"last cycle    #{last.cycle} of {last.session_id} at {last.ts} ({last.mode}), regime {last.regime}, equity ${Decimal(last.equity_usd):,.2f}")
    else:
        print("last cycle    none recorded")
    positions = state.get("positions", {})
    print("paper book    " + (", ".join(f"{s} {p['qty']} @ {p['avg_entry_price']} (stop {p['stop_price']:.2f})"
                                        for s, p in positions.items()) or "none"))
    if settings.broker.kind == "alpaca" or args.broker:
        from .paper import print_broker_status
        return print_broker_status(settings, live=args.live)
    return EXIT_OK


def positive_int(text: str) -> int:
    """argparse type of ``--cycles``: a whole number >= 1 (a negative count used to run all but the last
    N ticks, and 0 nothing at all, without a word)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value


def utc_time(text: str):
    """argparse type of ``--clock-start``: an ISO 8601 time with its UTC offset (``2025-06-24T20:43:00Z``)."""
    from datetime import datetime, timezone
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time (e.g. 2025-06-24T20:43:00Z)") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no UTC offset (write e.g. 2025-06-24T20:43:00Z)")
    return value.astimezone(timezone.utc)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hydra", description="HYDRA regime-adaptive trading engine. "
                                     "With no command: run the offline simulation on the shipped real data.")
    parser.add_argument("--config", default=None, metavar="FILE", help=CONFIG_HELP)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the engine (offline simulation or Alpaca paper)", parents=[config_option()])
    run.add_argument("--mode", choices=["sim", "paper"], default="sim",
                     help="sim: replay shipped data with the simulated broker; paper: Alpaca paper account")
    run.add_argument("--cycles", type=positive_int, default=None, help="stop after N cycles (N >= 1)")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    run.add_argument("--live", action="store_true", help="trade real money (also needs HYDRA_ENABLE_LIVE_TRADING)")
    run.add_argument("--adopt", action="store_true", help="adopt the broker's positions/orders on a reconciliation mismatch")
    run.add_argument("--clock-start", type=utc_time, default=None, metavar="TIME",
                     help="tests and dry runs against a simulated broker only (refused with --live): the paper "
                          "engine's clock starts at TIME (ISO 8601 with offset) instead of now")
    run.set_defaults(func=cmd_run)

    status = sub.add_parser("status", help="show kill state, last cycle and positions from the store",
                            parents=[config_option()])
    status.add_argument("--broker", action="store_true", help="also ask Alpaca (and the perp venue when [perps] is on) for account, positions and orders")
    status.add_argument("--live", action="store_true",
                        help="read a live account (needs broker.paper = false and HYDRA_ENABLE_LIVE_TRADING too)")
    status.set_defaults(func=cmd_status)
    sub.add_parser("version", help="print the version").set_defaults(func=cmd_version)

    from . import commands
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def bare_command_argv(argv: list[str]) -> list[str]:
    """``hydra --no-progress`` / ``hydra --cycles 5`` mean ``hydra run …``: the global options (``-v``) stay
    before ``run``, everything else (``--config`` included, which ``run`` accepts too) goes after it.
    ``--help`` alone keeps the program's help."""
    if argv and all(a in ("-h", "--help") for a in argv):
        return [*argv, "run"]
    global_opts = [a for a in argv if a in ("-v", "--verbose")]
    return [*global_opts, "run", *[a for a in argv if a not in ("-v", "--verbose")]]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a in parser._subparsers._group_actions[0].choices for a in argv):
        argv = bare_command_argv(argv)   # no command: the offline simulation, with run's options
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code = _run_command(args)
        sys.stdout.flush()   # output still buffered meets a closed pipe here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        # the reader went away (`... | head`): what it did not read is not an error to report. As Python's
        # "Note on SIGPIPE" advises, stdout now points at devnull so the exit's own flush stays quiet. `run`
        # prints its summary only after the session's log is closed and its store flushed, so a closed pipe
        # never cuts a session short.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _run_command(args) -> int:
    """The command, with the errors a user can act on turned into one line and an exit status."""
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        from .plugins import PluginError
        from .data.replay import DataFolderError
        from .risk import RiskConfigError
        from .paper import ReconciliationRefused
        from .ports import BrokerError
        if isinstance(exc, ReconciliationRefused):
            print(f"refusing to trade: {exc}", file=sys.stderr)
            return EXIT_ERROR
        if isinstance(exc, BrokerError):
            if args.command == "run":   # at start-up, before any cycle: nothing was sent
                print(f"refusing to trade: a broker call failed at start-up ({exc.describe()}); nothing was traded",
                      file=sys.stderr)
            else:                       # status and kill say their own; this is any other command's
                print(f"error: a broker call failed ({exc.describe()})", file=sys.stderr)
            return EXIT_ERROR
        if isinstance(exc, (PluginError, DataFolderError, RiskConfigError, ValueError)):
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if isinstance(exc, BrokenPipeError):
            raise                      # not a path problem: main() ends quietly
        if isinstance(exc, OSError):   # a path the user gave that is a file, a folder or not allowed
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        raise


if __name__ == "__main__":
    raise SystemExit(main())
