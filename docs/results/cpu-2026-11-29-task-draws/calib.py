# Over all sources' draws of each problem: is the best-rated distinct Z right (its last number the answer)?
# And the margin between the best right and the best wrong Z.
import json, re, sys
by = {}
for src in sys.argv[1:]:
    for l in open(f"{src}.jsonl"):
        r = json.loads(l)
        by.setdefault(r["problem"], {})[r["text"]] = (r["log_r"], r["prompt"])
best_right, margins = 0, []
for k, zs in sorted(by.items()):
    q = re.search(r"Question: (.*) = \? Answer:", next(iter(zs.values()))[1]).group(1)
    ans = eval(q)
    def right(t):
        n = re.findall(r"-?\d+", t)
        return bool(n) and int(n[-1]) == ans
    top = max(zs, key=lambda t: zs[t][0])
    best_right += right(top)
    r = [zs[t][0] for t in zs if right(t)]
    w = [zs[t][0] for t in zs if not right(t)]
    if r and w:
        margins.append(max(r) - max(w))
print(f"problems {len(by)}; best-rated distinct Z right on {best_right}; best right - best wrong (nats), where both drawn: " + " ".join(f"{m:+.1f}" for m in margins))
