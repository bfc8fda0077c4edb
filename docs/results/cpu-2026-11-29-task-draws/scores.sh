#!/usr/bin/env bash
# log R (T = 1) of Z's for problem 53 (3 - 2 + 8 - 9, answer 0) under the arithmetic reward,
# the calculator's answers placed by `score --task`. Run from the repository root.
set -euo pipefail
A=${AMORTIZE:-target/debug/amortize}
for z in " 3 - 2 = 1, 1 + 8 = 9, 9 - 9 = 0" " 3 - 2" " 3 - 2 = 1" " 3 - 2 + 8 - 9 = -1"; do
  "$A" score --task arithmetic --problem 53 --text "$z" | tail -1
done
