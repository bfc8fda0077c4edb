"""log R (T = 1) of the rationales an evaluation kept (samples/*.json: the
first of the 10 drawn at T = 0.1 for each of its first 10 questions), under
the arithmetic reward: log p_LM(Z ". The answer is A." | 3 demonstrations, X),
A the right answer. Run from the repository root; prints a line per rationale
and the mean per file."""
import json, subprocess, sys

def worked(r):
    return ', '.join(f"{s.strip().rstrip('=').strip()} = {eval(s.strip().rstrip('=').strip())}" for s in r.split(','))

demos = json.load(open('../shared/data/arithmetic/1digit_34_op+-_train_50.json'))
prefix = ''.join(f"{x['str_query']} {worked(x['str_rationale'])}{x['str_sol']}\n" for x in demos[:3])
amortize = sys.argv[1] if len(sys.argv) > 1 else 'target/release/amortize'
for path in sys.argv[2:]:
    scores = []
    for e in json.load(open(path))['examples']:
        z = e['rationale'].rstrip('.')
        out = subprocess.run([amortize, 'score', '--context', prefix + e['question'], '--text', f"{z}. The answer is {e['answer']}.", '--json'], capture_output=True, text=True, check=True)
        s = json.loads(out.stdout)['total']
        scores.append(s)
        print(f"{path.split('/')[-1]:22} {e['question'][10:]:24} {z!r:44} {s:8.2f}")
    print(f"{path.split('/')[-1]:22} mean {sum(scores) / len(scores):.2f} over {len(scores)}")
