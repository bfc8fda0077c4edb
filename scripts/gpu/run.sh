#!/usr/bin/env bash
# Runs on the lent GPU machine, in one call: the engine's equality tests on CUDA,
# the SmolLM2 parity test on CUDA (when the model was carried to $GPU_DIR), and
# decode benchmarks (random SmolLM2-135M weights; f32 and bf16). Writes logs to
# $OUT and prints a short table last. Expects the binaries unpacked in $GPU_DIR
# (scripts/gpu/unpack.sh).
set -u
G=${GPU_DIR:-/tmp/amz}
OUT=${OUT:-/tmp/amz-out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/cuda/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
rows=()
if [ -x "$G/test-engine" ]; then
  AMORTIZE_TEST_DEVICE=cuda timeout 300 "$G/test-engine" --test-threads 1 > "$OUT/engine.txt" 2>&1
  rows+=("engine tests (cuda, f32)|$(grep -E '^test result' "$OUT/engine.txt" | tail -1)")
fi
if [ -x "$G/test-parity" ] && [ -f "$G/model.gguf" ]; then
  AMORTIZE_MODEL="$G/model.gguf" AMORTIZE_TEST_DATA="$PWD/backend/tests/data" AMORTIZE_TEST_DEVICE=cuda \
    timeout 300 "$G/test-parity" --nocapture > "$OUT/parity.txt" 2>&1
  rows+=("parity (cuda, f32)|$(grep -E 'max \|' "$OUT/parity.txt" | tail -1) $(grep -E '^test result' "$OUT/parity.txt" | cut -c1-40)")
fi
for dt in f32 bf16; do
  timeout 300 "$G/amortize" bench decode --random smollm2-135m --device cuda --dtype $dt --batch 1,8,64 \
    --new-tokens 64 --recompute --json > "$OUT/decode-$dt.jsonl" 2> "$OUT/decode-$dt.err"
  while read -r line; do
    rows+=("decode $dt batch $(echo "$line" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["batch"], "| %.0f tok/s cached, %.0f recompute, %.1fx" % (d["tokens_per_s"], d["recompute_tokens_per_s"], d["speedup"]))')")
  done < "$OUT/decode-$dt.jsonl"
done
for b in 16 64; do
  timeout 240 "$G/amortize" bench step --random smollm2-135m --device cuda --dtype f32 --batch $b --max-len 20 --steps 3 --json > "$OUT/step-$b.json" 2> "$OUT/step-$b.err"
  rows+=("step arithmetic f32 batch $b|$(cat "$OUT/step-$b.json" "$OUT/step-$b.err" | head -c 300)")
done
timeout 240 "$G/amortize" bench reward --random smollm2-135m --device cuda --n 5,20,50 --batch 8 > "$OUT/reward.txt" 2>&1
rows+=("reward shared vs naive|$(tail -3 "$OUT/reward.txt" | tr '\n' ';')")
# The paper's §4.1 on the real SmolLM2 (needs the model): eval base, train, eval adapter.
if [ -f "$G/model.gguf" ] && [ "${RNG:-1}" = 1 ]; then
  A="$G/amortize"
  timeout 120 "$A" eval --task rng --model "$G/model.gguf" --device cuda --samples 10000 --batch 500 --json > "$OUT/rng-base.json" 2> "$OUT/rng-base.err"
  rm -rf /tmp/amz-rng
  ( time timeout 300 "$A" train --task rng --model "$G/model.gguf" --device cuda --out /tmp/amz-rng --quiet ${RNG_ARGS:-} ) > "$OUT/rng-train.log" 2>&1
  cp /tmp/amz-rng/metrics.jsonl "$OUT/rng-metrics.jsonl" 2>/dev/null
  timeout 120 "$A" eval --task rng --model "$G/model.gguf" --adapter /tmp/amz-rng/adapter --device cuda --samples 10000 --batch 500 --json > "$OUT/rng-gfn.json" 2> "$OUT/rng-gfn.err"
  rows+=("rng base|$(cat "$OUT/rng-base.json" "$OUT/rng-base.err" | head -c 300)")
  rows+=("rng train|$(grep -E '^real|trained' "$OUT/rng-train.log" | tr '\n' ' ')")
  rows+=("rng gfn|$(cat "$OUT/rng-gfn.json" "$OUT/rng-gfn.err" | head -c 300)")
fi
echo
echo "=== summary ==="
for r in "${rows[@]}"; do echo "$r"; done
