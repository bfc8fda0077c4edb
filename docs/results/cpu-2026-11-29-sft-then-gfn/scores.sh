#!/usr/bin/env bash
# log R (T = 1) of Z's for five test questions under the arithmetic reward:
# log p_LM(Z ". The answer is A." | 3 demonstrations, X), calculator results included.
set -euo pipefail
AMORTIZE=${AMORTIZE:-target/release/amortize}
DEMOS=$(python3 - <<'PY'
import json
d = json.load(open('../shared/data/arithmetic/1digit_34_op+-_train_50.json'))
def worked(r):
    return ', '.join(f"{s.strip().rstrip('=').strip()} = {eval(s.strip().rstrip('=').strip())}" for s in r.split(','))
print(''.join(f"{x['str_query']} {worked(x['str_rationale'])}{x['str_sol']}\n" for x in d[:3]), end='')
PY
)
score() { # question answer Z
  "$AMORTIZE" score --context "$DEMOS
Question: $1 = ? Answer:" --text "$3. The answer is $2." --json 2>/dev/null | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["total"], 2))'
}
while IFS='|' read -r q a z; do
  printf '%-14s %-40s %s\n' "$q" "$z" "$(score "$q" "$a" "$z")"
done <<'LIST'
4 + 3 + 0|7| 4 + 3 = 7, 7 + 0 = 7
4 + 3 + 0|7| 4 + 3 = 7, 7 + 0 = 7, 7 + 3 = 10
4 + 3 + 0|7| 4 + 3 = 7
3 - 7 + 4|0| 3 - 7 = -4, -4 + 4 = 0
3 - 7 + 4|0| 3 - 7 = -4
2 + 1 + 9|12| 2 + 1 = 3, 3 + 9 = 12
2 + 1 + 9|12| 2 + 1 = 3, 3 + 9 = 12, 12 + 9 = 21
2 + 1 + 9|12| 2 + 1 = 3
6 - 3 + 3|6| 6 - 3 = 3, 3 + 3 = 6
6 - 3 + 3|6| 6 - 3 = 3
0 - 9 - 7|-16| 0 - 9 = -9, -9 - 7 = -16
0 - 9 - 7|-16| 0 - 9 - 7 = 2
LIST
