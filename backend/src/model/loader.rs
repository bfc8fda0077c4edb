//! Getting a model into memory: GGUF files (dequantised at load), Hugging Face
//! directories (`config.json` + `*.safetensors`, sharded too, + `tokenizer.json`),
//! or random weights of a given shape. Also writes GGUF and HF files (tests build
//! tiny models this way and load them back through the same readers).
//!
//! llama.cpp's converter permutes the rows of Q and K for its interleaved RoPE;
//! we undo that on load (and redo it on write) so the model always has HF's
//! half-split layout and LoRA weights on q/k export to PEFT unchanged.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

use super::config::LlamaConfig;
use super::llama::{Block, Linear, Llama, Weights};
use super::tokenizer::{Tokenizer, TokenizerSpec};
use crate::{Error, Result};

/// Loads a model and its tokenizer from a `.gguf` file or an HF directory.
pub fn load(path: &Path, device: &Device, dtype: DType) -> Result<(Llama, Tokenizer)> {
    if path.is_dir() {
        load_hf_dir(path, device, dtype)
    } else if path.is_file() {
        load_gguf(path, device, dtype)
    } else {
        Err(Error::file(path, "no such model file or directory (run scripts/setup.sh to fetch SmolLM2)"))
    }
}

// ---------------------------------------------------------------- GGUF

fn meta_u32(c: &gguf_file::Content, key: &str) -> Option<u32> {
    c.metadata.get(key).and_then(|v| v.to_u32().ok().or_else(|| v.to_u64().ok().map(|x| x as u32)))
}

fn meta_f32(c: &gguf_file::Content, key: &str) -> Option<f32> {
    c.metadata.get(key).and_then(|v| v.to_f32().ok())
}

fn meta_str<'a>(c: &'a gguf_file::Content, key: &str) -> Option<&'a str> {
    c.metadata.get(key).and_then(|v| v.to_string().ok()).map(|s| s.as_str())
}

fn meta_strings(c: &gguf_file::Content, key: &str) -> Option<Vec<String>> {
    let arr = c.metadata.get(key)?.to_vec().ok()?;
    arr.iter().map(|v| v.to_string().ok().cloned()).collect()
}

/// The tokenizer stored in GGUF metadata.
pub fn gguf_tokenizer_spec(c: &gguf_file::Content) -> Result<TokenizerSpec> {
    let model = meta_str(c, "tokenizer.ggml.model").unwrap_or("");
    if model != "gpt2" {
        return Err(Error::Unsupported(format!(
            "GGUF tokenizer model `{model}` (only byte-level BPE, `gpt2`); use an HF directory with tokenizer.json"
        )));
    }
    let tokens = meta_strings(c, "tokenizer.ggml.tokens").ok_or_else(|| Error::Tokenizer("GGUF has no token list".into()))?;
    let merges = meta_strings(c, "tokenizer.ggml.merges").unwrap_or_default();
    let merges = merges
        .iter()
        .map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| Error::Tokenizer("malformed merge in GGUF".into()))?;
    let token_types = match c.metadata.get("tokenizer.ggml.token_type").and_then(|v| v.to_vec().ok()) {
        Some(a) => a.iter().map(|v| v.to_i32().unwrap_or(1)).collect(),
        None => vec![1; tokens.len()],
    };
    Ok(TokenizerSpec {
        tokens,
        token_types,
        merges,
        pre: meta_str(c, "tokenizer.ggml.pre").unwrap_or("gpt2").to_string(),
        bos: meta_u32(c, "tokenizer.ggml.bos_token_id"),
        eos: meta_u32(c, "tokenizer.ggml.eos_token_id"),
    })
}

fn gguf_config(c: &gguf_file::Content, n_tokens: usize) -> Result<LlamaConfig> {
    let arch = meta_str(c, "general.architecture").ok_or_else(|| Error::Unsupported("GGUF without general.architecture".into()))?;
    let model_type = match arch {
        "llama" | "mistral" | "qwen2" => arch.to_string(),
        other => return Err(Error::Unsupported(format!("architecture `{other}` (supported: llama, mistral, qwen2)"))),
    };
    let need = |k: &str| meta_u32(c, &format!("{arch}.{k}")).ok_or_else(|| Error::Unsupported(format!("GGUF lacks {arch}.{k}")));
    let hidden = need("embedding_length")? as usize;
    let heads = need("attention.head_count")? as usize;
    let cfg = LlamaConfig {
        attention_bias: c.tensor_infos.contains_key("blk.0.attn_q.bias"),
        vocab_size: meta_u32(c, &format!("{arch}.vocab_size")).map(|v| v as usize).unwrap_or(n_tokens),
        hidden_size: hidden,
        intermediate_size: need("feed_forward_length")? as usize,
        num_hidden_layers: need("block_count")? as usize,
        num_attention_heads: heads,
        num_key_value_heads: meta_u32(c, &format!("{arch}.attention.head_count_kv")).map(|v| v as usize).unwrap_or(heads),
        head_dim: meta_u32(c, &format!("{arch}.attention.key_length")).map(|v| v as usize).unwrap_or(hidden / heads.max(1)),
        rms_norm_eps: meta_f32(c, &format!("{arch}.attention.layer_norm_rms_epsilon")).unwrap_or(1e-5) as f64,
        rope_theta: meta_f32(c, &format!("{arch}.rope.freq_base")).unwrap_or(10_000.0) as f64,
        max_position_embeddings: meta_u32(c, &format!("{arch}.context_length")).unwrap_or(2048) as usize,
        tie_word_embeddings: !c.tensor_infos.contains_key("output.weight"),
        bos_token_id: meta_u32(c, "tokenizer.ggml.bos_token_id"),
        eos_token_id: meta_u32(c, "tokenizer.ggml.eos_token_id"),
        model_type,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// llama.cpp's Q/K row order → HF's: rows viewed as [heads, hd/2, 2] → [heads, 2, hd/2].
fn unpermute_rows(w: &Tensor, heads: usize) -> Result<Tensor> {
    let dims = w.dims().to_vec();
    let rest: usize = dims[1..].iter().product();
    let hd = dims[0] / heads;
    Ok(w.reshape((heads, hd / 2, 2, rest))?.transpose(1, 2)?.contiguous()?.reshape(dims)?)
}

/// HF's Q/K row order → llama.cpp's (inverse of [`unpermute_rows`]).
fn permute_rows(w: &Tensor, heads: usize) -> Result<Tensor> {
    let dims = w.dims().to_vec();
    let rest: usize = dims[1..].iter().product();
    let hd = dims[0] / heads;
    Ok(w.reshape((heads, 2, hd / 2, rest))?.transpose(1, 2)?.contiguous()?.reshape(dims)?)
}

pub fn load_gguf(path: &Path, device: &Device, dtype: DType) -> Result<(Llama, Tokenizer)> {
    let file = File::open(path).map_err(|e| Error::file(path, e))?;
    let mut r = BufReader::new(file);
    let c = gguf_file::Content::read(&mut r).map_err(|e| Error::file(path, format!("not a readable GGUF file ({e})")))?;
    let spec = gguf_tokenizer_spec(&c)?;
    let tokenizer = Tokenizer::from_spec(&spec)?;
    let cfg = gguf_config(&c, spec.tokens.len())?;
    let permuted = cfg.model_type != "qwen2";
    let mut get = |name: &str| -> Result<Tensor> {
        let q = c.tensor(&mut r, name, &Device::Cpu).map_err(|e| Error::file(path, format!("tensor {name}: {e}")))?;
        Ok(q.dequantize(&Device::Cpu)?)
    };
    let mut fetch = |name: String, shape: &[usize], heads: Option<usize>| -> Result<Tensor> {
        let t = get(&name)?;
        if t.dims() != shape {
            return Err(Error::file(path, format!("tensor {name} has shape {:?}, expected {shape:?}", t.dims())));
        }
        let t = match heads {
            Some(h) if permuted => unpermute_rows(&t, h)?,
            _ => t,
        };
        Ok(t.to_dtype(dtype)?.to_device(device)?)
    };
    let weights = build_weights(&cfg, |name, shape, heads| {
        let gname = hf_to_gguf_name(name);
        fetch(gname, shape, heads)
    })?;
    Ok((Llama::new(cfg, weights, device)?, tokenizer))
}

/// `model.layers.3.self_attn.q_proj.weight` → `blk.3.attn_q.weight`, etc.
fn hf_to_gguf_name(name: &str) -> String {
    match name {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let rest = name.strip_prefix("model.layers.").unwrap_or(name);
    let (layer, tail) = rest.split_once('.').unwrap_or(("0", rest));
    let tail = tail
        .replace("input_layernorm", "attn_norm")
        .replace("post_attention_layernorm", "ffn_norm")
        .replace("self_attn.q_proj", "attn_q")
        .replace("self_attn.k_proj", "attn_k")
        .replace("self_attn.v_proj", "attn_v")
        .replace("self_attn.o_proj", "attn_output")
        .replace("mlp.gate_proj", "ffn_gate")
        .replace("mlp.up_proj", "ffn_up")
        .replace("mlp.down_proj", "ffn_down");
    format!("blk.{layer}.{tail}")
}

/// Assembles the weights by HF name; `get(name, shape, heads)` returns one tensor
/// (`heads` is set for Q/K rows, which GGUF stores permuted).
fn build_weights(cfg: &LlamaConfig, mut get: impl FnMut(&str, &[usize], Option<usize>) -> Result<Tensor>) -> Result<Weights> {
    let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let q = cfg.num_attention_heads * cfg.head_dim;
    let kv = cfg.num_key_value_heads * cfg.head_dim;
    let embed = get("model.embed_tokens.weight", &[v, h], None)?;
    let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let mut lin = |name: &str, out: usize, inp: usize, heads: Option<usize>, bias: bool| -> Result<Linear> {
            let weight = get(&format!("{p}.{name}.weight"), &[out, inp], heads)?;
            let bias = if bias { Some(get(&format!("{p}.{name}.bias"), &[out], heads)?) } else { None };
            Ok(Linear { weight, bias })
        };
        let ab = cfg.attention_bias;
        let block = Block {
            q: lin("self_attn.q_proj", q, h, Some(cfg.num_attention_heads), ab)?,
            k: lin("self_attn.k_proj", kv, h, Some(cfg.num_key_value_heads), ab)?,
            v: lin("self_attn.v_proj", kv, h, None, ab)?,
            o: lin("self_attn.o_proj", h, q, None, false)?,
            gate: lin("mlp.gate_proj", i, h, None, false)?,
            up: lin("mlp.up_proj", i, h, None, false)?,
            down: lin("mlp.down_proj", h, i, None, false)?,
            attn_norm: get(&format!("{p}.input_layernorm.weight"), &[h], None)?,
            mlp_norm: get(&format!("{p}.post_attention_layernorm.weight"), &[h], None)?,
        };
        blocks.push(block);
    }
    let norm = get("model.norm.weight", &[h], None)?;
    let lm_head = if cfg.tie_word_embeddings { None } else { Some(get("lm_head.weight", &[v, h], None)?) };
    Ok(Weights { embed, blocks, norm, lm_head })
}

/// Every weight by HF name (what `save_hf_dir` writes).
fn named_weights(w: &Weights) -> Vec<(String, Tensor)> {
    let mut out = vec![("model.embed_tokens.weight".to_string(), w.embed.clone())];
    for (l, b) in w.blocks.iter().enumerate() {
        let p = format!("model.layers.{l}");
        for (name, lin) in [
            ("self_attn.q_proj", &b.q),
            ("self_attn.k_proj", &b.k),
            ("self_attn.v_proj", &b.v),
            ("self_attn.o_proj", &b.o),
            ("mlp.gate_proj", &b.gate),
            ("mlp.up_proj", &b.up),
            ("mlp.down_proj", &b.down),
        ] {
            out.push((format!("{p}.{name}.weight"), lin.weight.clone()));
            if let Some(bias) = &lin.bias {
                out.push((format!("{p}.{name}.bias"), bias.clone()));
            }
        }
        out.push((format!("{p}.input_layernorm.weight"), b.attn_norm.clone()));
        out.push((format!("{p}.post_attention_layernorm.weight"), b.mlp_norm.clone()));
    }
    out.push(("model.norm.weight".into(), w.norm.clone()));
    if let Some(head) = &w.lm_head {
        out.push(("lm_head.weight".into(), head.clone()));
    }
    out
}

// ---------------------------------------------------------------- HF directories

pub fn load_hf_dir(dir: &Path, device: &Device, dtype: DType) -> Result<(Llama, Tokenizer)> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::file(&cfg_path, e))?;
    let cfg = LlamaConfig::from_hf_json(&text).map_err(|e| match e {
        Error::Json(j) => Error::file(&cfg_path, j),
        other => other,
    })?;
    let tok_path = dir.join("tokenizer.json");
    if !tok_path.is_file() {
        return Err(Error::file(&tok_path, "missing (an HF model directory needs tokenizer.json)"));
    }
    let mut tokenizer = Tokenizer::from_file(&tok_path)?;
    if tokenizer.eos.is_none() {
        tokenizer.eos = cfg.eos_token_id;
    }
    // One file, or shards listed in the index.
    let index = dir.join("model.safetensors.index.json");
    let files: Vec<std::path::PathBuf> = if index.is_file() {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index)?).map_err(|e| Error::file(&index, e))?;
        let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| Error::file(&index, "no weight_map"))?;
        let mut f: Vec<_> = map.values().filter_map(|x| x.as_str()).map(|s| dir.join(s)).collect();
        f.sort();
        f.dedup();
        f
    } else {
        vec![dir.join("model.safetensors")]
    };
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for f in &files {
        let t = candle_core::safetensors::load(f, &Device::Cpu).map_err(|e| Error::file(f, e))?;
        tensors.extend(t);
    }
    let weights = build_weights(&cfg, |name, shape, _| {
        let t = tensors.remove(name).ok_or_else(|| Error::file(dir, format!("missing tensor {name}")))?;
        if t.dims() != shape {
            return Err(Error::file(dir, format!("tensor {name} has shape {:?}, expected {shape:?}", t.dims())));
        }
        Ok(t.to_dtype(dtype)?.to_device(device)?)
    })?;
    Ok((Llama::new(cfg, weights, device)?, tokenizer))
}

// ---------------------------------------------------------------- random weights and writers

/// Random weights of the given shape: projections N(0, 1/fan_in) (so signals keep
/// their scale through the blocks), embeddings N(0, 0.25) (so a tied output head
/// can express peaked distributions), unit norms. Reproducible from `seed` (on
/// CPU; on CUDA the device generator is seeded).
pub fn random(cfg: &LlamaConfig, device: &Device, dtype: DType, seed: u64) -> Result<Llama> {
    cfg.validate()?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    if !device.is_cpu() {
        device.set_seed(seed)?;
    }
    let weights = build_weights(cfg, |name, shape, _| {
        let std = if name.contains("embed_tokens") || name == "lm_head.weight" {
            0.5
        } else {
            1.0 / (*shape.last().unwrap_or(&1) as f32).sqrt()
        };
        let t = if name.ends_with("norm.weight") {
            Tensor::ones(shape, DType::F32, device)?
        } else if name.ends_with(".bias") {
            Tensor::zeros(shape, DType::F32, device)?
        } else if device.is_cpu() {
            let normal = Normal::new(0.0f32, std).map_err(|e| Error::invalid("std", e.to_string()))?;
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
            Tensor::from_vec(data, shape, device)?
        } else {
            Tensor::randn(0f32, std, shape, device)?
        };
        Ok(t.to_dtype(dtype)?)
    })?;
    Llama::new(cfg.clone(), weights, device)
}

/// Writes an HF directory: `config.json`, `model.safetensors`, `tokenizer.json`.
pub fn save_hf_dir(model: &Llama, tokenizer: &Tokenizer, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    crate::util::write_atomic(&dir.join("config.json"), serde_json::to_string_pretty(&model.config.to_hf_json())?.as_bytes())?;
    let tensors: HashMap<String, Tensor> = named_weights(&model.weights()?).into_iter().collect();
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
    tokenizer.save(&dir.join("tokenizer.json"))
}

/// Writes a GGUF file (llama architecture, f32 tensors, Q/K permuted the way
/// llama.cpp's converter does) with the tokenizer in its metadata.
pub fn save_gguf(model: &Llama, spec: &TokenizerSpec, path: &Path) -> Result<()> {
    use gguf_file::Value as V;
    let c = &model.config;
    let arch = c.model_type.clone();
    let strings = |v: &[String]| V::Array(v.iter().map(|s| V::String(s.clone())).collect());
    let merges: Vec<String> = spec.merges.iter().map(|(a, b)| format!("{a} {b}")).collect();
    let mut meta: Vec<(String, V)> = vec![
        ("general.architecture".into(), V::String(arch.clone())),
        ("general.name".into(), V::String("amortize-test-model".into())),
        (format!("{arch}.block_count"), V::U32(c.num_hidden_layers as u32)),
        (format!("{arch}.context_length"), V::U32(c.max_position_embeddings as u32)),
        (format!("{arch}.embedding_length"), V::U32(c.hidden_size as u32)),
        (format!("{arch}.feed_forward_length"), V::U32(c.intermediate_size as u32)),
        (format!("{arch}.attention.head_count"), V::U32(c.num_attention_heads as u32)),
        (format!("{arch}.attention.head_count_kv"), V::U32(c.num_key_value_heads as u32)),
        (format!("{arch}.attention.key_length"), V::U32(c.head_dim as u32)),
        (format!("{arch}.rope.freq_base"), V::F32(c.rope_theta as f32)),
        (format!("{arch}.attention.layer_norm_rms_epsilon"), V::F32(c.rms_norm_eps as f32)),
        (format!("{arch}.vocab_size"), V::U32(c.vocab_size as u32)),
        ("tokenizer.ggml.model".into(), V::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), V::String(spec.pre.clone())),
        ("tokenizer.ggml.tokens".into(), strings(&spec.tokens)),
        ("tokenizer.ggml.token_type".into(), V::Array(spec.token_types.iter().map(|&t| V::I32(t)).collect())),
        ("tokenizer.ggml.merges".into(), strings(&merges)),
    ];
    if let Some(b) = spec.bos {
        meta.push(("tokenizer.ggml.bos_token_id".into(), V::U32(b)));
    }
    if let Some(e) = spec.eos {
        meta.push(("tokenizer.ggml.eos_token_id".into(), V::U32(e)));
    }
    let permuted = arch != "qwen2";
    let mut qtensors = Vec::new();
    for (name, t) in named_weights(&model.weights()?) {
        let mut t = t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        if permuted && name.contains("self_attn.q_proj") {
            t = permute_rows(&t, c.num_attention_heads)?;
        } else if permuted && name.contains("self_attn.k_proj") {
            t = permute_rows(&t, c.num_key_value_heads)?;
        }
        qtensors.push((hf_to_gguf_name(&name), QTensor::quantize(&t, GgmlDType::F32)?));
    }
    let meta_refs: Vec<(&str, &V)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = qtensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tmp = path.with_extension("gguf.tmp");
    {
        let mut w = BufWriter::new(File::create(&tmp)?);
        gguf_file::write(&mut w, &meta_refs, &tensor_refs)?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}
