#!/usr/bin/env bash
# The reward's context run once per batch (copied to every row) vs once per row;
# same script, same machine, nothing else running. CPU, random SmolLM2-135M, f32.
for bin in before after; do
  echo "## $bin"; /tmp/amortize-$bin-ctx bench reward --random smollm2-135m --n 5,20 --batch 8 --y-len 8 --context-len 32 --json
done
