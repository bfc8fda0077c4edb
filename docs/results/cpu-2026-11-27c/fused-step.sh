#!/usr/bin/env bash
# Composed vs fused ops in a whole GFlowNet step (sampling, reward, taped
# backward), same process: `bench step --fused false,true`, f32 on this CPU.
set -eu
A=${A:-target/release/amortize}
$A bench step --random smollm2-135m --task arithmetic --batch 8 --steps 2 --phases true --fused false,true
