#!/usr/bin/env bash
# A/B of the CPU builds named on the command line (paths to `amortize`
# binaries, each labelled by its file name), alternated process by process:
# decode at batch 1–64 and `bench step` for rng and arithmetic at batch 16, on
# the real SmolLM2 GGUF (scripts/setup.sh), f32, LoRA r64.
#   bash run.sh /tmp/amortize-base /tmp/amortize-few ...  > log
# TAG=x writes decode-x.jsonl and step-x.jsonl instead.
set -euo pipefail
out=$(cd "$(dirname "$0")" && pwd)
cd "$out/../../.."
for round in 1 2; do
  for bin in "$@"; do
    label=$(basename "$bin")
    "$bin" bench decode --batch 1,2,4,8,16,64 --new-tokens 32 --json 2>/dev/null \
      | sed "s/^{/{\"build\":\"$label\",\"round\":$round,/" >> "$out/decode${TAG:+-$TAG}.jsonl"
  done
  for task in rng arithmetic; do
    for bin in "$@"; do
      label=$(basename "$bin")
      "$bin" bench step --task "$task" --batch 16 --steps 2 --json 2>/dev/null | tail -1 \
        | sed "s/^{/{\"build\":\"$label\",\"round\":$round,/" >> "$out/step${TAG:+-$TAG}.jsonl"
    done
  done
done
