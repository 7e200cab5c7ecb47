#!/bin/bash
# usage: ab.sh CASE REPS  -- alternating cold runs, main vs wt-lean
. /work/main/.venv/bin/activate
cd /work/wt-lean
case=$1; reps=${2:-2}
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)  $(date -u +%H:%M:%S)"
for r in $(seq 1 $reps); do
  for tree in /work/main /work/wt-lean; do
    out=$(HYDRA_BENCH_OUT=/tmp/lean/out PYTHONPATH=$tree python bench/peer_compare.py --one $case | grep '^RESULT')
    echo "$tree $(echo "$out" | python -c "import json,sys; d=json.loads(sys.stdin.read()[7:]); print(d['case'], 'setup', d['setup_s'], 'run', d['run_s'], 'wall', d['wall_s'], 'cpu', d.get('cpu_s'), 'bars/s', d['bars_per_s'], 'rss', d['peak_rss_mb'], d['trades'], d['final_equity'][:16], d.get('reference_check','NOCHECK')[:2])") load $(cut -d' ' -f1 /proc/loadavg)"
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)  $(date -u +%H:%M:%S)"
