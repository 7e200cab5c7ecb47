#!/bin/bash
. /work/main/.venv/bin/activate
cd /work/wt-lean
run() { # tree case
  out=$(HYDRA_BENCH_OUT=/tmp/lean/out PYTHONPATH=$1 python bench/peer_compare.py --one $2 | grep '^RESULT')
  echo "$(basename $1) $(echo "$out" | python -c "import json,sys; d=json.loads(sys.stdin.read()[7:]); print(d['case'], 'setup', d['setup_s'], 'run', d['run_s'], 'wall', d['wall_s'], 'cpu', d['cpu_s'], 'rss', d['peak_rss_mb'], d['trades'], d['final_equity'][:16], d.get('reference_check','NOCHECK')[:2])") load $(cut -d' ' -f1 /proc/loadavg)"
}
echo "start $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
for rep in 1 2; do for t in /work/main /tmp/lean/step0a /tmp/lean/step1 /tmp/lean/step2 /tmp/lean/step3 /tmp/lean/step4; do run $t single_100000; done; done
for t in /work/main /tmp/lean/step0a /tmp/lean/step1 /tmp/lean/step2 /tmp/lean/step3 /tmp/lean/step4; do run $t multi_20x100000; done
echo "end $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
