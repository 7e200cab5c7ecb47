"""Issue #17: VIX3M/VIX9D/VVIX (Cboe) and the FRED daily rates reach a plugin that declares them, causally.

Real files of the shared data folder. The expected instants follow the publication rules by hand (the Cboe
close at 16:15 New York on its day; FRED's H.15 yields at 16:15 on the next business day; the weekly H.10
dollar index at 16:15 on the Monday after its week), across the 2024-03-10 switch to daylight time."""
from __future__ import annotations

from datetime import datetime, timezone
from importlib.metadata import EntryPoint

import numpy as np
import pandas as pd
import pytest

import hydra_engine.plugins as plugins
from hydra_engine.domain import Regime
from hydra_engine.strategy import DataNeed, Strategy, StrategyParams

from .conftest import SHIPPED_DATA, make_settings

UTC = timezone.utc
SEEN: list[dict] = []
NEEDS = (DataNeed("bars", "BTC/USD"), DataNeed("bars", "VIX3M"), DataNeed("bars", "VVIX"),
         DataNeed("fred_daily", "DGS10"), DataNeed("fred_daily", "T10Y2Y"), DataNeed("fred_daily", "DTWEXBGS"))


class MacroProbe(Strategy):
    """Records, every cycle, the newest macro values its snapshot holds; never trades."""

    name = "macro_probe"
    interface_version = 1
    regimes = frozenset(Regime)
    assets = ("BTC/USD",)
    data_needs = NEEDS
    Params = StrategyParams

    def wants_cycle(self, market) -> bool:
        row = {"now": market.now}
        for sym in ("VIX3M", "VVIX"):
            b = market.bars.get(sym)
            row[sym] = (int(b.ts[-1]), float(b.close[-1])) if b is not None and len(b) else None
        for key in (("fred_daily", "DGS10"), ("fred_daily", "T10Y2Y"), ("fred_daily", "DTWEXBGS")):
            p = market.series.get(key)
            row[key[1]] = (p.ts.copy(), float(p.values[-1])) if p is not None and len(p) else None
        SEEN.append(row)
        return False

    def generate_signals(self, ctx):
        return []

    def propose(self, ctx, combined):
        return []


@pytest.fixture()
def probe(monkeypatch):
    SEEN.clear()
    monkeypatch.setattr(plugins, "entry_points", lambda *, group: [EntryPoint(
        name="macro_probe", value="tests.test_macro_daily:MacroProbe", group=group)] if group == "hydra.strategies" else [])


def csv_value(folder, name: str, day: str) -> float:
    frame = pd.read_csv(folder / "macro" / "fred_daily" / f"{name}.csv")
    return float(frame.loc[frame["date"] == day, "value"].iloc[0])


def cboe_close(folder, name: str, day: str) -> float:
    frame = pd.read_csv(folder / "macro" / "vol_indices_cboe" / f"{name}_History.csv")
    col = "CLOSE" if "CLOSE" in frame.columns else name
    return float(frame.loc[frame["DATE"] == pd.Timestamp(day).strftime("%m/%d/%Y"), col].iloc[0])


def test_declared_macro_series_are_replayed_causally(tmp_path, shared_data, probe):
    from hydra_engine.app import build_sim_session, run_session
    s = make_settings(tmp_path, data_dir=shared_data, start="2024-03-04", end="2024-03-13", symbols=("BTC/USD",),
                      strategies={"enabled": ["macro_probe"], "params": {}})
    session = build_sim_session(s, persist=False)
    run_session(session, progress=False)
    assert len(SEEN) == 9 * 24
    for row in SEEN:   # nothing after now: a daily Cboe bar is seen from 16:15 New York, a point from its stamp
        now_s = row["now"].timestamp()
        for sym in ("VIX3M", "VVIX"):
            day = datetime.fromtimestamp(row[sym][0], UTC).date()
            closes = pd.Timestamp(f"{day} 16:15", tz="America/New_York").timestamp()
            assert closes <= now_s, (sym, row["now"], day)
        for name in ("DGS10", "T10Y2Y", "DTWEXBGS"):
            assert row[name] is not None and (row[name][0] <= now_s).all(), (name, row["now"])
    at = {r["now"]: r for r in SEEN}

    def day_of(r, sym):
        return str(datetime.fromtimestamp(r[sym][0], UTC).date())

    wed_before, wed_after = at[datetime(2024, 3, 6, 21, tzinfo=UTC)], at[datetime(2024, 3, 6, 22, tzinfo=UTC)]
    assert day_of(wed_before, "VIX3M") == "2024-03-05" and day_of(wed_after, "VIX3M") == "2024-03-06"   # 21:15Z (EST)
    assert wed_after["VIX3M"][1] == cboe_close(shared_data, "VIX3M", "2024-03-06")
    assert wed_after["VVIX"][1] == cboe_close(shared_data, "VVIX", "2024-03-06")
    # H.15: Tuesday's yield is known Wednesday 16:15 EST; Wednesday's not before Thursday
    assert wed_before["DGS10"][1] == csv_value(shared_data, "DGS10", "2024-03-04")
    assert wed_after["DGS10"][1] == csv_value(shared_data, "DGS10", "2024-03-05")
    assert wed_after["T10Y2Y"][1] == csv_value(shared_data, "T10Y2Y", "2024-03-05")
    # H.10 weekly: the week of 03-04..03-08 is known Monday 03-11 at 16:15 EDT = 20:15Z (daylight time since 03-10)
    mon_before, mon_after = at[datetime(2024, 3, 11, 20, tzinfo=UTC)], at[datetime(2024, 3, 11, 21, tzinfo=UTC)]
    assert mon_before["DTWEXBGS"][1] == csv_value(shared_data, "DTWEXBGS", "2024-03-01")
    assert mon_after["DTWEXBGS"][1] == csv_value(shared_data, "DTWEXBGS", "2024-03-08")
    assert day_of(mon_before, "VIX3M") == "2024-03-08" and day_of(mon_after, "VIX3M") == "2024-03-11"
    # the macro series never drive the clock: the ticks are BTC's hours
    assert all(r["now"].minute == 0 for r in SEEN) and len({r["now"] for r in SEEN}) == len(SEEN)


def test_a_declared_series_missing_from_the_folder_is_said_in_the_coverage_table(tmp_path, probe):
    """The shipped extract has no macro/ folder: the plugin runs without the series and the table says so."""
    from hydra_engine.app import build_sim_session
    from hydra_engine.coverage import coverage_report
    s = make_settings(tmp_path, data_dir=SHIPPED_DATA, start="2024-03-04", end="2024-03-06", symbols=("BTC/USD",),
                      strategies={"enabled": ["macro_probe"], "params": {}})
    session = build_sim_session(s, persist=False)
    rep = coverage_report(session.engine.market, session.engine.strategies, datetime(2024, 3, 4, tzinfo=UTC),
                          datetime(2024, 3, 6, tzinfo=UTC))
    lost = rep["strategy_losses"]["macro_probe"]
    for need in ("bars VIX3M", "bars VVIX", "fred_daily DGS10", "fred_daily T10Y2Y", "fred_daily DTWEXBGS"):
        assert f"{need}: not in the data" in lost, lost


def test_fred_blank_rows_are_holidays_not_refused_values(shared_data):
    from hydra_engine.data.catalog import POINT_SOURCES, read_points
    src = next(p for p in POINT_SOURCES if p.symbol == "DGS10")
    frame = read_points(shared_data / src.path, src)
    assert np.isfinite(frame["value"]).all()
    jan = frame[(frame["known_at"] >= pd.Timestamp("2024-01-01", tz="UTC")) & (frame["known_at"] < pd.Timestamp("2024-01-06", tz="UTC"))]
    # 2024-01-01 is a holiday (blank): Friday 12-29's yield is known Tuesday 01-02 at 16:15 EST = 21:15Z,
    # Tuesday 01-02's on Wednesday 01-03, ...
    assert list(jan["known_at"].dt.strftime("%Y-%m-%d %H:%M")) == ["2024-01-02 21:15", "2024-01-03 21:15",
                                                                    "2024-01-04 21:15", "2024-01-05 21:15"]
    assert jan["value"].iloc[0] == csv_value(shared_data, "DGS10", "2023-12-29")
    assert jan["value"].iloc[1] == csv_value(shared_data, "DGS10", "2024-01-02")
