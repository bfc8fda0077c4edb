#!/usr/bin/env bash
# Runs on the lent GPU machine, in one call: the engine's equality tests on CUDA,
# the SmolLM2 parity test on CUDA (when the model was carried to $GPU_DIR), the
# decode / step / reward benchmarks (random SmolLM2-135M weights), and the RNG
# task on the real SmolLM2 (eval base, train, eval adapter). At most 8 files go
# to $OUT; a short table is printed last. Binaries are unpacked in $GPU_DIR by
# scripts/gpu/unpack.sh. Sections can be skipped: SKIP="engine parity decode step reward rng".
set -u
G=${GPU_DIR:-/tmp/amz}
OUT=${OUT:-/tmp/amz-out}
A="$G/amortize"
mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/cuda/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
skip() { case " ${SKIP:-} " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
rows=("gpu|$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)")
if ! skip engine && [ -x "$G/test-engine" ]; then
  AMORTIZE_TEST_DEVICE=cuda timeout 300 "$G/test-engine" --test-threads 1 > "$OUT/engine.txt" 2>&1
  rows+=("engine tests (cuda, f32)|$(grep -E '^test result' "$OUT/engine.txt" | tail -1)")
fi
if ! skip parity && [ -x "$G/test-parity" ] && [ -f "$G/model.gguf" ]; then
  AMORTIZE_MODEL="$G/model.gguf" AMORTIZE_TEST_DATA="$PWD/backend/tests/data" AMORTIZE_TEST_DEVICE=cuda \
    timeout 300 "$G/test-parity" --nocapture > "$OUT/parity.txt" 2>&1
  rows+=("parity (cuda, f32)|$(grep -E 'max \|' "$OUT/parity.txt" | tail -1) $(grep -E '^test result' "$OUT/parity.txt" | cut -c1-40)")
fi
if ! skip decode; then
  for dt in f32 bf16; do
    timeout 300 "$A" bench decode --random smollm2-135m --device cuda --dtype $dt --batch 1,8,64 \
      --new-tokens 64 --recompute --json >> "$OUT/decode.jsonl" 2>> "$OUT/decode.jsonl"
  done
  rows+=("decode|$(grep -c tokens_per_s "$OUT/decode.jsonl") rows in decode.jsonl")
fi
if ! skip step; then
  for b in 16 64; do
    timeout 240 "$A" bench step --random smollm2-135m --device cuda --dtype f32 --batch $b --max-len 20 --steps 3 --json >> "$OUT/step.jsonl" 2>&1
  done
  rows+=("step|$(cut -c1-200 "$OUT/step.jsonl" | tr '\n' ' ')")
fi
if ! skip reward; then
  timeout 240 "$A" bench reward --random smollm2-135m --device cuda --n 5,20,50 --batch 8 > "$OUT/reward.txt" 2>&1
  rows+=("reward shared vs naive|$(tail -3 "$OUT/reward.txt" | tr '\n' ';')")
fi
if ! skip rng && [ -f "$G/model.gguf" ]; then
  R="$OUT/rng.txt"
  { echo "# base"; timeout 150 "$A" eval --task rng --model "$G/model.gguf" --device cuda --samples 10000 --batch 500 --json; } > "$R" 2>&1
  rm -rf /tmp/amz-rng
  { echo "# train"; ( time timeout 400 "$A" train --task rng --model "$G/model.gguf" --device cuda --out /tmp/amz-rng --quiet ${RNG_ARGS:-} ) ; } >> "$R" 2>&1
  cp /tmp/amz-rng/metrics.jsonl "$OUT/rng-metrics.jsonl" 2>/dev/null
  { echo "# gfn"; timeout 150 "$A" eval --task rng --model "$G/model.gguf" --adapter /tmp/amz-rng/adapter --device cuda --samples 10000 --batch 500 --json; } >> "$R" 2>&1
  rows+=("rng|$(grep -E '^\{|^real|trained' "$R" | tr '\n' ' ' | cut -c1-600)")
fi
{ echo "=== summary ==="; for r in "${rows[@]}"; do echo "$r"; done; } | tee "$OUT/summary.txt"
