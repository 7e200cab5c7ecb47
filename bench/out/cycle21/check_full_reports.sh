#!/bin/bash
# full-report equality against the base (1500 cycles, models on)
cd /work/wt-cycle && . /work/main/.venv/bin/activate && python /tmp/cyc/fulldig.py . 1500 /tmp/cyc/r-new.jsonl >/dev/null 2>&1
python /tmp/cyc/fulldig.py . 1500 /tmp/cyc/r-new-off.jsonl off >/dev/null 2>&1
python - <<'PY'
import re
pat=r'"seconds": [0-9.]+|[0-9.]+ s\)|/tmp/tmp[^/"]+|sim-[0-9a-f]{8}-'
a=[re.sub(pat,'X',l) for l in open('/tmp/cyc/r-base.jsonl')]; b=[re.sub(pat,'X',l) for l in open('/tmp/cyc/r-new.jsonl')]
print("FULL REPORTS SAME:", a==b, len(a), len(b))
a=[re.sub(pat,'X',l) for l in open('/tmp/cyc/r-base-off.jsonl')]; b=[re.sub(pat,'X',l) for l in open('/tmp/cyc/r-new-off.jsonl')]
print("FULL REPORTS SAME (models off):", a==b, len(a), len(b))
PY
