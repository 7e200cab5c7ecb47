"""`review` and `explain` on the hand-built fixture logs: tables, PNG + HTML output, the decision trace,
and the error paths (exit code 2 with a clear message)."""
from __future__ import annotations

import argparse
import json
import re
import shutil

import pytest

from hydra_engine.commands import explain as explain_cmd
from hydra_engine.commands import review as review_cmd
from tests.fixtures.build import EMPTY, SMALL, build_empty, build_small


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """Parse with only our two commands registered, so the tests do not depend on other modules."""
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    review_cmd.register(sub)
    explain_cmd.register(sub)
    args = parser.parse_args(argv)
    code = args.func(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def _copy_log(src, dst_dir, journal=True):
    shutil.copy(src, dst_dir / src.name)
    if journal:
        shutil.copy(src.with_suffix(".cycles.jsonl"), dst_dir / src.with_suffix(".cycles.jsonl").name)
    return dst_dir / src.name


def test_checked_in_fixtures_match_the_builder(tmp_path):
    """The fixtures are written by tradelog.SessionLog: if the log format changes, regenerate them."""
    for build, path in ((build_small, SMALL), (build_empty, EMPTY)):
        fresh = build(tmp_path)
        assert json.loads(fresh.read_text()) == json.loads(path.read_text())
        journal = path.with_suffix(".cycles.jsonl")
        assert [json.loads(x) for x in fresh.with_suffix(".cycles.jsonl").read_text().splitlines()] == \
               [json.loads(x) for x in journal.read_text().splitlines()]


# ---------------------------------------------------------------- review
def test_review_prints_tables_and_writes_png_and_html(tmp_path, capsys):
    out_dir = tmp_path / "rev"
    code, out, err = run(["review", str(SMALL), "--out", str(out_dir)], capsys)
    assert code == 0, err
    assert re.search(r"^trend_follow\s+3\s+66\.7%\s+\$400\.00\s+0\.83\s+\$250\.00\s+-\$100\.00\s+2\.50\s+5\.00$", out, re.M)
    assert re.search(r"^mean_revert\s+2\s+50\.0%\s+-\$100\.00\s+-0\.25\s", out, re.M)
    assert re.search(r"^MEAN_REVERTING\s+31\.2%\s+2\s+50\.0%\s+-\$100\.00", out, re.M)
    assert re.search(r"^max_position_pct\s+risk\s+2\s+#13 ETH/USD: veto max_position_pct", out, re.M)
    assert re.search(r"^regime_unknown\s+regime\s+1\s", out, re.M)
    assert re.search(r"^stop\s+2\s+0\.0%\s+-\$250\.00", out, re.M)
    assert re.search(r"max drawdown\s+-0\.21%", out) and re.search(r"exposure \(time in market\)\s+80\.0%", out)
    assert "fees of these closed trades $" in out   # not "fees paid": open positions' entry fees are not in it
    pngs = sorted(p.name for p in out_dir.glob("*.png"))
    assert pngs == ["equity_drawdown.png", "per_strategy.png", "profit_by_regime.png"]
    assert all((out_dir / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    page = (out_dir / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == 3 and "http" not in page  # self-contained
    assert "<td>trend_follow</td><td>3</td><td>66.7%</td>" in page
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["per_strategy"]["trend_follow"]["wins"] == 2


def test_review_defaults_to_a_folder_next_to_the_log(tmp_path, capsys):
    log = _copy_log(SMALL, tmp_path)
    code, out, _ = run(["review", str(log)], capsys)
    assert code == 0 and (tmp_path / f"{log.stem}-review" / "report.html").is_file()


def test_review_of_a_session_without_trades_says_so(tmp_path, capsys):
    code, out, err = run(["review", str(EMPTY), "--out", str(tmp_path)], capsys)
    assert code == 0, err
    assert "No closed trades in this session" in out and "Per strategy" not in out
    assert re.search(r"^observe\s+engine\s+2\s", out, re.M)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["equity_drawdown.png"]
    assert "No closed trades" in (tmp_path / "report.html").read_text()


def test_review_without_journal_uses_the_summary_vetoes(tmp_path, capsys):
    doc = json.loads(SMALL.read_text())
    doc["summary"]["vetoes_by_rule"] = {"max_position_pct": 2}
    log = tmp_path / SMALL.name
    log.write_text(json.dumps(doc))  # no .cycles.jsonl beside it
    code, out, _ = run(["review", str(log), "--out", str(tmp_path / "r")], capsys)
    assert code == 0 and "counts from the run summary" in out and re.search(r"^max_position_pct\s+\?\s+2", out, re.M)


@pytest.mark.parametrize("content, message", [
    (None, "not found"), ("{not json", "not a valid session log"),
    ('{"schema_version": 99}', "schema_version 99"), ('{"schema_version": 1}', "not a valid session log"),
])
def test_review_and_explain_bad_logs_exit_2(tmp_path, capsys, content, message):
    log = tmp_path / "session-x.json"
    if content is not None:
        log.write_text(content)
    for argv in (["review", str(log), "--out", str(tmp_path / "o")], ["explain", str(log), "--cycle", "1"]):
        code, out, err = run(argv, capsys)
        assert code == 2 and message in err and "Traceback" not in err


LOG_COMMANDS = (["review", "{log}", "--out", "{out}"], ["explain", "{log}", "--cycle", "1"], ["weights", "--log", "{log}"])


@pytest.mark.parametrize("content, kind", [("[]", "a JSON list"), ("null", "JSON null"), ('"str"', "a JSON string"),
                                           ("42", "a JSON number")])
def test_a_document_that_is_not_an_object_is_refused_by_every_log_command(tmp_path, capsys, content, kind):
    """weights died with an AttributeError traceback (exit 1); review and explain said
    "missing or malformed 'list' object has no attribute 'get'"."""
    from hydra_engine.cli import main
    log = tmp_path / "session-x.json"
    log.write_text(content)
    for argv in LOG_COMMANDS:
        code = main([a.format(log=log, out=tmp_path / "o") for a in argv])
        err = capsys.readouterr().err
        assert code == 2 and err == (f"error: {log}: not a HYDRA session log: the document is {kind}, "
                                     "expected an object\n"), (argv[0], err)


@pytest.mark.parametrize("line_number", [2, "last"])
def test_a_journal_line_that_is_not_an_object_is_refused_naming_the_line(tmp_path, capsys, line_number):
    from hydra_engine.cli import main
    log = _copy_log(SMALL, tmp_path)
    journal = log.with_suffix(".cycles.jsonl")
    lines = journal.read_text().splitlines()
    number = len(lines) if line_number == "last" else line_number
    lines[number - 1] = "[1, 2]"     # valid JSON, so not a torn write even as the last line
    journal.write_text("\n".join(lines) + "\n")
    for argv in LOG_COMMANDS:
        code = main([a.format(log=log, out=tmp_path / "o") for a in argv])
        err = capsys.readouterr().err
        assert code == 2 and err == (f"error: {journal}: line {number} is not a HYDRA cycle record: the line is "
                                     "a JSON list, expected an object\n"), (argv[0], err)


@pytest.mark.parametrize("value", ["0", "-365", "nan", "inf", "many"])
def test_periods_per_year_must_be_a_finite_positive_number(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exc:   # 0 printed CAGR 0.00 and Sharpe 0.00; -365 a math domain error
        run(["review", str(SMALL), "--out", str(tmp_path), "--periods-per-year", value], capsys)
    assert exc.value.code == 2 and "argument --periods-per-year" in capsys.readouterr().err
    code, out, _ = run(["review", str(SMALL), "--out", str(tmp_path), "--periods-per-year", "252"], capsys)
    assert code == 0 and "annualised   252 periods per year" in out


def _mutated_log(tmp_path, mutate_doc=None, mutate_lines=None):
    """SMALL with its document and journal lines changed by the given functions."""
    doc, lines = json.loads(SMALL.read_text()), SMALL.with_suffix(".cycles.jsonl").read_text().splitlines()
    log = tmp_path / SMALL.name
    log.write_text(json.dumps(mutate_doc(doc) if mutate_doc else doc))
    lines = [json.dumps(mutate_lines(json.loads(x))) for x in lines] if mutate_lines else lines
    log.with_suffix(".cycles.jsonl").write_text("\n".join(lines) + "\n")
    return log


def _set_first_trade(field, value):
    def mutate(doc):
        doc["trades"][0] = value if field is None else {**doc["trades"][0], field: value}
        return doc
    return mutate


@pytest.mark.parametrize("field, value, message", [
    ("pnl_usd", None, "trades[0].pnl_usd = None: expected a finite number"),
    (None, 5, "trades[0] is 5, expected a trade object"),
    ("exit_time", 12, "trades[0].exit_time = 12: expected an ISO-8601 time"),
])
def test_wrongly_typed_trade_is_named_by_file_record_and_field(tmp_path, capsys, field, value, message):
    log = _mutated_log(tmp_path, _set_first_trade(field, value))
    for argv in (["review", str(log), "--out", str(tmp_path / "o")], ["explain", str(log), "--cycle", "2"]):
        code, out, err = run(argv, capsys)   # was a TypeError traceback in review
        assert code == 2 and f"error: {log}: {message}" in err and "Traceback" not in err


def test_a_record_the_loader_does_not_check_is_an_error_naming_the_file(tmp_path, capsys):
    def equity_text(doc):
        doc["cycles"][3]["equity_usd"] = "abc"
        return doc
    log = _mutated_log(tmp_path, equity_text)
    code, out, err = run(["review", str(log), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and err.startswith(f"error: {log}: cannot review this log") and "'abc'" in err


# ---------------------------------------------------------------- explain
def test_explain_shows_a_null_score_as_n_a(tmp_path, capsys):
    def null_scores(line):   # to_jsonable writes a NaN score as null
        for a in (line.get("aggregated") or {}).values():
            a["score"] = None
            for c in a["contributors"]:
                c["score"] = c["confidence"] = None
        return line
    log = _mutated_log(tmp_path, mutate_lines=null_scores)
    code, out, err = run(["explain", str(log), "--cycle", "2"], capsys)
    assert code == 0, err
    assert re.search(r"combined score n/a\s+confidence 0\.\d\d", out)
    assert re.search(r"trend_follow\.momentum\s+score n/a\s+conf n/a\s+weight 0\.800", out)


def test_explain_cycle_shows_regime_signals_ev_and_the_veto_numbers(capsys):
    code, out, err = run(["explain", str(SMALL), "--cycle", "2"], capsys)
    assert code == 0, err
    assert "REGIME    TRENDING_UP   confidence 0.80   detector hmm" in out
    assert re.search(r"trend_follow\.momentum\s+score \+0\.600\s+conf 0\.80\s+weight 0\.800 \( 61\.5%\)", out)
    assert "EV 1.650 = confidence 0.55 × R:R 3.00 × weight 1.00" in out
    veto = out[out.index("BUY ETH/USD"):]
    assert "VETOED by the risk layer, rule max_position_pct" in veto and "($0.00)" in veto
    assert "open_notional_usd=6000.00" in veto and "candidates.half_kelly=9000.00" in veto
    assert "APPROVED by the risk layer, rule half_kelly" in out and "qty 0.1  notional $6,000.00" in out
    assert "BUY 0.1 BTC/USD market gtc (entry, trend_follow)" in out


def test_explain_by_symbol_and_time_picks_the_latest_cycle_at_or_before(capsys):
    code, out, _ = run(["explain", str(SMALL), "--symbol", "SPY", "--time", "2024-03-03T14:00:00Z"], capsys)
    assert code == 0 and out.startswith("CYCLE 11 at 2024-03-03T12:00:00Z")
    assert "BTC/USD" not in out  # narrowed to the symbol
    assert "P&L $50.00  R 0.50  (time, regime at entry MEAN_REVERTING)" in out
    code, out, _ = run(["explain", str(SMALL), "--symbol", "SPY", "--time", "2024-03-03T12:00:00Z"], capsys)
    assert out.startswith("CYCLE 11 ")  # "at" the time counts
    code, out, _ = run(["explain", str(SMALL), "--symbol", "BTC/USD", "--time", "2024-03-03T20:00:00"], capsys)
    assert out.startswith("CYCLE 12 ") and "VETOED by the regime layer, rule regime_unknown" in out


@pytest.mark.parametrize("argv, message", [
    (["--cycle", "99"], "cycle 99 is not in this log; available: cycles 1–16"),
    (["--symbol", "SPY", "--time", "2024-02-01T00:00Z"], "no cycle at or before 2024-02-01T00:00:00Z involved SPY"),
    (["--symbol", "DOGE/USD"], "symbols seen: BTC/USD, ETH/USD, SPY"),
    (["--symbol", "SPY", "--time", "yesterday"], "not an ISO-8601 time"),
    ([], "give --cycle N"),
])
def test_explain_errors_are_clear(capsys, argv, message):
    code, out, err = run(["explain", str(SMALL), *argv], capsys)
    assert code == 2 and message in err


def test_explain_without_journal(tmp_path, capsys):
    log = _copy_log(SMALL, tmp_path, journal=False)
    code, _, err = run(["explain", str(log), "--cycle", "1"], capsys)
    assert code == 2 and "no cycle journal" in err


def test_commands_are_discovered_by_the_cli(tmp_path, capsys):
    from hydra_engine.cli import main
    assert main(["explain", str(SMALL), "--cycle", "13"]) == 0
    assert "VETOED by the risk layer, rule max_position_pct" in capsys.readouterr().out
