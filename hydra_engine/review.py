"""Session review: the metrics of one session log as aligned text tables, PNG charts and one HTML file.

Everything is derived from the log alone (``tradelog.load_session``) so a review can be rerun at any
time, on any machine, without the engine, the broker or the database. The same tables feed the
terminal and the HTML report, so both always say the same thing.
"""
from __future__ import annotations

import base64
import html
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from . import metrics as M
from .tradelog import load_session


# ---------------------------------------------------------------- formatting
def _na(x) -> bool:
    return x is None or (isinstance(x, float) and not math.isfinite(x))


def fmt_pct(x, digits: int = 2) -> str:
    return "n/a" if _na(x) else f"{100 * x:.{digits}f}%"


def fmt_usd(x) -> str:
    return "n/a" if _na(x) else f"{'-' if x < 0 else ''}${abs(x):,.2f}"


def fmt_num(x, digits: int = 2) -> str:
    return "n/a" if _na(x) else f"{x:.{digits}f}"


def fmt_pf(stats: dict) -> str:
    """Profit factor; with winners but no loser it is infinite, which JSON cannot hold."""
    if stats["gross_loss_usd"] == 0 and stats["gross_profit_usd"] > 0:
        return "inf"
    return fmt_num(stats["profit_factor"])


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str = ""

    def text(self) -> str:
        """First column left-aligned (labels), the others right-aligned (numbers)."""
        cols = list(zip(self.headers, *self.rows))
        widths = [max(len(str(c)) for c in col) for col in cols]
        line = lambda cells: "  ".join(  # noqa: E731
            str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        out = [self.title, "-" * len(self.title), line(self.headers), line(["-" * w for w in widths])]
        out += [line(r) for r in self.rows] or ["(none)"]
        return "\n".join(out + ([self.note] if self.note else []))

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.headers)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in self.rows)
        note = f"<p class='note'>{html.escape(self.note)}</p>" if self.note else ""
        return (f"<h2>{html.escape(self.title)}</h2><table><thead><tr>{head}</tr></thead>"
                f"<tbody>{body or '<tr><td>(none)</td></tr>'}</tbody></table>{note}")


@dataclass
class Review:
    title: str
    header: list[str]                  # "key: value" lines about the session
    metrics: dict                      # metrics.compute_all output
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        parts = [self.title, "=" * len(self.title), *self.header, *self.notes]
        return "\n".join(parts) + "\n\n" + "\n\n".join(t.text() for t in self.tables) + "\n"


# ---------------------------------------------------------------- tables
def _stat_row(label: str, s: dict) -> list[str]:
    return [label, str(s["trades"]), fmt_pct(s["win_rate"], 1), fmt_usd(s["pnl_usd"]), fmt_num(s["avg_r"]),
            fmt_usd(s["avg_win_usd"]), fmt_usd(s["avg_loss_usd"]), fmt_num(s["payoff_ratio"]), fmt_pf(s)]


STAT_HEADERS = ["trades", "win rate", "P&L", "avg R", "avg win", "avg loss", "win/loss", "profit factor"]


def veto_table(cycle_details: list[dict], summary: dict | None = None) -> Table:
    """Refused proposals per (layer, rule), with the last reason as an example of the numbers."""
    counts: Counter = Counter()
    example: dict = {}
    for cd in cycle_details:
        for d in cd.get("decisions", []):
            if not d.get("approved"):
                key = (d.get("rule") or "?", d.get("layer") or "?")
                counts[key] += 1
                example[key] = f"#{cd.get('cycle')} {d.get('symbol', '')}: {d.get('reason', '')}"
    rows = [[rule, layer, str(n), example[(rule, layer)]] for (rule, layer), n in
            sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    note = ""
    if not cycle_details and (summary or {}).get("vetoes_by_rule"):  # no journal: the run summary's counts
        rows = [[r, "?", str(n), ""] for r, n in sorted(summary["vetoes_by_rule"].items())]
        note = "(cycle journal missing: counts from the run summary)"
    return Table("Vetoes per rule (refused proposals)", ["rule", "layer", "count", "last example"], rows, note)


def build_review(doc: dict, periods_per_year: float | None = None, source: str = "") -> Review:
    m = M.compute_all(doc, periods_per_year)
    how = "" if periods_per_year is not None or not m["days"] else (
        " (auto: crypto or returns on weekend days)" if m["periods_per_year"] == 365 else " (auto: exchange days only)")
    s = doc.get("session") or {}
    header = [f"log          {source}" if source else "",
              f"session      {s.get('session_id', '?')}  mode {s.get('mode', '?')}  hydra {s.get('hydra_version', '?')}"
              f"  config {s.get('config_hash', '?')}",
              f"period       {m['start']} -> {m['end']}  ({m['cycles']} cycles, {m['days']} UTC days with returns)",
              f"annualised   {m['periods_per_year']:g} periods per year{how}, daily returns, zero risk-free rate"]
    header = [h for h in header if h]
    notes = []
    quality = s.get("data_quality") or {}
    if quality:   # issue #17: rows the replay refused are said here too, not only kept in the JSON
        notes.append("note: refused data rows: " + "; ".join(
            f"{k.replace('_', ' ')}: " + ", ".join(f"{sym} {n}" for sym, n in v.items()) for k, v in quality.items()))
    summ = doc.get("summary") or {}
    if summ.get("regime_stale_cycles"):
        notes.append(f"note: {summ['regime_stale_cycles']} cycles from {summ.get('regime_stale_from')} read the regime "
                     "UNKNOWN: its inputs were stale (no entries)")
    for k in summ.get("kills") or ():
        notes.append(f"note: kill switch {k['rule']} fired {k['at']}: {k['reason']}; "
                     + (f"resumed {k['resumed_at']} ({k['resumed_by']})" if k.get("resumed_at") else "never resumed"))
    if doc.get("recovered_from_journal"):
        notes.append(f"note: {doc['recovered_from_journal']} cycles were recovered from the journal (crash?)")
    dd_span = (f"peak {m['max_drawdown_peak']} -> trough {m['max_drawdown_trough']} -> "
               + (f"recovered {m['max_drawdown_recovery']}" if m["max_drawdown_recovered"] else "not recovered")
               if m["max_drawdown_peak"] else "no drawdown")
    perf = Table("Performance", ["metric", "value"], [
        ["equity", f"{fmt_usd(m['starting_equity_usd'])} -> {fmt_usd(m['final_equity_usd'])}"],
        ["total return", fmt_pct(m["total_return"])], ["CAGR", fmt_pct(m["cagr"])],
        ["annual volatility", fmt_pct(m["annual_volatility"])], ["Sharpe", fmt_num(m["sharpe"])],
        ["Sortino", fmt_num(m["sortino"]) + (" (no losing day)" if m["days"] > 1 and not m["losing_days"] else "")], ["Calmar", fmt_num(m["calmar"])],
        ["max drawdown", fmt_pct(m["max_drawdown"])],
        ["max drawdown duration", f"{fmt_num(m['max_drawdown_duration_days'], 1)} days"],
        ["CVaR 95% (daily)", fmt_pct(m["cvar_95"])], ["exposure (time in market)", fmt_pct(m["exposure"], 1)],
        ["turnover (notional / avg equity)", f"{fmt_num(m['turnover'])}x  ({fmt_usd(m['traded_notional_usd'])})"],
    ], note=f"max drawdown (every cycle): {dd_span}")
    tables = [perf]
    t = m["trades"]
    if t["trades"] == 0:
        notes.append("No closed trades in this session: trade statistics are empty.")
    else:
        tables.append(Table("Trades", ["all", *STAT_HEADERS], [_stat_row("all", t)],
                            f"fees of these closed trades {fmt_usd(t['fees_usd'])} (open positions' entry fees not included); "
                            "win = net P&L > 0 after fees; "
                            "R = P&L / initial risk (entry to stop)"))
        tables.append(Table("Per strategy", ["strategy", *STAT_HEADERS],
                            [_stat_row(k, v) for k, v in m["per_strategy"].items()]))
    regimes = sorted(set(m["per_regime"]) | set(m["regime_time"]))
    empty = M.trade_stats([])
    tables.append(Table("Profit by regime (regime at entry)", ["regime", "time in regime", "trades", "win rate", "P&L",
                                                                "avg R"],
                        [[r, fmt_pct(m["regime_time"].get(r), 1), str(st["trades"]), fmt_pct(st["win_rate"], 1),
                          fmt_usd(st["pnl_usd"]), fmt_num(st["avg_r"])]
                         for r in regimes for st in [M.json_safe(m["per_regime"].get(r, empty))]]))
    if t["trades"]:
        tables.append(Table("Exit reasons", ["reason", "trades", "win rate", "P&L", "avg R"],
                            [[k, str(v["trades"]), fmt_pct(v["win_rate"], 1), fmt_usd(v["pnl_usd"]),
                              fmt_num(v["avg_r"])] for k, v in m["exit_reasons"].items()]))
    tables.append(veto_table(doc.get("cycle_details", []), doc.get("summary")))
    from .llm.review import llm_review   # the LLM gate's blocks and agreement, when the session ran it
    llm_tables, llm_notes, llm_metrics = llm_review(doc)
    tables += llm_tables
    notes += llm_notes
    if llm_metrics:
        m["llm"] = llm_metrics
    ml = _ml_table(doc, notes)   # the signal scorer's live predictions against outcomes (issue #21)
    if ml is not None:
        tables.append(ml)
    from .perp.review import perp_review   # per perp primitive: R, funding, liquidations (#20)
    perp_tables, perp_metrics = perp_review(doc)
    tables += perp_tables
    m.update(perp_metrics)
    return Review(f"HYDRA session review: {s.get('session_id', '?')}", header, m, tables, notes)


def _ml_table(doc: dict, notes: list[str]) -> Table | None:
    from .ml.monitor import monitor, scored_outcomes
    pairs = scored_outcomes(doc.get("cycle_details", []), doc.get("trades", []))
    if not pairs:
        return None
    mon = monitor(pairs)
    notes.extend(f"ML scorer alert: {a}" for a in mon["alerts"])
    return Table("Signal scorer: predictions vs outcomes (last scored trades)", ["bucket", "trades", "observed win rate"],
                 [[b["bucket"], str(b["n"]), fmt_pct(b["observed"], 1)] for b in mon["buckets"]],
                 f"rolling accuracy {fmt_pct(mon['accuracy'], 1)} over {mon['window']} of {mon['scored_trades']} scored trades")


# ---------------------------------------------------------------- charts and HTML
def write_charts(doc: dict, m: dict, out_dir: Path) -> list[Path]:
    """Equity + drawdown always; profit by regime and per strategy when there are trades."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    eq = M.equity_curve(doc)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    if len(eq):
        ax1.plot(eq.index, eq.to_numpy(), color="#1f77b4", lw=1.2)
        dd = 100 * M.drawdown_curve(eq)
        ax2.fill_between(dd.index, dd.to_numpy(), 0, color="#d62728", alpha=0.4, step="post")
    ax1.set_ylabel("equity (USD)")
    ax1.set_title("Equity and drawdown (every cycle, UTC)")
    ax2.set_ylabel("drawdown (%)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    files.append(_save(fig, out_dir / "equity_drawdown.png"))

    if m["trades"]["trades"]:
        for name, groups, title in (("profit_by_regime.png", m["per_regime"], "Net P&L by regime at entry (USD)"),
                                    ("per_strategy.png", m["per_strategy"], "Per strategy")):
            fig, axes = plt.subplots(1, 2 if name == "per_strategy.png" else 1, figsize=(10, 4), squeeze=False)
            keys = list(groups)
            pnl = [groups[k]["pnl_usd"] for k in keys]
            axes[0][0].bar(keys, pnl, color=["#2ca02c" if p >= 0 else "#d62728" for p in pnl])
            axes[0][0].axhline(0, color="black", lw=0.8)
            axes[0][0].set_title(title if len(axes[0]) == 1 else "net P&L (USD)")
            if len(axes[0]) == 2:
                axes[0][1].bar(keys, [100 * (groups[k]["win_rate"] or 0) for k in keys], color="#1f77b4")
                axes[0][1].set_ylim(0, 100)
                axes[0][1].set_title("win rate (%)")
                for i, k in enumerate(keys):
                    axes[0][1].annotate(f"{groups[k]['trades']} trades\navg R {fmt_num(groups[k]['avg_r'])}",
                                        (i, 2), ha="center", fontsize=8)
                fig.suptitle(title)
            for ax in axes[0]:
                ax.tick_params(axis="x", labelrotation=20)
                ax.grid(alpha=0.3, axis="y")
            files.append(_save(fig, out_dir / name))
    return files


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{padding:3px 10px;border-bottom:1px solid #ddd;"
        "text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f4f4f4}"
        "pre{background:#f8f8f8;padding:.6em}.note{color:#666;font-size:90%}img{max-width:100%}")


def write_html(review: Review, charts: list[Path], path: Path) -> Path:
    """One self-contained file: charts embedded as base64 PNG, so it can be mailed or archived alone."""
    imgs = "".join(f"<img alt='{html.escape(p.stem)}' src='data:image/png;base64,"
                   f"{base64.b64encode(p.read_bytes()).decode()}'>" for p in charts)
    body = (f"<h1>{html.escape(review.title)}</h1><pre>{html.escape(chr(10).join(review.header))}</pre>"
            + "".join(f"<p><b>{html.escape(n)}</b></p>" for n in review.notes)
            + review.tables[0].html() + imgs + "".join(t.html() for t in review.tables[1:]))
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(review.title)}</title>"
                    f"<style>{_CSS}</style></head><body>{body}</body></html>", encoding="utf-8")
    return path


class LogError(ValueError):
    """A session log that cannot be read; the message says which file and why."""


def load_log(path: str | Path) -> dict:
    """``load_session`` with one clear error for a missing file, bad JSON, or a document of the wrong shape."""
    path = Path(path)
    try:
        doc = load_session(path)
        for key in ("session", "cycles", "trades", "fills"):
            if not isinstance(doc[key], (dict if key == "session" else list)):
                raise TypeError(key)
        return doc
    except FileNotFoundError as exc:
        raise LogError(exc.args[0] if exc.args else str(exc)) from None
    except ValueError as exc:  # load_session's own errors name the file already
        raise LogError(str(exc)) from None
    except (KeyError, TypeError, AttributeError) as exc:  # valid JSON, not a session document
        raise LogError(f"{path}: not a valid session log (missing or malformed {exc})") from None


def default_out_dir(log_path: Path) -> Path:
    return log_path.parent / f"{log_path.stem}-review"


def review_session(log_path: str | Path, out_dir: str | Path | None = None,
                   periods_per_year: float | None = None) -> tuple[Review, list[Path]]:
    """Load, compute, write charts + ``report.html`` + ``metrics.json``; return the review and the files."""
    import json
    log_path = Path(log_path)
    doc = load_log(log_path)
    out = Path(out_dir) if out_dir else default_out_dir(log_path)
    review = build_review(doc, periods_per_year, source=str(log_path))
    charts = write_charts(doc, review.metrics, out)
    report = write_html(review, charts, out / "report.html")
    metrics_json = out / "metrics.json"
    metrics_json.write_text(json.dumps(review.metrics, indent=1), encoding="utf-8")
    from .tearsheet import write_tearsheet   # the interactive one; the PNGs above stay for scripts
    tearsheet = write_tearsheet(doc, out / "tearsheet.html", periods_per_year, source=str(log_path))
    return review, [*charts, report, metrics_json, tearsheet]


__all__ = ["Review", "Table", "LogError", "load_log", "build_review", "review_session", "write_charts", "write_html", "veto_table",
           "default_out_dir", "fmt_pct", "fmt_usd", "fmt_num"]
