"""Recorded rows as a training source of the signal scorer (issue #21 items 2 and 5, hydra_engine/ml/recorded.py):
what the running loop recorded (each scored signal's features in ``ml_scores[].inputs``, each cycle's prices)
labelled by the training label, strictly before the retraining time, and trained on by the paper retrain.

The journals are real: two consecutive sim sessions over the shipped data (Binance perp klines, funding,
Bybit OI; January 2024) with the scorer enabled."""
from __future__ import annotations

import json
import math
import shutil
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from hydra_engine.domain import UTC
from hydra_engine.ml.features import FEATURE_SET_ID, SCORER_BASE_FEATURES
from hydra_engine.ml.labels import holding_period
from hydra_engine.ml.recorded import recorded_rows
from hydra_engine.perp import stats as perp_stats

from .conftest import SHIPPED_DATA, make_settings
from .test_ml_models import _FixedModel

STRATEGIES = ["oi_divergence", "liquidation_reversal"]
UNTIL = datetime(2024, 1, 15, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _rule_labeller_after():
    yield
    perp_stats.set_regime_labeller(perp_stats.RuleRegimeLabeller())   # the labeller is process-global


def _settings(root: Path, start="2024-01-01", end="2024-01-15", strategies=STRATEGIES, **scorers):
    return make_settings(root, start=start, end=end, symbols=("BTC/USD", "ETH/USD", "SPY"), perps={"enabled": True},
                         strategies={"enabled": list(strategies)}, observation_cycles=5,
                         scorers={"enabled": ["ml_signal_scorer"], "params": {"ml_signal_scorer": {
                             "model_path": str(root / "absent.cbm")}}, **scorers})


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    """Two consecutive real sim sessions (Jan 1-3 and Jan 4-14, 2024) journaled in one log folder."""
    from hydra_engine.app import build_sim_session, run_session
    root = tmp_path_factory.mktemp("recorded")
    journals = []
    for start, end in (("2024-01-01", "2024-01-04"), ("2024-01-04", "2024-01-15")):
        session = build_sim_session(_settings(root, start, end), mode="sim")
        session.engine.scorers[0].model = _FixedModel(0.8)   # the scorer records every signal's real features
        journals.append(Path(run_session(session, progress=False)["journal"]))
    perp_stats.set_regime_labeller(perp_stats.RuleRegimeLabeller())
    return root / "logs", journals


def _cycles(journal: Path) -> list[dict]:
    return [json.loads(x) for x in journal.read_text().splitlines() if x.strip()]


def _copy(src_logs: Path, dst: Path, which=None) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for doc in sorted(src_logs.glob("session-*.json")):
        if which is None or doc.stem in which:
            shutil.copy(doc, dst / doc.name)
            shutil.copy(src_logs / f"{doc.stem}.cycles.jsonl", dst / f"{doc.stem}.cycles.jsonl")
    return dst


def _key(r):
    return (r["source"], r["symbol"], r["t"])


# --------------------------------------------------------------------------- the labels
def test_recorded_rows_carry_the_training_label_checked_by_hand_and_against_the_replay(logs, tmp_path):
    from hydra_engine.ml.dataset import collect_signals
    log_dir, journals = logs
    s = _settings(tmp_path)
    rec = recorded_rows(log_dir, s, UNTIL)
    assert rec.counts["sessions_read"] == 2 and not rec.notes
    assert len(rec.rows) > 100 and {r["y"] for r in rec.rows} == {0.0, 1.0}
    assert {r["source"] for r in rec.rows} == set(STRATEGIES)
    assert all(r["t"] + timedelta(seconds=0) < r["label_end"] <= UNTIL for r in rec.rows)

    # by hand, from the journals' prices: a perp signal of the first session whose holding period ends in the second
    first_end = datetime.fromisoformat(_cycles(journals[0])[-1]["ts"])
    row = next(r for r in rec.rows if r["symbol"] == "BTCUSDT" and r["t"] <= first_end < r["label_end"])
    price = {}
    for j in journals:
        for c in _cycles(j):
            price[datetime.fromisoformat(c["ts"])] = c
    sig = next(x for x in price[row["t"]]["signals"] if x["source"] == row["source"] and x["symbol"] == "BTCUSDT")
    hold = holding_period(timedelta(seconds=sig["half_life"]))
    assert row["label_end"] == row["t"] + hold
    entry, exit_ = price[row["t"]]["prices"]["BTCUSDT"], price[row["t"] + hold]["prices"]["BTCUSDT"]
    cost = 2 * (s.perps.taker_fee_bps + s.perps.slippage_bps) / 1e4
    net = math.copysign(1.0, sig["score"]) * (exit_ / entry - 1.0) - cost
    assert row["net"] == pytest.approx(net, abs=1e-12) and row["y"] == (1.0 if net > 0 else 0.0)

    # the same label and features as the training replay over the same span, row for row
    ds = collect_signals(s, SHIPPED_DATA, date(2024, 1, 1), UNTIL.date(), progress=False)
    replay = {(ds.sources[i], ds.symbols[i], int(ds.t[i])): i for i in range(len(ds.y))}
    for r in rec.rows:
        i = replay[(r["source"], r["symbol"], int(r["t"].timestamp()))]
        assert r["y"] == ds.y[i] and r["net"] == pytest.approx(ds.net[i], abs=1e-9)
        x = np.array([r["features"].get(f, np.nan) for f in SCORER_BASE_FEATURES])
        assert np.array_equal(np.isnan(x), np.isnan(ds.X_base[i]))
        assert np.allclose(x[~np.isnan(x)], ds.X_base[i][~np.isnan(x)], rtol=0, atol=1e-6)   # recorded to 6 places


def test_rows_not_covered_by_recorded_prices_or_ending_after_the_retrain_time_are_left_out(logs, tmp_path):
    log_dir, journals = logs
    s = _settings(tmp_path)
    full = recorded_rows(log_dir, s, UNTIL)
    # an earlier retraining time: exactly the rows whose holding period has ended by then, the others counted
    until = datetime(2024, 1, 10, 12, tzinfo=UTC)
    early = recorded_rows(log_dir, s, until)
    assert [_key(r) for r in early.rows] == [_key(r) for r in full.rows if r["label_end"] <= until]
    assert all(r["label_end"] <= until for r in early.rows)
    assert early.counts["past_retrain_time"] == sum(1 for r in full.rows if r["t"] <= until < r["label_end"]) > 0

    # the recorded data ends before some holding periods do: left out as not covered, never guessed
    last = datetime.fromisoformat(_cycles(journals[1])[-1]["ts"])
    late = recorded_rows(log_dir, s, datetime(2024, 2, 1, tzinfo=UTC))
    assert late.counts["not_covered"] >= 1 and late.counts["past_retrain_time"] == 0
    assert all(r["label_end"] <= last for r in late.rows)
    assert [_key(r) for r in late.rows] == [_key(r) for r in full.rows]

    # without the second session, the first session's signals that end after it are not covered
    first_last = datetime.fromisoformat(_cycles(journals[0])[-1]["ts"])
    only_first = recorded_rows(_copy(log_dir, tmp_path / "first", {journals[0].name.split(".")[0]}), s, UNTIL)
    crossing = {_key(r) for r in full.rows if r["session"] == journals[0].name and r["label_end"] > first_last}
    assert crossing and {_key(r) for r in only_first.rows} == {_key(r) for r in full.rows
                                                               if r["session"] == journals[0].name} - crossing
    assert only_first.counts["not_covered"] >= len(crossing)

    # a 6 h hole in the recorded prices (an outage): every holding period across it is left out
    holed = _copy(log_dir, tmp_path / "holed")
    j = holed / journals[1].name
    lo, hi = datetime(2024, 1, 11, 0, tzinfo=UTC), datetime(2024, 1, 11, 6, tzinfo=UTC)
    kept = [x for x in j.read_text().splitlines()
            if not lo <= datetime.fromisoformat(json.loads(x)["ts"]) <= hi]
    j.write_text("\n".join(kept) + "\n")
    got = recorded_rows(holed, s, UNTIL)
    gone = {_key(r) for r in full.rows} - {_key(r) for r in got.rows}
    across = {_key(r) for r in full.rows if r["t"] <= hi and r["label_end"] >= lo}   # or inside it
    assert len(across) > 10 and gone == across   # nothing else is lost
    assert got.counts["not_covered"] > full.counts["not_covered"]


# --------------------------------------------------------------------------- skipped journals, damage
def test_a_journal_with_other_feature_columns_is_skipped_with_a_note(logs, tmp_path):
    log_dir, journals = logs
    s = _settings(tmp_path)
    full = recorded_rows(log_dir, s, UNTIL)
    first = {_key(r) for r in full.rows if r["session"] == journals[0].name}
    for name, edit in (("other_id", lambda inp: {**inp, "feature_set": "0123456789ab"}),
                       ("other_column", lambda inp: {k: v for k, v in inp.items() if k != "feature_set"}
                        | {"book_pressure_z": 1.5})):
        d = _copy(log_dir, tmp_path / name)
        j = d / journals[0].name
        lines = []
        for c in _cycles(j):
            for e in c.get("ml_scores") or []:
                if e.get("inputs") and "scored_at" not in e["inputs"]:
                    e["inputs"] = edit(e["inputs"])
            lines.append(json.dumps(c))
        j.write_text("\n".join(lines) + "\n")
        got = recorded_rows(d, s, UNTIL)
        assert got.counts["sessions_other_columns"] == 1 and got.counts["sessions_read"] == 1
        assert len(got.notes) == 1 and str(j) in got.notes[0] and "other feature columns" in got.notes[0]
        assert not first & {_key(r) for r in got.rows}                      # none of its signals
        assert {_key(r) for r in got.rows} == {_key(r) for r in full.rows} - first   # the other session's all
    # a journal written before the id was recorded, whose columns are all the model's: used, and said so
    d = _copy(log_dir, tmp_path / "no_id")
    j = d / journals[0].name
    lines = []
    for c in _cycles(j):
        for e in c.get("ml_scores") or []:
            (e.get("inputs") or {}).pop("feature_set", None)
        lines.append(json.dumps(c))
    j.write_text("\n".join(lines) + "\n")
    got = recorded_rows(d, s, UNTIL)
    assert [_key(r) for r in got.rows] == [_key(r) for r in full.rows]
    assert got.counts["signals_without_feature_set_id"] == len(first) and "no feature-set id" in got.notes[0]
    assert FEATURE_SET_ID in json.dumps(_cycles(journals[1]))


def test_a_corrupt_line_a_bad_document_and_a_backtest_give_notes_and_no_crash(logs, tmp_path):
    log_dir, journals = logs
    s = _settings(tmp_path)
    full = recorded_rows(log_dir, s, UNTIL)
    d = _copy(log_dir, tmp_path / "damaged")
    j = d / journals[1].name
    lines = j.read_text().splitlines()
    lines.insert(10, '{"cycle": 11, "ts": "2024-01-08T10:00:00Z", "prices": {"BTCUS')   # torn in the middle
    lines.insert(20, "[1, 2, 3]")
    lines.insert(30, '{"cycle": 31, "ts": "2024-01-08T12:00:00Z", "prices": [1, 2]}')
    j.write_text("\n".join(lines) + "\n" + '{"cycle": 999, "ts": "2024-01-15T00:00:00Z", "pri')   # being written
    (d / "session-20990101T000000000Z.json").write_text("{not json")
    bt = json.loads((d / f"{journals[0].stem.split('.')[0]}.json").read_text())
    bt["session"]["mode"] = "backtest"
    (d / "session-20990102T000000000Z.json").write_text(json.dumps(bt))
    (d / "backtest-20990101T000000Z").mkdir()
    shutil.copy(d / journals[0].name, d / "backtest-20990101T000000Z" / journals[0].name)
    got = recorded_rows(d, s, UNTIL)
    assert got.counts["corrupt_lines"] == 3 and got.counts["sessions_skipped"] == 1
    assert got.counts["sessions_other_mode"] == 1 and got.counts["sessions_read"] == 2
    assert any(f"{j}: line 11 is corrupt" in n for n in got.notes)
    assert any(f"{j}: line 21 is not a cycle record" in n for n in got.notes)
    assert any(f"{j}: line 31: 'prices' is a JSON list, expected a JSON object" in n for n in got.notes)
    assert any(f"{j}: line {len(lines) + 1} is incomplete (being written" in n for n in got.notes)
    assert any("session-20990101T000000000Z.json: unreadable session document" in n for n in got.notes)
    # the rest is read as before (the inserted lines held no price the labels needed)
    assert [_key(r) for r in got.rows] == [_key(r) for r in full.rows]


# --------------------------------------------------------------------------- the paper retrain
def test_the_paper_retrain_trains_on_the_replay_plus_the_recorded_rows(logs, tmp_path):
    """A paper-mode session (the replay's clock, the paper wiring: background retrain) retrains the real
    scorer pipeline on the replay rows + the rows recorded in its log folder; its card counts both."""
    from hydra_engine.app import build_sim_session
    from hydra_engine.ml.dataset import collect_signals
    from hydra_engine.ml.recorded import merge
    root = tmp_path / "paper"
    log_dir = _copy(logs[0], root / "logs")   # the paper session's own journal goes there too
    # the paper session runs one plugin only: the other plugin's signals reach training only as recorded rows
    s = _settings(root, "2024-01-16", "2024-01-18", strategies=["oi_divergence"], retrain_every_days=7,
                  retrain_start="2023-11-01")
    session = build_sim_session(s, mode="paper")
    rt = session.engine.state_sections["ml_scorer_retrain"]
    assert rt.background
    from .test_ml_loop import _DatedModel
    session.engine.scorers[0].model = _DatedModel(0.9, date(2025, 1, 1))   # trained on the future: retrain now
    ticks = session.clock.ticks
    first = session.engine.run_cycle(ticks[0])
    assert any("started in the background" in n for n in first["notes"])
    rt.wait(600)
    second = session.engine.run_cycle(ticks[1])
    rec = second["ml_retrain"][0]
    assert rec["ok"], rec
    by = rec["headline"]["rows_by_origin"]
    expected = recorded_rows(log_dir, s, datetime(2024, 1, 16, tzinfo=UTC))
    assert by["recorded"] == len(expected.rows) > 100
    replay = collect_signals(s, SHIPPED_DATA, date(2023, 11, 1), date(2024, 1, 16), progress=False)
    merged = merge(replay, expected)
    assert by == merged.meta["rows_by_origin"] and by["replay"] + by["recorded"] == rec["headline"]["rows"]
    replaced = merged.meta["replay_rows_replaced_by_recorded"]
    assert by["replay"] == len(replay.y) - replaced and 0 < replaced < by["recorded"]
    assert any(f"{rec['headline']['rows']} rows: {by['replay']} replay, {by['recorded']} recorded" in n
               for n in second["notes"])
    scorer = session.engine.scorers[0]
    assert set(scorer.model.meta["sources"]) == set(STRATEGIES)   # liquidation_reversal: learnt from recorded rows
    assert scorer.model.meta["trained"]["rows_by_origin"] == by
    card = Path(rec["model_path"]).with_name(Path(rec["model_path"]).stem + ".card.md").read_text()
    assert f"rows_by_origin: {by}" in card and expected.span() in card and "recorded by the running loop" in card


def test_only_paper_and_live_retrains_read_the_journals(tmp_path, monkeypatch):
    from hydra_engine.app import build_sim_session
    from hydra_engine.ml import loop as L
    seen = {}

    def fake(settings, data_dir, start, end, **kw):
        seen[mode] = kw.get("journals")
        raise ValueError("not trained here")
    monkeypatch.setattr(L, "retrain_scorer", fake)
    for mode in ("paper", "sim", "backtest"):
        s = _settings(tmp_path / mode, "2024-01-16", "2024-01-18", retrain_every_days=7)
        session = build_sim_session(s, mode=mode)
        session.engine.run_cycle(session.clock.ticks[0])
        session.engine.state_sections["ml_scorer_retrain"].wait(30)
    assert seen == {"paper": tmp_path / "paper" / "logs", "sim": None, "backtest": None}
