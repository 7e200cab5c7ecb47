"""python vgcyc.py ROOT on|off SKIP N: build the bench's session, run SKIP cycles, then N more (valgrind counts)."""
import sys, tempfile
from pathlib import Path
root = Path(sys.argv[1]).resolve(); sys.path.insert(0, str(root))
from hydra_engine.app import build_sim_session
from hydra_engine.config import load_settings
variant, skip, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
s = load_settings(root / "hydra.toml"); tmp = Path(tempfile.mkdtemp())
if variant == "on":
    rm = s.regime_model.model_copy(update={"perp_labeller": "classifier", "model_path": str(root / "models/regime_classifier.json")})
    sc = s.scorers.model_copy(update={"enabled": ["ml_signal_scorer"], "params": {"ml_signal_scorer": {"model_path": str(root / "models/signal_scorer.cbm")}}})
else:
    rm = s.regime_model.model_copy(update={"perp_labeller": "rule"}); sc = s.scorers.model_copy(update={"enabled": []})
s = s.model_copy(update={"engine": s.engine.model_copy(update={"log_dir": str(tmp)}), "regime_model": rm, "scorers": sc,
                         "storage": s.storage.model_copy(update={"url": f"sqlite:///{tmp}/h.db"})})
sess = build_sim_session(s, data_dir=root / "data", log_dir=tmp)
sess.engine.session_log = None; sess.engine.store = None
for now in sess.clock.ticks[:skip + n]:
    sess.engine.run_cycle(now)
