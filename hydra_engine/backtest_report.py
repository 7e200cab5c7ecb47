"""The backtest's report: the comparison table (rows, formatting, markdown/CSV), the equity plot, returns by
regime, the kills' rows and the mean R per exit reason."""
from __future__ import annotations

import csv
import math
from datetime import datetime
from pathlib import Path
import pandas as pd
from . import metrics as M


def regime_returns(equity: pd.Series, regimes: pd.Series) -> dict[str, float]:
    """Compounded return earned while each regime held (the label at the start of each step counts,
    since it is what the engine knew when it held the position)."""
    eq = equity.to_numpy(float)
    if len(eq) < 2:
        return {}
    step = pd.Series(eq[1:] / eq[:-1], index=regimes.to_numpy()[:-1])
    return {str(k): float(v.prod() - 1.0) for k, v in step.groupby(level=0)}


def curve(doc: dict) -> pd.Series:
    """Equity per cycle on the simulated clock (no opening anchor: every curve shares the same ticks)."""
    cyc = doc["cycles"]
    return pd.Series([float(c["equity_usd"]) for c in cyc], index=pd.DatetimeIndex([c["ts"] for c in cyc]))


COLUMNS = [("total_return", "total return", "pct"), ("cagr", "CAGR", "pct"), ("max_drawdown", "max DD", "pct"),
           ("sharpe", "Sharpe", "num"), ("sortino", "Sortino", "num"), ("calmar", "Calmar", "num"),
           ("cvar_95", "CVaR 95%", "pct"), ("trades", "closed trades", "int"), ("fills", "fills", "int"),
           ("fees_usd", "fees $", "usd"), ("exposure", "exposure", "pct")]


def comparison_row(name: str, doc: dict, m: dict) -> dict:
    summary = doc.get("summary") or {}
    return {"strategy": name, **{k: m.get(k) for k in ("total_return", "cagr", "max_drawdown", "sharpe", "sortino",
                                                        "calmar", "cvar_95", "exposure")},
            "trades": len(doc.get("trades", [])), "fills": len(doc.get("fills", [])),
            "fees_usd": float(summary.get("fees_usd") or 0.0), "final_equity_usd": m.get("final_equity_usd")}


def _fmt(v, kind: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a" if kind != "str" else ""
    if kind == "str":
        return str(v)
    return {"pct": f"{100 * v:+.2f}%", "num": f"{v:.2f}", "int": f"{int(v)}", "usd": f"{v:,.2f}"}[kind]


def write_table(rows: list[dict], path_stem: Path, extra: list[tuple[str, str, str]] = ()) -> str:
    """CSV (raw numbers) and Markdown (formatted) of the same rows; returns the Markdown."""
    cols = [*COLUMNS, *extra]
    keys = ["strategy", *[k for k, _, _ in cols]]
    with open(path_stem.with_suffix(".csv"), "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    md = ["| strategy | " + " | ".join(h for _, h, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    md += ["| " + r["strategy"] + " | " + " | ".join(_fmt(r.get(k), f) for k, _, f in cols) + " |" for r in rows]
    text = "\n".join(md) + "\n"
    path_stem.with_suffix(".md").write_text(text, encoding="utf-8")
    return text


def plot_equity(curves: dict[str, pd.Series], path: Path, title: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    for name, eq in curves.items():
        if len(eq):
            ax1.plot(eq.index, eq.to_numpy() / eq.iloc[0], lw=1.6 if name == "hydra" else 1.0, label=name)
            ax2.plot(eq.index, 100 * M.drawdown_curve(eq).to_numpy(), lw=0.9, label=name)
    ax1.set_ylabel("growth of $1")
    ax1.set_title(title)
    ax1.legend(loc="upper left", fontsize=8)
    ax2.set_ylabel("drawdown (%)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def kill_rows(summary: dict, first: datetime, last: datetime) -> list[dict]:
    """The run's kills with the share of [first, last] each blocked entries (until its resume or the end)."""
    rows = []
    span = (last - first).total_seconds()
    for k in summary.get("kills") or ():
        at = datetime.fromisoformat(str(k["at"]).replace("Z", "+00:00"))
        until = datetime.fromisoformat(str(k["resumed_at"]).replace("Z", "+00:00")) if k.get("resumed_at") else last
        rows.append({**k, "share_of_span_blocked": round(max(0.0, (until - max(at, first)).total_seconds()) / span, 4)
                     if span > 0 else 0.0})
    return rows


def exit_r(doc: dict) -> dict[str, dict]:
    """Per exit reason: trades and mean R multiple (the stop exits' average R is the intrabar rule's check)."""
    out: dict[str, dict] = {}
    for t in doc.get("trades", []):
        e = out.setdefault(t["exit_reason"], {"trades": 0, "r_sum": 0.0})
        e["trades"] += 1
        e["r_sum"] += float(t.get("r_multiple") or 0.0)
    return {k: {"trades": v["trades"], "mean_r": round(v["r_sum"] / v["trades"], 4)} for k, v in sorted(out.items())}
