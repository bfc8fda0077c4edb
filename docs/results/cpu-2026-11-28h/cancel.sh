#!/usr/bin/env bash
# How long a Cancel takes while a run starts (real SmolLM2, CPU): for each
# binary and each delay D, serve on a fresh data dir, post an arithmetic run,
# post its cancel D s after it turns `running`, and time until it reads
# `cancelled`. Appends one JSON line per try to cancel.jsonl.
# Usage: bash cancel.sh BIN_A BIN_B   (run from the repository root)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
port=8391
B=http://127.0.0.1:$port
field() { python3 -c "import sys,json; r=json.load(sys.stdin); print(r.get('$1'))"; }
for round in 1 2; do
  for bin in "$@"; do
    for delay in ${DELAYS:-5 15}; do
      data=$(mktemp -d)
      "$bin" serve --addr 127.0.0.1:$port --data-dir "$data/data" > "$data/log" 2>&1 &
      pid=$!
      until curl -sf $B/api/runs > /dev/null; do sleep 0.2; done
      id=$(curl -s -X POST $B/api/runs -H 'content-type: application/json' \
        -d '{"name":"c","task":"arithmetic","config":{"steps":5,"batch_size":16}}' | field id)
      until [ "$(curl -s $B/api/runs/$id | field status)" = running ]; do sleep 0.1; done
      sleep "$delay"
      t1=$(date +%s.%N)
      curl -s -X POST $B/api/runs/$id/cancel -o /dev/null
      until [ "$(curl -s $B/api/runs/$id | field status)" = cancelled ]; do sleep 0.1; done
      t2=$(date +%s.%N)
      step=$(curl -s $B/api/runs/$id | field step)
      kill $pid; wait $pid 2>/dev/null || true
      rm -rf "$data"
      printf '{"bin":"%s","round":%d,"delay_s":%s,"cancel_to_cancelled_s":%.2f,"steps_done":%s}\n' \
        "$bin" "$round" "$delay" "$(echo "$t2 - $t1" | bc)" "$step" | tee -a "$here/cancel.jsonl"
    done
  done
done
