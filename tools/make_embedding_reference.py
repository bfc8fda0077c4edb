#!/usr/bin/env python3
"""Reference embeddings of all-MiniLM-L6-v2 for backend/tests/embed.rs.

Runs sentence-transformers itself (SentenceTransformer(dir).encode) on the
model directory that scripts/setup.sh fetches, on CPU in float32, so the Rust
encoder (backend/src/embed/) is checked against the library whose pipeline it
reimplements: Transformer (truncation at max_seq_length = 256 word pieces,
[CLS] and [SEP] included) -> Pooling(mean over the attention mask) ->
Normalize (L2), as the model's modules.json lists them.

Writes backend/tests/data/embed_reference.json:
  sentences:         [{"text", "n_tokens", "embedding": [384 floats]}]
  tokens:            {"text", "ids", "embeddings": [[384 floats] per word piece]}
                     (contextual token embeddings without [CLS] and [SEP])

Usage (from the repository root; needs torch, transformers and
sentence-transformers, e.g. `pip install sentence-transformers`):
  python tools/make_embedding_reference.py [--model models/all-MiniLM-L6-v2]
"""

import argparse
import json
import os

import torch
import sentence_transformers
import transformers
from sentence_transformers import SentenceTransformer

SENTENCES = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog!",
    "Why did the river flood after only two days of rain?",
    "Café owners in São Paulo raised prices by 12.5% in 2023.",
    "HELLO   world\tthis has   odd    spacing",
    "Embeddings",
    "She opened the letter slowly, unsure of what it would say, and then she laughed.",
    # Longer than 256 word pieces: checks truncation.
    " ".join(
        f"Sentence number {i} of a long paragraph describes the weather, the market, and the people who walked past the old station."
        for i in range(1, 16)
    ),
]

TOKEN_SENTENCE = "The museum's newest exhibit features tools used by farmers a century ago."


def rounded(v):
    return [float(f"{x:.7g}") for x in v]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(root, "models", "all-MiniLM-L6-v2"))
    ap.add_argument("--out", default=os.path.join(root, "backend", "tests", "data", "embed_reference.json"))
    args = ap.parse_args()

    torch.manual_seed(0)
    model = SentenceTransformer(args.model, device="cpu")
    assert model.max_seq_length == 256, model.max_seq_length
    tok = model.tokenizer

    emb = model.encode(SENTENCES, batch_size=4, convert_to_numpy=True, normalize_embeddings=False)
    sentences = []
    for text, e in zip(SENTENCES, emb):
        n_full = len(tok(text)["input_ids"])
        sentences.append({"text": text, "n_tokens": min(n_full, 256), "n_tokens_untruncated": n_full, "embedding": rounded(e)})
    assert any(s["n_tokens_untruncated"] > 256 for s in sentences), "need one sentence past 256 word pieces"

    tok_emb = model.encode([TOKEN_SENTENCE], output_value="token_embeddings", convert_to_numpy=False)[0]
    ids = tok(TOKEN_SENTENCE)["input_ids"]
    assert len(ids) == tok_emb.shape[0]
    tokens = {"text": TOKEN_SENTENCE, "ids": ids[1:-1], "embeddings": [rounded(r) for r in tok_emb[1:-1].tolist()]}

    out = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (models/all-MiniLM-L6-v2)",
        "made_with": f"sentence-transformers {sentence_transformers.__version__}, transformers {transformers.__version__}, torch {torch.__version__}, CPU float32",
        "sentences": sentences,
        "tokens": tokens,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f)
        f.write("\n")
    print(f"wrote {args.out}: {len(sentences)} sentences, {len(tokens['embeddings'])} token rows")


if __name__ == "__main__":
    main()
