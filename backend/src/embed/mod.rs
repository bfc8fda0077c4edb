//! Sentence and token embeddings with a BERT sentence encoder
//! (all-MiniLM-L6-v2 by default), for the embedding-based metrics: the
//! continuation task's diversity (paper Fig. 3) and the infilling task's
//! BERTScore-style and sentence-cosine similarity (paper Table 2).
//!
//! Owns loading the encoder directory (candle-transformers' BERT, the
//! `tokenizers` tokenizer), batching with padding and attention masks, and the
//! pooling that turns hidden states into sentence vectors. The metrics
//! themselves (cosines, BERTScore matching) are `amortize_shared::metrics`.
//!
//! Sentence embeddings follow sentence-transformers' pipeline for this model
//! (`modules.json`: Transformer → Pooling(mean) → Normalize): word pieces
//! truncated to `max_seq_length` (256, `sentence_bert_config.json`, [CLS] and
//! [SEP] included), the last hidden states averaged over the real tokens, then
//! scaled to unit length. Parity with sentence-transformers is tested in
//! `backend/tests/embed.rs` against `tools/make_embedding_reference.py`.

mod pool;

use std::path::{Path, PathBuf};
use std::sync::Once;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{Encoding, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::{Error, Result};

pub use pool::{l2_normalize, masked_mean};

/// The encoder directory when `AMORTIZE_EMBEDDER` is not set (relative to the
/// working directory; `scripts/setup.sh` fetches it).
pub const DEFAULT_DIR: &str = "models/all-MiniLM-L6-v2";

/// Texts encoded together in one forward pass.
const BATCH: usize = 32;

/// A loaded sentence encoder.
pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    /// Word pieces per text, [CLS] and [SEP] included.
    max_tokens: usize,
    dim: usize,
    pad_id: u32,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder").field("dim", &self.dim).field("max_tokens", &self.max_tokens).field("device", &self.device).finish()
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::file(path, format!("invalid JSON: {e}")))
}

/// Checks `1_Pooling/config.json` asks for mean pooling only (absent: mean).
fn check_pooling(dir: &Path) -> Result<()> {
    let path = dir.join("1_Pooling/config.json");
    if !path.exists() {
        return Ok(());
    }
    let v = read_json(&path)?;
    let flag = |k: &str| v.get(k).and_then(|x| x.as_bool()).unwrap_or(false);
    let others = ["pooling_mode_cls_token", "pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken"];
    if !flag("pooling_mode_mean_tokens") || others.iter().any(|k| flag(k)) {
        return Err(Error::Unsupported(format!("{}: only mean pooling (pooling_mode_mean_tokens alone) is supported", path.display())));
    }
    Ok(())
}

impl Embedder {
    /// `$AMORTIZE_EMBEDDER` if set (and not empty), else [`DEFAULT_DIR`].
    pub fn default_dir() -> PathBuf {
        match std::env::var_os("AMORTIZE_EMBEDDER") {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => PathBuf::from(DEFAULT_DIR),
        }
    }

    /// Loads a sentence-transformers BERT directory: `config.json`,
    /// `model.safetensors`, `tokenizer.json`, and, when present,
    /// `sentence_bert_config.json` (`max_seq_length`) and `1_Pooling/config.json`
    /// (must be mean pooling). Weights are kept in float32.
    pub fn load(dir: &Path, device: &Device) -> Result<Embedder> {
        if !dir.is_dir() {
            return Err(Error::file(dir, "embedding model directory not found (run scripts/setup.sh, or set AMORTIZE_EMBEDDER to a sentence-transformers BERT directory)"));
        }
        let config_path = dir.join("config.json");
        let config: Config = serde_json::from_value(read_json(&config_path)?).map_err(|e| Error::file(&config_path, format!("not a BERT config: {e}")))?;
        if let Some(t) = config.model_type.as_deref().filter(|t| *t != "bert") {
            return Err(Error::Unsupported(format!("{}: model_type `{t}` (only `bert` encoders are supported)", config_path.display())));
        }
        check_pooling(dir)?;
        let st_path = dir.join("sentence_bert_config.json");
        let max_seq = if st_path.exists() { read_json(&st_path)?.get("max_seq_length").and_then(|x| x.as_u64()).map(|x| x as usize) } else { None };
        let max_tokens = max_seq.unwrap_or(config.max_position_embeddings).min(config.max_position_embeddings);
        if max_tokens < 2 {
            return Err(Error::file(&st_path, format!("max_seq_length {max_tokens} leaves no room for [CLS] and [SEP]")));
        }

        let tok_path = dir.join("tokenizer.json");
        if !tok_path.is_file() {
            return Err(Error::file(&tok_path, "missing (the encoder's tokenizer)"));
        }
        let mut tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| Error::file(&tok_path, e))?;
        // sentence-transformers truncates to max_seq_length (special tokens
        // included) and pads each batch itself; drop the file's fixed padding.
        tokenizer
            .with_truncation(Some(TruncationParams { direction: TruncationDirection::Right, max_length: max_tokens, strategy: TruncationStrategy::LongestFirst, stride: 0 }))
            .map_err(|e| Error::file(&tok_path, e))?;
        tokenizer.with_padding(None);

        let weights = dir.join("model.safetensors");
        if !weights.is_file() {
            return Err(Error::file(&weights, "missing (the encoder's weights)"));
        }
        let tensors = candle_core::safetensors::load(&weights, device).map_err(|e| Error::file(&weights, e))?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let model = BertModel::load(vb, &config).map_err(|e| Error::file(&weights, format!("not the weights of this BERT config: {e}")))?;
        Ok(Embedder { model, tokenizer, device: device.clone(), max_tokens, dim: config.hidden_size, pad_id: config.pad_token_id as u32 })
    }

    /// Loads [`Embedder::default_dir`]; `Ok(None)` (with one warning per process)
    /// when that directory does not exist, so metrics that need it can be
    /// left out. A directory that exists but cannot be loaded is an error.
    pub fn load_default(device: &Device) -> Result<Option<Embedder>> {
        static WARNED: Once = Once::new();
        let dir = Self::default_dir();
        if !dir.exists() {
            WARNED.call_once(|| {
                tracing::warn!("no embedding model at {} (run scripts/setup.sh or set AMORTIZE_EMBEDDER): embedding metrics are left out", dir.display());
            });
            return Ok(None);
        }
        Self::load(&dir, device).map(Some)
    }

    /// Size of an embedding vector (384 for all-MiniLM-L6-v2).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Word pieces a text is truncated to, [CLS] and [SEP] included.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    fn encode(&self, text: &str) -> Result<Encoding> {
        self.tokenizer.encode(text, true).map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// Last hidden states `[b, len, dim]` of a batch, right-padded, and its
    /// attention mask `[b, len]`.
    fn forward(&self, encs: &[&Encoding]) -> Result<(Tensor, Tensor)> {
        let len = encs.iter().map(|e| e.len()).max().unwrap_or(0);
        let (mut ids, mut mask) = (Vec::with_capacity(encs.len() * len), Vec::with_capacity(encs.len() * len));
        for e in encs {
            ids.extend_from_slice(e.get_ids());
            mask.extend_from_slice(e.get_attention_mask());
            ids.extend(std::iter::repeat_n(self.pad_id, len - e.len()));
            mask.extend(std::iter::repeat_n(0u32, len - e.len()));
        }
        let ids = Tensor::from_vec(ids, (encs.len(), len), &self.device)?;
        let mask = Tensor::from_vec(mask, (encs.len(), len), &self.device)?;
        let types = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?;
        Ok((hidden, mask))
    }

    /// Encodes `texts` in batches of similar length (longest first, as
    /// sentence-transformers does) and hands each batch to `f` with the
    /// original indices of its rows.
    fn batched(&self, texts: &[String], mut f: impl FnMut(&[usize], &[&Encoding], Tensor, Tensor) -> Result<()>) -> Result<()> {
        let encs = texts.iter().map(|t| self.encode(t)).collect::<Result<Vec<_>>>()?;
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(encs[i].len()));
        for chunk in order.chunks(BATCH) {
            let batch: Vec<&Encoding> = chunk.iter().map(|&i| &encs[i]).collect();
            let (hidden, mask) = self.forward(&batch)?;
            f(chunk, &batch, hidden, mask)?;
        }
        Ok(())
    }

    /// One unit-length sentence embedding per text (mean of the contextual
    /// token vectors over the real tokens, [CLS] and [SEP] included, then L2
    /// normalised): sentence-transformers' `encode` for this model.
    pub fn sentences(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let mut out = vec![Vec::new(); texts.len()];
        self.batched(texts, |rows, _, hidden, mask| {
            let pooled = l2_normalize(&masked_mean(&hidden, &mask)?)?;
            for (&i, v) in rows.iter().zip(pooled.to_vec2::<f32>()?) {
                out[i] = v;
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Contextual token embeddings of one text (the last hidden states, not
    /// normalised), one row per word piece, without [CLS] and [SEP]; empty for
    /// a text with no word pieces. For BERTScore-style matching.
    pub fn tokens(&self, text: &str) -> Result<Vec<Vec<f32>>> {
        Ok(self.tokens_batch(&[text.to_string()])?.pop().unwrap_or_default())
    }

    /// [`Embedder::tokens`] of many texts, batched.
    pub fn tokens_batch(&self, texts: &[String]) -> Result<Vec<Vec<Vec<f32>>>> {
        let mut out = vec![Vec::new(); texts.len()];
        self.batched(texts, |rows, encs, hidden, _| {
            let hidden: Vec<Vec<Vec<f32>>> = hidden.to_vec3()?;
            for ((&i, e), h) in rows.iter().zip(encs).zip(hidden) {
                out[i] = h.into_iter().zip(e.get_special_tokens_mask()).filter(|(_, &special)| special == 0).map(|(v, _)| v).collect();
            }
            Ok(())
        })?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_directory_is_a_clear_error() {
        let e = Embedder::load(Path::new("/nonexistent/minilm"), &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/minilm") && e.contains("setup.sh"), "{e}");
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = Embedder::load(dir.path(), &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("config.json"), "{e}");
        std::fs::write(dir.path().join("config.json"), "{\"hidden_size\": 4}").unwrap();
        let e = Embedder::load(dir.path(), &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("not a BERT config"), "{e}");
    }

    #[test]
    fn only_mean_pooling() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("1_Pooling")).unwrap();
        let p = dir.path().join("1_Pooling/config.json");
        std::fs::write(&p, r#"{"pooling_mode_mean_tokens": true, "pooling_mode_cls_token": false}"#).unwrap();
        assert!(check_pooling(dir.path()).is_ok());
        std::fs::write(&p, r#"{"pooling_mode_mean_tokens": false, "pooling_mode_cls_token": true}"#).unwrap();
        assert!(check_pooling(dir.path()).unwrap_err().to_string().contains("mean pooling"));
    }
}
