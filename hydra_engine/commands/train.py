"""``hydra train --component regime [--data DIR] [--end DATE] [--seed N]``: fit the HMM regime model.

Fits on the daily features of a data folder (the shared real data when present, else the project's
shipped ``data/``), writes ``models/regime_hmm.json`` (plain parameters, no pickle) and its model card
``models/regime_hmm.card.md``, and prints what was learnt so a bad fit is visible at once.
"""
from __future__ import annotations

import sys
from pathlib import Path

from . import config_option

EXIT_OK, EXIT_USAGE = 0, 2


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="fit a model component (the HMM regime detector) on history",
                              description="Fit the HMM regime detector on the daily cross-asset features of a "
                              "data folder and save models/regime_hmm.json plus its model card.",
                              parents=[config_option()])
    p.add_argument("--component", choices=["regime"], default="regime", help="what to train (default: regime)")
    p.add_argument("--data", default=None, help="data folder in the shared-data layout (default: the shared "
                   "data if present, else data.replay_dir from the config)")
    p.add_argument("--start", default=None, help="first training day YYYY-MM-DD (default: all history)")
    p.add_argument("--end", default=None, help="train on days strictly before this date YYYY-MM-DD")
    p.add_argument("--seed", type=int, default=0, help="random seed of the EM restarts (default 0)")
    p.add_argument("--states", type=int, default=7, help="number of hidden states (default 7)")
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
    import pandas as pd

    from ..regime import DEFAULT_MODEL_PATH, REGIMES, HMMRegimeDetector
    from ..regime_features import load_feature_frame

    data_dir = _data_dir(args)
    try:
        end = pd.Timestamp(args.end) if args.end else None
        start = pd.Timestamp(args.start, tz="UTC") if args.start else None
        frame = load_feature_frame(data_dir, end=end)
        if start is not None:
            frame = frame[frame.index >= start]
        det = HMMRegimeDetector(n_states=args.states).fit(frame, seed=args.seed)
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
