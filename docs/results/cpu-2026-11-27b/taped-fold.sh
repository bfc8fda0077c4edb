#!/usr/bin/env bash
# CPU, random weights of the SmolLM2-135M shape (f32) unless noted; every
# comparison runs in one process: the first --backward is the baseline.
set -euo pipefail
A=${AMORTIZE:-./target/debug/amortize}
echo "## step: autograd vs taped backward (arithmetic, batch 8, |Z| <= 20, LoRA r64)"
$A bench step --task arithmetic --random smollm2-135m --batch 8 --max-len 20 --steps 2 --phases true --backward autograd,taped --json
echo "## decode through a LoRA r64 adapter vs the same adapter folded into the weights"
$A bench decode --random smollm2-135m --batch 1,16 --new-tokens 16 --lora-r 64 --json
echo "## the same on the tiny model (per-op overhead, not FLOPs, bounds it)"
$A bench decode --random tiny --batch 1,8,64 --new-tokens 64 --lora-r 64 --json
