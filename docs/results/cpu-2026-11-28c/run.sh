#!/usr/bin/env bash
# CPU speed A/B of session 16, this 2-core machine, random SmolLM2-135M shape, f32,
# separate processes alternated. Binaries (all debug profile, as scripts/run.sh builds):
#   BEFORE  commit b797592's code and Cargo profile (dependencies with debug assertions),
#           run with AMORTIZE_FLUSH_DENORMALS=0 (the flush did not exist then)
#   NOFLIP  this session's code and profile with model::linear's flipped products off
#   FLIP    this session's code and profile (what the commit ships)
set -u
BEFORE=${BEFORE:-/tmp/amortize-before} NOFLIP=${NOFLIP:-/tmp/amortize-noflip2} FLIP=${FLIP:-/tmp/amortize-flip2}
tag() { sed "s/^{/{\"variant\": \"$1\", \"round\": $2, /"; }
for r in 1 2; do
  for v in NOFLIP FLIP; do
    ${!v} bench decode --random smollm2-135m --batch 1,2,4,8,16 --new-tokens 16 --lora-r 64 --json 2>/dev/null | tag $v $r >> decode.jsonl
  done
  for g in 0 1; do
    AMORTIZE_GEMV=$g $FLIP bench decode --random smollm2-135m --batch 1,2,4 --new-tokens 32 --json 2>/dev/null | tag "FLIP gemv=$g" $r >> gemv.jsonl
  done
  AMORTIZE_FLUSH_DENORMALS=0 $BEFORE bench step --random smollm2-135m --task rng --batch 16 --steps 2 --phases true --json 2>/dev/null | tail -1 | tag BEFORE $r >> step-rng16.jsonl
  AMORTIZE_FLUSH_DENORMALS=0 $NOFLIP bench step --random smollm2-135m --task rng --batch 16 --steps 2 --phases true --json 2>/dev/null | tail -1 | tag "NOFLIP ftz=0" $r >> step-rng16.jsonl
  $NOFLIP bench step --random smollm2-135m --task rng --batch 16 --steps 2 --phases true --json 2>/dev/null | tail -1 | tag NOFLIP $r >> step-rng16.jsonl
  $FLIP bench step --random smollm2-135m --task rng --batch 16 --steps 2 --phases true --json 2>/dev/null | tail -1 | tag FLIP $r >> step-rng16.jsonl
  AMORTIZE_FLUSH_DENORMALS=0 $BEFORE bench step --random smollm2-135m --task arithmetic --batch 1 --steps 2 --phases true --json 2>/dev/null | tail -1 | tag BEFORE $r >> step-arith1.jsonl
  $FLIP bench step --random smollm2-135m --task arithmetic --batch 1 --steps 2 --phases true --json 2>/dev/null | tail -1 | tag FLIP $r >> step-arith1.jsonl
done
