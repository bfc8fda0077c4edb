#!/usr/bin/env bash
# The CPU's default gemv row limit, 4 (FLIP, as run.sh) against 1 (ROWS1: this
# session's final code), default settings otherwise, alternated processes.
set -u
FLIP=${FLIP:-/tmp/amortize-flip2} ROWS1=${ROWS1:-/tmp/amortize-rows1}
for r in 1 2; do
  for v in FLIP ROWS1; do
    ${!v} bench decode --random smollm2-135m --batch 1,2,4 --new-tokens 32 --lora-r 64 --json 2>/dev/null | sed "s/^{/{\"variant\": \"$v\", \"round\": $r, /" >> rows.jsonl
  done
done
