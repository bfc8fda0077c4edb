#!/usr/bin/env bash
# A/B of `amortize` builds, alternated process by process: `bench step` at
# batch 16 (2 steps after the warm-up) for each task in TASKS, on the real
# SmolLM2 GGUF (f32, LoRA r64), for each binary named on the command line
# (labelled by file name). A name ending in "+tunables" runs that binary with
# glibc's mmap disabled and trimming off (GLIBC_TUNABLES). Each line gets the
# process's user and system seconds and peak RSS from /usr/bin/time.
#   TASKS="infill rng" TAG=x bash step.sh /tmp/amz-glibc /tmp/amz-exp ...   (appends to step-x.jsonl)
set -euo pipefail
out=$(cd "$(dirname "$0")" && pwd)
cd "$out/../../.."
for round in 1 2; do
  for task in ${TASKS:-infill rng}; do
    for spec in "$@"; do
      bin=${spec%+tunables}
      label=$(basename "$spec")
      env=()
      [ "$spec" != "$bin" ] && env=(GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=8589934592)
      line=$(env "${env[@]}" /usr/bin/time -f '%U %S %M' -o /tmp/alloc-time "$bin" bench step --task "$task" --batch 16 --steps 2 --json 2>/dev/null | tail -1)
      read -r u s m < /tmp/alloc-time
      echo "$line" | sed "s/^{/{\"build\":\"$label\",\"round\":$round,\"user_s\":$u,\"sys_s\":$s,\"max_rss_kb\":$m,/" >> "$out/step-${TAG:-alloc}.jsonl"
    done
  done
done
