#!/usr/bin/env bash
# log R of a few Z's for one test question under the arithmetic reward:
# log p_LM(Z ". The answer is 21." | 3 demonstrations, X), calculator results included.
set -euo pipefail
AMORTIZE=${AMORTIZE:-target/debug/amortize}
DEMOS=$(python3 - <<'PY'
import json
d = json.load(open('../shared/data/arithmetic/1digit_34_op+-_train_50.json'))
def worked(r):
    return ', '.join(f"{s.strip().rstrip('=').strip()} = {eval(s.strip().rstrip('=').strip())}" for s in r.split(','))
print(''.join(f"{x['str_query']} {worked(x['str_rationale'])}{x['str_sol']}\n" for x in d[:3]), end='')
PY
)
CTX="$DEMOS
Question: 7 + 5 + 9 = ? Answer:"
for Z in " 7 + 5 = 12, 12 + 9 = 21" " 7 + 5 + 9 = 21" " 7 + 5 + 9 = 1" " 7 + 5 + 9 = 12" " 7 + 5 = 12" " 7 + 5 = 12, 12 - 9 = 3"; do
  printf '%-28s %s\n' "$Z" "$("$AMORTIZE" score --context "$CTX" --text "$Z. The answer is 21." --json 2>/dev/null | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["total"], 2))')"
done
