#!/usr/bin/env bash
# The test command (README, CI): fetch the models, then every test of the
# workspace's default members (backend, shared, tests).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo test --locked "$@"
