"""Issue #17: backtests that say what they could not do -- a stale regime, a kill, missing data.

All on real data: the shared folder (SPY's files end 2024-12-31, BTC's run on) and the shipped extract.
"""
from __future__ import annotations

import json
from datetime import date, datetime, timezone

import pytest

from hydra_engine.backtest import run_backtest, run_hydra
from hydra_engine.domain import Regime, RegimeReading
from hydra_engine.regime_freshness import STALE_PREFIX, freshen
from hydra_engine.tradelog import load_session

from .conftest import make_settings

UTC = timezone.utc


def test_freshen_rule():
    now = datetime(2025, 1, 10, 15, tzinfo=UTC)
    fresh = RegimeReading(Regime.TRENDING_UP, 0.9, "hmm", now, {"as_of_day": "2025-01-06"})
    assert freshen(fresh, now, 4.0) is fresh                                   # 4 days: still fresh
    stale = freshen(RegimeReading(Regime.TRENDING_UP, 0.9, "hmm", now, {"as_of_day": "2025-01-05"}), now, 4.0)
    assert stale.regime is Regime.UNKNOWN and stale.details["why"].startswith(f"{STALE_PREFIX} 2025-01-05")
    assert stale.details["last_regime"] == "TRENDING_UP"
    no_day = RegimeReading(Regime.TRENDING_UP, 0.9, "rule", now, {})
    assert freshen(no_day, now, 4.0) is no_day                                 # a reading that does not say


def test_a_span_past_spys_last_bar_reads_unknown_and_never_trades_on_it(tmp_path, shared_data):
    """SPY's files end 2024-12-31; BTC trades on. From 2025-01-05 the regime is UNKNOWN with the reason, and
    no cycle from then on sends an entry (sma_crossover would trade BTC in any known regime)."""
    s = make_settings(tmp_path, data_dir=shared_data, start="2024-12-15", end="2025-01-25",
                      strategies={"enabled": ["sma_crossover"], "params": {"sma_crossover": {"fast": 3, "slow": 8}}},
                      engine={"log_dir": str(tmp_path / "logs"), "observation_cycles": 2})
    out = tmp_path / "bt"
    res = run_backtest(s, data_dir=shared_data, start=date(2024, 12, 15), end=date(2025, 1, 25), out=out,
                       progress=False, baselines=False)
    # the journal as load_session expands it (span records of caught-up quiet cycles included)
    journal = load_session(next(out.glob("session-*.json")))["cycle_details"]
    stale = [c for c in journal if STALE_PREFIX in str(c["regime"]["details"].get("why", ""))]
    assert stale and stale[0]["ts"].startswith("2025-01-05")
    assert all(c["regime"]["regime"] == "UNKNOWN" for c in stale) and stale[-1] is journal[-1]
    assert "since 2024-12-31" in stale[0]["regime"]["details"]["why"]
    # not one entry on a stale regime: the strategy stands by (UNKNOWN is no regime it trades) and any
    # proposal that reached the gate was refused
    assert not [o for c in stale for o in c["orders"] if o.get("purpose") == "entry"]
    assert all(not d["approved"] for c in stale for d in c["decisions"])
    assert all("sma_crossover" in c["strategies_gated"] for c in stale)
    # ... while before it, on a known regime, the same strategy was run
    assert any("sma_crossover" in c["strategies_run"] for c in journal if c["ts"] < "2025-01-01")
    assert res["regime_stale_cycles"] == len(stale)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["regime_stale_cycles"] == len(stale)
    assert any("inputs were stale" in n for n in res["notes"])


def _kill_at(monkeypatch, when: datetime):
    """Trip the manual kill switch at ``when`` (what an operator or a kill switch would do)."""
    import hydra_engine.app as app
    real = app.build_sim_session

    def build(*a, **kw):
        session = real(*a, **kw)

        def before(engine, now):
            if now == when:
                engine.risk.kill("test: operator pressed kill", now, rule="manual")
        session.before_cycle = before
        return session
    monkeypatch.setattr(app, "build_sim_session", build)


@pytest.mark.parametrize("resume_days", [0.0, 2.0])
def test_a_kill_is_shown_and_auto_resume_works_both_ways(tmp_path, monkeypatch, resume_days):
    when = datetime(2024, 3, 4, 0, tzinfo=UTC)
    _kill_at(monkeypatch, when)
    s = make_settings(tmp_path, truth={"backtest_auto_resume_days": resume_days})
    out = tmp_path / "bt"
    res = run_backtest(s, data_dir=s.resolve_path(s.data.replay_dir), start=date(2024, 3, 1), end=date(2024, 3, 15),
                       out=out, progress=False, baselines=False)
    (kill,) = res["kills"]
    assert kill["rule"] == "manual" and kill["at"].startswith("2024-03-04") and "operator" in kill["reason"]
    doc = json.loads(next(out.glob("session-*.json")).read_text())
    after = [c for c in doc["cycles"] if c["ts"] >= "2024-03-04"]
    killed = [c for c in after if c["mode"] == "killed"]
    if resume_days:
        assert kill["resumed_by"] == "auto_resume" and kill["resumed_at"].startswith("2024-03-06")
        assert 0.1 < kill["share_of_span_blocked"] < 0.2             # 2 of ~14 days
        assert killed and all(c["ts"] < "2024-03-06" for c in killed) and after[-1]["mode"] != "killed"
        assert "auto-resume after 2 days" in res["kill_policy"]
    else:
        assert kill["resumed_at"] is None and kill["share_of_span_blocked"] > 0.7
        assert after[-1]["mode"] == "killed"                          # blocked to the end, and said so
        assert "no auto-resume" in res["kill_policy"]
    assert "manual 2024-03-04" in res["comparison_md"]                # the table row
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["kills"][0]["share_of_span_blocked"] == kill["share_of_span_blocked"]
    assert metrics["comparison"][0]["kills"].startswith("manual 2024-03-04")
    assert any(n.startswith("kill switch manual fired") for n in res["notes"])


def test_missing_data_is_said_before_the_run(tmp_path, shared_data):
    """2025-01: the equity files have ended (SPY, TLT ... to 2024-12-31), BTC has data. A strategy on SPY
    alone gets a note; the coverage table is printed before the first cycle and kept in metrics.json."""
    said: list[str] = []
    s = make_settings(tmp_path, data_dir=shared_data, start="2025-01-06", end="2025-01-20",
                      symbols=("BTC/USD", "ETH/USD", "SPY", "TLT"),
                      strategies={"enabled": ["liquidation_cascade", "sma_crossover"],
                                  "params": {"sma_crossover": {"symbols": ["SPY"]}}})
    out = tmp_path / "bt"
    res = run_backtest(s, data_dir=shared_data, start=date(2025, 1, 6), end=date(2025, 1, 20), out=out,
                       progress=False, baselines=False, say=said.append)
    table = said[0]
    assert table.startswith("data coverage 2025-01-06 .. 2025-01-20")
    spy = next(r for r in res["coverage"]["rows"] if r["symbol"] == "SPY" and r["kind"] == "bars")
    assert spy["status"] == "none" and spy["from"] is None
    btc = next(r for r in res["coverage"]["rows"] if r["symbol"] == "BTC/USD" and r["kind"] == "bars")
    assert btc["status"] == "full"
    assert any(r["kind"] == "funding_rate" for r in res["coverage"]["rows"])
    assert "strategy sma_crossover: loses bars SPY: none in the span" in table
    note = "strategy sma_crossover: none of its symbols (SPY) has bar data"
    assert any(line.startswith("note: " + note) for line in said)
    assert any(n.startswith(note) for n in res["notes"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert any(n.startswith(note) for n in metrics["notes"]) and metrics["coverage"]["rows"]


def test_library_warnings_become_notes():
    import logging

    from hydra_engine.run_notes import FoldedWarnings
    cycle = [3]
    with FoldedWarnings(lambda: cycle[0]) as folded:
        for v in (-1.5, -1.25):
            logging.getLogger("hmmlearn.base").warning(f"Model is not converging.  Current: {v}")
        cycle[0] = 9
        logging.getLogger("hydra_engine.regime_refit").warning("regime refit at %s failed: %s", "2021-01-01", "x")
    assert folded.notes() == ["hmmlearn: Model is not converging.  Current: -1.5 (x2, first at cycle 3)",
                              "hydra_engine.regime_refit: regime refit at 2021-01-01 failed: x (first at cycle 9)"]
    assert logging.getLogger("hmmlearn").propagate      # restored after the run


def test_review_names_refused_rows_stale_regime_and_kills():
    from hydra_engine.review import build_review
    doc = {"session": {"session_id": "x", "data_quality": {"dropped_bad_price": {"ETH/USD": 3}}},
           "summary": {"regime_stale_cycles": 5, "regime_stale_from": "2025-01-05T00:00:00Z",
                       "kills": [{"rule": "manual", "at": "2024-03-04T00:00:00Z", "reason": "r", "resumed_at": None}]},
           "cycles": [{"ts": "2024-03-01T00:00:00Z", "equity_usd": "100"}, {"ts": "2024-03-02T00:00:00Z", "equity_usd": "100"}],
           "trades": [], "fills": []}
    notes = build_review(doc).notes
    assert "note: refused data rows: dropped bad price: ETH/USD 3" in notes
    assert any("5 cycles from 2025-01-05" in n for n in notes)
    assert any(n.startswith("note: kill switch manual fired 2024-03-04") and "never resumed" in n for n in notes)
