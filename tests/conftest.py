"""Shared fixtures: where the real data lives, and small engine configurations over it."""
from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("HYDRA_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))
SHIPPED_DATA = PROJECT_ROOT / "data"
BENCH_PEERS = Path(os.environ.get("HYDRA_BENCH_PEERS", PROJECT_ROOT.parent / "shared" / "bench-peers"))


def peer_gen_data():
    """The peers' seeded data generator (``shared/bench-peers/gen_data.py``), or skip."""
    import importlib.util
    path = BENCH_PEERS / "gen_data.py"
    if not path.is_file():
        pytest.skip(f"peer benchmark generator not found at {path} (set HYDRA_BENCH_PEERS)")
    spec = importlib.util.spec_from_file_location("bench_peers_gen_data", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def hydra_peer():
    """``bench/hydra_peer.py``: HYDRA's engine core wired for the peer benchmark."""
    import sys
    sys.path.insert(0, str(PROJECT_ROOT / "bench"))
    try:
        import hydra_peer
        yield hydra_peer
    finally:
        sys.path.remove(str(PROJECT_ROOT / "bench"))


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
