"""Adaptive strategy weights and the ``weights`` command."""
from __future__ import annotations

import csv
import json
from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings, strategies as st

from hydra_engine.domain import UTC, ClosedTrade
from hydra_engine.weights import StrategyWeights, bounded_normalise

T0 = datetime(2024, 1, 2, tzinfo=UTC)
NAMES = ["liquidation_cascade", "macro_event", "metals_flow", "saas_shock", "cross_asset"]


def trade(strategy: str, r: float, i: int = 0) -> ClosedTrade:
    t = (T0 + timedelta(hours=i)).isoformat().replace("+00:00", "Z")
    return ClosedTrade(strategy, "SPY", "buy", "1", t, "100", t, "101", str(100.0 * r), "0.1", r, "TRENDING_UP", "target")


def test_neutral_start_is_equal_weights():
    w = StrategyWeights(NAMES[:4])
    assert w.as_dict() == pytest.approx({n: 0.25 for n in NAMES[:4]})
    assert w.weight("not_enabled") == 0.0


def test_weights_follow_results_within_bounds():
    w = StrategyWeights(NAMES[:3], floor=0.1, cap=0.6, halflife_trades=10)
    for i in range(30):
        w.update(trade(NAMES[0], 2.0, i))      # wins, +2R each
        w.update(trade(NAMES[1], -1.0, i))     # loses, -1R each
    d = w.as_dict()
    assert d[NAMES[0]] > d[NAMES[2]] > d[NAMES[1]]     # winner > untouched neutral > loser
    assert d[NAMES[0]] == pytest.approx(0.6)           # capped
    assert d[NAMES[1]] == pytest.approx(0.1)           # floored, still alive
    assert sum(d.values()) == pytest.approx(1.0)
    moved = 1 - 0.5 ** (30 / 10)    # EWM with a 10-trade half-life, 30 trades from the neutral start
    assert w.stats[NAMES[0]]["win_rate"] == pytest.approx(0.5 + 0.5 * moved)
    assert w.stats[NAMES[1]]["avg_r"] == pytest.approx(-1.0 * moved)
    assert len(w.history) == 60 and w.history[-1][1] == d


def test_recent_results_outweigh_old_ones():
    w = StrategyWeights(NAMES[:2], halflife_trades=5)
    for i in range(20):
        w.update(trade(NAMES[0], 1.5, i))
    high = w.weight(NAMES[0])
    for i in range(20, 40):
        w.update(trade(NAMES[0], -1.0, i))
    assert w.weight(NAMES[0]) < 0.5 < high


def test_state_survives_a_restart_and_ignores_foreign_state():
    w = StrategyWeights(NAMES[:3])
    for i, r in enumerate([1.0, -1.0, 2.5, 0.3]):
        w.update(trade(NAMES[i % 3], r, i))
    state = json.loads(json.dumps(w.to_state()))        # through JSON, as the store keeps it
    again = StrategyWeights(NAMES[:3])
    again.load_state(state)
    assert again.as_dict() == pytest.approx(w.as_dict())
    assert again.history == w.history
    fewer = StrategyWeights(NAMES[1:3] + ["new_one"])     # a strategy was disabled, another added
    fewer.load_state(state)
    assert set(fewer.as_dict()) == {NAMES[1], NAMES[2], "new_one"}
    assert fewer.stats["new_one"]["trades"] == 0
    interim = StrategyWeights(NAMES[:2])
    interim.load_state({"kind": "equal"})
    assert interim.as_dict() == pytest.approx({NAMES[0]: 0.5, NAMES[1]: 0.5})


def test_unknown_strategy_trade_is_ignored():
    w = StrategyWeights(NAMES[:2])
    w.update(trade("retired", 5.0))
    assert w.as_dict() == pytest.approx({NAMES[0]: 0.5, NAMES[1]: 0.5}) and not w.history


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError):
        StrategyWeights(NAMES, floor=0.5, cap=0.4)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 5), st.lists(st.tuples(st.integers(0, 4), st.floats(-5, 10)), max_size=60),
       st.floats(0.0, 0.19), st.floats(0.21, 1.0), st.floats(1, 50))
def test_weights_stay_within_bounds_and_sum_to_one(n, trades, floor, cap, halflife):
    names = NAMES[:n]
    w = StrategyWeights(names, floor=floor, cap=cap, halflife_trades=halflife)
    lo, hi = min(floor, 1 / n), max(cap, 1 / n)       # infeasible bounds widen to the nearest feasible
    for i, (k, r) in enumerate(trades):
        w.update(trade(names[k % n], r, i))
        d = w.as_dict()
        assert sum(d.values()) == pytest.approx(1.0)
        assert all(lo - 1e-9 <= v <= hi + 1e-9 for v in d.values())


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(NAMES), st.floats(1e-6, 1e6), min_size=1), st.floats(0.0, 0.19), st.floats(0.21, 1.0))
def test_bounded_normalise_keeps_the_merit_order(merits, floor, cap):
    w = bounded_normalise(merits, floor, cap)
    for a in merits:
        for b in merits:
            if merits[a] > merits[b]:
                assert w[a] >= w[b] - 1e-12


# ------------------------------------------------------------------ the command
def write_log(folder, trades, strategies=("alpha", "beta")):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "session-20240101T000000000Z.json"
    path.write_text(json.dumps({"session": {"strategies": list(strategies), "data_start": "2024-01-01T00:00:00Z"},
                                "trades": trades}))
    return path


def trade_dict(strategy, r, hour):
    t = f"2024-01-{1 + hour // 24:02d}T{hour % 24:02d}:00:00Z"
    return {"strategy": strategy, "symbol": "SPY", "side": "buy", "qty": "1", "entry_time": t, "entry_price": "100",
            "exit_time": t, "exit_price": "101", "pnl_usd": str(r * 10), "r_multiple": r,
            "regime_at_entry": "TRENDING_UP", "exit_reason": "target"}


def test_weights_command_replays_a_log(tmp_path, capsys):
    from hydra_engine.cli import main

    trades = [trade_dict("alpha", 2.0, h) for h in range(0, 40, 2)] + [trade_dict("beta", -1.0, h) for h in range(1, 40, 2)]
    log = write_log(tmp_path / "logs", trades)
    out = tmp_path / "out"
    assert main(["weights", "--log", str(log), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "alpha" in text and "history (41 points" in text
    rows = list(csv.reader(open(out / "weights_history.csv")))
    assert rows[0] == ["time", "alpha", "beta"] and len(rows) == 42
    assert all(abs(float(r[1]) + float(r[2]) - 1) < 1e-5 for r in rows[1:])
    final = json.loads((out / "weights.json").read_text())["weights"]
    assert final["alpha"] == pytest.approx(0.6) and final["beta"] == pytest.approx(0.4)   # cap binds
    assert (out / "weights.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_weights_command_defaults_to_the_newest_log(tmp_path, capsys):
    from hydra_engine.cli import main

    write_log(tmp_path / "logs", [trade_dict("alpha", 1.0, 1)])
    cfg = tmp_path / "hydra.toml"
    cfg.write_text(f'[engine]\nlog_dir = "{tmp_path / "logs"}"\n')
    assert main(["--config", str(cfg), "weights"]) == 0
    assert (tmp_path / "logs" / "session-20240101T000000000Z-weights" / "weights.json").is_file()
    empty = tmp_path / "empty.toml"
    empty.write_text(f'[engine]\nlog_dir = "{tmp_path / "nothing"}"\n')
    assert main(["--config", str(empty), "weights"]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text('{"no": "trades"}')
    assert main(["weights", "--log", str(bad), "--out", str(tmp_path / "x")]) == 2


@pytest.mark.parametrize("field, value, message", [
    ("exit_time", 12, "trades[1].exit_time = 12: expected an ISO-8601 time"),   # was a matplotlib traceback
    ("pnl_usd", None, "trades[1].pnl_usd = None: expected a finite number"),
])
def test_weights_command_names_the_file_record_and_field_of_a_bad_trade(tmp_path, capsys, field, value, message):
    from hydra_engine.cli import main

    trades = [trade_dict("alpha", 1.0, 1), {**trade_dict("beta", 1.0, 2), field: value}]
    log = write_log(tmp_path / "logs", trades)
    assert main(["weights", "--log", str(log), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"error: {log}: {message}" in err and "Traceback" not in err


def test_weights_command_counts_a_null_r_multiple_as_nan(tmp_path, capsys):
    from hydra_engine.cli import main

    log = write_log(tmp_path / "logs", [{**trade_dict("alpha", 1.0, 1), "r_multiple": None}])  # NaN is written as null
    assert main(["weights", "--log", str(log), "--out", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "weights.json").read_text())["stats"]["alpha"]["trades"] == 1


def test_weights_command_replays_trades_in_the_order_the_engine_booked_them(tmp_path):
    """A daily SPY exit (stamped at the 14:30 open) is booked at the 21:00 close, after a crypto trade
    that exited at 16:00: the log lists them in booking order, and the weights the engine used came from
    that order, so the replay must not re-sort by exit time."""
    from hydra_engine.commands.weights import replay
    from hydra_engine.domain import ClosedTrade
    from hydra_engine.weights import StrategyWeights

    crypto = {**trade_dict("beta", -1.0, 16), "symbol": "BTC/USD"}
    booked = [trade_dict("alpha", 2.0, 10), crypto, trade_dict("alpha", 1.5, 14), trade_dict("beta", 0.5, 20)]
    doc = {"session": {"strategies": ["alpha", "beta"], "data_start": "2024-01-01T00:00:00Z"}, "trades": booked}
    engine_weights = StrategyWeights(["alpha", "beta"])
    for t in booked:
        engine_weights.update(ClosedTrade(**{f: t.get(f, "") for f in ClosedTrade.__slots__}))
    replayed, n = replay(doc)
    assert n == 4 and replayed.history[1:] == engine_weights.history
    assert [t for t, _ in replayed.history[1:]] == [t["exit_time"] for t in booked]


@pytest.mark.parametrize("n,floor,cap", [(10, 0.05, 0.1), (6, 0.05, 0.15), (7, 0.0, 1 / 7), (13, 0.01, 0.05)])
def test_a_cap_of_one_over_n_gives_equal_weights_and_returns(n, floor, cap):
    """n copies of 1/n can sum to 0.9999999999999999 < 1: the search for the scale used to double for ever."""
    from hydra_engine.weights import bounded_normalise

    w = bounded_normalise({f"s{i}": 1.0 + i for i in range(n)}, floor, cap)
    assert all(v == pytest.approx(1 / n) for v in w.values()) and sum(w.values()) == pytest.approx(1)


def test_saved_weight_statistics_that_are_not_numbers_start_neutral():
    w = StrategyWeights(["alpha", "beta"])
    w.load_state({"kind": w.name, "stats": {"alpha": {"win_rate": 0.5, "avg_r": float("nan"), "trades": 3},
                                            "beta": {"win_rate": 0.6, "avg_r": 0.2, "trades": 3}}})
    assert w.stats["alpha"] == StrategyWeights(["alpha"]).stats["alpha"]      # not the cap from a NaN merit
    assert w.weight("alpha") < w.weight("beta")
