"""Issue #21, cycle latency with both models (session 10): the per-snapshot shared values and the cheaper
ADX, each checked against the code it replaced (copied here as it stood at 5a31738), bit for bit, on the
shipped half-year (Binance perp klines, funding, Bybit open interest) and on the shared history (the May
2021 crash; SOL; BNB's 8-hour Hyperliquid candles), plus returns that are not finite."""
from __future__ import annotations

import math
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from hydra_engine.domain import UTC
from hydra_engine.ml import features as F
from hydra_engine.ml import labels as lb
from hydra_engine.perp import stats as PS

ROOT = Path(__file__).resolve().parents[1]
PERPS = ["BTCUSDT", "ETHUSDT"]
START = datetime(2024, 1, 3, tzinfo=UTC)


@pytest.fixture(scope="module")
def market():
    from hydra_engine.data.replay import ReplayMarketData
    return ReplayMarketData(ROOT / "data", ["BTC/USD", *PERPS], history_bars=500)


# ------------------------------------------------------------------ the code before (5a31738), for comparison
def _adx_before(bars, n=14):
    if len(bars) < 3 * n:
        return math.nan
    h, lo, c = (np.asarray(x[-3 * n:], dtype=float) for x in (bars.high, bars.low, bars.close))
    up, down = np.diff(h), -np.diff(lo)
    plus = np.where((up > down) & (up > 0), up, 0.0)
    minus = np.where((down > up) & (down > 0), down, 0.0)
    tr = np.maximum(h[1:] - lo[1:], np.maximum(np.abs(h[1:] - c[:-1]), np.abs(lo[1:] - c[:-1])))
    k = np.ones(n) / n
    atr, pdm, mdm = (np.convolve(x, k, "valid") for x in (tr, plus, minus))
    with np.errstate(divide="ignore", invalid="ignore"):
        pdi, mdi = pdm / atr, mdm / atr
        dx = np.abs(pdi - mdi) / (pdi + mdi)
    dx = dx[np.isfinite(dx)]
    return float(np.mean(dx[-n:]) * 100) if len(dx) >= n else math.nan


def _oi_delta_z_before(market, perp, n=168):
    oi = market.point_series("open_interest", perp)
    if oi is None or len(oi) < 48:
        return math.nan
    v = np.asarray(oi.values[-(n + 1):], dtype=float)
    d = v[1:] / v[:-1] - 1.0
    d = d[np.isfinite(d)]
    if len(d) < 24:
        return math.nan
    sd = float(np.std(d[:-1]))
    return float((d[-1] - np.mean(d[:-1])) / sd) if sd > 0 else 0.0


def _regime_vol_before(close):
    """regime_features' volatility_24h and volatility_zscore as computed before."""
    r = np.diff(np.log(close))
    if len(r) < 24 * 4:
        return math.nan, math.nan
    c1, c2 = np.concatenate(([0.0], np.cumsum(r))), np.concatenate(([0.0], np.cumsum(r * r)))
    m = (c1[24:] - c1[:-24]) / 24
    sd = np.sqrt(np.maximum((c2[24:] - c2[:-24]) / 24 - m * m, 0.0))
    s = float(np.std(sd))
    return float(sd[-1] * math.sqrt(365 * 24)), (float((sd[-1] - np.mean(sd)) / s) if s > 0 else 0.0)


def _perp_vol_before(bars):
    """compute_perp_state's (vol_annual, vol_percentile) as computed before."""
    if bars.interval_s != 3600 or len(bars) < PS.VOL_WINDOW * 3:
        return None, None
    r = np.diff(np.log(np.asarray(bars.close, dtype=float)))
    r = r[np.isfinite(r)]
    if len(r) < PS.VOL_WINDOW * 2:
        return None, None
    c1 = np.concatenate(([0.0], np.cumsum(r)))
    c2 = np.concatenate(([0.0], np.cumsum(r * r)))
    n = PS.VOL_WINDOW
    mean = (c1[n:] - c1[:-n]) / n
    sd = np.sqrt(np.maximum((c2[n:] - c2[:-n]) / n - mean * mean, 0.0))
    return float(sd[-1] * math.sqrt(365 * 24)), float(np.mean(sd <= sd[-1]))


def _label_arrays_before(bars, start, hours=24):
    """regime_label's window returns and history of 24 h deviations as computed before (None: no label)."""
    t0 = int(start.timestamp())
    t1 = t0 + hours * 3600
    closed = bars.ts + bars.interval_s
    if len(bars) < 3 * hours or closed[-1] < t1:
        return None
    k0 = int(np.searchsorted(closed, t0, side="right")) - 1
    win = np.asarray(bars.close[(closed > t0) & (closed <= t1)], dtype=float)
    if k0 < 2 * hours or len(win) < hours // 2:
        return None
    r = np.diff(np.log(np.concatenate(([float(bars.close[k0])], win))))
    past = np.diff(np.log(np.asarray(bars.close[:k0 + 1], dtype=float)))
    c1, c2 = np.concatenate(([0.0], np.cumsum(past))), np.concatenate(([0.0], np.cumsum(past * past)))
    m = (c1[hours:] - c1[:-hours]) / hours
    hist = np.sqrt(np.maximum((c2[hours:] - c2[:-hours]) / hours - m * m, 0.0)) * math.sqrt(365 * 24)
    return r, hist


def _regime_features_before(market, symbol):
    """ml.features.regime_features at 5a31738, its helpers from the module (unchanged) but _adx."""
    from hydra_engine.ml.features import (
        HOUR_S,
        NAN,
        REGIME_FEATURES,
        _add,
        _f,
        _mean,
        _ret_over,
        _series_last,
        _sma_gap,
        _std,
        _true_range,
    )
    from hydra_engine.perp.stats import perp_state
    out: dict[str, float] = dict.fromkeys(REGIME_FEATURES, NAN)
    bars = market.bars.get(symbol)
    if bars is None or len(bars) < 60:
        return out
    now_s = int(market.now.timestamp())
    close = np.asarray(bars.close, dtype=float)
    for name, hours in (("return_1h", 1), ("return_4h", 4), ("return_24h", 24)):
        out[name] = _ret_over(bars, hours * HOUR_S)
    for n in (20, 50):
        sma_now, sma_prev = _mean(close[-n:]), _mean(close[-n - 5:-5])
        out[f"sma_{n}_slope"] = float(sma_now / sma_prev - 1.0)
        out[f"price_vs_sma_{n}"] = _sma_gap(close, n)
    out["adx_14"] = _adx_before(bars)
    r = np.diff(np.log(close))
    if len(r) >= 24 * 4:
        c1, c2 = np.concatenate(([0.0], np.cumsum(r))), np.concatenate(([0.0], np.cumsum(r * r)))
        m = (c1[24:] - c1[:-24]) / 24
        sd = np.sqrt(np.maximum((c2[24:] - c2[:-24]) / 24 - m * m, 0.0))
        out["volatility_24h"] = float(sd[-1] * math.sqrt(365 * 24))
        s = float(_std(sd))
        out["volatility_zscore"] = float((sd[-1] - _mean(sd)) / s) if s > 0 else 0.0
    if len(bars) > 200:
        tr = _true_range(bars, 200) / close[-200:]
        atr = np.convolve(tr, np.ones(14) / 14, "valid")
        out["atr_14"] = float(atr[-1])
        s = float(_std(atr))
        out["atr_zscore"] = float((atr[-1] - _mean(atr)) / s) if s > 0 else 0.0
    out["bollinger_width"] = float(4 * _std(close[-20:]) / _mean(close[-20:]))
    st = perp_state(market, symbol)
    out["funding_rate"] = _f(st.funding)
    out["funding_zscore"] = _f(st.funding_z)
    out["oi_delta_pct"] = _f(st.oi_delta_1h)
    out["oi_zscore"] = _oi_delta_z_before(market, symbol)
    out["long_short_ratio"] = _series_last(market, "long_short_ratio", symbol, now_s, 2 * HOUR_S)
    out["liq_velocity"] = _f(st.liquidation_velocity)
    out["liq_imbalance"] = _f(st.liq_imbalance) if st.liq_imbalance is not None else (0.0 if st.liq_source != "none" else NAN)
    out["cascade_probability"] = _f(st.cascade_probability)
    vol = np.asarray(bars.volume, dtype=float)
    if len(vol) >= 168:
        lv = np.log1p(vol[-168:])
        s = float(_std(lv))
        out["volume_zscore"] = float((np.log1p(_add(vol[-24:]) / 24) - _mean(lv)) / s) if s > 0 else 0.0
    taker = market.point_series("taker_buy_ratio", symbol)
    if taker is not None and len(taker) >= 48 and now_s - int(taker.ts[-1]) <= 2 * HOUR_S:
        share = np.asarray(taker.values[-48:], dtype=float)
        v48 = vol[-48:] if len(vol) >= 48 else None
        if v48 is not None and np.isfinite(share).all() and _add(v48) > 0:
            delta = (2 * share - 1) * v48
            out["cvd_momentum"] = float((_add(delta[24:]) - _add(delta[:24])) / _add(v48))
    return out


# ------------------------------------------------------------------ helpers
def _same(a, b) -> bool:
    """Equal bit for bit (NaN equal to NaN), for floats, None and arrays."""
    if a is None or b is None:
        return a is b
    return np.asarray(a, dtype=float).tobytes() == np.asarray(b, dtype=float).tobytes()


def _snapshots(shared_data):
    """(snapshot, symbol) cases: the shipped half-year and the shared history's crash, SOL and BNB."""
    from hydra_engine.data.replay import ReplayMarketData
    shipped = ReplayMarketData(ROOT / "data", PERPS, history_bars=500)
    cases = [(shipped.snapshot(START + timedelta(hours=13 * k, minutes=(7 * k) % 60)), s)
             for k in range(120) for s in PERPS]
    may = ReplayMarketData(shared_data, ["BTCUSDT", "ETHUSDT"], start=date(2021, 3, 20), end=date(2021, 5, 25),
                           history_bars=500)
    cases += [(may.snapshot(datetime(2021, 4, 25, tzinfo=UTC) + timedelta(hours=5 * k)), s)
              for k in range(80) for s in ("BTCUSDT", "ETHUSDT")]
    alt = ReplayMarketData(shared_data, ["SOLUSDT", "BNBUSDT"], start=date(2024, 6, 1), end=date(2024, 9, 1),
                           history_bars=500)
    cases += [(alt.snapshot(datetime(2024, 7, 20, tzinfo=UTC) + timedelta(hours=11 * k)), s)
              for k in range(40) for s in ("SOLUSDT", "BNBUSDT")]
    return [(snap, s) for snap, s in cases if s in snap.bars]


# ------------------------------------------------------------------ the tests
def test_adx_equals_the_convolution_code_on_real_and_flat_bars(market):
    seen = []
    for k in range(400):
        snap = market.snapshot(START + timedelta(hours=9 * k))
        for s in PERPS:
            bars = snap.bars[s]
            got, want = F._adx(bars), _adx_before(bars)
            assert _same(got, want), (s, k, got, want)
            seen.append(got)
    assert len(set(seen)) > 700   # real, varied values
    # flat bars: the true range is 0, the division is 0/0 (NaN dropped) and must warn nothing, change nothing
    bars = market.snapshot(START + timedelta(days=20)).bars["BTCUSDT"]
    five = np.full(len(bars), 5.0)
    flat = replace(bars, open=five, high=five, low=five, close=five)
    o, h, lo, c = (np.where(np.arange(len(bars)) % 50 < 30, 5.0, x) for x in (bars.open, bars.high, bars.low, bars.close))
    half = replace(bars, open=o, high=h, low=lo, close=c)
    before = np.geterr()
    with np.errstate(all="raise"):
        for b in (flat, half):
            for end in range(60, len(b), 7):
                sub = replace(b, ts=b.ts[:end], open=b.open[:end], high=b.high[:end], low=b.low[:end],
                              close=b.close[:end], volume=b.volume[:end])
                with np.errstate(divide="ignore", invalid="ignore"):
                    want = _adx_before(sub)
                assert _same(F._adx(sub), want), end
    assert np.geterr() == before


def test_regime_features_equal_the_code_before_on_real_data(shared_data):
    n, finite = 0, set()
    for snap, s in _snapshots(shared_data):
        f = F.regime_features(snap, s)
        bars = snap.bars[s]
        if len(bars) < 60:
            continue
        n += 1
        vol, z = _regime_vol_before(np.asarray(bars.close, dtype=float))
        assert _same(f["volatility_24h"], vol) and _same(f["volatility_zscore"], z), (s, snap.now)
        assert _same(f["adx_14"], _adx_before(bars)), (s, snap.now)
        assert _same(f["oi_zscore"], _oi_delta_z_before(snap, s)), (s, snap.now)
        want = _regime_features_before(snap, s)
        assert list(f) == list(want) and all(_same(f[k], want[k]) for k in want), \
            (s, snap.now, [k for k in want if not _same(f[k], want[k])])
        finite.update(k for k in want if math.isfinite(want[k]))
        hv = PS.hourly_vol(snap, s)
        assert hv is PS.hourly_vol(snap, s)   # once per snapshot
    assert n >= 450
    assert len(finite) >= len(F.REGIME_FEATURES) - len(F.REGIME_LIVE_ONLY)   # every feature the data gives was compared


def test_perp_state_volatility_equals_the_code_before_including_returns_that_are_not_finite(shared_data, market):
    vols = set()
    for snap, s in _snapshots(shared_data):
        st = PS.compute_perp_state(snap, s)
        want = _perp_vol_before(snap.bars[s])
        assert _same(st.vol_annual, want[0]) and _same(st.vol_percentile, want[1]), (s, snap.now)
        vols.add(st.vol_percentile)
    assert len(vols) > 50
    # a zero and a NaN close: log returns not finite -> the state filters them (the shared deviations are not used)
    snap = market.snapshot(START + timedelta(days=50))
    bars = snap.bars["BTCUSDT"]
    close = bars.close.astype(float).copy()
    close[[100, 300]] = (0.0, np.nan)
    bad = replace(bars, close=close)
    snap2 = replace(snap, bars={**snap.bars, "BTCUSDT": bad})
    with np.errstate(divide="ignore", invalid="ignore"):
        assert not PS.hourly_vol(snap2, "BTCUSDT").finite
        st = PS.compute_perp_state(snap2, "BTCUSDT")
        want = _perp_vol_before(bad)
    assert want[0] is not None and _same(st.vol_annual, want[0]) and _same(st.vol_percentile, want[1])


def test_regime_label_reads_the_arrays_it_computed_before(shared_data, monkeypatch):
    """The window's returns (what _std, _mean and the sum read) and the history's deviations (what the
    percentile reads) are captured from regime_label and compared with the code before, bit for bit."""
    seen: dict = {}
    real_std, real_pct = lb._std, lb._percentile
    monkeypatch.setattr(lb, "_std", lambda x: seen.setdefault("r", x.copy()) is not None and real_std(x))
    monkeypatch.setattr(lb, "_percentile", lambda x, p: seen.setdefault("hist", x.copy()) is not None and real_pct(x, p))
    n = 0
    for snap, s in _snapshots(shared_data):
        for back in (24, 25, 30, 200):
            start = snap.now - timedelta(hours=back, minutes=snap.now.minute)
            seen.clear()
            got = lb.regime_label(snap, s, start)
            want = _label_arrays_before(snap.bars[s], start)
            if want is None:
                assert got is None
                continue
            n += 1
            assert _same(seen["r"], want[0]) and _same(seen["hist"], want[1]), (s, snap.now, back)
    assert n > 1000


def test_the_snapshot_memo_never_serves_another_snapshot(market):
    """Two snapshots at the same time with different bars: each reads its own values, never the other's."""
    snap = market.snapshot(START + timedelta(days=10))
    bars = snap.bars["BTCUSDT"]
    other = replace(bars, close=bars.close * 1.5 ** np.sin(np.arange(len(bars))))
    snap2 = replace(snap, bars={**snap.bars, "BTCUSDT": other})
    a, b = PS.hourly_vol(snap, "BTCUSDT"), PS.hourly_vol(snap2, "BTCUSDT")
    assert a is not b and not _same(a.sd, b.sd)
    assert _same(F.regime_features(snap2, "BTCUSDT")["volatility_24h"], _regime_vol_before(other.close)[0])
    assert _same(F.regime_features(snap, "BTCUSDT")["volatility_24h"], _regime_vol_before(bars.close)[0])


def test_the_snapshot_flush_table_answers_what_flush_answers_hour_by_hour(shared_data):
    """The perp state's 24 hours, then the realised label's window (overlapping, later, earlier), then
    single hours: every value the table gives is _flush's own for that hour, on the May 2021 crash's real
    flushes and on the shipped half-year; the perp state's liquidation picture is the one computed before."""
    nonzero = 0
    for snap, s in _snapshots(shared_data):
        oi, bars = snap.point_series("open_interest", s), snap.bars[s]
        taker = snap.point_series("taker_buy_ratio", s)
        if oi is None or not len(oi):
            continue
        st = PS.compute_perp_state(snap, s)   # fills the table first, as in the cycle
        t_oi = int(oi.ts[-1])
        six = [PS._flush(oi, bars, taker, t_oi - h * 3600) for h in range(PS.LIQ_LOOKBACK_H)]
        if st.liq_source == "proxy:oi_flush":
            assert st.liq_long == sum(x[0] for x in six) and st.liq_short == sum(x[1] for x in six)
            assert st.liquidation_velocity == sum(six[0])
        t = int(snap.now.timestamp()) // 3600 * 3600
        for ts in ([t - 24 * 3600 + h * 3600 for h in range(1, 25)], [t - 40 * 3600 + h * 1800 for h in range(60)],
                   [t + 3600, t - 7 * 3600, t - 7 * 3600 + 1], [t_oi - h * 3600 for h in range(30)]):
            got = PS.flush_hours(snap, s, ts)
            want = [PS._flush(oi, bars, taker, x) for x in ts]
            assert got == want, (s, snap.now)
            nonzero += sum(w != (0.0, 0.0) for w in want)
    assert nonzero >= 5   # real flushes among them: not a vacuous check


def test_platt_and_the_sparse_input_test_equal_the_numpy_calls_they_replace():
    import json

    from hydra_engine.ml.scorer_model import platt
    cal = json.loads((ROOT / "models" / "signal_scorer.meta.json").read_text())["calibration"]
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.random(20000), rng.random(200) * 1e-5, 1 - rng.random(200) * 1e-5,
                        [0.0, 1.0, 1e-6, 1 - 1e-6, np.nextafter(1e-6, 0), np.nextafter(1 - 1e-6, 1), np.nan, -0.0, 2.0,
                         -1.0, np.inf, -np.inf]])
    for a, b in ((cal["a"], cal["b"]), (1.0, 0.0), (-0.3, 2.5)):
        with np.errstate(all="ignore"):
            want = 1.0 / (1.0 + np.exp(-(a * np.log(np.clip(x, 1e-6, 1 - 1e-6) / (1 - np.clip(x, 1e-6, 1 - 1e-6))) + b)))
            assert platt(x, a, b).tobytes() == want.tobytes()
            assert all(platt(x[i:i + 1], a, b).tobytes() == want[i:i + 1].tobytes() for i in range(0, len(x), 37))
    for n in range(1, 40):
        for k in range(n + 1):
            row = np.zeros(n)
            row[rng.permutation(n)[:k]] = rng.choice([np.nan, np.inf, -np.inf], size=k)
            assert (np.count_nonzero(np.isfinite(row)) / len(row) < 0.6) == (np.mean(np.isfinite(row)) < 0.6)
            assert np.count_nonzero(np.isfinite(row)) / len(row) == np.mean(np.isfinite(row))


def test_with_a_trained_labeller_the_perp_state_fills_the_label_window_and_answers_the_same(market, monkeypatch):
    """A trained labeller installed: the perp state puts the 24 hours the realised label reads in the table (the
    same values as _flush's), and its own liquidation picture is what the rule labeller's cycles compute."""
    from hydra_engine.ml.labels import regime_label

    class Trained:   # only whether a model is installed matters to the perp state
        booster = object()

    for k in range(40):
        snap = market.snapshot(START + timedelta(days=20, hours=11 * k))
        for s in PERPS:
            ruled = PS.compute_perp_state(snap, s)
            PS._MEMO.clear()
            monkeypatch.setattr(PS, "_LABELLER", Trained())
            trained = PS.compute_perp_state(snap, s)
            monkeypatch.undo()
            assert trained == ruled
            table = PS.snapshot_memo(snap, "flush", s, PS._new_table)
            oi = snap.point_series("open_interest", s)
            t_oi = int(oi.ts[-1])
            assert sorted(table) == [t_oi - h * 3600 for h in range(PS.FLUSH_TABLE_H)][::-1]
            taker = snap.point_series("taker_buy_ratio", s)
            assert all(v == PS._flush(oi, snap.bars[s], taker, t) for t, v in table.items())
            start = snap.now - timedelta(hours=24)
            got = regime_label(snap, s, start)
            PS._MEMO.clear()
            assert got == regime_label(snap, s, start)   # read from the table or computed afresh: the same label
