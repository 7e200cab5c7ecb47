#!/usr/bin/env python3
"""HYDRA entry point: ``python hydra_engine.py`` runs the offline simulation; ``--help`` lists commands."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hydra_engine.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
