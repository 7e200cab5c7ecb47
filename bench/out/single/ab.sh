#!/bin/bash
# usage: ab.sh CASE ROUNDS  -- alternate base (git archive 5a31738) and tree, cold processes
. /work/main/.venv/bin/activate
CASE=$1; N=${2:-2}
for r in $(seq 1 $N); do
  for t in /tmp/single-base /work/wt-single; do
    L=$(cut -d' ' -f1-3 /proc/loadavg)
    out=$(cd $t && PYTHONPATH=$t python bench/peer_compare.py --one $CASE | grep '^RESULT ')
    python - "$t" "$L" "$out" <<'PY'
import sys, json
t, load, line = sys.argv[1], sys.argv[2], sys.argv[3]
r = json.loads(line[7:])
print(json.dumps({"tree": "base" if "single-base" in t else "tree", "load": load, **{k: r.get(k) for k in ("case","date","commit","setup_s","run_s","wall_s","cpu_s","bars_per_s","peak_rss_mb","trades","final_equity","reference_check","cycles")}}))
PY
  done
done
