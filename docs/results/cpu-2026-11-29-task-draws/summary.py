# Per source: mean log R of its own draws (T = 1), the share whose last number is the answer,
# the share the policy stopped (not cut at max_len), and the calculator calls ('=') per draw.
import json, os, re, sys, statistics as st
DIR = os.environ.get("DIR", ".")
for src in sys.argv[1:]:
    rows = [json.loads(l) for l in open(f"{DIR}/{src}.jsonl")]
    lr = [r["log_r"] for r in rows]
    right = 0
    for r in rows:
        q = re.search(r"Question: (.*) = \? Answer:", r["prompt"]).group(1)
        ans = eval(q)
        nums = re.findall(r"-?\d+", r["text"])
        right += bool(nums) and int(nums[-1]) == ans
    print(f"{src:15s} draws {len(rows):3d}  mean log R {st.mean(lr):7.2f}  median {st.median(lr):7.2f}  last number = answer {right/len(rows):.2f}  stopped {sum(r['stopped'] for r in rows)/len(rows):.2f}  '=' per draw {st.mean(r['text'].count('=') for r in rows):.2f}")
