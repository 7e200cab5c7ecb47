#!/bin/bash
# usage: ab.sh BASE_TREE HEAD_TREE "CASES" REPS -- alternating cold --one runs (before | after), one invocation
. /work/main/.venv/bin/activate
base=$1; head=$2; cases=$3; reps=${4:-3}
cd "$head"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)  $(date -u +%H:%M:%S)"
for case in $cases; do
  for r in $(seq 1 $reps); do
    for tree in "$base" "$head"; do
      out=$(cd "$tree" && HYDRA_BENCH_OUT=/tmp/final_ab PYTHONPATH=$tree /usr/bin/time -f "PROC_CPU %U %S" python bench/peer_compare.py --one $case 2>&1 | grep '^RESULT\|^PROC_CPU')
      cpu=$(echo "$out" | grep PROC_CPU | awk '{print $2+$3}'); out=$(echo "$out" | grep '^RESULT')
      echo "$tree $(echo "$out" | python -c "import json,sys; d=json.loads(sys.stdin.read()[7:]); print(d['case'], 'setup', d['setup_s'], 'run', d['run_s'], 'wall', d['wall_s'], 'cpu', d.get('cpu_s'), 'bars/s', d['bars_per_s'], 'rss', d['peak_rss_mb'], d['trades'], str(d['final_equity'])[:16], d.get('reference_check','NOCHECK')[:2])") proc_cpu $cpu load $(cut -d' ' -f1 /proc/loadavg)"
    done
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)  $(date -u +%H:%M:%S)"
