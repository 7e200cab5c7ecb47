"""``hydra train --component signal_scorer|regime_classifier``: see :mod:`hydra_engine.ml.train`."""
from __future__ import annotations

import sys
import time
from datetime import date, datetime
from pathlib import Path

from ..config import load_settings, utc_stamp
from ..domain import UTC

DEFAULT_START, DEFAULT_END = date(2021, 1, 1), date(2025, 1, 1)
EXIT_OK, EXIT_USAGE = 0, 2


def handle_ml(args, data_dir: Path) -> int:
    from . import train as T
    settings = load_settings(args.config)
    start, end = args.start or DEFAULT_START, args.end or DEFAULT_END
    if start >= end:
        print(f"error: argument --start: {start} must be before --end {end}", file=sys.stderr)
        return EXIT_USAGE
    stamp = utc_stamp(datetime.now(UTC))
    out_dir = settings.resolve_path(settings.engine.log_dir) / "models" / stamp
    t0 = time.perf_counter()
    try:
        if args.component == "signal_scorer":
            from .dataset import collect_signals
            print(f"signal scorer: replaying every enabled plugin over {start} .. {end} of {data_dir}", file=sys.stderr)
            ds = collect_signals(settings, data_dir, start, end)
            t_data = time.perf_counter() - t0
            print(f"  {len(ds.y)} labelled signals ({ds.meta['signals_recorded']} recorded) in {t_data:.0f} s", file=sys.stderr)
            model, meta, card = T.train_scorer(ds, seed=args.seed, threshold=settings.scorers.threshold,
                                               span=(start, end), data_dir=data_dir)
            out = Path(args.out) if args.out else out_dir / "signal_scorer.cbm"
            card["data"]["train_seconds"] = round(time.perf_counter() - t0, 1)
            T.save_scorer(model, meta, card, out)
            headline = card["holdout"]["metrics"]
            keys = ("accuracy", "precision", "recall", "roc_auc", "log_loss", "mean_net_return_all_pct",
                    "mean_net_return_taken_pct")
        else:
            from .dataset import regime_rows
            symbols = [s for s in settings.perps.symbols if s in ("BTCUSDT", "ETHUSDT")] or ["BTCUSDT", "ETHUSDT"]
            print(f"regime classifier: hourly perp windows of {symbols} over {start} .. {end} of {data_dir}", file=sys.stderr)
            rs = regime_rows(data_dir, symbols, start, end, step_h=2)   # every 2nd hour: the 24 h windows overlap anyway
            model, meta, card = T.train_classifier(rs, seed=args.seed, span=(start, end), data_dir=data_dir)
            out = Path(args.out) if args.out else out_dir / "regime_classifier.json"
            card["data"]["train_seconds"] = round(time.perf_counter() - t0, 1)
            T.save_classifier(model, meta, card, out)
            headline = card["holdout"]["metrics"]
            keys = ("accuracy", "precision_macro", "recall_macro", "roc_auc_ovr", "log_loss")
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: cannot train {args.component} from {data_dir}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{args.component} trained in {time.perf_counter() - t0:.0f} s, seed {args.seed}")
    print("held-out tail  " + "  ".join(f"{k} {headline.get(k)}" for k in keys))
    print("baseline tail  " + "  ".join(f"{k} {v}" for k, v in card["baseline"][-1]["metrics"].items()))
    print(card["verdict"])
    print(f"saved         {out} (+ .meta.json, .card.md)")
    if args.install:
        for p in T.install(out, settings.resolve_path("models")):
            print(f"installed     {p}")
    return EXIT_OK
