#!/usr/bin/env bash
# The test command (README, CI): fetch the models, build the browser app,
# install Chromium + its WebDriver for the browser test, then every test of the
# workspace's default members (backend, shared, tests).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/build-frontend.sh
./scripts/browser-setup.sh
cargo test --locked "$@"
