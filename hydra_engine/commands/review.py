"""``hydra review LOG.json [--out DIR]``: tables on the terminal, PNG charts and an HTML report on disk."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

EXIT_OK, EXIT_USAGE = 0, 2


def periods_per_year(text: str) -> float:
    """argparse type of ``--periods-per-year``: a finite number > 0 (0 printed a CAGR and Sharpe of 0.00,
    a negative number a math domain error)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number > 0 (e.g. 365 or 252)")
    return value


def register(subparsers) -> None:
    p = subparsers.add_parser("review", help="review a session log: metrics tables, charts and an HTML report",
                              description="Review one session log (logs/session-*.json). Prints the tables and "
                              "writes equity/drawdown, per-regime and per-strategy PNGs, report.html, "
                              "metrics.json and the interactive tearsheet.html into --out (default: <log stem>-review/ next to the log).")
    p.add_argument("log", help="path to a session-*.json trade log")
    p.add_argument("--out", default=None, help="output folder (default: next to the log)")
    p.add_argument("--periods-per-year", type=periods_per_year, default=None,
                   help="annualisation (default: 365 when the session watches crypto or has returns on weekend days, "
                   "else 252 -- exchange days only)")
    p.set_defaults(func=handle)


def handle(args) -> int:
    from ..review import LogError, review_session
    try:
        review, files = review_session(Path(args.log), args.out, args.periods_per_year)
    except LogError as exc:  # the log could not be loaded; the message names the file and the reason
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (TypeError, AttributeError, ValueError, LookupError) as exc:
        # a record of a shape the loader does not check (a cycle's equity "abc"): name the file, no traceback
        print(f"error: {args.log}: cannot review this log ({type(exc).__name__}: {exc})", file=sys.stderr)
        return EXIT_USAGE
    print(review.text())
    print(f"report written to {files[0].parent}: " + ", ".join(f.name for f in files))
    return EXIT_OK
