"""Strategy 4 evidence (issue #19 item 5): an event study of the AI/SaaS disruption shock trader on
../shared/data, through the engine (the same code path as sim, backtest and paper).

1. **Detection**: every launch of the curated list (2022-11 .. 2024-12: the list starts at ChatGPT, so
   2020-2021 hold no listed launch) against IGV: the z-score reached in its window, and whether the rule
   confirmed it as a shock (IGV's move <= -2 sd x sqrt(sessions) within 5 sessions).
2. **Trades**: the engine with ``ai_disruption`` alone over the SaaS names, daily cycles, the shipped costs
   (10 bps fee + 5 bps slippage per side), in two regime settings:
   * ``hmm``: the shipped configuration (the HMM regime detector, refitted every 90 days on the history
     known then): what HYDRA as shipped would have done;
   * ``gate open``: the regime held at HIGH_VOL (one of the plugin's regimes) so the rule itself is measured.
3. **Control**: the same rule, unchanged, on pseudo-launches dated on non-launch days: every 15th US session
   (three grid phases, 0/5/10, each its own run so that windows never overlap within a run), from 2020-10
   to 2024-12, leaving out any day within 15 sessions of a listed launch's first session.

No parameter is fitted: the plugin's defaults (the shipped hydra.toml) are used as they are.
Run: python bench/ai_event_study.py [SHARED_DATA]   (writes bench/out/issue19/ai_event_study.json and .md)
"""
from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from hydra_engine.app import build_sim_session, run_session  # noqa: E402
from hydra_engine.config import load_settings  # noqa: E402
from hydra_engine.data.ai_launch_list import (CURATED_LAUNCHES_FILE, launch_list_path, read_launch_list,  # noqa: E402
                                              read_launch_rows, write_launch_rows)
from hydra_engine.data.event_files import NEW_YORK  # noqa: E402
from hydra_engine.data.replay import ReplayMarketData  # noqa: E402
from hydra_engine.domain import Regime, RegimeReading  # noqa: E402
from hydra_engine.tradelog import load_session  # noqa: E402
from strategies.ai_disruption import SYMBOLS, AiDisruptionParams, find_shock, watch  # noqa: E402

OUT = ROOT / "bench" / "out" / "issue19"
START, END = date(2020, 10, 1), date(2025, 1, 1)
SPACING, EXCLUDE = 15, 15


class HeldRegime:
    """The regime held at one value (the rule measured without the engine's regime gate)."""

    name = "held"

    def __init__(self, regime: Regime):
        self.regime = regime

    def detect(self, market):
        return RegimeReading(self.regime, 0.9, self.name, market.now, {"why": "held for the event study"})


def data_folder(shared: Path, rows: list[dict]) -> Path:
    """A data folder: the shared data (linked) with ``rows`` as its curated launch list."""
    folder = Path(tempfile.mkdtemp(prefix="hydra-ai-study-")) / "data"
    folder.mkdir(parents=True)
    for child in shared.iterdir():
        if child.name != "events":
            os.symlink(child, folder / child.name)
    (folder / "events").mkdir()
    for child in (shared / "events").iterdir():
        if child.name != "ai_launches":
            os.symlink(child, folder / "events" / child.name)
    write_launch_rows(folder / CURATED_LAUNCHES_FILE, rows)
    return folder


def sessions(shared: Path) -> list[date]:
    igv = ReplayMarketData(shared, ["IGV"]).history("IGV")
    return [datetime.fromtimestamp(int(t) + 6 * 3600, NEW_YORK).date() for t in igv.ts.tolist()]


def control_rows(days: list[date], launches: list[dict], phase: int) -> list[dict]:
    index = {d: i for i, d in enumerate(days)}
    firsts = [index[date.fromisoformat(r["first_us_session"])] for r in launches
              if date.fromisoformat(r["first_us_session"]) in index]
    rows = []
    for i in range(phase, len(days) - 1, SPACING):
        d = days[i]
        if not START <= d < END or any(abs(i + 1 - f) <= EXCLUDE for f in firsts):
            continue
        rows.append({"launch_id": f"control-{d.isoformat()}", "model": "control (no launch)",
                     "organization": "none", "announced_date": d.isoformat(), "announced_at_utc": "",
                     "first_us_session": days[i + 1].isoformat(), "source": "bench/ai_event_study.py",
                     "source_ref": f"non-launch day, grid phase {phase}", "note": ""})
    return rows


def detection(shared: Path, rows: list[dict]) -> list[dict]:
    folder = data_folder(shared, rows)
    igv = ReplayMarketData(folder, ["IGV"]).history("IGV")
    p, out = AiDisruptionParams(), []
    for e in read_launch_list(launch_list_path(folder)):
        i0, z, c = watch(igv, e, p)
        s = find_shock(igv, e, p)
        out.append({"launch": e.subject, "known_at": e.known_at.isoformat(), "z_end": None if z is None else round(z, 3),
                    "shock": s is not None,
                    "confirmed": None if s is None else datetime.fromtimestamp(s.confirm_ts + 6 * 3600, NEW_YORK).date().isoformat(),
                    "igv_move_pct": None if s is None else round(s.move_pct, 2)})
    return out


def run_arm(shared: Path, rows: list[dict], gate_open: bool) -> dict:
    base = load_settings(ROOT / "hydra.toml")
    folder = data_folder(shared, rows)
    tmp = Path(tempfile.mkdtemp(prefix="hydra-ai-run-"))
    s = base.model_copy(update={
        # SPY, HYG and VIX too: the regime HMM's features (SPY's name its states); ai_disruption never trades them
        "universe": base.universe.model_copy(update={"symbols": [*SYMBOLS, "SPY", "HYG"], "data_only": ["VIX"]}),
        "strategies": base.strategies.model_copy(update={"enabled": ["ai_disruption"]}),
        "modifiers": base.modifiers.model_copy(update={"enabled": []}),
        "perps": base.perps.model_copy(update={"enabled": False}),
        "data": base.data.model_copy(update={"replay_dir": str(folder), "start": START, "end": END}),
        "engine": base.engine.model_copy(update={"log_dir": str(tmp / "logs")}),
        "storage": base.storage.model_copy(update={"url": f"sqlite:///{tmp / 'h.db'}"}),
    })
    t0 = time.perf_counter()
    session = build_sim_session(s)
    if gate_open:
        session.engine.regime_detector = HeldRegime(Regime.HIGH_VOL)
        session.engine.regime_refitter = None          # nothing refits the held reading
    doc = load_session(run_session(session, progress=False)["log"])
    wall = time.perf_counter() - t0
    trades = [t for t in doc["trades"] if t["strategy"] == "ai_disruption"]
    refused = [d for c in doc["cycle_details"] for d in c["decisions"] if d["strategy"] == "ai_disruption"
               and not d["approved"]]
    gated = sum("ai_disruption" in c["strategies_gated"] for c in doc["cycle_details"])
    proposals = sum(1 for c in doc["cycle_details"] for p in c["proposals"] if p["strategy"] == "ai_disruption")
    regimes = {}
    for c in doc["cycle_details"]:
        if c["signals"] and any(sg["source"] in ("ai_shock_impaired", "ai_shock_dip") for sg in c["signals"]):
            r = (c.get("regime") or {}).get("regime", "?")
            regimes[r] = regimes.get(r, 0) + 1
    return {"cycles": len(doc["cycle_details"]), "wall_s": round(wall, 1), "proposals": proposals,
            "cycles_gated": gated, "regime_on_shock_signal_cycles": regimes,
            "refused": {r: sum(1 for d in refused if d["rule"] == r) for r in sorted({d["rule"] for d in refused})},
            "trades": [{k: t.get(k) for k in ("symbol", "side", "entry_time", "exit_time", "entry_price", "exit_price",
                                               "qty", "pnl_usd", "fees_usd", "r_multiple", "exit_reason")}
                       for t in trades]}


def summary(trades: list[dict]) -> dict:
    pnl = [float(t["pnl_usd"]) for t in trades]
    rs = [float(t["r_multiple"]) for t in trades if t.get("r_multiple") is not None and math.isfinite(float(t["r_multiple"]))]
    return {"trades": len(pnl), "win_rate": round(sum(p > 0 for p in pnl) / len(pnl), 3) if pnl else None,
            "avg_r": round(sum(rs) / len(rs), 3) if rs else None, "pnl_usd": round(sum(pnl), 2),
            "avg_pnl_usd": round(sum(pnl) / len(pnl), 2) if pnl else None}


def main(argv: list[str]) -> None:
    shared = Path(argv[0]) if argv else ROOT.parent / "shared" / "data"
    OUT.mkdir(parents=True, exist_ok=True)
    launches = read_launch_rows(ROOT / "data" / CURATED_LAUNCHES_FILE)
    launches = [r for r in launches if r["first_us_session"] < END.isoformat()]
    days = sessions(shared)
    result = {"data": str(shared), "span": [START.isoformat(), END.isoformat()], "params": AiDisruptionParams().model_dump(),
              "costs": "10 bps fee + 5 bps slippage per side (hydra.toml [broker])"}
    result["detection"] = {"launches": detection(shared, launches)}
    controls = {ph: control_rows(days, launches, ph) for ph in (0, 5, 10)}
    result["detection"]["control"] = {ph: [d for d in detection(shared, rows) if d["shock"]] for ph, rows in controls.items()}
    result["detection"]["control_candidates"] = {ph: len(rows) for ph, rows in controls.items()}
    result["runs"] = {}
    for label, rows in [("launches", launches)] + [(f"control phase {ph}", r) for ph, r in controls.items()]:
        for gate_open in (False, True):
            key = f"{label} / {'gate open' if gate_open else 'hmm'}"
            run = run_arm(shared, rows, gate_open)
            run["summary"] = summary(run["trades"])
            result["runs"][key] = run
            print(f"{key}: {run['summary']} refused {run['refused']} wall {run['wall_s']} s", flush=True)
    (OUT / "ai_event_study.json").write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
