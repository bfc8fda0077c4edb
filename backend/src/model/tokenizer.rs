//! Text ↔ token ids. Wraps the `tokenizers` crate, built from `tokenizer.json`
//! when there is one, or rebuilt from GGUF metadata (byte-level BPE vocabulary +
//! merges, and the pre-tokenizer llama.cpp names in `tokenizer.ggml.pre`).
//! Owns the special tokens (BOS / EOS / `<|im_end|>`); knows nothing of models.

use std::collections::HashMap;
use std::path::Path;

use serde_json::json;

use crate::{Error, Result};

/// GGUF token types (llama.cpp's `llama_token_type`).
pub const TOKEN_NORMAL: i32 = 1;
pub const TOKEN_CONTROL: i32 = 3;
pub const TOKEN_USER_DEFINED: i32 = 4;

/// A byte-level BPE tokenizer as GGUF stores it.
#[derive(Debug, Clone)]
pub struct TokenizerSpec {
    pub tokens: Vec<String>,
    pub token_types: Vec<i32>,
    pub merges: Vec<(String, String)>,
    /// llama.cpp's pre-tokenizer name (`gpt2`, `smollm`, `llama-bpe`, `qwen2`, …).
    pub pre: String,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
}

/// The GPT-2 regex split, as HF's ByteLevel pre-tokenizer applies it.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

impl TokenizerSpec {
    /// The equivalent HF `tokenizer.json`.
    pub fn to_hf_json(&self) -> Result<serde_json::Value> {
        let byte_level = |regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": regex});
        let split = |re: &str| json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false});
        let pre = match self.pre.as_str() {
            "gpt2" | "default" | "gpt-2" => byte_level(true),
            "smollm" | "starcoder" | "refact" => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
            "llama-bpe" | "llama3" | "dbrx" | "smaug-bpe" => json!({"type": "Sequence", "pretokenizers": [
                split(LLAMA3_SPLIT), byte_level(false)]}),
            "qwen2" => json!({"type": "Sequence", "pretokenizers": [split(QWEN2_SPLIT), byte_level(false)]}),
            other => {
                return Err(Error::Unsupported(format!(
                    "GGUF pre-tokenizer `{other}`; use an HF directory with tokenizer.json"
                )))
            }
        };
        let vocab: serde_json::Map<String, serde_json::Value> =
            self.tokens.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
        let merges: Vec<[&str; 2]> = self.merges.iter().map(|(a, b)| [a.as_str(), b.as_str()]).collect();
        let added: Vec<serde_json::Value> = self
            .token_types
            .iter()
            .enumerate()
            .filter(|(_, &t)| t == TOKEN_CONTROL || t == TOKEN_USER_DEFINED)
            .map(|(i, &t)| {
                json!({"id": i, "content": self.tokens[i], "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": t != TOKEN_CONTROL, "special": t == TOKEN_CONTROL})
            })
            .collect();
        Ok(json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre,
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                      "ignore_merges": false, "vocab": vocab, "merges": merges},
        }))
    }

    /// A small byte-level BPE for tests: the 3 special tokens of SmolLM2, all 256
    /// bytes, and a handful of merges of frequent English pairs.
    pub fn tiny() -> Self {
        let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"].map(String::from).to_vec();
        let mut token_types = vec![TOKEN_CONTROL; 3];
        let alphabet = byte_alphabet();
        tokens.extend(alphabet.iter().map(|c| c.to_string()));
        token_types.extend(std::iter::repeat_n(TOKEN_NORMAL, 256));
        let pairs = [
            ("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("e", "r"), ("a", "n"), ("Ġ", "a"), ("o", "n"),
            ("r", "e"), ("Ġ", "s"), ("e", "n"), ("Ġ", "w"), ("Ġ", "o"), ("a", "t"), ("i", "s"), ("Ġ", "c"),
            ("o", "r"), ("e", "s"), ("n", "d"), ("Ġa", "nd"), ("Ġ", "b"), ("Ġ", "i"), ("Ġ", "m"), ("Ġ", "="),
            ("Ġ", "+"), ("Ġ", "-"), ("Ġ", "f"), ("Ġ", "d"), ("Ġ", "p"), ("l", "l"),
        ];
        let mut merges = Vec::new();
        for (a, b) in pairs {
            merges.push((a.to_string(), b.to_string()));
            tokens.push(format!("{a}{b}"));
            token_types.push(TOKEN_NORMAL);
        }
        TokenizerSpec { tokens, token_types, merges, pre: "smollm".into(), bos: Some(1), eos: Some(2) }
    }
}

/// GPT-2's printable stand-ins for the 256 bytes, in byte order.
pub fn byte_alphabet() -> Vec<char> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut n = 0;
    (0..256u32)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap_or('?')
            } else {
                n += 1;
                char::from_u32(255 + n).unwrap_or('?')
            }
        })
        .collect()
}

/// Text ↔ ids, with the model's special tokens.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// Every token that ends a sequence (EOS, `<|im_end|>`, `<|endoftext|>`).
    pub stop_ids: Vec<u32>,
}

fn tk_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| Error::file(path, e))?;
        Ok(Self::wrap(inner, None, None))
    }

    pub fn from_spec(spec: &TokenizerSpec) -> Result<Self> {
        let json = spec.to_hf_json()?.to_string();
        let inner: tokenizers::Tokenizer = json.parse().map_err(tk_err)?;
        Ok(Self::wrap(inner, spec.bos, spec.eos))
    }

    fn wrap(inner: tokenizers::Tokenizer, bos: Option<u32>, eos: Option<u32>) -> Self {
        let id = |s: &str| inner.token_to_id(s);
        let eos = eos.or_else(|| id("<|endoftext|>")).or_else(|| id("</s>"));
        let bos = bos.or_else(|| id("<|im_start|>")).or_else(|| id("<s>"));
        let mut stop_ids: Vec<u32> = [eos, id("<|im_end|>"), id("<|endoftext|>"), id("<|eot_id|>")]
            .into_iter()
            .flatten()
            .collect();
        stop_ids.sort_unstable();
        stop_ids.dedup();
        Tokenizer { inner, bos, eos, stop_ids }
    }

    /// Token ids of `text`; no BOS/EOS added (special-token strings in the text
    /// are still recognised, as HF does).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.inner.encode(text, false).map_err(tk_err)?.get_ids().to_vec())
    }

    /// Text of `ids`; special tokens dropped when `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(tk_err)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The vocabulary piece of every id, in id order (byte-level pieces: `Ġ` is a space).
    pub fn pieces(&self) -> Vec<String> {
        let vocab: HashMap<String, u32> = self.inner.get_vocab(true);
        let mut out = vec![String::new(); self.vocab_size()];
        for (piece, id) in vocab {
            if let Some(slot) = out.get_mut(id as usize) {
                *slot = piece;
            }
        }
        out
    }

    /// The text each id decodes to on its own (lossy for partial UTF-8 bytes).
    pub fn token_texts(&self) -> Vec<String> {
        (0..self.vocab_size() as u32).map(|i| self.inner.decode(&[i], false).unwrap_or_default()).collect()
    }

    /// Writes `tokenizer.json`.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.inner.save(path, false).map_err(|e| Error::file(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_tokenizer_round_trips_text() {
        let tok = Tokenizer::from_spec(&TokenizerSpec::tiny()).unwrap();
        for text in ["the cat and the hat", "12 + 345 = 357", "héllo 日本 🙂\t\n  x", ""] {
            let ids = tok.encode(text).unwrap();
            assert_eq!(tok.decode(&ids, false).unwrap(), text);
        }
        // Merges apply; digits stay single.
        assert_eq!(tok.encode(" the").unwrap().len(), 1);
        assert_eq!(tok.encode("345").unwrap().len(), 3);
        assert_eq!(tok.encode("a<|im_end|>").unwrap(), vec![tok.token_to_id("a").unwrap(), 2]);
        assert_eq!(tok.stop_ids, vec![0, 2]);
    }

    #[test]
    fn unknown_pre_tokenizer_is_an_error() {
        let mut spec = TokenizerSpec::tiny();
        spec.pre = "mystery".into();
        assert!(matches!(Tokenizer::from_spec(&spec), Err(Error::Unsupported(_))));
    }
}
