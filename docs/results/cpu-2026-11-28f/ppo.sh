#!/usr/bin/env bash
# PPO on infilling: `compare --methods ppo --steps 3` (one test story, one
# sample) with each binary named, alternated, two rounds; prints each
# training step's seconds from the run's metrics.jsonl (ppo-ROUND.jsonl).
set -euo pipefail
out=$(cd "$(dirname "$0")" && pwd)
cd "$out/../../.."
for round in 1 2; do
  for bin in "$@"; do
    dir=$(mktemp -d)
    "$bin" compare --task infill --methods ppo --steps 3 --samples 1 --limit 1 --out "$dir" > /dev/null 2>&1
    python3 -c "
import json, sys
for l in open('$dir/ppo-seed0/metrics.jsonl'):
    d = json.loads(l)
    print(json.dumps({'build': '$(basename "$bin")', 'round': $round, 'step': d['step'], 'seconds': d['seconds'], 'mean_len': d.get('mean_len')}))
" >> "$out/ppo.jsonl"
    rm -rf "$dir"
  done
done
