"""``hydra explain LOG.json --cycle N`` or ``--symbol SYM --time ISO``: the decision trace of one cycle.

A trader asking "why did (or didn't) HYDRA take this trade?" gets, for one cycle, the regime, every
signal with its weight in the combined view, every proposal with its expected value, and the layer and
rule that approved or vetoed it with the numbers, then the orders, fills and exits. Everything comes
from the cycle journal (``session-*.cycles.jsonl``) that ``load_session`` returns as ``cycle_details``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

EXIT_OK, EXIT_USAGE = 0, 2


class ExplainError(LookupError):
    """The requested cycle is not in the log; the message lists what is."""


class TimeError(ValueError):
    """``--time`` is not an ISO-8601 time."""


def register(subparsers) -> None:
    p = subparsers.add_parser("explain", help="explain one cycle's decisions (regime, signals, proposals, vetoes)",
                              description="Show the decision trace of one cycle of a session log: pick it by "
                              "--cycle N, or by --symbol SYM --time ISO (the latest cycle at or before that time "
                              "that involved the symbol; a time without offset is read as UTC).")
    p.add_argument("log", help="path to a session-*.json trade log")
    p.add_argument("--cycle", type=int, default=None, help="cycle number")
    p.add_argument("--symbol", default=None, help="symbol, e.g. BTC/USD (also narrows the output to it)")
    p.add_argument("--time", default=None, help="ISO-8601 time, e.g. 2024-03-01T12:00Z (default: end of log)")
    p.set_defaults(func=handle)


def handle(args) -> int:
    from ..review import LogError, load_log
    if args.cycle is None and args.symbol is None:
        print("error: give --cycle N, or --symbol SYM [--time ISO]", file=sys.stderr)
        return EXIT_USAGE
    try:
        time = parse_time(args.time) if args.time else None
        doc = load_log(Path(args.log))
        detail = find_cycle(doc.get("cycle_details", []), cycle=args.cycle, symbol=args.symbol, time=time)
        text = explain_cycle(detail, symbol=args.symbol, session=doc.get("session"))
    except (LogError, ExplainError, TimeError) as exc:
        print(f"error: {exc.args[0] if isinstance(exc, ExplainError) else exc}", file=sys.stderr)
        return EXIT_USAGE
    except (TypeError, AttributeError, ValueError, LookupError) as exc:
        # a journal record of a shape the loader does not check (a cycle's ts "x"): name the file, no traceback
        print(f"error: {args.log}: cannot explain this log ({type(exc).__name__}: {exc})", file=sys.stderr)
        return EXIT_USAGE
    print(text)
    return EXIT_OK


# ---------------------------------------------------------------- finding the cycle
def parse_time(text: str) -> pd.Timestamp:
    try:
        ts = pd.Timestamp(text)
    except ValueError:
        raise TimeError(f"--time {text!r} is not an ISO-8601 time (e.g. 2024-03-01T12:00:00Z)") from None
    return ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")


def symbols_in(detail: dict) -> set[str]:
    """Symbols a cycle did something with (signals, proposals, decisions, orders, fills, exits, trades)."""
    out = set(detail.get("aggregated") or {})
    for key in ("signals", "proposals", "decisions", "orders", "fills", "exits", "trades"):
        out.update(x.get("symbol") for x in detail.get(key) or [] if isinstance(x, dict))
    return out - {None}


def _range(details: list[dict]) -> str:
    nums = sorted(d["cycle"] for d in details)
    return f"cycles {nums[0]}–{nums[-1]} ({len(nums)} recorded, {details[0]['ts']} to {details[-1]['ts']})"


def find_cycle(details: list[dict], cycle: int | None = None, symbol: str | None = None,
               time: pd.Timestamp | None = None) -> dict:
    """The cycle by number, or the latest one at or before ``time`` that involved ``symbol``."""
    if not details:
        raise ExplainError("this log has no cycle journal (session-*.cycles.jsonl next to it), so there is no "
                           "decision trace to explain")
    if cycle is not None:
        for d in details:
            if d["cycle"] == cycle:
                return d
        raise ExplainError(f"cycle {cycle} is not in this log; available: {_range(details)}")
    hits = [d for d in details if symbol in symbols_in(d)]
    if not hits:
        known = sorted(set().union(*(symbols_in(d) for d in details)))
        raise ExplainError(f"no cycle involved {symbol}; symbols seen: {', '.join(known) or 'none'}")
    before = [d for d in hits if time is None or pd.Timestamp(d["ts"]) <= time]
    if not before:
        raise ExplainError(f"no cycle at or before {time.isoformat().replace('+00:00', 'Z')} involved {symbol}; the first was cycle "
                           f"{hits[0]['cycle']} at {hits[0]['ts']} ({_range(details)})")
    return max(before, key=lambda d: (pd.Timestamp(d["ts"]), d["cycle"]))


# ---------------------------------------------------------------- rendering
def _flat(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in (d or {}).items():
        out += _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}={v}"]
    return out


def _f(x, digits: int = 2, sign: str = "") -> str:
    """A number for the trace; null (to_jsonable writes NaN as null) or missing is n/a."""
    if x is None:
        return "n/a"
    try:
        return f"{float(x):{sign},.{digits}f}"
    except (TypeError, ValueError):
        return str(x)


def _match_decisions(proposals: list[dict], decisions: list[dict]) -> list[dict | None]:
    """Pair each proposal with its decision: same strategy and symbol, in order (the engine decides the
    ranked proposals one by one, so the n-th pair matches the n-th decision)."""
    left = list(decisions)
    out = []
    for p in proposals:
        i = next((i for i, d in enumerate(left) if (d.get("strategy"), d.get("symbol")) ==
                  (p.get("strategy"), p.get("symbol"))), None)
        out.append(left.pop(i) if i is not None else None)
    return out


def explain_cycle(detail: dict, symbol: str | None = None, session: dict | None = None) -> str:
    """Plain-text decision trace of one journal line; ``symbol`` narrows lists to that symbol."""
    keep = (lambda x: x.get("symbol") == symbol) if symbol else (lambda x: True)
    sid = f", session {session.get('session_id')}" if session and session.get("session_id") else ""
    lines = [f"CYCLE {detail['cycle']} at {detail['ts']} (mode {detail.get('mode', '?')}{sid})"
             + (f" — showing {symbol} only" if symbol else ""),
             f"equity ${_f(detail.get('equity_usd'))}   cash ${_f(detail.get('cash_usd'))}"]
    for note in detail.get("notes") or []:
        lines.append(f"note: {note}")

    reg = detail.get("regime") or {}
    lines += ["", f"REGIME    {reg.get('regime', '?')}   confidence {_f(reg.get('confidence'))}   "
                  f"detector {reg.get('detector', '?')}   as of {reg.get('as_of', '?')}"]
    if reg.get("details"):
        lines.append("          " + ", ".join(_flat(reg["details"])))
    if detail.get("stale_symbols"):
        lines.append(f"stale data: {', '.join(f'{k} ({v})' for k, v in dict(detail['stale_symbols']).items())}")

    lines += ["", "SIGNALS   combined score = Σ score·weight / Σ weight; weight = confidence × decay × reliability"]
    agg = {s: a for s, a in (detail.get("aggregated") or {}).items() if not symbol or s == symbol}
    theses = {(s.get("symbol"), s.get("source")): s.get("thesis", "") for s in detail.get("signals") or []}
    if not agg:
        lines.append("  (no signals)")
    for sym, a in sorted(agg.items()):
        contributors = a.get("contributors") or []
        total = sum(float(c.get("weight") or 0) for c in contributors)
        lines.append(f"  {sym:<10} combined score {_f(a.get('score'), 3, '+')}   confidence {_f(a.get('confidence'))}")
        for c in contributors:
            w = float(c.get("weight") or 0)
            share = f"{100 * w / total:5.1f}%" if total > 0 else "   n/a"
            thesis = theses.get((sym, c.get("source")), "")
            lines.append(f"    {c.get('source', '?'):<28} score {_f(c.get('score'), 3, '+')}"
                         f"  conf {_f(c.get('confidence'))}"
                         f"  weight {w:.3f} ({share})" + (f"  “{thesis}”" if thesis else ""))
    mods = [m for m in detail.get("modifiers") or [] if isinstance(m, dict) and (not symbol or m.get("symbol") == symbol)]
    if mods:   # signal modifiers (e.g. the cross-asset graph): each scaling with the edges that caused it
        lines += ["", "MODIFIERS  confidence scaled before aggregation"]
        for m in mods:
            lines.append(f"  {m.get('modifier', '?')}: {m.get('symbol', '?')} {m.get('source', '?')} "
                         f"x{_f(m.get('factor'), 3)}  {m.get('reason', '')}")
    scores = [e for e in detail.get("ml_scores") or [] if isinstance(e, dict) and (not symbol or e.get("symbol") == symbol)]
    if scores:   # the signal scorer (issue #21): each signal's probability, or why it abstained
        lines += ["", "SCORERS  P(signal pays its costs); replaces the plugin's confidence where it scores"]
        for e in scores:
            what = (f"ml_score {_f(e.get('ml_score'), 3)} ({e.get('scorer', '?')})" if e.get("ml_score") is not None
                    else f"abstained: {e.get('abstain', '')}")
            lines.append(f"  {e.get('strategy', '?')}: {e.get('symbol', '?')} {e.get('source', '?')}  {what}")
    run, gated = detail.get("strategies_run") or [], detail.get("strategies_gated") or []
    lines += ["", f"STRATEGIES run: {', '.join(run) or 'none'}"
              + (f"; gated out by regime: {', '.join(gated)}" if gated else "")]

    props = detail.get("proposals") or []
    pairs = [(i, p, d) for i, (p, d) in enumerate(zip(props, _match_decisions(props, detail.get("decisions") or [])), 1)
             if keep(p)]
    lines += ["", "PROPOSALS ranked by expected value = confidence × reward:risk × strategy weight"]
    if not pairs:
        lines.append("  (none)")
    for i, p, d in pairs:
        lines += [f"  {i}. {p['strategy']} {str(p['side']).upper()} {p['symbol']}   entry {_f(p['entry_price'])}  "
                  f"stop {_f(p['stop_price'])}  target {_f(p['target_price'])}",
                  f"     EV {_f(p.get('expected_value'), 3)} = confidence {_f(p['confidence'])} × R:R "
                  f"{_f(p.get('reward_risk'))} × weight {_f(p.get('weight'))}"]
        if p.get("thesis"):
            lines.append(f"     thesis: {p['thesis']}")
        if d is None:
            lines.append("     -> no decision recorded (risk was not consulted for it this cycle)")
            continue
        verdict = "APPROVED" if d.get("approved") else "VETOED"
        gate = d.get("gate")
        if gate:   # the entry gate's verdict for the symbol (journals before issue #15 have none)
            lines.append(f"     gate: {gate.get('state', '?')}" + (f" by rule {gate['rule']}" if gate.get("rule") else ""))
        lines.append(f"     -> {verdict} by the {d.get('layer', '?')} layer, rule {d.get('rule') or '?'}: {d.get('reason', '')}")
        if d.get("approved"):
            lines.append(f"        qty {d.get('qty')}  notional ${_f(d.get('notional_usd'))}")
        if d.get("details"):
            lines.append("        numbers: " + ", ".join(_flat(d["details"])))

    def section(title: str, key: str, fmt) -> None:
        items = [x for x in detail.get(key) or [] if keep(x)]
        if items:
            lines.extend(["", title, *("  " + fmt(x) for x in items)])

    section("ORDERS", "orders", lambda o: (
        f"{str(o.get('side', '')).upper()} {o.get('qty')} {o.get('symbol')} {o.get('order_type', '')} "
        f"{o.get('time_in_force', '')} ({o.get('purpose', '')}, {o.get('strategy', '')})  status {o.get('status')}"
        f"  id {o.get('client_order_id')}" + (f"  reject: {o['reject_reason']}" if o.get("reject_reason") else "")))
    section("FILLS", "fills", lambda f: (
        f"{str(f.get('side', '')).upper()} {f.get('qty')} {f.get('symbol')} @ {_f(f.get('price'), 4)}  "
        f"fee ${_f(f.get('fee_usd'))}  at {f.get('ts')}  order {f.get('client_order_id')}"
        + (f"  venue {f['venue']}" if f.get("venue") else "")))
    section("EXITS", "exits", lambda e: (
        f"{e.get('symbol')} {e.get('reason')} triggered at {_f(e.get('trigger_price'), 4)}: {e.get('detail', '')}"))
    section("CLOSED TRADES", "trades", lambda t: (
        f"{t.get('strategy')} {t.get('side')} {t.get('qty')} {t.get('symbol')}  {_f(t.get('entry_price'), 4)} -> "
        f"{_f(t.get('exit_price'), 4)}  P&L ${_f(t.get('pnl_usd'))}  R {_f(t.get('r_multiple'))}  "
        f"({t.get('exit_reason')}, regime at entry {t.get('regime_at_entry')})"))
    if detail.get("errors"):
        lines.extend(["", "ERRORS", *(f"  {e}" for e in detail["errors"])])
    return "\n".join(lines)
