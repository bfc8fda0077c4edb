#!/usr/bin/env bash
# A/B of `amortize` builds, alternated process by process: `bench step` at
# batch 16 (2 steps after the warm-up, phases timed) for each task in TASKS,
# on the real SmolLM2 GGUF (f32, LoRA r64), for each binary named on the
# command line (labelled by file name). Each line gets the process's user and
# system seconds and peak RSS from /usr/bin/time.
#   TASKS="infill arithmetic" TAG=x bash step.sh /tmp/amzA /tmp/amzB   (appends to step-x.jsonl)
set -euo pipefail
out=$(cd "$(dirname "$0")" && pwd)
cd "$out/../../.."
for round in 1 2; do
  for task in ${TASKS:-infill arithmetic}; do
    for bin in "$@"; do
      label=$(basename "$bin")
      line=$(/usr/bin/time -f '%U %S %M' -o /tmp/step-time "$bin" bench step --task "$task" --batch 16 --steps 2 --phases true --json 2>/dev/null | tail -1)
      read -r u s m < /tmp/step-time
      echo "$line" | sed "s/^{/{\"build\":\"$label\",\"round\":$round,\"user_s\":$u,\"sys_s\":$s,\"max_rss_kb\":$m,/" >> "$out/step-${TAG:-ab}.jsonl"
    done
  done
done
