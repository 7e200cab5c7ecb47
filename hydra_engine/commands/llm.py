"""``hydra llm record --start DATE --end DATE [--data DIR] [--max-usd X] [--dry-run]`` and ``hydra llm status``:
record the news analyst's verdicts over a span of the shipped headlines (for backtests to replay), and
show the analyst's calls, this month's spend and its caps."""
from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from . import config_option

EXIT_OK, EXIT_USAGE = 0, 2


def register(subparsers) -> None:
    p = subparsers.add_parser("llm", help="the LLM news gate: record verdicts for replay, show calls and spend",
                              description="The LLM news analyst (README: 'The LLM news gate').")
    sub = p.add_subparsers(dest="llm_command", metavar="ACTION", required=True)
    rec = sub.add_parser(
        "record", parents=[config_option()], help="run the analyst over a span of the shipped news and record it",
        description="Scan [--start, --end) every llm.scan_interval_minutes with the headlines known at each "
        "moment, call Claude (ANTHROPIC_API_KEY) and record every call and verdict in llm.verdicts_url. "
        "Backtests over the span then replay these verdicts and never call the API.")
    rec.add_argument("--start", required=True, help="first day, YYYY-MM-DD (UTC)")
    rec.add_argument("--end", required=True, help="end day, YYYY-MM-DD (UTC, exclusive)")
    rec.add_argument("--data", default=None, help="data folder holding news/ (default: data.replay_dir)")
    rec.add_argument("--max-usd", type=float, default=None,
                     help="most this run may spend, estimated (default: llm.monthly_spend_cap_usd)")
    rec.add_argument("--dry-run", action="store_true", help="print the plan and its worst-case cost; no key, no call")
    rec.set_defaults(func=handle_record)
    st = sub.add_parser("status", parents=[config_option()], help="calls, spend this month and the caps")
    st.set_defaults(func=handle_status)


def _day(value: str, name: str) -> datetime:
    try:
        d = datetime.strptime(value, "%Y-%m-%d")
    except ValueError:
        raise ValueError(f"{name} {value!r} is not a date (expected YYYY-MM-DD)") from None
    return d.replace(tzinfo=UTC)


def handle_record(args) -> int:
    from ..config import load_settings
    from ..data.event_files import EventDataError
    from ..llm.recording import plan, record_span
    from ..llm.wiring import KEY_VARIABLE, key_environ, safe_url, verdicts_recorder
    settings = load_settings(args.config)
    try:
        start, end = _day(args.start, "--start"), _day(args.end, "--end")
        if start >= end:
            raise ValueError(f"--start {args.start} must be before --end {args.end}")
        if args.max_usd is not None and not args.max_usd >= 0:
            raise ValueError(f"--max-usd {args.max_usd} must be a number >= 0")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    data_dir = Path(args.data) if args.data else settings.resolve_path(settings.data.replay_dir)
    env = key_environ()
    if not args.dry_run and not env:
        print(f"error: {KEY_VARIABLE} is not set (environment or .env): `hydra llm record` calls the Anthropic "
              "API and needs it. Nothing was called. `--dry-run` shows the plan and its cost without a key.",
              file=sys.stderr)
        return EXIT_USAGE
    recorder = verdicts_recorder(settings)
    try:
        the_plan, _ = plan(settings, start, end, data_dir, recorder)
    except EventDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    s = settings.llm
    print(f"llm record {args.start} .. {args.end}: {len(the_plan.scans)} scans every {s.scan_interval_minutes} min of "
          f"{the_plan.symbols}, {the_plan.with_news} with headlines (the others are recorded as no_news, no call); "
          f"worst case ${the_plan.worst_case_usd:.2f} with {s.model} at ${s.input_usd_per_mtok:g}/"
          f"${s.output_usd_per_mtok:g} per million tokens in/out; recorded in {safe_url(recorder.url)}"
          + (f"; resuming after {the_plan.resumed_after:%Y-%m-%d %H:%M}Z" if the_plan.resumed_after else ""))
    if args.dry_run:
        return EXIT_OK
    from ..llm.analyst import client_from_env
    client = client_from_env(settings.llm, environ=env)
    res = record_span(settings, start, end, data_dir, client, recorder, max_usd=args.max_usd)
    print(f"recorded {res['scans']} scans: {res['calls']} API calls, {res['verdicts']} verdicts, "
          f"${res['spent_usd']:.4f} spent (estimated from the reported usage; budget ${res['budget_usd']:g})")
    return EXIT_OK


def status_lines(settings, recorder, now: datetime) -> list[str]:
    from ..llm.record import parse_stamp
    from ..llm.wiring import KEY_VARIABLE, key_environ, safe_url
    s = settings.llm
    month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    calls = recorder.calls()
    called = [c for c in calls if c.called]
    outcomes = recorder.outcomes()
    made = [o.made_at for o in outcomes]
    actions: dict[str, int] = {}
    for o in outcomes:
        key = o.outcome.action.value if o.is_verdict else f"no verdict: {o.outcome.cause.value}"
        actions[key] = actions.get(key, 0) + 1
    last = calls[-1] if calls else None
    lines = [
        f"llm.enabled         {s.enabled}  (model {s.model}, a scan every {s.scan_interval_minutes} min)",
        f"{KEY_VARIABLE:<19} {'set' if key_environ() else 'NOT SET'}",
        f"verdicts            {safe_url(recorder.url)}",
        f"calls this hour     {recorder.calls_between(now - timedelta(hours=1), now)} of llm.max_calls_per_hour "
        f"{s.max_calls_per_hour}",
        f"spend this month    ${recorder.spend_between(month, now):.4f} of llm.monthly_spend_cap_usd "
        f"${s.monthly_spend_cap_usd:g} (calls dated this month: live ones)",
        f"recorded in all     {len(calls)} scans, {len(called)} API calls, "
        f"${sum(c.cost_usd for c in calls):.4f} (history recorded by `llm record` is dated on its scans' clock)",
        f"outcomes            {len(outcomes)}" + (f", {min(made):%Y-%m-%d %H:%M}Z .. {max(made):%Y-%m-%d %H:%M}Z"
                                                   if made else "") + "",
    ]
    lines += [f"  {k:<17} {v}" for k, v in sorted(actions.items())]
    if last is not None:
        lines.append(f"last scan           {parse_stamp(last.requested_at):%Y-%m-%d %H:%M}Z "
                     + (f"failed: {last.cause} {last.detail}" if last.cause else "ok"))
    return lines


def handle_status(args) -> int:
    from ..config import load_settings
    from ..llm.wiring import verdicts_recorder
    settings = load_settings(args.config)
    for line in status_lines(settings, verdicts_recorder(settings), datetime.now(UTC)):
        print(line)
    return EXIT_OK
