"""Shared helpers for the HYDRA benchmark scripts (machine/commit stamp, percentiles, RSS)."""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("HYDRA_SHARED_DATA", ROOT.parent / "shared" / "data"))
now = time.perf_counter


def _cmd(args: list[str]) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=10, cwd=ROOT).stdout.strip()
    except Exception as exc:  # pragma: no cover - informative only
        return f"? ({exc})"


def stamp() -> dict:
    """Date, machine and commit, as RESULTS.md records them."""
    model = next((l.split(":", 1)[1].strip() for l in _cmd(["lscpu"]).splitlines() if l.startswith("Model name")), "?")
    mem = next((l.split()[1] for l in _cmd(["free", "-h"]).splitlines() if l.startswith("Mem:")), "?")
    dirty = bool(_cmd(["git", "status", "--porcelain", "--untracked-files=no"]))
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "nproc": _cmd(["nproc"]),
            "cpu": model, "mem": mem, "python": platform.python_version(),
            "commit": _cmd(["git", "rev-parse", "--short", "HEAD"]) + ("+dirty" if dirty else ""),
            "command": " ".join([Path(sys.executable).name, *sys.argv])}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def pct(samples_ns, qs=(50, 90, 99, 99.9)) -> dict:
    a = np.asarray(samples_ns, dtype=np.float64) / 1e6  # ms
    out = {f"p{q:g}_ms": round(float(np.percentile(a, q)), 4) for q in qs}
    out.update(mean_ms=round(float(a.mean()), 4), max_ms=round(float(a.max()), 3), n=int(len(a)))
    return out


def emit(result: dict) -> None:
    """One RESULT line (machine-readable) per measurement; also appended to bench/out/results.jsonl."""
    line = json.dumps(result, default=str)
    print("RESULT " + line, flush=True)
    out = Path(os.environ.get("HYDRA_BENCH_OUT", ROOT / "bench" / "out"))
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.jsonl", "a") as fh:
        fh.write(line + "\n")
