#!/usr/bin/env bash
# Start-up of a training run: wall time of `train --task T --steps 1` minus
# the step itself (as the run reports it), for each binary named on the
# command line, alternated process by process, 2 rounds. Each run's replay
# buffer is kept so that the builds' seeded buffers can be compared.
#   TASKS="arithmetic infill subj" bash startup.sh /tmp/amzA /tmp/amzB   (appends to startup.jsonl)
set -euo pipefail
out=$(cd "$(dirname "$0")" && pwd)
cd "$out/../../.."
for round in 1 2; do
  for task in ${TASKS:-arithmetic infill subj}; do
    for bin in "$@"; do
      label=$(basename "$bin")
      dir=/tmp/startup-$label-$task
      rm -rf "$dir"
      start=$(date +%s.%N)
      step=$("$bin" train --task "$task" --steps 1 --out "$dir" 2>&1 | sed -n 's/^trained 1 steps in \([0-9.]*\) s$/\1/p')
      end=$(date +%s.%N)
      echo "{\"build\":\"$label\",\"round\":$round,\"task\":\"$task\",\"wall_s\":$(echo "$end - $start" | bc),\"step_s\":$step}" >> "$out/startup.jsonl"
    done
  done
done
