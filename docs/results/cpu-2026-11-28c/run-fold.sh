#!/usr/bin/env bash
# Training-step sampling from the folded adapter on the CPU (`bench step --fold`),
# this session's final code, alternated processes.
set -u
A=${A:-/tmp/amortize-rows1}
for r in 1 2; do
  for f in false true; do
    $A bench step --random smollm2-135m --task rng --batch 16 --steps 2 --phases true --fold $f --json 2>/dev/null | tail -1 | sed "s/^{/{\"round\": $r, /" >> fold-rng16.jsonl
    $A bench step --random smollm2-135m --task arithmetic --batch 1 --steps 2 --phases true --fold $f --json 2>/dev/null | tail -1 | sed "s/^{/{\"round\": $r, /" >> fold-arith1.jsonl
  done
done
