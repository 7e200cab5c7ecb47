#!/bin/bash
. /work/main/.venv/bin/activate
cd /work/wt-lean
echo "=== main HEAD $(git -C /work/main rev-parse --short HEAD), lean HEAD $(git rev-parse --short HEAD)"
/tmp/lean/ab.sh single_100000 3
/tmp/lean/ab.sh multi_20x100000 2
/tmp/lean/ab.sh single_1000000 1
echo "=== cycle latency --io off, alternating  load $(cut -d' ' -f1-3 /proc/loadavg) $(date -u +%H:%M:%S)"
for r in 1 2; do for tree in /work/main /work/wt-lean; do
  echo "$tree $(HYDRA_BENCH_OUT=/tmp/lean/out PYTHONPATH=$tree python bench/cycle_latency.py --io off 2>&1 | grep -iE 'p50|cycles/s' | tr '\n' ' ') load $(cut -d' ' -f1 /proc/loadavg)"
done; done
echo "=== done $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
