#!/usr/bin/env python3
"""Reference values for the SmolLM2 parity tests (backend/tests/parity.rs).

Loads models/SmolLM2-135M-Instruct.Q4_1.gguf with Hugging Face transformers
(the GGUF is dequantised to float32 by transformers' own GGUF loader), then
writes:
  backend/tests/data/smollm2_tokens.json    token ids of a varied corpus
  backend/tests/data/smollm2_logprobs.json  per-token log p(t_i | t_<i) of fixed texts

Requirements: pip install torch transformers gguf accelerate (CPU is enough).
Usage: python3 tools/make_parity_reference.py [--model-dir models]
"""
import argparse
import json
import os

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

CORPUS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces and trailing   ",
    "runs     of      spaces",
    "tabs\tand\ttabs\t\tdouble",
    "new\nlines\n\nand\r\nwindows",
    "Café, naïve, résumé, jalapeño, Øresund, Straße",
    "日本語のテキストと中文文本",
    "한국어 텍스트",
    "emoji 🙂🚀👩‍👩‍👧 and flags 🇫🇷",
    "numbers 12345 and 3.14159 and -42 and 1,000,000",
    "1 + 2 = 3, 3 - 5 = -2.",
    "def f(x):\n    return x ** 2  # square",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "URLs: https://example.com/a?b=c&d=e",
    "Mixed: ÀÉÎÕÜ àéîõü ñ ç ß œ æ",
    "The following is a random integer drawn uniformly between 0 and 100: 37",
    "\u00a0non-breaking\u2009thin\u200bzero-width",
    "'s 't 're 've 'm 'll 'd — contractions: don't, I'll, we've",
    "",
]

TEXTS = [
    "The capital of France is Paris. It is known for the Eiffel Tower.",
    "Classify this movie review as objective or subjective: \"a gripping, beautifully shot film\" This review is",
    "1 + 2 = 3, 3 + 4 = 7, 7 - 5 = 2.",
    "Beginning: Tom found a map.\n End: He was rich.\n Middle: ",
    "<|im_start|>user\nWrite a haiku about rain.<|im_end|>\n<|im_start|>assistant\nSoft rain on the roof",
    "Café naïve 日本 🙂 — mixed scripts   and  spaces\tand tabs.",
]


def write(path, meta, cases):
    """JSON with one case per line (readable diffs when references change)."""
    with open(path, "w") as f:
        f.write('{"meta": ' + json.dumps(meta) + ',\n "cases": [\n')
        f.write(",\n".join("  " + json.dumps(c, ensure_ascii=False) for c in cases))
        f.write("\n]}\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", default="models")
    ap.add_argument("--out", default="backend/tests/data")
    args = ap.parse_args()
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(args.model_dir, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, gguf_file=GGUF, dtype=torch.float32)
    model.eval()
    meta = {
        "generator": "tools/make_parity_reference.py",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "model": GGUF,
    }
    tokens = [{"text": t, "ids": tok.encode(t, add_special_tokens=False)} for t in CORPUS]
    logprobs = []
    with torch.no_grad():
        for t in TEXTS:
            ids = tok.encode(t, add_special_tokens=False)
            x = torch.tensor([ids])
            lp = torch.log_softmax(model(x).logits[0].double(), dim=-1)
            per_token = [lp[i, ids[i + 1]].item() for i in range(len(ids) - 1)]
            logprobs.append({"text": t, "ids": ids, "logprobs": per_token})
    os.makedirs(args.out, exist_ok=True)
    write(os.path.join(args.out, "smollm2_tokens.json"), meta, tokens)
    write(os.path.join(args.out, "smollm2_logprobs.json"), meta, logprobs)
    print("wrote", len(tokens), "tokenizer cases and", len(logprobs), "log-prob cases")


if __name__ == "__main__":
    main()
