#!/usr/bin/env bash
# On the GPU machine: unpack whatever .gpu*/ folders this call carried into
# $GPU_DIR (outside the repository, so it survives between calls on a warm
# machine) and join model parts (model.gguf.part*) once all are there.
set -eu
G=${GPU_DIR:-/tmp/amz}
mkdir -p "$G"
for f in .gpu*/*.xz; do [ -e "$f" ] || continue; xz -dc "$f" > "$G/$(basename "$f" .xz)"; chmod +x "$G/$(basename "$f" .xz)"; done
for f in .gpu*/model.gguf.part*; do [ -e "$f" ] || continue; cp "$f" "$G/"; done
for f in .gpu*/model.sha256; do if [ -e "$f" ]; then cp "$f" "$G/"; fi; done
if [ -f "$G/model.sha256" ] && ls "$G"/model.gguf.part* >/dev/null 2>&1; then
  n=$(ls "$G"/model.gguf.part* | wc -l)
  want=$(cut -d' ' -f2 "$G/model.sha256")
  if [ "$n" -ge "$want" ]; then
    cat $(ls "$G"/model.gguf.part* | sort) > "$G/model.gguf"
    if [ "$(sha256sum "$G/model.gguf" | cut -d' ' -f1)" = "$(cut -d' ' -f1 "$G/model.sha256")" ]; then echo "model.gguf joined, checksum ok"; else echo "model.gguf checksum MISMATCH"; rm -f "$G/model.gguf"; fi
  fi
fi
ls -la "$G"
