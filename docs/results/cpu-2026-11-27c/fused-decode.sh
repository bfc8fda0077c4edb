#!/usr/bin/env bash
# Composed ops vs the fused decode ops (model/fused.rs), same process per line
# pair: `bench decode --fused false,true`, f32 on this machine's CPU.
set -eu
A=${A:-target/release/amortize}
$A bench decode --random tiny --batch 1,8,64 --new-tokens 64 --fused false,true
$A bench decode --random smollm2-135m --batch 1,16 --new-tokens 32 --fused false,true
$A bench decode --random smollm2-135m --batch 1,16 --new-tokens 32 --fused true,false
