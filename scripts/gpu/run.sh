#!/usr/bin/env bash
# Runs on the lent GPU machine, in one call (binaries unpacked in $GPU_DIR by
# scripts/gpu/unpack.sh): the engine's equality tests on CUDA, then the speed
# benchmarks of issue 7 on random weights of real shapes (speed does not depend
# on the values), and prints a short table last. Optional, when the real SmolLM2
# was carried to $GPU_DIR: the parity test and an RNG train/eval run.
# Sections can be skipped: SKIP="fused decode pool events stepfused engine parity hostdraw big step stepgemv steprng stepab mfu prof arith rng sanitize".
# The most decisive sections run first (the fused kernels' tests, then their
# A/B timings). The script keeps within BUDGET seconds (default 400: each
# section's timeout is cut to what is left, and sections that no longer fit are
# skipped), and after every section it rewrites $OUT/summary.txt and
# $OUT/logs.tar.xz, so a call cut short still returns what ran (at most 8 files
# come back from a call).
set -u
G=${GPU_DIR:-/tmp/amz}
FINAL=${OUT:-/tmp/amz-out}
OUT=/tmp/amz-work  # the logs; packed into $FINAL after every section
BUDGET=${BUDGET:-400}
A="$G/amortize"
rm -rf "$OUT"
mkdir -p "$OUT" "$FINAL"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/cuda/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
skip() { case " ${SKIP:-} " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
# J EXPR FILE: evaluates an f-string per JSON line (nested keys flattened: share.decode -> share_decode).
J() { python3 -c "
import json, sys
for l in open(sys.argv[2]):
    if l.startswith('{'):
        d = json.loads(l)
        d.update({k + '_' + kk: vv for k, v in list(d.items()) if isinstance(v, dict) for kk, vv in v.items()})
        print(eval(sys.argv[1], {}, d))
" "$@"; }
rows=("gpu|$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)")
# lim N: a timeout of N seconds, cut to what is left of the budget.
lim() { local w=$1 l=$((BUDGET - SECONDS - 15)); [ "$l" -lt "$w" ] && w=$l; [ "$w" -lt 1 ] && w=1; echo "$w"; }
# fits NAME [SECONDS]: whether section NAME runs (not skipped, and at least SECONDS, default 40, left).
fits() {
  skip "$1" && return 1
  [ $((BUDGET - SECONDS)) -ge "${2:-40}" ] && return 0
  rows+=("$1|not run: $((BUDGET - SECONDS)) s of the budget left"); return 1
}
# flush: the summary so far and every log, into $FINAL.
flush() {
  { echo "=== summary (${SECONDS} s) ==="; for r in "${rows[@]}"; do echo "$r"; done; } > "$FINAL/summary.txt.new"
  tar -C "$OUT" -cJf "$FINAL/logs.tar.xz.new" . && mv "$FINAL/logs.tar.xz.new" "$FINAL/logs.tar.xz"
  mv "$FINAL/summary.txt.new" "$FINAL/summary.txt"
}

if [ -x "$G/test-fused" ] && fits fused; then
  # The fused kernels (model/fused*.rs, decode/fused_rows.rs, backend/kernels/fused.cu) against the composed ops.
  AMORTIZE_TEST_DEVICE=cuda timeout $(lim 180) "$G/test-fused" --test-threads 1 --nocapture > "$OUT/fused.txt" 2>&1
  rows+=("fused-kernel tests (cuda, f32 + bf16)|$(grep -E '^test result' "$OUT/fused.txt" | tail -1) $(grep -E 'token by token' "$OUT/fused.txt") $(grep -E 'FAILED|panicked' "$OUT/fused.txt" | head -3 | tr '\n' ' ')")
  # The gemv kernel (model/gemv.rs, backend/kernels/gemv.cuh) against the composed ops, and decodes with it on and off.
  if [ -x "$G/test-gemv" ]; then
    AMORTIZE_TEST_DEVICE=cuda timeout $(lim 120) "$G/test-gemv" --test-threads 1 > "$OUT/gemv.txt" 2>&1
    rows+=("gemv tests (cuda, f32 + bf16)|$(grep -E '^test result' "$OUT/gemv.txt" | tail -1) $(grep -E 'FAILED|panicked' "$OUT/gemv.txt" | head -3 | tr '\n' ' ')")
  fi
  flush
fi
B="$OUT/bench.jsonl"
if fits decode 60; then
  # Composed ops vs the fused kernels (off by default on CUDA until this has run), same process.
  F="$OUT/fused-decode.jsonl"
  # With each setting, also the stepwise loop (draws read back after every token) against the default chunked readback.
  # ... decode steps replayed as CUDA graphs (model::graph), and the gemv blocks (model::gemv), alone and
  # with the graphs (both off by default until this has run). FUSED="false,true" adds the composed ops.
  timeout $(lim 180) "$A" bench decode --random smollm2-135m --device cuda --dtype bf16 --batch 1,8,64 --new-tokens 64 --fused "${FUSED:-true}" --stepwise --graph --gemv --json >> "$F" 2>> "$OUT/err.txt"
  rows+=("decode smollm2-135m bf16 tok/s (default / stepwise readback / CUDA-graph steps / gemv / gemv + graph)|$(J 'f"b{batch} fused={fused}: {tokens_per_s:.0f} / {stepwise_tokens_per_s or 0:.0f} / {graph_tokens_per_s or 0:.0f} / {gemv_tokens_per_s or 0:.0f} / {gemv_graph_tokens_per_s or 0:.0f} ({graphs_recorded} graphs, {gemv_passes} gemv passes)" + (f" ({over_first_setting:.2f}x)" if over_first_setting else "")' "$F" | tr '\n' ';')")
  flush
fi
if fits pool 60; then
  # The memory pool keeping its memory (the default) vs releasing it at every synchronisation
  # (AMORTIZE_CUDA_POOL_RELEASE=1, the driver's default): alternating processes.
  PL="$OUT/pool.jsonl"
  for r in 1 0 1 0; do
    AMORTIZE_CUDA_POOL_RELEASE=$r timeout $(lim 60) "$A" bench decode --random smollm2-135m --device cuda --dtype bf16 --batch 1,64 --new-tokens 64 --stepwise --json 2>> "$OUT/err.txt" | sed "s/^{/{\"release\": $r, /" >> "$PL"
  done
  for r in 1 0; do
    AMORTIZE_CUDA_POOL_RELEASE=$r timeout $(lim 90) "$A" bench step --random smollm2-135m --device cuda --dtype bf16 --batch 64 --max-len 20 --steps 3 --json 2>> "$OUT/err.txt" | sed "s/^{/{\"release\": $r, /" >> "$PL"
  done
  rows+=("pool release at sync on / off (decode tok/s default / stepwise; step s)|$(J '(f"release={release} b{batch}: {tokens_per_s:.0f} / {stepwise_tokens_per_s or 0:.0f}" if bench == "decode" else f"release={release} step b64: {sec_per_step:.3f} s (decode {phase_sec_per_step_decode*1e3:.0f} ms, backward {phase_sec_per_step_backward*1e3:.0f} ms)")' "$PL" | tr '\n' ';')")
  flush
fi
if fits events 60; then
  # cudarc's per-allocation events (kept with AMORTIZE_CUDA_EVENTS=1) vs without (the default): separate processes, same script.
  E="$OUT/events.jsonl"
  for ev in 1 0; do
    AMORTIZE_CUDA_EVENTS=$ev timeout $(lim 120) "$A" bench decode --random smollm2-135m --device cuda --dtype bf16 --batch 1,64 --new-tokens 64 --fused false,true --json 2>> "$OUT/err.txt" | sed "s/^{/{\"events\": $ev, /" >> "$E"
  done
  rows+=("decode smollm2-135m bf16 tok/s, cudarc events on / off|$(J 'f"events={events} b{batch} fused={fused}: {tokens_per_s:.0f}"' "$E" | tr '\n' ';')")
  flush
fi
if fits stepfused 60; then
  FS="$OUT/step-fused.jsonl"
  timeout $(lim 240) "$A" bench step --random smollm2-135m --device cuda --dtype bf16 --batch 64 --max-len 20 --steps 3 --fused false,true --json >> "$FS" 2>> "$OUT/err.txt"
  rows+=("step b64, fused false -> true|$(J 'f"fused={fused}: {sec_per_step:.3f} s/step, decode {phase_sec_per_step_decode*1e3:.0f} ms, reward {phase_sec_per_step_reward*1e3:.0f} ms, backward {phase_sec_per_step_backward*1e3:.0f} ms, opt {phase_sec_per_step_optimizer*1e3:.0f} ms"' "$FS" | tr '\n' ';')")
  # The prefix-shared reward alone (fused log-probabilities included), same process.
  RW="$OUT/reward-fused.jsonl"
  timeout $(lim 120) "$A" bench reward --random smollm2-135m --device cuda --dtype bf16 --n 20 --batch 64 --fused false,true,false,true --naive false --json >> "$RW" 2>> "$OUT/err.txt"
  rows+=("reward b64 n20 |Y|8, fused false -> true|$(J 'f"fused={fused}: {shared_s*1e3:.1f} ms" + (f" ({over_first_setting:.2f}x, max diff {max_abs_diff_first_setting:.1e})" if over_first_setting else "")' "$RW" | tr '\n' ';')")
  flush
fi
if [ -x "$G/test-engine" ] && fits engine; then
  AMORTIZE_TEST_DEVICE=cuda timeout $(lim 300) "$G/test-engine" --test-threads 1 > "$OUT/engine.txt" 2>&1
  rows+=("engine tests (cuda, f32)|$(grep -E '^test result' "$OUT/engine.txt" | tail -1) $(grep -E 'FAILED|panicked' "$OUT/engine.txt" | head -3 | tr '\n' ' ')")
  [ -x "$G/test-decoding" ] && AMORTIZE_TEST_DEVICE=cuda timeout $(lim 300) "$G/test-decoding" --test-threads 1 > "$OUT/decoding.txt" 2>&1
  rows+=("decoding tests (cuda, f32)|$(grep -E '^test result' "$OUT/decoding.txt" | tail -1) $(grep -E 'FAILED|panicked' "$OUT/decoding.txt" | head -3 | tr '\n' ' ')")
  # The taped backward (fused steps on and off) against autograd and finite differences.
  [ -x "$G/test-taped" ] && AMORTIZE_TEST_DEVICE=cuda timeout $(lim 180) "$G/test-taped" --test-threads 1 > "$OUT/taped.txt" 2>&1
  rows+=("taped-backward tests (cuda, f32)|$(grep -E '^test result' "$OUT/taped.txt" | tail -1) $(grep -E 'FAILED|panicked' "$OUT/taped.txt" | head -3 | tr '\n' ' ')")
  flush
fi
if [ -x "$G/test-parity" ] && [ -f "$G/model.gguf" ] && fits parity; then
  AMORTIZE_MODEL="$G/model.gguf" AMORTIZE_TEST_DATA="$PWD/backend/tests/data" AMORTIZE_TEST_DEVICE=cuda \
    timeout $(lim 300) "$G/test-parity" --nocapture > "$OUT/parity.txt" 2>&1
  rows+=("parity (cuda, f32)|$(grep -E 'max \|' "$OUT/parity.txt" | tail -1) $(grep -E '^test result' "$OUT/parity.txt" | cut -c1-40)")
  flush
fi
if fits hostdraw 60; then
  # Device-side token choice vs the host path (whole logits copied back), same process.
  timeout $(lim 240) "$A" bench decode --random smollm2-135m --device cuda --dtype bf16 --batch 1,8,64 --new-tokens 64 --host-draw --json >> "$B" 2>> "$OUT/err.txt"
  timeout $(lim 120) "$A" bench decode --random smollm2-135m --device cuda --dtype f32 --batch 64 --new-tokens 64 --json >> "$B" 2>> "$OUT/err.txt"
  rows+=("decode smollm2-135m tok/s (device draw / host draw)|$(J 'f"{dtype} b{batch}: {tokens_per_s:.0f} / {host_draw_tokens_per_s or 0:.0f}"' "$B" | tr '\n' ';')")
  # Through a LoRA r64 adapter (what training samples from) vs the same adapter folded into the weights.
  L="$OUT/lora.jsonl"
  timeout $(lim 180) "$A" bench decode --random smollm2-135m --device cuda --dtype bf16 --batch 1,64 --new-tokens 64 --lora-r 64 --json >> "$L" 2>> "$OUT/err.txt"
  rows+=("decode smollm2-135m bf16 + LoRA r64 tok/s (adapter / folded)|$(J 'f"b{batch}: {tokens_per_s:.0f} / {folded_tokens_per_s:.0f} (fold {fold_s*1e3:.0f} ms)"' "$L" | tr '\n' ';')")
  flush
fi
if fits big 60; then
  timeout $(lim 240) "$A" bench decode --random smollm2-1.7b --device cuda --dtype bf16 --batch 1 --new-tokens 64 --fused "${FUSED:-true}" --stepwise --graph --gemv --json > "$OUT/big.jsonl" 2>> "$OUT/err.txt"
  rows+=("decode smollm2-1.7b bf16 b1|$(J 'f"fused={fused}: {tokens_per_s:.1f} tok/s (stepwise {stepwise_tokens_per_s or 0:.1f}, CUDA-graph steps {graph_tokens_per_s or 0:.1f}, gemv {gemv_tokens_per_s or 0:.1f}, gemv + graph {gemv_graph_tokens_per_s or 0:.1f}), weights {weight_bytes/1e9:.2f} GB/token -> {weight_gb_per_s:.0f} GB/s (gemv {gemv_weight_gb_per_s or 0:.0f} GB/s; x gemv+graph/gemv for that)"' "$OUT/big.jsonl" | tr '\n' ';')")
  flush
fi
if fits step 60; then
  S="$OUT/step.jsonl"
  for b in ${STEP_BATCHES:-16 64}; do
    timeout $(lim 240) "$A" bench step --random smollm2-135m --device cuda --dtype bf16 --batch "$b" --max-len 20 --steps 3 --json >> "$S" 2>> "$OUT/err.txt"
  done
  rows+=("step smollm2-135m bf16 r64 |Z|<=20|$(J 'f"b{batch}: {sec_per_step:.3f} s/step {traj_per_s:.0f} traj/s (decode {share_decode:.0%} reward {share_reward:.0%} backward {share_backward:.0%} opt {share_optimizer:.0%})"' "$S" | tr '\n' ';')")
  # Sampling with decode steps replayed as CUDA graphs (between the calculator's insertions) vs eager: separate processes.
  SG="$OUT/step-graph.jsonl"
  for g in 0 1 0 1; do
    AMORTIZE_CUDA_GRAPH=$g timeout $(lim 90) "$A" bench step --random smollm2-135m --device cuda --dtype bf16 --batch 64 --max-len 20 --steps 3 --json 2>> "$OUT/err.txt" | sed "s/^{/{\"graph\": $g, /" >> "$SG"
  done
  rows+=("step b64, CUDA-graph decode steps off / on|$(J 'f"graph={graph} ({graphs_recorded} recorded): {sec_per_step:.3f} s/step, decode {phase_sec_per_step_decode*1e3:.0f} ms"' "$SG" | tr '\n' ';')")
  flush
fi
if fits stepgemv 60; then
  # Training sampling (folded adapter) at b1 and b8 with the gemv blocks off / on (and with graphs): separate processes.
  SV="$OUT/step-gemv.jsonl"
  for b in 1 8; do
    for v in "0 0" "1 0" "0 1" "1 1"; do
      set -- $v
      AMORTIZE_GEMV=$1 AMORTIZE_CUDA_GRAPH=$2 timeout $(lim 60) "$A" bench step --random smollm2-135m --device cuda --dtype bf16 --batch "$b" --max-len 20 --steps 3 --json 2>> "$OUT/err.txt" | sed "s/^{/{\"gemv\": $1, \"graph\": $2, /" >> "$SV"
    done
  done
  rows+=("step b1/b8, gemv / graph off-on|$(J 'f"b{batch} gemv={gemv} graph={graph}: {sec_per_step:.3f} s/step, decode {phase_sec_per_step_decode*1e3:.0f} ms ({gemv_passes} gemv passes, {graphs_recorded} graphs)"' "$SV" | tr '\n' ';')")
  flush
fi
if fits steprng 60; then
  # A task without a tool (rng): its sampling takes the chunked on-device decode loop.
  SR="$OUT/step-rng.jsonl"
  timeout $(lim 120) "$A" bench step --task rng --random smollm2-135m --device cuda --dtype bf16 --batch 64 --max-len 20 --steps 3 --json >> "$SR" 2>> "$OUT/err.txt"
  rows+=("step rng task b64|$(J 'f"{sec_per_step:.3f} s/step {traj_per_s:.0f} traj/s, decode {phase_sec_per_step_decode*1e3:.0f} ms, reward {phase_sec_per_step_reward*1e3:.0f} ms, backward {phase_sec_per_step_backward*1e3:.0f} ms, opt {phase_sec_per_step_optimizer*1e3:.0f} ms"' "$SR" | tr '\n' ';')")
  flush
fi
if fits stepab 60; then
  # Same process: candle's autograd vs the taped backward (sampling unfolded in both), then folded sampling.
  AB="$OUT/step-ab.jsonl"
  timeout $(lim 240) "$A" bench step --random smollm2-135m --device cuda --dtype bf16 --batch 64 --max-len 20 --steps 3 --backward autograd,taped --fold false --json >> "$AB" 2>> "$OUT/err.txt"
  rows+=("step b64 A/B (fold off)|$(J 'f"{backward}: {sec_per_step:.3f} s/step, backward phase {phase_sec_per_step_backward*1e3:.0f} ms, decode {phase_sec_per_step_decode*1e3:.0f} ms"' "$AB" | tr '\n' ';')")
  flush
fi
if fits prof 60; then
  # Where a decode step's time goes: GPU kernel time vs the wall (launch-bound when far below).
  NSYS=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
  if [ -n "$NSYS" ]; then
    timeout $(lim 120) "$NSYS" profile -o /tmp/amz-prof --force-overwrite true "$A" bench decode --random smollm2-135m --device cuda --dtype bf16 --batch 64 --new-tokens 32 > "$OUT/prof.txt" 2>&1
    timeout $(lim 120) "$NSYS" stats --report cuda_gpu_kern_sum,cuda_api_sum --format csv /tmp/amz-prof.nsys-rep 2>/dev/null | cut -c1-220 | head -60 >> "$OUT/prof.txt"
    # One b64 training step (fused on): kernel time by kernel, and the count of launches and copies.
    timeout $(lim 150) "$NSYS" profile -o /tmp/amz-prof-step --force-overwrite true env AMORTIZE_FUSED=1 "$A" bench step --random smollm2-135m --device cuda --dtype bf16 --batch 64 --max-len 20 --steps 1 > "$OUT/prof-step.txt" 2>&1
    timeout $(lim 120) "$NSYS" stats --report cuda_gpu_kern_sum,cuda_api_sum,cuda_gpu_mem_time_sum --format csv /tmp/amz-prof-step.nsys-rep 2>/dev/null | cut -c1-220 | head -80 >> "$OUT/prof-step.txt"
    rows+=("nsys|$(grep -c . "$OUT/prof.txt") lines in prof.txt, $(grep -c . "$OUT/prof-step.txt") in prof-step.txt; cuLaunchKernel calls (load, warm-up and one step): $(grep -m1 -E 'cuLaunchKernel' "$OUT/prof-step.txt" | cut -d, -f3)")
  else
    rows+=("nsys|not found")
  fi
  flush
fi
if [ -f "$G/model.gguf" ] && fits arith 60; then
  # The same arithmetic run as on the CPU (f32, seed 0): the loss curves should agree within noise.
  rm -rf /tmp/amz-arith
  ( time timeout $(lim 300) "$A" train --task arithmetic --model "$G/model.gguf" --device cuda --steps ${ARITH_STEPS:-30} --seed 0 --out /tmp/amz-arith --quiet ) > "$OUT/arith.txt" 2>&1
  cp /tmp/amz-arith/metrics.jsonl "$OUT/arith-cuda-metrics.jsonl" 2>/dev/null
  rows+=("arithmetic train on cuda|$(grep -E '^real' "$OUT/arith.txt") $(J 'f"step {step}: loss {loss:.3f} mean log R {mean_log_r:.2f}"' "$OUT/arith-cuda-metrics.jsonl" 2>/dev/null | tail -1)")
  flush
fi
if fits mfu 60; then
  M="$OUT/mfu.jsonl"
  timeout $(lim 300) "$A" bench step --random smollm2-1.7b --device cuda --dtype bf16 --batch 64 --max-len 20 --steps 2 --json >> "$M" 2>> "$OUT/err.txt"
  rows+=("step smollm2-1.7b bf16 r64 b64|$(J 'f"{sec_per_step:.3f} s/step {traj_per_s:.0f} traj/s, {model_tflops_per_s:.1f} TFLOP/s = MFU {mfu_h100_bf16:.1%} (decode {share_decode:.0%} reward {share_reward:.0%} backward {share_backward:.0%} opt {share_optimizer:.0%})"' "$M")")
  flush
fi
if [ -f "$G/model.gguf" ] && fits rng 90; then
  R="$OUT/rng.txt"
  { echo "# base"; timeout $(lim 150) "$A" eval --task rng --model "$G/model.gguf" --device cuda --samples 10000 --batch 500 --json; } > "$R" 2>&1
  rm -rf /tmp/amz-rng
  { echo "# train"; ( time timeout $(lim 400) "$A" train --task rng --model "$G/model.gguf" --device cuda --out /tmp/amz-rng --quiet ${RNG_ARGS:-} ) ; } >> "$R" 2>&1
  { echo "# gfn"; timeout $(lim 150) "$A" eval --task rng --model "$G/model.gguf" --adapter /tmp/amz-rng/adapter --device cuda --samples 10000 --batch 500 --json; } >> "$R" 2>&1
  rows+=("rng|$(grep -E '^\{|^real|trained' "$R" | tr '\n' ' ' | cut -c1-600)")
fi
if [ -x "$G/test-fused" ] && fits sanitize 120; then
  # The fused kernels under compute-sanitizer's memcheck (out-of-bounds and misaligned accesses, leaks).
  CS=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null | head -1)
  if [ -n "$CS" ]; then
    AMORTIZE_TEST_DEVICE=cuda timeout $(lim 300) "$CS" --tool memcheck --leak-check full "$G/test-fused" --test-threads 1 > "$OUT/sanitize.txt" 2>&1
    rows+=("compute-sanitizer memcheck, fused tests|$(grep -E '^test result|ERROR SUMMARY' "$OUT/sanitize.txt" | tr '\n' ' ')")
  else
    rows+=("compute-sanitizer|not found")
  fi
  flush
fi
[ -s "$OUT/err.txt" ] && rows+=("stderr|$(tail -c 600 "$OUT/err.txt" | tr '\n' ' ')")
flush
cat "$FINAL/summary.txt"
