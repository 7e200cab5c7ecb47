#!/bin/bash
# Session 11's closing measurements, one invocation on a quiet box (nothing else running).
# base = 55b2bcb, this session's start (git archive in /tmp/base11); after = /work/main.
. /work/main/.venv/bin/activate
cd /work/main
O=bench/out/final11
L() { echo "load $(cut -d' ' -f1-3 /proc/loadavg) $(date -u +%H:%M:%S)"; }
five() {  # tree label
  (L; cd $1 && HYDRA_SHARED_DATA=/work/shared/data PYTHONPATH=$1 /usr/bin/time -f "PROC_CPU %U %S" python bench/backtest_throughput.py 2>&1 | grep -E "^RESULT|cycles,|PROC_CPU"; L) | sed "s|^|$2 |"
}
{ for r in 1 2 3; do five /tmp/base11 base; five /work/main after; done; } > $O/five_year_ab.log 2>&1
cp bench/ml_latency.py /tmp/base11/bench/
(L; PYTHONPATH=/work/main python bench/ml_latency_ab.py --base /tmp/base11 --rounds 3 --cycles 1500; L) > $O/ml_latency_ab.log 2>&1
(L; for r in 1 2 3; do PYTHONPATH=/work/main python bench/ml_latency.py --cycles 1500 --monitor-every-hours 1 | grep -v RESULT; done; L) > $O/ml_latency_hourly_monitor.log 2>&1
(L; PYTHONPATH=/work/main python bench/cycle_latency.py --io off; L) > $O/cycle_latency.log 2>&1
(L; HYDRA_REGIME_FIT_WORKERS=2 /usr/bin/time -f "PROC_CPU %U %S" python bench/backtest_throughput.py 2>&1 | grep -E "^RESULT|cycles,|PROC_CPU"; L) > $O/five_year_fit_workers2.log 2>&1
bash bench/out/final10/ab.sh /tmp/base11 /work/main "single_100000 multi_20x100000" 1 > $O/ab_reference.log 2>&1
echo done
