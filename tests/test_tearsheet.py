"""The tearsheet `review` writes: every section present, self-contained (plotly inlined, nothing fetched),
the benchmark and the worst-drawdown table computed as documented."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from hydra_engine import metrics as M
from hydra_engine.cli import main
from hydra_engine.tearsheet import benchmark_equity, venue_of, worst_drawdowns

from .test_dashboard import recorded  # noqa: F401  (fixture: a real replay of the shipped data)

SECTIONS = ["Metrics against the benchmark", "Equity and drawdown", "Monthly and yearly returns",
            "Rolling Sharpe and volatility", "Worst drawdowns", "Distribution of daily returns", "Breakdowns",
            "Profit by regime", "Exit reasons", "Trades (18)", "Prices with trades"]


def test_review_writes_a_self_contained_tearsheet_with_every_section(recorded, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "rev"
    assert main(["review", str(recorded["log"]), "--out", str(out)]) == 0
    assert "tearsheet.html" in capsys.readouterr().out
    page = (out / "tearsheet.html").read_text(encoding="utf-8")
    titles = re.findall(r"<section id='s\d+'><h2>([^<]+)</h2>", page)
    assert titles == SECTIONS
    assert not re.search(r"<script[^>]+src=", page)          # plotly.js is inlined: it opens offline, mailed alone
    assert page.count("Plotly.newPlot") >= 9
    for tid in ("metrics", "drawdowns", "per-strategy", "per-symbol", "per-venue", "per-regime", "exit-reasons",
                "trade-list"):
        assert f"id='{tid}'" in page
    assert len(re.findall(r"<tr>", page.split("id='trade-list'")[1].split("</table>")[0])) == 1 + 18
    # the PNGs stay for scripts
    assert (out / "equity_drawdown.png").is_file() and (out / "report.html").is_file()


def test_the_benchmark_is_equal_weight_buy_and_hold_of_the_sessions_symbols(recorded):  # noqa: F811
    doc = recorded["doc"]
    bench = benchmark_equity(doc)
    first, last = doc["cycle_details"][0]["prices"], doc["cycle_details"][-1]["prices"]
    symbols = [s for s in doc["session"]["symbols"] if s in first]
    assert len(symbols) == 15
    # every symbol has a price at the last cycle too (no carry-forward needed here): a hand computation
    expected = 100_000 * sum(last[s] / first[s] for s in symbols) / len(symbols)
    assert bench.iloc[-1] == pytest.approx(expected, rel=1e-12)
    assert bench.iloc[0] == 100_000 and bench.index[0] == M.equity_curve(doc).index[0]


def test_worst_drawdowns_are_the_deepest_separate_episodes_with_their_recovery():
    idx = pd.date_range("2024-01-01", periods=9, freq="D", tz="UTC")
    eq = pd.Series([100, 90, 100, 110, 99, 105, 120, 60, 70], index=idx, dtype=float)
    dds = worst_drawdowns(eq)
    assert [round(d["depth"], 4) for d in dds] == [-0.5, -0.1, -0.1]
    deepest, first = dds[0], next(d for d in dds if d["peak"] == idx[0])
    assert deepest["peak"] == idx[6] and deepest["trough"] == idx[7] and deepest["recovery"] is None
    assert first["trough"] == idx[1] and first["recovery"] == idx[2] and first["recovery_days"] == 1.0
    assert M.drawdown_episode(eq)["max_drawdown"] == pytest.approx(dds[0]["depth"])


def test_a_perp_symbol_is_its_own_venue():
    doc = {"session": {"broker": "sim"}, "fills": [{"symbol": "BTC-PERP"}, {"symbol": "SPY"}],
           "orders": [{"symbol": "BTC-PERP", "reduce_only": True}], "trades": []}
    assert venue_of(doc) == {"BTC-PERP": "perp", "SPY": "sim"}


def test_the_example_tearsheet_is_committed():
    docs = Path(__file__).resolve().parents[1] / "docs" / "examples"
    assert (docs / "tearsheet-backtest.html").is_file() and (docs / "tearsheet-backtest.png").is_file()
