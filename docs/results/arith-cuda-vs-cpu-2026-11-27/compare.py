"""Loss curves of the same arithmetic run on CUDA and on the CPU, in windows of
20 steps: mean and standard error of each metric per window, and the
difference in units of its standard error. Usage: python3 compare.py CUDA.jsonl CPU.jsonl"""
import json
import statistics as st
import sys


def load(path):
    return {d["step"]: d for d in (json.loads(line) for line in open(path) if line.startswith("{"))}


cuda, cpu = load(sys.argv[1]), load(sys.argv[2])
steps = sorted(set(cuda) & set(cpu))
print(f"{len(steps)} common steps ({min(steps)}..{max(steps)})")
for key in ["loss", "mean_log_r", "log_z", "mean_len"]:
    print(f"\n{key}: window | CUDA mean ± se | CPU mean ± se | (CUDA - CPU) / se")
    zs = []
    for lo in range(1, max(steps) + 1, 20):
        w = [s for s in steps if lo <= s < lo + 20]
        if len(w) < 2:
            continue
        a, b = [cuda[s][key] for s in w], [cpu[s][key] for s in w]
        se = (st.variance(a) / len(a) + st.variance(b) / len(b)) ** 0.5
        z = (st.mean(a) - st.mean(b)) / se if se > 0 else 0.0
        zs.append(z)
        print(f"  {lo:3}-{w[-1]:3} | {st.mean(a):8.2f} ± {st.variance(a) ** 0.5 / len(a) ** 0.5:6.2f} | {st.mean(b):8.2f} ± {st.variance(b) ** 0.5 / len(b) ** 0.5:6.2f} | {z:+5.2f}")
    print(f"  windows with |z| > 2: {sum(abs(z) > 2 for z in zs)} of {len(zs)}")
