"""A sweep's outputs: result rows, resuming from results.jsonl, combined walk-forward windows, the CSV/
Parquet tables and the HTML heatmap."""
from __future__ import annotations

import csv
import html
import json
import math
from pathlib import Path

from .config import Settings
from .sweep_params import SweepError

# the columns of the results table, after the parameters: comparison_row's metrics

METRICS = ["total_return", "cagr", "max_drawdown", "sharpe", "sortino", "calmar", "cvar_95", "exposure",
           "trades", "fills", "fees_usd", "final_equity_usd"]


def flat_row(res: dict, params: list[str]) -> dict:
    """A results-table row: identity, parameters, metrics, status."""
    row = {"key": res["key"], "config_index": res["config_index"], "config_hash": res["config_hash"],
           "seed": res["seed"], "window": res["window"], "start": res["start"], "end": res["end"]}
    row.update({p: res["params"].get(p) for p in params})
    row.update({k: (res.get("metrics_row") or {}).get(k) for k in METRICS})
    row.update({"cycles": res.get("cycles"), "status": res["status"], "error": res.get("error"),
                "runtime_s": res.get("runtime_s"), "worker": res.get("worker")})
    return row


def read_done(path: Path) -> dict[str, dict]:
    """The finished tasks of an earlier run of this sweep (``results.jsonl``): key → its last result."""
    done: dict[str, dict] = {}
    if not path.is_file():
        return done
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            res = json.loads(line)
        except json.JSONDecodeError:
            # only a torn last line can come from an interrupted sweep; that task simply runs again
            continue
        done[res["key"]] = res
    return done


def _full_name(name: str, names: list[str]) -> str:
    if name in names:
        return name
    matches = [n for n in names if n.endswith("." + name) or n == f"strategies.params.{name}"]
    if len(matches) != 1:
        raise SweepError(f"--heatmap {name!r} is not one of the swept parameters ({', '.join(names)})")
    return matches[0]


def combine_windows(settings: Settings, results: list[dict], names: list[str]) -> list[dict]:
    """Per configuration, its walk-forward windows stitched into one out-of-sample run (as
    ``hydra backtest --walk-forward`` does); a configuration with a failed window has no combined row."""
    from . import metrics as M
    from .backtest import comparison_row
    by_config: dict[int, list[dict]] = {}
    for r in results:
        by_config.setdefault(r["config_index"], []).append(r)
    rows = []
    for index, rs in sorted(by_config.items()):
        rs = sorted(rs, key=lambda r: r["window"])
        base = {"config_index": index, "config_hash": rs[0]["config_hash"], "seed": rs[0]["seed"],
                "windows": len(rs), **{p: rs[0]["params"].get(p) for p in names}}
        if any(r["status"] != "ok" or "_doc" not in r for r in rs):
            bad = [r for r in rs if r["status"] != "ok"]
            rows.append({**base, "status": "failed" if bad else "not recombined (resumed without documents)",
                         "error": bad[0]["error"] if bad else None})
            continue
        doc = stitch([r["_doc"] for r in rs], settings)
        m = M.compute_all(doc)
        row = comparison_row("combined", doc, m)
        in_sample = [r["window"] for r in rs if r.get("initial_trained_to") and r["initial_trained_to"] >= r["start"]]
        rows.append({**base, **{k: row.get(k) for k in METRICS}, "status": "ok",
                     "label": "out of sample" if not in_sample else f"regimes in-sample in window(s) {in_sample}"})
    return rows


def stitch(docs: list[dict], settings: Settings) -> dict:
    """Walk-forward test windows chained into one document: each window's equity is scaled to start where
    the previous one ended."""
    scale = float(settings.broker.starting_cash_usd)
    cycles, trades, fills, fees = [], [], [], 0.0
    for doc in docs:
        start_eq = float(doc["session"]["starting_equity_usd"])
        last = scale
        for c in doc["cycles"]:
            last = float(c["equity_usd"]) / start_eq * scale
            cycles.append({"ts": c["ts"], "equity_usd": last, "regime": c.get("regime")})
        scale = last
        trades += doc.get("trades", [])
        fills += doc.get("fills", [])
        fees += float((doc.get("summary") or {}).get("fees_usd") or 0.0)
    return {"session": {"started_at": cycles[0]["ts"] if cycles else None,
                        "ended_at": cycles[-1]["ts"] if cycles else None,
                        "starting_equity_usd": str(settings.broker.starting_cash_usd),
                        "symbols": list(settings.universe.symbols)},
            "cycles": cycles, "trades": trades, "fills": fills, "summary": {"fees_usd": fees}}


# ================================================================== outputs
def _write_csv(rows: list[dict], path: Path) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, keys)
        w.writeheader()
        w.writerows(rows)


def write_results(rows: list[dict], out: Path) -> None:
    """``results.csv`` and ``results.parquet`` (same rows)."""
    import pandas as pd
    _write_csv(rows, out / "results.csv")
    frame = pd.DataFrame(rows)
    for col in frame.columns:   # parameters may mix types across rows (1, 1.5): parquet needs one per column
        if frame[col].dtype == object:
            frame[col] = frame[col].map(lambda v: v if v is None or isinstance(v, str) else json.dumps(v))
    frame.to_parquet(out / "results.parquet", index=False)


def _colour(v: float | None, lo: float, hi: float) -> str:
    if v is None or not math.isfinite(v):
        return "#eeeeee"
    x = 0.5 if hi <= lo else (v - lo) / (hi - lo)
    r, g = int(230 - 130 * x), int(110 + 120 * x)   # red (low) → green (high)
    return f"rgb({r},{g},120)"


def write_heatmap(rows: list[dict], x: str, y: str, metric: str, path: Path, *, title: str = "HYDRA sweep") -> Path:
    """A self-contained HTML table: ``metric`` over parameters ``x`` (columns) and ``y`` (rows), the mean
    over every other parameter's values and window (the count is in each cell's tooltip)."""
    cells: dict[tuple, list[float]] = {}
    for r in rows:
        v = r.get(metric)
        if r.get("status") != "ok" or v is None or (isinstance(v, float) and not math.isfinite(v)):
            continue
        cells.setdefault((json.dumps(r.get(y)), json.dumps(r.get(x))), []).append(float(v))
    xs = sorted({k[1] for k in cells}, key=_sort_key)
    ys = sorted({k[0] for k in cells}, key=_sort_key)
    means = {k: sum(v) / len(v) for k, v in cells.items()}
    lo, hi = (min(means.values()), max(means.values())) if means else (0.0, 0.0)
    short = lambda n: n.replace("strategies.params.", "")   # noqa: E731
    head = "".join(f"<th>{html.escape(v)}</th>" for v in xs)
    body = []
    for yv in ys:
        tds = []
        for xv in xs:
            m = means.get((yv, xv))
            n = len(cells.get((yv, xv), ()))
            text = "n/a" if m is None else f"{m:.4g}"
            tds.append(f'<td style="background:{_colour(m, lo, hi)}" title="mean of {n} run(s)">{text}</td>')
        body.append(f"<tr><th>{html.escape(yv)}</th>{''.join(tds)}</tr>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif}} table{{border-collapse:collapse}} td,th{{border:1px solid #999;padding:4px 8px;
text-align:right}} caption{{font-weight:bold;margin:6px}}</style></head><body>
<table><caption>{html.escape(title)}: {html.escape(metric)} (mean over the other parameters and windows)</caption>
<tr><th>{html.escape(short(y))} \\ {html.escape(short(x))}</th>{head}</tr>
{''.join(body)}</table></body></html>
"""
    path.write_text(page, encoding="utf-8")
    return path


def _sort_key(text: str):
    try:
        v = json.loads(text)
        return (0, float(v), "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0.0, text)
    except (json.JSONDecodeError, TypeError, ValueError):
        return (1, 0.0, text)
