"""Shared fixtures: where the real data lives, and small engine configurations over it."""
from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("HYDRA_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))
SHIPPED_DATA = PROJECT_ROOT / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared market data not found at {SHARED_DATA} (set HYDRA_SHARED_DATA)")
    return SHARED_DATA


def make_settings(tmp_path: Path, *, data_dir: Path = SHIPPED_DATA, start: str = "2024-03-01",
                  end: str = "2024-03-15", symbols=("BTC/USD", "ETH/USD", "SPY"), data_only=("VIX",),
                  observation_cycles: int = 20, **sections):
    """Settings writing logs and the database under ``tmp_path`` (never into the project)."""
    from hydra_engine.config import Settings

    base = {
        "engine": {"log_dir": str(tmp_path / "logs"), "observation_cycles": observation_cycles},
        "universe": {"symbols": list(symbols), "data_only": list(data_only)},
        "data": {"replay_dir": str(data_dir), "start": date.fromisoformat(start), "end": date.fromisoformat(end)},
        "storage": {"url": f"sqlite:///{tmp_path / 'hydra.db'}"},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return Settings(**base)
