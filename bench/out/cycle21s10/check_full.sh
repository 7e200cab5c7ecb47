#!/bin/bash
# usage: check_full.sh TREE TAG  -> /tmp/lat21/fr/TAG-on.jsonl, TAG-off.jsonl
. /work/main/.venv/bin/activate
D=/work/wt-lat21/bench/out/cycle21/full_report_digest.py
python $D $1 1500 /tmp/lat21/fr/$2-on.jsonl > /tmp/lat21/fr/$2-on.log 2>&1
python $D $1 1500 /tmp/lat21/fr/$2-off.jsonl off > /tmp/lat21/fr/$2-off.log 2>&1
