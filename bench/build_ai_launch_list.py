"""Rebuild the shipped curated launch list (data/events/ai_launches/model_launches_curated.csv) from the
shared data: ``python bench/build_ai_launch_list.py [SHARED_DATA]``.

US sessions: the dates of SPY in the shared adjusted-close file (3.4; to 2024-12-31 after the cut), then
weekdays of 2025 less the NYSE closures of January-February 2025 (New Year, the 2025-01-09 national day
of mourning, Martin Luther King Day, Presidents' Day), which the launches after 2024 need."""
from __future__ import annotations

import sys
from datetime import date, timedelta
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from hydra_engine.data.ai_launch_list import (CURATED_LAUNCHES_FILE, build_curated_rows,  # noqa: E402
                                              validate_launch_rows, write_launch_rows)

CLOSED_2025 = {date(2025, 1, 1), date(2025, 1, 9), date(2025, 1, 20), date(2025, 2, 17)}


def sessions(shared: Path) -> list[date]:
    spy = pd.read_csv(shared / "equities/daily/adjclose_factor_attribution/SPY.csv.gz")
    days = sorted(pd.to_datetime(spy["Date"]).dt.date)
    d = max(days) + timedelta(days=1)
    while d <= date(2025, 3, 31):
        if d.weekday() < 5 and d not in CLOSED_2025:
            days.append(d)
        d += timedelta(days=1)
    return days


if __name__ == "__main__":
    shared = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data"
    rows = build_curated_rows(shared, sessions(shared))
    problems = validate_launch_rows(rows)
    if problems:
        sys.exit("\n".join(problems))
    write_launch_rows(ROOT / "data" / CURATED_LAUNCHES_FILE, rows)
    print(f"{len(rows)} launches written to data/{CURATED_LAUNCHES_FILE}")
