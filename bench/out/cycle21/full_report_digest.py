"""Hash of every cycle's full report (models on) for a checkout: python fulldig.py ROOT [cycles]."""
import sys, hashlib, json, tempfile, re
from pathlib import Path
root = Path(sys.argv[1]).resolve(); sys.path.insert(0, str(root))
from hydra_engine.app import build_sim_session
from hydra_engine.config import load_settings
cyc = int(sys.argv[2]) if len(sys.argv) > 2 else 1500
s = load_settings(root / "hydra.toml"); tmp = Path(tempfile.mkdtemp())
rm = s.regime_model.model_copy(update={"perp_labeller": "classifier", "model_path": str(root / "models/regime_classifier.json")})
sc = s.scorers.model_copy(update={"enabled": ["ml_signal_scorer"], "params": {"ml_signal_scorer": {"model_path": str(root / "models/signal_scorer.cbm")}}})
if len(sys.argv) > 4 and sys.argv[4] == "off":
    rm = s.regime_model.model_copy(update={"perp_labeller": "rule"}); sc = s.scorers.model_copy(update={"enabled": []})
s = s.model_copy(update={"engine": s.engine.model_copy(update={"log_dir": str(tmp)}), "regime_model": rm, "scorers": sc, "storage": s.storage.model_copy(update={"url": f"sqlite:///{tmp}/h.db"})})
sess = build_sim_session(s, data_dir=root / "data", log_dir=tmp)
sess.engine.session_log = None; sess.engine.store = None
h = hashlib.sha256(); keys = {}; out = open(sys.argv[3], "w")
for now in sess.clock.ticks[:cyc]:
    r = sess.engine.run_cycle(now)
    for k in r: keys[k] = keys.get(k, 0) + 1
    j = re.sub(r'"seconds": [0-9.]+|[0-9.]+ s\)|/tmp/tmp[^/"]+|sim-[0-9a-f]{8}-', "X", json.dumps(r, sort_keys=True, default=str)); h.update(j.encode()); out.write(j + "\n")
h.update(json.dumps(sess.engine.closed_trades, sort_keys=True, default=str).encode())
print("full digest", h.hexdigest()[:16], "monitor entries", sum(len(sess.engine.last_report.get("ml_regime_monitor", [])) for _ in [0]), sorted(keys)[:40])
