import sys
from pathlib import Path
from datetime import datetime, timedelta
root = Path(sys.argv[1]).resolve(); sys.path.insert(0, str(root))
K = int(sys.argv[2]); ONLY_STATE = len(sys.argv) > 3
from hydra_engine.domain import UTC
from hydra_engine.data.replay import ReplayMarketData
import hydra_engine.ml.features as F
from hydra_engine.perp import stats as PS
from hydra_engine.ml.labels import regime_label
m = ReplayMarketData(root / "data", ["BTCUSDT", "ETHUSDT"], history_bars=500)
snaps = [m.snapshot(datetime(2024, 3, 3, 5, tzinfo=UTC) + timedelta(hours=k)) for k in range(40)]
for sn in snaps:   # build the lazy bar series outside the measured part
    for s in ("BTCUSDT", "ETHUSDT"): sn.bars[s]; sn.point_series("open_interest", s)
def work():
    for sn in snaps:
        for s in ("BTCUSDT", "ETHUSDT"):
            PS.perp_state(sn, s)
            if not ONLY_STATE: F.regime_features(sn, s); regime_label(sn, s, sn.now - timedelta(hours=24))
for _ in range(K):
    PS._CACHE.clear(); getattr(PS, "_MEMO", {}).clear()
    work()
