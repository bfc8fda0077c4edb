//! Model hyper-parameters: read from an HF `config.json` or GGUF metadata, or
//! named real shapes (for random-weight benchmarks). Owns validation of shapes;
//! knows nothing about weights.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The Llama-family architecture (Llama, SmolLM2, Mistral, Qwen2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// `llama`, `mistral` or `qwen2` (Qwen2 adds biases on q/k/v).
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

/// The subset of HF's `config.json` we read; unknown keys are ignored.
#[derive(Debug, Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    bos_token_id: Option<serde_json::Value>,
    eos_token_id: Option<serde_json::Value>,
}

fn first_id(v: &Option<serde_json::Value>) -> Option<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|x| x as u32),
        Some(serde_json::Value::Array(a)) => a.first().and_then(|x| x.as_u64()).map(|x| x as u32),
        _ => None,
    }
}

impl LlamaConfig {
    pub const SUPPORTED: [&'static str; 3] = ["llama", "mistral", "qwen2"];

    /// Parses an HF `config.json`.
    pub fn from_hf_json(text: &str) -> Result<Self> {
        let hf: HfConfig = serde_json::from_str(text)?;
        let model_type = hf.model_type.unwrap_or_else(|| "llama".into());
        let cfg = LlamaConfig {
            attention_bias: hf.attention_bias.unwrap_or(model_type == "qwen2"),
            model_type,
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_hidden_layers: hf.num_hidden_layers,
            num_attention_heads: hf.num_attention_heads,
            num_key_value_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            head_dim: hf.head_dim.unwrap_or(hf.hidden_size / hf.num_attention_heads.max(1)),
            rms_norm_eps: hf.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: hf.rope_theta.unwrap_or(10_000.0),
            max_position_embeddings: hf.max_position_embeddings.unwrap_or(2048),
            tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(false),
            bos_token_id: first_id(&hf.bos_token_id),
            eos_token_id: first_id(&hf.eos_token_id),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The HF `config.json` for this configuration (used when writing models).
    pub fn to_hf_json(&self) -> serde_json::Value {
        let arch = match self.model_type.as_str() {
            "qwen2" => "Qwen2ForCausalLM",
            "mistral" => "MistralForCausalLM",
            _ => "LlamaForCausalLM",
        };
        serde_json::json!({
            "architectures": [arch],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "hidden_act": "silu",
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "torch_dtype": "float32",
        })
    }

    /// Checks that the shapes are consistent, so a bad file fails at load.
    pub fn validate(&self) -> Result<()> {
        if !Self::SUPPORTED.contains(&self.model_type.as_str()) {
            return Err(Error::Unsupported(format!(
                "architecture `{}` (supported: {})",
                self.model_type,
                Self::SUPPORTED.join(", ")
            )));
        }
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(Error::invalid(name, "must be positive"));
            }
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return Err(Error::invalid(
                "num_key_value_heads",
                format!("{} does not divide {} heads", self.num_key_value_heads, self.num_attention_heads),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(Error::invalid("head_dim", "must be even for rotary embeddings"));
        }
        Ok(())
    }

    /// Number of parameters of the base model.
    pub fn num_parameters(&self) -> usize {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let attn = h * q + 2 * h * kv + q * h + if self.attention_bias { q + 2 * kv } else { 0 };
        let layer = attn + 3 * h * i + 2 * h;
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        v * h + self.num_hidden_layers * layer + h + head
    }

    /// Real model shapes by name, for random-weight benchmarks.
    pub fn named_shape(name: &str) -> Result<Self> {
        let base = |vocab, h, i, l, heads, kv, theta: f64, ctx, tie| LlamaConfig {
            model_type: "llama".into(),
            vocab_size: vocab,
            hidden_size: h,
            intermediate_size: i,
            num_hidden_layers: l,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim: h / heads,
            rms_norm_eps: 1e-5,
            rope_theta: theta,
            max_position_embeddings: ctx,
            tie_word_embeddings: tie,
            attention_bias: false,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
        };
        Ok(match name {
            "smollm2-135m" => base(49152, 576, 1536, 30, 9, 3, 100_000.0, 8192, true),
            "smollm2-360m" => base(49152, 960, 2560, 32, 15, 5, 100_000.0, 8192, true),
            "smollm2-1.7b" => base(49152, 2048, 8192, 24, 32, 32, 130_000.0, 8192, true),
            "llama-8b" => base(128_256, 4096, 14_336, 32, 32, 8, 500_000.0, 8192, false),
            "tiny" => Self::tiny(300),
            other => {
                return Err(Error::invalid(
                    "shape",
                    format!("unknown `{other}` (known: smollm2-135m, smollm2-360m, smollm2-1.7b, llama-8b, tiny)"),
                ))
            }
        })
    }

    /// A tiny configuration for fast tests: 2 layers, GQA (4 heads, 2 kv heads).
    pub fn tiny(vocab_size: usize) -> Self {
        LlamaConfig {
            model_type: "llama".into(),
            vocab_size,
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 8,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            max_position_embeddings: 256,
            tie_word_embeddings: true,
            attention_bias: false,
            bos_token_id: None,
            eos_token_id: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smollm2_135m_has_135m_parameters() {
        let n = LlamaConfig::named_shape("smollm2-135m").unwrap().num_parameters();
        assert!((134_000_000..136_000_000).contains(&n), "{n}");
    }

    #[test]
    fn hf_json_round_trips() {
        let cfg = LlamaConfig::named_shape("smollm2-360m").unwrap();
        let back = LlamaConfig::from_hf_json(&cfg.to_hf_json().to_string()).unwrap();
        assert_eq!(cfg, back);
    }

    #[test]
    fn bad_shapes_are_rejected() {
        let mut cfg = LlamaConfig::tiny(10);
        cfg.num_key_value_heads = 3;
        assert!(cfg.validate().is_err());
        let mut cfg = LlamaConfig::tiny(10);
        cfg.model_type = "gpt2".into();
        assert!(matches!(cfg.validate(), Err(Error::Unsupported(_))));
    }
}
