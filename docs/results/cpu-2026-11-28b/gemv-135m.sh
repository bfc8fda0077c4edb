#!/usr/bin/env bash
# gemv blocks off/on (separate processes, alternated), random SmolLM2-135M shape, f32, CPU, dev profile.
A=./target/debug/amortize
for round in 1 2 3; do
  for g in 0 1; do
    AMORTIZE_GEMV=$g $A bench decode --random smollm2-135m --batch 1,4,8 --new-tokens 32 --json | sed "s/^{/{\"gemv_env\": $g, \"round\": $round, /"
  done
done
