#!/usr/bin/env bash
# The real SmolLM2-135M-Instruct (GGUF Q4_1, dequantised to f32), `bench step --task rng
# --batch 16`: BEFORE (commit b797592's code and profile, subnormals kept) against
# FINAL (this session's last code), alternated processes.
set -u
BEFORE=${BEFORE:-/tmp/amortize-before} FINAL=${FINAL:-/tmp/amortize-final}
M=${M:-../../../models/SmolLM2-135M-Instruct.Q4_1.gguf}
for r in 1 2; do
  AMORTIZE_FLUSH_DENORMALS=0 $BEFORE bench step --model "$M" --task rng --batch 16 --steps 3 --phases true --json 2>/dev/null | tail -1 | sed "s/^{/{\"variant\": \"BEFORE\", \"round\": $r, /" >> real-rng16.jsonl
  $FINAL bench step --model "$M" --task rng --batch 16 --steps 3 --phases true --json 2>/dev/null | tail -1 | sed "s/^{/{\"variant\": \"FINAL\", \"round\": $r, /" >> real-rng16.jsonl
done
