"""Issue #17 on the paper path: when the regime's input feed (SPY at Alpaca) stalls, the regime reads
UNKNOWN with "regime inputs stale since <day>" and crypto does not go on trading on the last SPY reading.

Everything runs through the real code against the HTTP-level Alpaca double: alpaca-py's data clients, the
paper session's live clock, the shipped fallback detector (`trend_vol_rule`), the entry gate, the session log.
The only difference between the two runs is how old the SPY bars at the double are.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from importlib.metadata import EntryPoint
from zoneinfo import ZoneInfo

from hydra_engine.domain import Regime, Side, Signal, TradeProposal
from hydra_engine.regime_freshness import STALE_PREFIX
from hydra_engine.strategy import DataNeed

from .test_fault_injection import SpyProbe, double_env, install_spy, paper_config, run_paper, session_doc  # noqa: F401

UTC = timezone.utc


class BtcProbe(SpyProbe):
    """Buys a little BTC/USD whenever it holds none, in any regime: only the gate can stop it."""

    name = "btc_probe"
    assets = ("BTC/USD",)
    data_needs = (DataNeed("bars", "SPY"), DataNeed("bars", "BTC/USD"))

    def generate_signals(self, ctx):
        return [Signal("BTC/USD", 0.6, 0.7, "btc_probe", ctx.now, timedelta(hours=4), "test probe")]

    def propose(self, ctx, combined):
        price = ctx.market.price("BTC/USD")
        if "BTC/USD" not in combined or ctx.held.get("BTC/USD") or not price > 0:
            return []
        return [TradeProposal(self.name, "BTC/USD", Side.BUY, price, price * 0.97, price * 1.06, 0.7,
                              timedelta(hours=4), "probe", max_notional_usd=500.0, min_notional_usd=50.0)]


def _run(tmp_path, monkeypatch, double, *, spy_days_behind: int) -> dict:
    import hydra_engine.plugins as plugins
    now = datetime.now(UTC)
    install_spy(double, now)
    if spy_days_behind:   # the feed stalled: its last sessions never arrived
        shift = timedelta(days=spy_days_behind)
        for bar in double.bars["SPY"]:
            t = datetime.fromisoformat(bar["t"].replace("Z", "+00:00")) - shift
            bar["t"] = t.strftime("%Y-%m-%dT%H:%M:%SZ")
    monkeypatch.setattr(plugins, "entry_points", lambda *, group: [EntryPoint(
        name=BtcProbe.name, value="tests.test_paper_stale_regime:BtcProbe", group=group)]
        if group == "hydra.strategies" else [])
    cfg = paper_config(tmp_path, symbols=("BTC/USD", "SPY"), extra=f'[strategies]\nenabled = ["{BtcProbe.name}"]\n')
    assert run_paper(cfg, monkeypatch, double, cycles=3) == 0
    return session_doc(tmp_path)


def test_a_stalled_spy_feed_makes_the_paper_regime_unknown_and_blocks_crypto_entries(tmp_path, monkeypatch,
                                                                                        double_env):
    double, _ = double_env
    doc = _run(tmp_path, monkeypatch, double, spy_days_behind=10)
    # the double stamps a daily bar at 04:00Z, which Alpaca's convention reads as the New York session's date
    last_spy_day = datetime.fromisoformat(double.bars["SPY"][-1]["t"].replace("Z", "+00:00")).astimezone(
        ZoneInfo("America/New_York")).date()
    for c in doc["cycle_details"]:
        assert c["regime"]["regime"] == Regime.UNKNOWN.value, c["regime"]
        assert c["regime"]["details"]["why"].startswith(f"{STALE_PREFIX} {last_spy_day.isoformat()}")
        refused = [d for d in c["decisions"] if d["symbol"] == "BTC/USD"]
        assert refused and all(not d["approved"] and d["rule"] == "regime_unknown" for d in refused), c["decisions"]
    assert not [o for o in doc["orders"] if o["purpose"] == "entry"]
    assert doc["summary"]["regime_stale_cycles"] == 3


def test_the_same_session_with_a_live_spy_feed_reads_spy_and_buys(tmp_path, monkeypatch, double_env):
    """The control: nothing but the age of the SPY bars differs, and then the regime is SPY's and BTC is bought."""
    double, _ = double_env
    doc = _run(tmp_path, monkeypatch, double, spy_days_behind=0)
    first = doc["cycle_details"][0]
    assert first["regime"]["regime"] != Regime.UNKNOWN.value and first["regime"]["details"]["symbol"] == "SPY"
    assert [o["symbol"] for o in doc["orders"] if o["purpose"] == "entry"] == ["BTC/USD"]
    assert "regime_stale_cycles" not in doc["summary"]
