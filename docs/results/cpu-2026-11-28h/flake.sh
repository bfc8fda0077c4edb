#!/usr/bin/env bash
# Runs the browser test N times (default 20) with BUSY cores kept busy
# (`yes`; default 1), as when the machine also compiles; prints failures and
# the command that timed out. Uses whatever frontend/dist and
# target/debug/amortize hold.
# Usage: BUSY=2 bash flake.sh [N] [TAG]   (from the repository root)
set -uo pipefail
n=${1:-20}; tag=${2:-run}
busy=()
for _ in $(seq 1 "${BUSY:-1}"); do yes > /dev/null & busy+=($!); done
trap 'kill "${busy[@]}"' EXIT
fails=0
for i in $(seq 1 "$n"); do
  log=$(mktemp)
  cargo test -q -p amortize-tests --test browser > "$log" 2>&1
  if grep -q panicked "$log"; then
    fails=$((fails + 1))
    echo "$tag try $i failed: $(grep -m1 -A1 panicked "$log" | tail -1 | cut -c1-160)"
    pkill -f /usr/lib/chromium/chromium || true
  fi
  rm -f "$log"
done
echo "$tag (busy ${BUSY:-1}): $fails of $n failed"
