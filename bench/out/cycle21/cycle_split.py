"""Per-cycle time split: wraps named callables, runs the models-on bench variant, prints medians."""
import sys, time, tempfile, statistics, functools, importlib
from pathlib import Path
root = Path(sys.argv[1]).resolve(); sys.path.insert(0, str(root / "bench")); sys.path.insert(0, str(root))
import numpy as np
import ml_latency as ml
from hydra_engine.app import build_sim_session
from hydra_engine.config import load_settings
acc = {}
def wrap(obj, attr, name):
    f = getattr(obj, attr)
    @functools.wraps(f)
    def w(*a, **k):
        t = time.perf_counter_ns()
        cnt[name] = cnt.get(name, 0) + 1
        try: return f(*a, **k)
        finally: acc[name] = acc.get(name, 0) + time.perf_counter_ns() - t
    setattr(obj, attr, w)
import hydra_engine.engine as E
from hydra_engine.ml import loop
wrap(loop.ClassifierMonitor, "__call__", "clfmon")
import hydra_engine.ml.regime_classifier as RC, hydra_engine.ml.labels as LB, hydra_engine.perp.stats as PS
wrap(RC.ClassifierRegimeLabeller, "label", "clf.label"); wrap(RC.ClassifierRegimeLabeller, "resolve", "clf.resolve"); wrap(RC.ClassifierRegimeLabeller, "predict_proba", "clf.predict")
wrap(RC, "regime_features", "clf.regime_features")
wrap(LB, "regime_label", "regime_label")
wrap(PS, "compute_perp_state", "compute_perp_state")
cnt = {}

for m in ["_book_fills", "_observe", "_detect_regime", "_some_plugin_wakes", "_signals", "_propose", "_rank", "_filter_and_execute", "_manage"]:
    wrap(E.Engine, m, m)
import hydra_engine.plugin_kinds as PK
wrap(PK, "apply_modifiers", "modifiers"); E.apply_modifiers = PK.apply_modifiers
wrap(PK, "score_signals", "scorers"); E.score_signals = PK.score_signals
s = load_settings(root / "hydra.toml")
tmp = Path(tempfile.mkdtemp())
orig = build_sim_session
def bss(*a, **k):
    sess = orig(*a, **k)
    eng = sess.engine
    for st in eng.strategies:
        cls = type(st)
        if not getattr(cls, "_w", False):
            cls._w = True
            wrap(cls, "generate_signals", "gen:" + st.name); wrap(cls, "wants_cycle", "wants:" + st.name); wrap(cls, "propose", "prop:" + st.name)
    wrap(type(eng.aggregator), "combine", "aggregator")
    print("hooks", eng.cycle_hooks, eng.cycle_end_hooks, file=sys.stderr)
    return sess
ml.build_sim_session = bss
# replicate run() but collecting acc per cycle
import hashlib, json, gc
variant = sys.argv[2] if len(sys.argv) > 2 else "on"
cyc = int(sys.argv[3]) if len(sys.argv) > 3 else 1500
sc = root / "models/signal_scorer.cbm"; cl = root / "models/regime_classifier.json"
s2 = s
rm = s.regime_model.model_copy(update={"perp_labeller": "classifier", "model_path": str(cl)}) if variant == "on" else s.regime_model.model_copy(update={"perp_labeller": "rule"})
scs = s.scorers.model_copy(update={"enabled": ["ml_signal_scorer"], "params": {"ml_signal_scorer": {"model_path": str(sc)}}}) if variant == "on" else s.scorers.model_copy(update={"enabled": []})
s = s.model_copy(update={"engine": s.engine.model_copy(update={"log_dir": str(tmp)}), "regime_model": rm, "scorers": scs, "storage": s.storage.model_copy(update={"url": f"sqlite:///{tmp}/h.db"})})
sess = bss(s, data_dir=root / "data", log_dir=tmp)
sess.engine.session_log = None; sess.engine.store = None
eng = sess.engine
rows = []
for now in sess.clock.ticks[:cyc]:
    acc.clear()
    t = time.perf_counter_ns(); r = eng.run_cycle(now); tot = time.perf_counter_ns() - t
    rows.append((tot, dict(acc)))
tots = np.array([r[0] for r in rows]) / 1e6
print("p50 total", np.median(tots), "mean", tots.mean())
order = np.argsort(tots); mid = order[len(order)//2 - 100: len(order)//2 + 100]
keys = sorted({k for _, a in rows for k in a})
print(f"{'name':<34} {'median-band mean us':>20} {'overall mean us':>16} {'calls>0':>8}")
for k in keys:
    band = np.mean([rows[i][1].get(k, 0) for i in mid]) / 1e3
    allm = np.mean([r[1].get(k, 0) for r in rows]) / 1e3
    print(f"{k:<34} {band:>20.1f} {allm:>16.1f}")
print("counts", {k: v for k, v in cnt.items() if not k.startswith(("gen:", "prop:", "wants:"))}); print("band total", np.mean(tots[mid]) * 1e3)
