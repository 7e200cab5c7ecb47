"""``hydra train --component regime [--data DIR] [--start DATE] [--end DATE] [--seed N] [--states K]``: fit
the HMM regime model.

Fits on the daily features of a data folder (the shared real data when present, else the project's
shipped ``data/``), writes ``models/regime_hmm.json`` (plain parameters, no pickle) and its model card
``models/regime_hmm.card.md``, and prints what was learnt so a bad fit is visible at once.
"""
from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path

from . import config_option

EXIT_OK, EXIT_USAGE = 0, 2


# argparse types: a bad --start/--end/--states/--seed is a usage error naming the argument (exit 2),
# not a message from pandas or scikit-learn after the data is loaded. The limits are imported only
# when an argument is given: regime.py pulls in numpy and pandas, which other commands do not need.
def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date YYYY-MM-DD") from None


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _states(text: str) -> int:
    from ..regime import MIN_STATES
    value = _whole_number(text)
    if value < MIN_STATES:
        raise argparse.ArgumentTypeError(f"{value} is fewer than {MIN_STATES}: one hidden state would name "
                                         "the same regime every day")
    return value


def _seed(text: str) -> int:
    from ..regime import MAX_SEED
    value = _whole_number(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{value} is outside 0..{MAX_SEED} (each restart seeds numpy with "
                                         "seed × 1000 + restart, and numpy's seeds end at 2**32 - 1)")
    return value


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="fit a model component (the HMM regime detector) on history",
                              description="Fit the HMM regime detector on the daily cross-asset features of a "
                              "data folder and save models/regime_hmm.json plus its model card.",
                              parents=[config_option()])
    p.add_argument("--component", choices=["regime", "signal_scorer", "regime_classifier"], default="regime",
                   help="what to train (default: regime, the HMM): signal_scorer (CatBoost, issue #21) and "
                   "regime_classifier (XGBoost perp regimes) write to the log folder unless --install")
    p.add_argument("--install", action="store_true", help="signal_scorer/regime_classifier: also replace the "
                   "shipped model in models/ (default: only the log folder's copy)")
    p.add_argument("--data", default=None, help="data folder in the shared-data layout (default: the shared "
                   "data if present, else data.replay_dir from the config)")
    p.add_argument("--start", type=_day, default=None, help="first training day YYYY-MM-DD (default: all history)")
    p.add_argument("--end", type=_day, default=None, help="train on days strictly before this date YYYY-MM-DD")
    p.add_argument("--seed", type=_seed, default=0, help="random seed of the EM restarts, 0 or more (default 0)")
    p.add_argument("--states", type=_states, default=7, help="number of hidden states, 2 or more (default 7); "
                   "the span must hold 20 training days a state")
    p.add_argument("--out", default=None, help="model JSON path (default models/regime_hmm.json)")
    p.set_defaults(func=handle)


def _data_dir(args) -> Path:
    if args.data:
        return Path(args.data)
    from ..regime_features import shared_data_dir
    shared = shared_data_dir()
    if shared is not None:
        return shared
    from ..config import load_settings
    settings = load_settings(args.config)
    return settings.resolve_path(settings.data.replay_dir)


def handle(args) -> int:
    if args.component in ("signal_scorer", "regime_classifier"):
        from ..ml.cli import handle_ml
        return handle_ml(args, _data_dir(args))
    import pandas as pd

    from ..regime import DAYS_PER_STATE, DEFAULT_MODEL_PATH, REGIMES, HMMRegimeDetector
    from ..regime_features import load_daily_closes, load_feature_frame

    if args.start and args.end and args.start >= args.end:
        print(f"error: argument --start: {args.start} must be before --end {args.end}", file=sys.stderr)
        return EXIT_USAGE
    data_dir = _data_dir(args)
    try:
        end = pd.Timestamp(args.end) if args.end else None
        start = pd.Timestamp(args.start, tz="UTC") if args.start else None
        try:
            frame = load_feature_frame(data_dir, end=end)
        except FileNotFoundError:
            if end is None or not load_daily_closes(data_dir):
                raise
            # the folder has data, none before --end: the span check below says so
            frame = pd.DataFrame(index=pd.DatetimeIndex([], tz="UTC"))
        if start is not None:
            frame = frame[frame.index >= start]
        det = HMMRegimeDetector(n_states=args.states)
        held = det.training_days(frame)
        if held < det.days_needed and (args.start or args.end or held):
            # said before fitting, in terms of the arguments: of a short span the fit itself only says
            # "the SPY features are required" (left to say when the folder has no SPY at all)
            span = (f"--start {args.start or '(first day)'} .. --end {args.end or '(last day)'}: the span"
                    if args.start or args.end else "the data")
            print(f"error: {span} holds {held} training days (days with every core feature) in {data_dir}; "
                  f"{args.states} states (--states) need at least {det.days_needed} ({DAYS_PER_STATE} a state, "
                  f"at least {det.min_days})", file=sys.stderr)
            return EXIT_USAGE
        det.fit(frame, seed=args.seed)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: cannot train the regime model from {data_dir}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    path = det.save(Path(args.out) if args.out else DEFAULT_MODEL_PATH)
    t = det.params["training"]
    print(f"regime HMM fitted on {data_dir}")
    print(f"span        {t['start']} .. {t['end']} ({t['days']} days), seed {t['seed']}, "
          f"{'converged' if t['converged'] else 'NOT converged'} after {t['iterations']} iterations")
    print(f"log-lik     {t['log_likelihood']:.1f} ({t['log_likelihood_per_day']:.3f}/day), BIC {t['bic']:.1f}")
    print(f"features    {', '.join(det.params['features'])}")
    print(f"{'state':>5}  {'regime':<15}{'SPY ret20':>10}{'SPY vol':>9}{'VIX':>7}{'days':>7}{'stay(d)':>9}")
    for s in det.params["state_stats"]:
        vix = f"{s['vix']:.1f}" if s["vix"] is not None else "n/a"
        print(f"{s['state']:>5}  {s['regime']:<15}{s['spy_ret20']:>+10.2%}{s['spy_vol']:>9.1%}{vix:>7}"
              f"{s['days_argmax']:>7}{s['expected_duration_days']:>9}")
    labels = det.label_history(frame.dropna(how="all"))
    share = labels.value_counts(normalize=True)
    print("days/regime " + ", ".join(f"{r.value} {share.get(r.value, 0.0):.0%}" for r in REGIMES))
    print(f"latest      {labels.index[-1].date()}: {labels.iloc[-1]}")
    print(f"saved       {path} and {path.with_name(path.stem + '.card.md')}")
    return EXIT_OK
