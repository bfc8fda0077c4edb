#!/usr/bin/env bash
# Build the web UI (frontend/, Leptos CSR) with Trunk into frontend/dist.
#
# Installs what it needs first: the wasm32 target, `trunk`, and the
# `wasm-bindgen` CLI at exactly the version of the wasm-bindgen crate in
# Cargo.lock (the CLI and the crate must match). Trunk then runs with
# --offline, so it uses those binaries from PATH and never tries to download
# one. Crates are fetched beforehand by cargo, the ordinary way.
#
# wasm-opt: index.html turns Trunk's wasm-opt step off (data-wasm-opt="0"),
# because Trunk would otherwise need a wasm-opt binary and, offline, fail
# without one. If a `wasm-opt` of binaryen >= 116 is on PATH (package
# binaryen), this script runs it on the built .wasm afterwards;
# Trunk is then told to skip subresource-integrity hashes (--no-sri), which
# that rewrite would invalidate. Older ones are skipped: Debian 12's binaryen
# 108 turns wasm-bindgen's externref table into one the browser rejects
# ("WebAssembly.Table.set(): ... must be null or a Wasm function object"),
# even at -O0; 116 and 123 were tested fine. Set WASM_OPT=0 to skip it.
#
# Env: TRUNK_VERSION (default below), WASM_OPT=0.
set -euo pipefail
cd "$(dirname "$0")/.."

# trunk 0.22.x needs rustc >= 1.96.1; 0.21.x builds with the toolchain here.
TRUNK_VERSION=${TRUNK_VERSION:-0.21.14}
TARGET=wasm32-unknown-unknown
DIST=frontend/dist
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

say() { echo "build-frontend: $*"; }

# (a) the wasm32 target
if command -v rustup >/dev/null 2>&1; then
  rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET"
fi

# The wasm-bindgen version Cargo.lock pins (there must be exactly one).
WB_VERSION=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print }' Cargo.lock | sort -u)
if [ -z "$WB_VERSION" ] || [ "$(printf '%s\n' "$WB_VERSION" | wc -l)" -ne 1 ]; then
  say "expected one wasm-bindgen version in Cargo.lock, found: '${WB_VERSION//$'\n'/ }'" >&2
  exit 1
fi

# (b) the tools. cargo install builds in a temporary directory of its own.
# --locked first; if the tool's own lock file names a crate version that the
# registry no longer serves (yanked: wasm-bindgen-cli 0.2.130 pins
# webpki-roots 1.0.11), resolve its dependencies afresh instead.
install() {
  env -u CARGO_TARGET_DIR cargo install --locked "$@" ||
    { say "cargo install --locked $* failed; retrying without --locked"
      env -u CARGO_TARGET_DIR cargo install "$@"; }
}
if ! command -v trunk >/dev/null 2>&1; then
  say "installing trunk $TRUNK_VERSION (takes a while)"
  t=$SECONDS
  install trunk --version "$TRUNK_VERSION"
  say "trunk installed in $((SECONDS - t)) s"
fi
have_wb=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have_wb" != "$WB_VERSION" ]; then
  say "installing wasm-bindgen-cli $WB_VERSION (found: ${have_wb:-none})"
  t=$SECONDS
  install wasm-bindgen-cli --version "$WB_VERSION"
  say "wasm-bindgen-cli installed in $((SECONDS - t)) s"
  have_wb=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)
  if [ "$have_wb" != "$WB_VERSION" ]; then
    say "wasm-bindgen on PATH is ${have_wb:-missing}, not $WB_VERSION: $(command -v wasm-bindgen || true)" >&2
    exit 1
  fi
fi
say "trunk: $(trunk --version), wasm-bindgen: $have_wb"

# Trunk runs cargo with --offline too, so fetch the crates first.
cargo fetch --target "$TARGET"

# (c) wasm-opt afterwards, only if present (see the top of this file).
WASM_OPT_BIN=""
if [ "${WASM_OPT:-1}" != 0 ] && command -v wasm-opt >/dev/null 2>&1; then
  # "wasm-opt version 123 (version_123)" -> 123
  wo_version=$(wasm-opt --version | awk '{print $3}' | tr -cd 0-9)
  if [ "${wo_version:-0}" -ge 116 ]; then
    WASM_OPT_BIN=$(command -v wasm-opt)
  else
    say "ignoring wasm-opt ${wo_version:-?} on PATH: binaryen < 116 breaks the app"
  fi
fi

# (d) the build: Trunk.toml points it at frontend/index.html and frontend/dist.
sri=()
[ -n "$WASM_OPT_BIN" ] && sri=(--no-sri)
TRUNK_TOOLS_WASM_BINDGEN="$WB_VERSION" trunk build --release --offline "${sri[@]}"

shopt -s nullglob
wasm=("$DIST"/*.wasm)
js=("$DIST"/*.js)
if [ ! -f "$DIST/index.html" ] || [ ${#wasm[@]} -ne 1 ] || [ ${#js[@]} -lt 1 ]; then
  say "expected index.html, one .wasm and a .js in $DIST" >&2
  ls -l "$DIST" >&2 || true
  exit 1
fi
wasm=${wasm[0]}

if [ -n "$WASM_OPT_BIN" ]; then
  before=$(stat -c %s "$wasm")
  # rustc emits these post-MVP features for wasm32 by default; binaryen
  # rejects them unless they are enabled.
  "$WASM_OPT_BIN" -Oz --enable-bulk-memory --enable-nontrapping-float-to-int \
    --enable-sign-ext --enable-mutable-globals --enable-reference-types \
    --enable-multivalue "$wasm" -o "$wasm.opt"
  mv "$wasm.opt" "$wasm"
  say "wasm-opt ($("$WASM_OPT_BIN" --version)): $before -> $(stat -c %s "$wasm") bytes"
else
  say "no usable wasm-opt: .wasm not optimised by binaryen"
fi

# (e) sizes
raw=$(stat -c %s "$wasm")
gz=$(gzip -9 -c "$wasm" | wc -c)
say "$wasm: $raw bytes raw, $gz bytes gzip -9 ($((raw / 1024)) KiB / $((gz / 1024)) KiB)"
