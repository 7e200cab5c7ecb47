#!/bin/bash
# Session 10's closing measurements, one invocation on a quiet box (nothing else running).
# before #24 = c97adf8 (git archive in /tmp/base24); session start = 5a31738 (/tmp/base10); after = /work/main.
. /work/main/.venv/bin/activate
cd /work/main
O=bench/out/final10
bash $O/ab.sh /tmp/base24 /work/main "single_100000" 3 > $O/ab_single_100k.log 2>&1
bash $O/ab.sh /tmp/base24 /work/main "single_1000000 multi_20x100000" 2 > $O/ab_1m_multi.log 2>&1
(echo "load $(cut -d' ' -f1-3 /proc/loadavg) $(date -u +%H:%M:%S)"; PYTHONPATH=/work/main python bench/peer_compare.py --cases single_100000,single_1000000,multi_20x100000 --peers fast; echo "load $(cut -d' ' -f1-3 /proc/loadavg) $(date -u +%H:%M:%S)") > $O/peers_fast.log 2>&1
(echo "load $(cut -d' ' -f1-3 /proc/loadavg) $(date -u +%H:%M:%S)"; PYTHONPATH=/work/main /usr/bin/time -f "PROC_CPU %U %S" python bench/backtest_throughput.py; echo "load $(cut -d' ' -f1-3 /proc/loadavg) $(date -u +%H:%M:%S)") > $O/five_year.log 2>&1
(echo "load $(cut -d' ' -f1-3 /proc/loadavg) $(date -u +%H:%M:%S)"; PYTHONPATH=/work/main python bench/cycle_latency.py --io off; echo "load $(cut -d' ' -f1-3 /proc/loadavg) $(date -u +%H:%M:%S)") > $O/cycle_latency.log 2>&1
(echo "load $(cut -d' ' -f1-3 /proc/loadavg) $(date -u +%H:%M:%S)"; PYTHONPATH=/work/main python bench/ml_latency_ab.py --base /tmp/base10 --rounds 3 --cycles 1500; echo "load $(cut -d' ' -f1-3 /proc/loadavg) $(date -u +%H:%M:%S)") > $O/ml_latency_ab.log 2>&1
echo done
