"""Event study and backtest of strategies 2 and 3 (issue #18) on ../shared/data, 2015-2024, with controls.

Scalper: the plugin's rule (first 15-minute candle from the release; trade if |close-open| >= 1.5x the median
high-low of the same slot over the 20 earlier sessions; entry at the next minute's open; stop 2 bps beyond the
candle's opposite extreme; target 2R; out at 15:45 New York), walked on SPY 1-minute bars, per event type
(CPI, NFP at 08:30; FOMC at 14:00), and the SAME rule at the same time of day on days without any release
(control). Metals: (a) short the metal's ETF and GDX at the first close after a >=5 % GC/SI hike takes effect,
out two closes later; control: the same trade on every other day. (b) gold/silver ratio z (60 closes) beyond
1.5: long the cheap leg, short the rich leg (equal dollars), out at |z| < 0.5 or 20 sessions; control: the
same pair, same holding, entered on days with |z| < 0.5 in the direction of z's sign.
Costs: 10 bps fee + 5 bps slippage per side on every leg (30 bps a round trip). No parameter is fitted: the
thresholds are the seed's/plugins' defaults, fixed before this run; the two halves (2015-2019, 2020-2024) are
reported apart as the out-of-sample check. Run: python bench/macro_event_study.py [SHARED_DATA]
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from hydra_engine.data.event_files import CME_MARGINS_FILE, MACRO_CALENDAR_FILE, read_cme_margins, read_macro_calendar  # noqa: E402
from strategies.metals_margin import ounces_per_share  # noqa: E402

COST = 0.0030          # round trip, fraction of notional
NOTIONAL = 5000.0


def spy_minutes(shared: Path) -> pd.DataFrame:
    files = sorted((shared / "equities/intraday_1m/spy_2015_2025_alphavantage_like").glob("20*_SPY_1M.csv.gz"))
    f = pd.concat([pd.read_csv(p) for p in files if "2015" <= p.name[:4] <= "2024"], ignore_index=True)
    f["t"] = pd.to_datetime(f["timestamp"])
    return f.drop_duplicates("t").sort_values("t").set_index("t")[["open", "high", "low", "close"]]


def scalper(shared: Path, threshold=1.5, lookback=20) -> pd.DataFrame:
    m = spy_minutes(shared)
    c15 = m.resample("15min").agg({"open": "first", "high": "max", "low": "min", "close": "last"}).dropna()
    events = [e for e in read_macro_calendar(shared / MACRO_CALENDAR_FILE) if 2015 <= e.happened_at.year <= 2024]
    ev_days = {}
    for e in events:
        local = e.happened_at.astimezone(__import__("zoneinfo").ZoneInfo("America/New_York")).replace(tzinfo=None)
        ev_days.setdefault(local.date(), []).append((e.subject, local.floor("15min") if hasattr(local, "floor") else
                                                     pd.Timestamp(local).floor("15min")))
    days = sorted(set(c15.index.normalize().date))
    rows = []
    slots = {"08:30": pd.Timedelta(hours=8, minutes=30), "14:00": pd.Timedelta(hours=14)}
    day_index = {d: i for i, d in enumerate(days)}
    for d in days:
        todays = ev_days.get(d, [])
        cases = [(s, pd.Timestamp(t)) for s, t in todays]
        if not todays and pd.Timestamp(d).weekday() < 5:
            cases = [(f"control {k}", pd.Timestamp(d) + v) for k, v in slots.items()]
        for label, start in cases:
            if start not in c15.index:
                continue
            k = day_index[d]
            prior = [pd.Timestamp(x) + (start - pd.Timestamp(d)) for x in days[max(0, k - lookback):k]]
            prior = [p for p in prior if p in c15.index]
            if len(prior) < 10:
                continue
            typical = float((c15.loc[prior, "high"] - c15.loc[prior, "low"]).median())
            o, h, l, c = c15.loc[start, ["open", "high", "low", "close"]]
            move = c - o
            if typical <= 0 or abs(move) < threshold * typical:
                continue
            sgn = 1 if move > 0 else -1
            stop = (l - c * 2e-4) if sgn > 0 else (h + c * 2e-4)
            path = m.loc[start + pd.Timedelta(minutes=15): pd.Timestamp(d) + pd.Timedelta(hours=15, minutes=45)]
            if len(path) < 2:
                continue
            entry = float(path["open"].iloc[0])
            risk = (entry - stop) * sgn
            if risk <= 0:
                continue
            target = entry + sgn * 2 * risk
            exit_px = float(path["open"].iloc[-1])
            for _, b in path.iloc[1:].iterrows() if False else path.iloc[:-1].iterrows():
                if (b["low"] <= stop) if sgn > 0 else (b["high"] >= stop):
                    exit_px = stop
                    break
                if (b["high"] >= target) if sgn > 0 else (b["low"] <= target):
                    exit_px = target
                    break
            gross = sgn * (exit_px - entry) / entry
            net = gross - COST
            rows.append({"type": label, "date": d, "r": net * entry / risk, "pnl_usd": net * NOTIONAL,
                         "win": net > 0, "half": "2015-2019" if d.year < 2020 else "2020-2024"})
    return pd.DataFrame(rows)


def adj_close(shared: Path, sym: str) -> pd.Series:
    f = pd.read_csv(shared / f"equities/daily/adjclose_factor_attribution/{sym}.csv.gz")
    return pd.Series(f["Close"].to_numpy(float), index=pd.to_datetime(f["Date"])).sort_index()


def metals(shared: Path) -> pd.DataFrame:
    px = pd.DataFrame({s: adj_close(shared, s) for s in ("GLD", "SLV", "GDX")}).dropna()
    px = px[(px.index >= "2009-01-01") & (px.index <= "2024-12-31")]
    rows = []
    hikes = [e for e in read_cme_margins(shared / "events" / Path(CME_MARGINS_FILE).relative_to("events"))
             if e.subject in ("GC", "SI") and e.payload["direction"] == "hike" and (e.payload["pct_change"] or 0) >= 5]
    targets = {"GC": ("GLD", "GDX"), "SI": ("SLV", "GDX")}
    event_days = set()
    idx = px.index
    for e in hikes:
        k = int(idx.searchsorted(pd.Timestamp(e.happened_at.date()), "right"))   # first close after it took effect
        if k + 2 >= len(idx):
            continue
        event_days.update(idx[max(0, k - 3):k + 3])
        for sym in targets[e.subject]:
            ret = -(px[sym].iloc[k + 2] / px[sym].iloc[k] - 1) - COST
            rows.append({"type": f"margin hike {e.subject}->{sym}", "signal": "margin hike", "date": idx[k].date(),
                         "r": np.nan, "pnl_usd": ret * NOTIONAL, "win": ret > 0,
                         "half": "2009-2014" if idx[k].year < 2015 else "2015-2019" if idx[k].year < 2020 else "2020-2024"})
    for k in range(len(idx) - 2):    # control: the same short on days away from any hike
        if idx[k] in event_days or idx[k].year < 2015:
            continue
        for sym in ("GLD", "SLV", "GDX"):
            ret = -(px[sym].iloc[k + 2] / px[sym].iloc[k] - 1) - COST
            rows.append({"type": "control short 2d", "signal": "margin hike (control)", "date": idx[k].date(),
                         "r": np.nan, "pnl_usd": ret * NOTIONAL, "win": ret > 0,
                         "half": "2015-2019" if idx[k].year < 2020 else "2020-2024"})
    oz = np.array([ounces_per_share("GLD", d.date()) / ounces_per_share("SLV", d.date()) for d in idx])
    ratio = (px["GLD"] / px["SLV"]) / oz
    hist = ratio.shift(1).rolling(60)
    z = ((ratio - hist.mean()) / hist.std()).to_numpy()
    for control in (False, True):
        k = 0
        while k < len(idx) - 1:
            if idx[k].year < 2015 or not np.isfinite(z[k]):
                k += 1
                continue
            hit = abs(z[k]) < 0.5 if control else abs(z[k]) >= 1.5
            if not hit or z[k] == 0:
                k += 1
                continue
            sgn = 1 if z[k] > 0 else -1   # z > 0: gold rich -> long SLV, short GLD
            j = k + 1
            while j < len(idx) - 1 and j - k < 20 and (control or abs(z[j]) >= 0.5):
                j += 1
            leg_slv = px["SLV"].iloc[j] / px["SLV"].iloc[k] - 1
            leg_gld = px["GLD"].iloc[j] / px["GLD"].iloc[k] - 1
            ret = sgn * (leg_slv - leg_gld) / 2 - COST
            rows.append({"type": "ratio control" if control else "ratio z>=1.5", "signal": "ratio (control)" if control else "ratio",
                         "date": idx[k].date(), "r": np.nan, "pnl_usd": ret * 2 * NOTIONAL, "win": ret > 0,
                         "half": "2015-2019" if idx[k].year < 2020 else "2020-2024"})
            k = j + 1
    return pd.DataFrame(rows)


def table(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    g = df.groupby(by)
    return pd.DataFrame({"trades": g.size(), "win_rate_pct": (g["win"].mean() * 100).round(1),
                         "avg_R": g["r"].mean().round(3), "pnl_usd_after_costs": g["pnl_usd"].sum().round(0),
                         "avg_pnl_usd": g["pnl_usd"].mean().round(2)})


if __name__ == "__main__":
    shared = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data"
    s = scalper(shared)
    s["kind"] = s["type"].str.replace(r"control .*", "control (no release)", regex=True)
    print("## Scalper (SPY, 15-min first candle, threshold 1.5x, 2R, costs 30 bps round trip, $5,000 a trade)")
    print(table(s, ["type"]).to_string())
    print(table(s, ["type", "half"]).to_string())
    m = metals(shared)
    print("\n## Metals (daily adjusted closes; costs 30 bps per leg round trip; $5,000 per leg)")
    print(table(m, ["signal"]).to_string())
    print(table(m, ["signal", "half"]).to_string())
