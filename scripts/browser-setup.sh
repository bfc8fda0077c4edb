#!/usr/bin/env bash
# Install what the browser tests need: Debian's chromium and chromium-driver
# (the WebDriver server). Idempotent; uses apt-get as root or through sudo.
# Skipped entirely with AMORTIZE_SKIP_BROWSER=1 (the browser test then says so).
set -euo pipefail
[ "${AMORTIZE_SKIP_BROWSER:-0}" = 1 ] && exit 0
if command -v chromedriver >/dev/null 2>&1 && command -v chromium >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "browser-setup: need chromium and chromium-driver; run as root, install them, or set AMORTIZE_SKIP_BROWSER=1" >&2
    exit 1
  fi
fi
echo "browser-setup: installing chromium and chromium-driver"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver
