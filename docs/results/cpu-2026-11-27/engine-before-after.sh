#!/usr/bin/env bash
# Same script, same machine: the engine before this session (03ffb98) vs after (HEAD), CPU, random SmolLM2-135M weights.
cd /work/main
for bin in old new; do
  A=/tmp/amortize-$bin
  echo "## $bin decode"; $A bench decode --random smollm2-135m --batch 1,16 --new-tokens 16 --json
  echo "## $bin reward"; $A bench reward --random smollm2-135m --n 5,20 --batch 8 --y-len 8 --context-len 32 --json
done
echo "## old step"; /tmp/amortize-old bench step --task arithmetic --random smollm2-135m --batch 8 --steps 2 --json
echo "## new step"; /tmp/amortize-new bench step --task arithmetic --random smollm2-135m --batch 8 --steps 2 --lora-r 16 --phases true --json
