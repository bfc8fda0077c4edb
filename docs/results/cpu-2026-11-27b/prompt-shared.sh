#!/usr/bin/env bash
# The taped pass with the prompt repeated in every row (before) vs run once for
# the batch (after); same script, same machine, nothing else running.
# CPU, random SmolLM2-135M, f32, arithmetic (LoRA r64, dropout 0.1), batch 8.
for bin in /tmp/amortize-after-ctx /tmp/amortize-shared; do
  echo "## $bin"; $bin bench step --task arithmetic --random smollm2-135m --batch 8 --max-len 20 --steps 2 --phases true --backward taped --json
done
