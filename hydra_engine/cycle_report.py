"""What a cycle records and what a session sums up: the cycle report (the decision trace ``explain``
reads back), its JSON formatting, the run's counters and the end-of-session summary."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from .domain import Order, RegimeReading
from .ports import ZERO, Account, BrokerError
from .tradelog import to_jsonable

CENT = Decimal("0.01")


@dataclass(slots=True)
class RunStats:
    cycles: int = 0
    proposals: int = 0
    approved: int = 0
    vetoes: dict[str, int] = field(default_factory=dict)
    orders: int = 0
    rejected: int = 0
    errors: int = 0
    quiet_cycles: int = 0      # cycles in which no plugin woke: steps 3-7 skipped (the quiet-bar fast path)
    # per strategy: signals produced, proposals made, awake cycles its regime gate kept it out of trading
    activity: dict[str, dict[str, int]] = field(default_factory=dict)

    def act(self, strategy: str, key: str, n: int = 1) -> None:
        a = self.activity.get(strategy)
        if a is None:
            a = self.activity[strategy] = {"signals": 0, "proposals": 0, "regime_gated_cycles": 0}
        a[key] += n

    def veto(self, rule: str, n: int = 1) -> None:
        self.vetoes[rule] = self.vetoes.get(rule, 0) + n


def new_report(cycle: int, now: datetime) -> dict:
    """An empty cycle report. "ts", "signals", "fills", "prices", "regime", "weights", "equity_usd" and
    "cash_usd" hold raw values (the datetime, Signal and Fill objects, float prices, the RegimeReading, the
    Account) until :func:`format_report` makes them JSON-ready -- only when something reads the report."""
    return {"cycle": cycle, "ts": now, "mode": "trade", "signals": [], "aggregated": {}, "strategies_run": [],
            "strategies_gated": [], "proposals": [], "decisions": [], "orders": [], "fills": [], "exits": [],
            "errors": [], "notes": []}


def format_report(report: dict) -> None:
    """Turn a cycle report's raw values into their JSON-ready form, in place and keeping the key order:
    ISO time, prices rounded to 8 places (non-finite ones dropped), a copy of the regime reading, weights
    rounded to 6 places, equity and cash to the cent."""
    report["ts"] = to_jsonable(report["ts"])
    traced = report.get("llm_verdicts")           # the LLM gate's trace (llm/wiring.py), formatted only when read
    if traced is not None and hasattr(traced, "jsonable"):
        report["llm_verdicts"] = traced.jsonable()
    for key in ("signals", "fills"):   # the cycle's Signal and Fill objects (a dict: converted already)
        items = report.get(key)
        if items:
            report[key] = [x if isinstance(x, dict) else to_jsonable(x) for x in items]
    if "prices" in report:   # {s: round(p, 8) for s, p in prices.items() if math.isfinite(p)}
        report["prices"] = _rounded(report["prices"], 8, _PRICES_ROUNDED, finite_only=True)
    if "regime" in report:
        report["regime"] = dict(_regime_json(report["regime"]))
    if "weights" in report:  # {k: round(v, 6) for k, v in weights.items()}
        report["weights"] = _rounded(report["weights"], 6, _WEIGHTS_ROUNDED, finite_only=False)
    account = report.get("equity_usd")
    if isinstance(account, Account):
        report["equity_usd"] = str(account.equity_usd.quantize(CENT))
        report["cash_usd"] = str(account.cash_usd.quantize(CENT))


# key -> (the last finite non-zero float rounded under that key, its rounded value): an equity's daily close
# and the weights stay the same for many hourly cycles. Equal such floats are the same double (only 0.0 and
# -0.0 are equal and different, and zero is never kept), so the kept value is what round() returns again
_PRICES_ROUNDED: dict = {}
_WEIGHTS_ROUNDED: dict = {}


def _rounded(values: dict, places: int, memo: dict, *, finite_only: bool) -> dict:
    """``{k: round(v, places) for k, v in values.items()}`` (with ``finite_only``: ``... if math.isfinite(v)``),
    the same dict, without rounding again a float equal to the one last rounded under its key."""
    out = {}
    for k, v in values.items():
        kept = memo.get(k)
        if kept is not None and kept[0] == v and type(v) is float:
            out[k] = kept[1]
        elif not finite_only or math.isfinite(v):
            r = out[k] = round(v, places)
            if type(v) is float and v and v - v == 0.0:   # finite and non-zero floats only are kept
                memo[k] = (v, r)
    return out


_REGIME_JSON: list = [None, None]   # the last reading converted and its JSON form: a reading spans many cycles


def _regime_json(regime) -> dict:
    """A cycle's regime reading as JSON (converted once per reading: readings repeat for many cycles)."""
    if not isinstance(regime, RegimeReading):
        return regime   # already a dict (a report built before the reading was kept raw)
    if _REGIME_JSON[0] is not regime:
        _REGIME_JSON[:] = [regime, to_jsonable(regime)]
    return _REGIME_JSON[1]


def refused(strategy: str, symbol: str, layer: str, rule: str, reason: str, gate: dict) -> dict:
    """The decision record of a proposal refused before sizing."""
    return {"strategy": strategy, "symbol": symbol, "approved": False, "layer": layer, "rule": rule,
            "reason": reason, "qty": "0", "notional_usd": "0", "details": {}, "gate": gate}


def session_summary(engine) -> dict:
    """The end-of-session summary: equity and return, per-strategy results, vetoes, faults."""
    try:
        account = engine.broker.account()
    except BrokerError:  # the broker is down at the end of a session: use the last cycle's numbers
        last = engine.last_report or {}
        equity = Decimal(str(last.get("equity_usd") or engine.settings.broker.starting_cash_usd))
        account = Account(cash_usd=Decimal(str(last.get("cash_usd") or equity)), equity_usd=equity,
                          buying_power_usd=ZERO)
    start = engine.starting_equity_usd
    per_strategy: dict[str, dict] = {}
    exit_reasons: dict[str, int] = {}
    for t in engine.closed_trades:
        s = per_strategy.setdefault(t["strategy"], {"trades": 0, "wins": 0, "pnl_usd": Decimal(0)})
        s["trades"] += 1
        s["wins"] += Decimal(t["pnl_usd"]) > 0
        s["pnl_usd"] += Decimal(t["pnl_usd"])
        exit_reasons[t["exit_reason"]] = exit_reasons.get(t["exit_reason"], 0) + 1
    stats = engine.stats
    return to_jsonable({
        "cycles": stats.cycles, "starting_equity_usd": start,
        "final_equity_usd": account.equity_usd.quantize(CENT),
        "return_pct": round(float((account.equity_usd / start - 1) * 100), 4),
        "cash_usd": account.cash_usd.quantize(CENT),
        "open_positions": {s: str(p.qty) for s, p in engine.positions.items()},
        "proposals": stats.proposals, "approved": stats.approved, "vetoes_by_rule": stats.vetoes,
        "orders": stats.orders, "orders_refused": stats.rejected, "errors": stats.errors,
        "closed_trades": len(engine.closed_trades), "per_strategy": per_strategy, "exit_reasons": exit_reasons,
        # every enabled strategy, traded or not: what it did (a summary that shows each one at work)
        "activity": {s.name: stats.activity.get(s.name, {"signals": 0, "proposals": 0, "regime_gated_cycles": 0})
                     for s in engine.strategies},
        "fees_usd": getattr(engine.broker, "fees_paid", None),
        "sizing_bound_by": engine.risk.binding_counts(),
        **({"faults": dict(engine.faults)} if getattr(engine, "faults", None) else {}),
        # what each plugin that keeps notes says about its session (why it had no trades, stood down, ...)
        "plugin_notes": {s.name: s.report_notes() for s in engine.strategies
                         if callable(getattr(s, "report_notes", None))},
    })


