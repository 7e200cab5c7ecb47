"""The README tables of issue #19's evidence, from bench/out/issue19/ai_event_study.json and modifier_ab.jsonl
(written by bench/ai_event_study.py and bench/cross_asset_modifier_ab.py). Run: python bench/issue19_tables.py"""
from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out" / "issue19"


def fmt(v, spec=""):
    return "–" if v is None else format(v, spec)


def ai_tables(doc: dict) -> list[str]:
    lines = ["| launch | known at (UTC) | IGV z in window | shock? | confirmed | IGV move |", "|---|---|---|---|---|---|"]
    for d in doc["detection"]["launches"]:
        lines.append(f"| {d['launch']} | {d['known_at'][:16]} | {fmt(d['z_end'], '+.2f')} | "
                     f"{'**yes**' if d['shock'] else 'no'} | {d['confirmed'] or ''} | "
                     f"{'' if d['igv_move_pct'] is None else format(d['igv_move_pct'], '+.2f') + ' %'} |")
    c = doc["detection"]
    lines += ["", f"Control candidates (non-launch days, phases 0/5/10): {c['control_candidates']}; "
              f"confirmed as shocks by the same rule: " + ", ".join(f"phase {k}: {len(v)}" for k, v in c["control"].items()), ""]
    lines += ["| launch set / regime | shocks | trades | win rate | avg R | P&L after costs | refused (rule: n) | wall s |",
              "|---|---|---|---|---|---|---|---|"]
    for key, run in doc["runs"].items():
        s = run["summary"]
        label = key.split(" / ")[0]
        shocks = (sum(d["shock"] for d in c["launches"]) if label == "launches"
                  else len(c["control"][label.split()[-1]]))
        ref = ", ".join(f"{k}: {v}" for k, v in run["refused"].items()) or "–"
        lines.append(f"| {key} | {shocks} | {s['trades']} | {fmt(s['win_rate'], '.0%')} | {fmt(s['avg_r'], '+.2f')} | "
                     f"${s['pnl_usd']:+,.2f} | {ref} | {run['wall_s']} |")
    lines += ["", "| run | symbol | side | entry | exit | P&L $ | R | exit reason |", "|---|---|---|---|---|---|---|---|"]
    for key, run in doc["runs"].items():
        if key.startswith("launches"):
            for t in run["trades"]:
                lines.append(f"| {key} | {t['symbol']} | {t['side']} | {t['entry_time'][:10]} | {t['exit_time'][:10]} | "
                             f"{float(t['pnl_usd']):+.2f} | {fmt(t['r_multiple'], '+.2f')} | {t['exit_reason']} |")
    return lines


def ab_tables(rows: list[dict]) -> list[str]:
    lines = ["| year | modifier | cycles | scalings | trades | win rate | avg R | P&L after costs | return | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a = r["all"]
        lines.append(f"| {r['year']} | {r['modifier']} | {r['cycles']} | {r['modifier_scalings']} | {a['trades']} | "
                     f"{fmt(a['win_rate'], '.0%')} | {fmt(a['avg_r'], '+.2f')} | ${a['pnl_usd']:+,.2f} | "
                     f"{fmt(r['total_return'], '+.3%')} | {r['wall_s']} |")
    lines += ["", "| year | modifier | strategy | trades | win rate | avg R | P&L after costs |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        for name, a in r["per_strategy"].items():
            lines.append(f"| {r['year']} | {r['modifier']} | {name} | {a['trades']} | {fmt(a['win_rate'], '.0%')} | "
                         f"{fmt(a['avg_r'], '+.2f')} | ${a['pnl_usd']:+,.2f} |")
    lines += ["", "TLT trades (strategy `cross_asset`), modifier off:", "",
              "| entry | exit | entry $ | exit $ | qty | P&L $ | R | exit reason |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["modifier"] == "off":
            for t in r["tlt_trades"]:
                lines.append(f"| {t['entry_time'][:10]} | {t['exit_time'][:10]} | {t['entry_price']} | {t['exit_price']} | "
                             f"{t['qty']} | {float(t['pnl_usd']):+.2f} | {fmt(t['r_multiple'], '+.2f')} | {t['exit_reason']} |")
    return lines


def main() -> None:
    parts = []
    if (OUT / "ai_event_study.json").is_file():
        parts += ["## Strategy 4: event study", ""] + ai_tables(json.loads((OUT / "ai_event_study.json").read_text()))
    if (OUT / "modifier_ab.jsonl").is_file():
        rows = [json.loads(line) for line in (OUT / "modifier_ab.jsonl").read_text().splitlines() if line.strip()]
        rows.sort(key=lambda r: (r["year"], ["off", "on", "on-granger"].index(r["modifier"])))
        parts += ["", "## Strategy 5: modifier on/off", ""] + ab_tables(rows)
    text = "\n".join(parts) + "\n"
    (OUT / "tables.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
