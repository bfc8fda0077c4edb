#!/usr/bin/env bash
# Builds the CUDA flavour of `amortize` and of the engine's test binaries on this
# (GPU-less) machine with ../shared/gpu/build-cuda.sh, then packs them into .gpu/
# (git-ignored) for one device call: carry [".gpu"], run scripts/gpu/run.sh there.
set -euo pipefail
cd "$(dirname "$0")/../.."
EX=$(git rev-parse --git-path info/exclude); mkdir -p "$(dirname "$EX")"; grep -qx '/.gpu/' "$EX" 2>/dev/null || echo /.gpu/ >> "$EX"
mkdir -p .gpu
../shared/gpu/build-cuda.sh -p amortize --features cuda --bins --tests
T=${CARGO_TARGET_DIR:-target-cuda}/release
# Stripped and xz -6: the seven binaries must fit one call's 64 MiB carry.
pack() { local tmp; tmp=$(mktemp); cp "$1" "$tmp"; strip "$tmp"; xz -T2 -6 -c "$tmp" > "$2"; rm -f "$tmp"; }
pack "$T/amortize" .gpu/amortize.xz
# The newest test executable of each integration test.
for t in engine decoding fused gemv taped parity; do
  bin=$(find "$T/deps" -maxdepth 1 -type f -executable -name "$t-*" -printf '%T@ %p\n' | sort -rn | head -n 1 | cut -d' ' -f2)
  [ -n "$bin" ] || { echo "no test binary for $t" >&2; exit 1; }
  pack "$bin" ".gpu/test-$t.xz"
done
git rev-parse HEAD > .gpu/COMMIT
ls -la .gpu; du -sh .gpu
