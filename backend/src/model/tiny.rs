//! Tiny random models written to disk in both formats we read, so that tests
//! exercise the real loaders end to end without downloading anything.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use super::config::LlamaConfig;
use super::loader;
use super::tokenizer::{Tokenizer, TokenizerSpec};
use crate::Result;

/// Paths of a tiny model written by [`write_tiny_model`].
pub struct TinyModel {
    pub gguf: PathBuf,
    pub hf_dir: PathBuf,
}

/// Builds a tiny random Llama (2 layers, GQA) with the tiny byte-level BPE and
/// writes it as `dir/tiny.gguf` and `dir/tiny-hf/`.
pub fn write_tiny_model(dir: &Path, seed: u64) -> Result<TinyModel> {
    std::fs::create_dir_all(dir)?;
    let spec = TokenizerSpec::tiny();
    let mut cfg = LlamaConfig::tiny(spec.tokens.len());
    cfg.bos_token_id = spec.bos;
    cfg.eos_token_id = spec.eos;
    let model = loader::random(&cfg, &Device::Cpu, DType::F32, seed)?;
    let tokenizer = Tokenizer::from_spec(&spec)?;
    let out = TinyModel { gguf: dir.join("tiny.gguf"), hf_dir: dir.join("tiny-hf") };
    loader::save_gguf(&model, &spec, &out.gguf)?;
    loader::save_hf_dir(&model, &tokenizer, &out.hf_dir)?;
    Ok(out)
}
