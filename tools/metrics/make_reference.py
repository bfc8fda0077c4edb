#!/usr/bin/env python3
"""Reference values for the Rust metrics in `amortize-shared` (shared/src/metrics).

Writes shared/tests/data/metric_reference.json, which shared/tests/metrics.rs
checks the Rust implementation against.

Requirements (this script installs nothing):

    python3 -m venv /tmp/metricsenv
    /tmp/metricsenv/bin/pip install sacrebleu nltk
    /tmp/metricsenv/bin/python tools/metrics/make_reference.py

Tokenization: every text is split on whitespace, exactly as the Rust callers
do. sacrebleu gets tokenize='none' (its BLEU then applies str.split()); nltk
gets the str.split() token lists.

Values recorded:
- sacrebleu sentence_bleu for each smoothing method, with and without
  effective order (the default call is smooth_method='exp',
  use_effective_order=True), on sacrebleu's 0-100 scale;
- sacrebleu corpus_bleu for each smoothing method, with and without effective
  order (the default call is 'exp', use_effective_order=False), 0-100 scale,
  on a few sub-corpora of the pairs; references are passed as streams padded
  with None where a sentence has fewer references;
- nltk sentence_bleu and corpus_bleu with SmoothingFunction().method1;
- nltk sentence_gleu and corpus_gleu;
- KL divergences computed in plain Python with math.log.
"""

import json
import logging
import math
import os
import sys

import nltk
import sacrebleu
from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu as nltk_corpus_bleu
from nltk.translate.bleu_score import sentence_bleu as nltk_sentence_bleu
from nltk.translate.gleu_score import corpus_gleu, sentence_gleu

# (hypothesis, [references]); tokens are whitespace-separated.
PAIRS = [
    # Close paraphrase, one reference: no 4-gram match.
    ("the cat sat on the mat", ["the cat is on the mat"]),
    # Identical.
    ("a quick brown fox jumps over the lazy dog", ["a quick brown fox jumps over the lazy dog"]),
    # Short hypothesis: brevity penalty, fewer than four tokens.
    ("the cat", ["the cat sat on the mat"]),
    # Zero overlap.
    ("completely unrelated words here", ["nothing in common with that"]),
    # Multiple references of different lengths; closest-length choice.
    (
        "it is a guide to action which ensures that the military always obeys the commands of the party",
        [
            "it is a guide to action that ensures that the military will forever heed party commands",
            "it is the guiding principle which guarantees the military forces always being under the command of the party",
            "it is the practical guide for the army always to heed the directions of the party",
        ],
    ),
    # Hypothesis longer than the reference; repeated words (clipping).
    ("the the the the the the the", ["the cat is on the mat"]),
    # Two references equally far from the hypothesis length (tie: shorter).
    ("one two three four five", ["one two three four", "one two three four five six"]),
    # Three tokens: no 4-grams at all.
    ("he read it", ["he read the book because he was interested"]),
    # Longer sentence, two references, partial overlap.
    (
        "sampling from the posterior over reasoning chains is intractable in general",
        [
            "sampling reasoning chains from the posterior is intractable in general",
            "in general it is intractable to sample from the posterior",
        ],
    ),
    # Word order scrambled: unigram matches only, few bigrams.
    ("mat the on sat cat the", ["the cat sat on the mat"]),
    # Single-token hypothesis matching.
    ("yes", ["yes it is"]),
    # Clipping must use the largest count in one reference ("the": 2 and 1),
    # not the sum over references.
    ("the cat and the cat and the dog", ["the cat and the dog", "a cat and a dog and the cat"]),
]

SMOOTH_METHODS = ["none", "floor", "add-k", "exp"]

# Corpora as index lists into PAIRS.
CORPORA = [
    list(range(len(PAIRS))),  # everything: every order has matches
    [0, 5, 9],  # no 4-gram match anywhere: smoothing decides
    [2, 7, 10],  # short hypotheses: no 4-grams at all (effective order)
    [3],  # zero overlap
]

KL_CASES = [
    ([0.5, 0.5], [0.25, 0.75]),
    ([0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]),
    ([0.0, 0.3, 0.7], [0.2, 0.3, 0.5]),
    ([0.7, 0.2, 0.1, 0.0], [0.6, 0.2, 0.1, 0.1]),
]

KL_COUNT_CASES = [
    ([3, 5, 0, 12], [0.2, 0.3, 0.1, 0.4]),
    ([10, 10], [0.5, 0.5]),
    ([1, 2, 3, 4, 5], [0.05, 0.1, 0.2, 0.3, 0.35]),
]


def kl(p, q):
    """KL(p || q) in nats; p_i = 0 terms are 0, q_i = 0 < p_i gives inf."""
    total = 0.0
    for pi, qi in zip(p, q):
        if pi == 0:
            continue
        if qi == 0:
            return math.inf
        total += pi * math.log(pi / qi)
    return total


def corpus_values(indices, method1):
    """sacrebleu and nltk corpus scores for the pairs at `indices`."""
    pairs = [PAIRS[i] for i in indices]
    hyps = [h for h, _ in pairs]
    # sacrebleu takes reference streams; pad with None where a sentence has
    # fewer references (sacrebleu drops None references).
    n_streams = max(len(r) for _, r in pairs)
    streams = [[r[i] if i < len(r) else None for _, r in pairs] for i in range(n_streams)]
    sacre = {}
    for method in SMOOTH_METHODS:
        for eff in (True, False):
            score = sacrebleu.corpus_bleu(
                hyps, streams, smooth_method=method, tokenize="none", use_effective_order=eff
            )
            sacre[f"{method}/{'eff' if eff else 'noeff'}"] = score.score
    hyp_toks = [h.split() for h in hyps]
    ref_toks = [[r.split() for r in refs] for _, refs in pairs]
    return {
        "indices": indices,
        "sacrebleu_corpus_bleu": sacre,
        "sacrebleu_corpus_bleu_default": sacrebleu.corpus_bleu(hyps, streams, tokenize="none").score,
        "nltk_corpus_bleu_method1": nltk_corpus_bleu(ref_toks, hyp_toks, smoothing_function=method1),
        "nltk_corpus_gleu": corpus_gleu(ref_toks, hyp_toks),
    }


def main():
    # sacrebleu warns on every sentence_bleu call without effective order.
    logging.getLogger("sacrebleu").setLevel(logging.ERROR)

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out_path = os.path.join(root, "shared", "tests", "data", "metric_reference.json")

    method1 = SmoothingFunction().method1
    sentences = []
    for hyp, refs in PAIRS:
        hyp_toks = hyp.split()
        ref_toks = [r.split() for r in refs]
        sacre = {}
        for method in SMOOTH_METHODS:
            for eff in (True, False):
                score = sacrebleu.sentence_bleu(
                    hyp, refs, smooth_method=method, tokenize="none", use_effective_order=eff
                )
                sacre[f"{method}/{'eff' if eff else 'noeff'}"] = score.score
        sentences.append(
            {
                "hypothesis": hyp,
                "references": refs,
                "sacrebleu_sentence_bleu": sacre,
                "sacrebleu_sentence_bleu_default": sacrebleu.sentence_bleu(
                    hyp, refs, tokenize="none"
                ).score,
                "nltk_sentence_bleu_method1": nltk_sentence_bleu(
                    ref_toks, hyp_toks, smoothing_function=method1
                ),
                "nltk_sentence_gleu": sentence_gleu(ref_toks, hyp_toks),
            }
        )

    corpora = [corpus_values(indices, method1) for indices in CORPORA]

    reference = {
        "generator": "tools/metrics/make_reference.py",
        "versions": {
            "python": sys.version.split()[0],
            "sacrebleu": sacrebleu.__version__,
            "nltk": nltk.__version__,
        },
        "notes": "BLEU from sacrebleu is on the 0-100 scale; nltk values are 0-1. "
        "sacrebleu_*_bleu keys are smooth_method/effective-order; "
        "corpora index into sentences.",
        "sentences": sentences,
        "corpora": corpora,
        "kl": [{"p": p, "q": q, "kl": kl(p, q)} for p, q in KL_CASES],
        "kl_from_counts": [
            {"counts": c, "target": t, "kl": kl([x / sum(c) for x in c], t)}
            for c, t in KL_COUNT_CASES
        ],
    }

    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(reference, f, indent=1)
        f.write("\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
