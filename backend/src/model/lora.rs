//! LoRA adapters over the frozen base: `W x + (alpha / r) · B A dropout(x)`.
//!
//! Owns the trainable parameters (candle `Var`s, f32, `B` initialised to zero so a
//! new adapter leaves the base unchanged) and their files in the PEFT layout
//! (`adapter_config.json` + `adapter_model.safetensors`, PEFT tensor names), so
//! `peft` loads what we write and we load what `peft` writes. An adapter never
//! holds base weights: one base model serves any number of adapters.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::config::LlamaConfig;
use super::lora_view::fuse;
pub use super::lora_view::{LoraGrads, LoraView, Mode};
use crate::{Error, Result};

/// The projections of a Llama block that can carry a LoRA adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Proj {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

/// The projections as the forward pass groups them (fused q/k/v and gate/up).
pub(crate) const GROUPS: [&[Proj]; 4] = [&[Proj::Q, Proj::K, Proj::V], &[Proj::O], &[Proj::Gate, Proj::Up], &[Proj::Down]];
/// The groups whose adapters untracked views fuse into one pair each.
pub(crate) const FUSED: [&[Proj]; 2] = [&[Proj::Q, Proj::K, Proj::V], &[Proj::Gate, Proj::Up]];

impl Proj {
    pub const ALL: [Proj; 7] = [Proj::Q, Proj::K, Proj::V, Proj::O, Proj::Gate, Proj::Up, Proj::Down];

    /// The module name used by HF / PEFT (`q_proj`, …).
    pub fn hf_name(self) -> &'static str {
        match self {
            Proj::Q => "q_proj",
            Proj::K => "k_proj",
            Proj::V => "v_proj",
            Proj::O => "o_proj",
            Proj::Gate => "gate_proj",
            Proj::Up => "up_proj",
            Proj::Down => "down_proj",
        }
    }

    fn parent(self) -> &'static str {
        match self {
            Proj::Q | Proj::K | Proj::V | Proj::O => "self_attn",
            _ => "mlp",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        Proj::ALL
            .into_iter()
            .find(|p| p.hf_name() == s || p.hf_name().trim_end_matches("_proj") == s)
            .ok_or_else(|| Error::invalid("target_modules", format!("unknown projection `{s}` (use q,k,v,o,gate,up,down)")))
    }

    /// (in_features, out_features) of this projection.
    pub fn dims(self, cfg: &LlamaConfig) -> (usize, usize) {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let q = cfg.num_attention_heads * cfg.head_dim;
        let kv = cfg.num_key_value_heads * cfg.head_dim;
        match self {
            Proj::Q => (h, q),
            Proj::K | Proj::V => (h, kv),
            Proj::O => (q, h),
            Proj::Gate | Proj::Up => (h, i),
            Proj::Down => (i, h),
        }
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }
}

/// Rank, scale, dropout and targets of an adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: Vec<Proj>,
}

impl Default for LoraConfig {
    /// The paper's setting (rank 64, alpha 16, q/k/v/o + MLP projections).
    fn default() -> Self {
        LoraConfig { r: 64, alpha: 16.0, dropout: 0.0, targets: Proj::ALL.to_vec() }
    }
}

impl LoraConfig {
    pub fn validate(&self) -> Result<()> {
        if self.r == 0 {
            return Err(Error::invalid("lora.r", "rank must be positive"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::invalid("lora.dropout", "must be in [0, 1)"));
        }
        if self.targets.is_empty() {
            return Err(Error::invalid("lora.targets", "name at least one projection"));
        }
        Ok(())
    }

    pub fn scale(&self) -> f64 {
        self.alpha / self.r as f64
    }
}

pub(super) struct LoraPair {
    pub a: Var, // [r, in]
    pub b: Var, // [out, r]
}

/// A LoRA adapter: trainable `A`/`B` per (layer, projection).
pub struct LoraAdapter {
    pub config: LoraConfig,
    pub(super) layers: Vec<[Option<LoraPair>; 7]>,
    /// Output size of each projection (`Proj` order), for fused views.
    pub(super) outs: [usize; 7],
}

fn out_dims(model: &LlamaConfig) -> [usize; 7] {
    Proj::ALL.map(|p| p.dims(model).1)
}

fn empty_layer() -> [Option<LoraPair>; 7] {
    [None, None, None, None, None, None, None]
}

impl LoraAdapter {
    /// A fresh adapter: `A` ~ U(-1/√in, 1/√in) (PEFT's Kaiming-uniform), `B` = 0.
    pub fn new(model: &LlamaConfig, config: LoraConfig, device: &Device, seed: u64) -> Result<Self> {
        config.validate()?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut layers = Vec::with_capacity(model.num_hidden_layers);
        for _ in 0..model.num_hidden_layers {
            let mut slots = empty_layer();
            for &p in &config.targets {
                let (inp, out) = p.dims(model);
                let bound = 1.0 / (inp as f32).sqrt();
                let a: Vec<f32> = (0..config.r * inp).map(|_| rng.random_range(-bound..bound)).collect();
                let a = Var::from_tensor(&Tensor::from_vec(a, (config.r, inp), device)?)?;
                let b = Var::zeros((out, config.r), DType::F32, device)?;
                slots[p.index()] = Some(LoraPair { a, b });
            }
            layers.push(slots);
        }
        Ok(LoraAdapter { config, layers, outs: out_dims(model) })
    }

    /// The trainable variables (for the optimiser).
    pub fn vars(&self) -> Vec<Var> {
        self.layers
            .iter()
            .flat_map(|l| l.iter().flatten())
            .flat_map(|p| [p.a.clone(), p.b.clone()])
            .collect()
    }

    pub fn num_parameters(&self) -> usize {
        self.vars().iter().map(|v| v.elem_count()).sum()
    }

    /// The adapter's tensors for one forward pass, cast to the model's dtype.
    pub fn view(&self, mode: Mode, dtype: DType) -> Result<LoraView> {
        self.view_seeded(mode, dtype, 0)
    }

    /// As [`LoraAdapter::view`], with dropout masks drawn from `seed`.
    pub fn view_seeded(&self, mode: Mode, dtype: DType, seed: u64) -> Result<LoraView> {
        let tracked = mode == Mode::Train;
        let get = |v: &Var| -> Result<Tensor> {
            let t = if tracked { v.as_tensor().clone() } else { v.as_tensor().detach() };
            Ok(t.to_dtype(dtype)?)
        };
        let scale = self.config.scale();
        let mut layers = Vec::with_capacity(self.layers.len());
        let mut fused = Vec::new();
        for l in &self.layers {
            // Untracked views fuse q/k/v and gate/up (see `fuse`): those
            // projections get no pair of their own.
            let mut slots: [Option<(Tensor, Tensor)>; 7] = Default::default();
            for (i, p) in l.iter().enumerate() {
                if let Some(p) = p {
                    if tracked || !FUSED.iter().any(|g| g.contains(&Proj::ALL[i])) {
                        slots[i] = Some((get(&p.a)?, (get(&p.b)? * scale)?));
                    }
                }
            }
            layers.push(slots);
            if !tracked {
                fused.push([fuse(l, FUSED[0], &self.outs, scale, dtype)?, fuse(l, FUSED[1], &self.outs, scale, dtype)?]);
            }
        }
        let dropout = if mode == Mode::Infer { 0.0 } else { self.config.dropout as f32 };
        let present = self.layers.iter().map(|l| std::array::from_fn(|i| l[i].is_some())).collect();
        let (outs, r) = (self.outs, self.config.r);
        Ok(LoraView { dropout, tracked, layers, fused, present, folded: None, outs, r, scale, rng: std::sync::Mutex::new(seed) })
    }

    fn peft_key(layer: usize, p: Proj, ab: &str) -> String {
        format!("base_model.model.model.layers.{layer}.{}.{}.lora_{ab}.weight", p.parent(), p.hf_name())
    }

    /// All tensors by PEFT name.
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (i, l) in self.layers.iter().enumerate() {
            for p in Proj::ALL {
                if let Some(pair) = &l[p.index()] {
                    out.insert(Self::peft_key(i, p, "A"), pair.a.as_tensor().clone());
                    out.insert(Self::peft_key(i, p, "B"), pair.b.as_tensor().clone());
                }
            }
        }
        out
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` into `dir`
    /// (created if needed; each file written to a temp name and renamed).
    pub fn save_peft(&self, dir: &Path, base_model: &str) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut targets: Vec<&str> = self.config.targets.iter().map(|p| p.hf_name()).collect();
        targets.sort();
        let cfg = serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": self.config.r,
            "lora_alpha": self.config.alpha,
            "lora_dropout": self.config.dropout,
            "target_modules": targets,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "use_rslora": false,
            "use_dora": false,
            "modules_to_save": null,
        });
        let tmp = dir.join(".adapter_model.safetensors.tmp");
        candle_core::safetensors::save(&self.tensors(), &tmp)?;
        std::fs::rename(&tmp, dir.join("adapter_model.safetensors"))?;
        crate::util::write_atomic(&dir.join("adapter_config.json"), serde_json::to_string_pretty(&cfg)?.as_bytes())?;
        Ok(())
    }

    /// Reads a PEFT LoRA adapter written by us or by `peft`.
    pub fn load_peft(dir: &Path, model: &LlamaConfig, device: &Device) -> Result<Self> {
        let cfg_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::file(&cfg_path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::file(&cfg_path, e))?;
        let field = |k: &str| v.get(k).filter(|x| !x.is_null());
        if let Some(t) = field("peft_type").and_then(|t| t.as_str()) {
            if t != "LORA" {
                return Err(Error::Unsupported(format!("PEFT adapter type {t} (only LORA)")));
            }
        }
        if field("use_dora").and_then(|x| x.as_bool()) == Some(true) {
            return Err(Error::Unsupported("DoRA adapters".into()));
        }
        let r = field("r").and_then(|x| x.as_u64()).ok_or_else(|| Error::file(&cfg_path, "missing `r`"))? as usize;
        let mut alpha = field("lora_alpha").and_then(|x| x.as_f64()).unwrap_or(8.0);
        if field("use_rslora").and_then(|x| x.as_bool()) == Some(true) {
            // rsLoRA scales by alpha/sqrt(r); express it as an equivalent alpha.
            alpha *= (r as f64).sqrt();
        }
        let dropout = field("lora_dropout").and_then(|x| x.as_f64()).unwrap_or(0.0);
        let targets = match field("target_modules") {
            Some(serde_json::Value::Array(a)) => {
                a.iter().map(|x| Proj::parse(x.as_str().unwrap_or(""))).collect::<Result<Vec<_>>>()?
            }
            Some(serde_json::Value::String(s)) if s == "all-linear" => Proj::ALL.to_vec(),
            _ => return Err(Error::file(&cfg_path, "`target_modules` must be a list of projection names")),
        };
        let config = LoraConfig { r, alpha, dropout, targets };
        config.validate()?;

        let st_path = dir.join("adapter_model.safetensors");
        let tensors = candle_core::safetensors::load(&st_path, device).map_err(|e| Error::file(&st_path, e))?;
        // PEFT may keep the adapter name in the key (`lora_A.default.weight`).
        let tensors: HashMap<String, Tensor> =
            tensors.into_iter().map(|(k, t)| (k.replace(".default.weight", ".weight"), t)).collect();
        let mut layers = Vec::with_capacity(model.num_hidden_layers);
        let mut used = 0;
        for i in 0..model.num_hidden_layers {
            let mut slots = empty_layer();
            for &p in &config.targets {
                let (inp, out) = p.dims(model);
                let (ka, kb) = (Self::peft_key(i, p, "A"), Self::peft_key(i, p, "B"));
                let (Some(a), Some(b)) = (tensors.get(&ka), tensors.get(&kb)) else { continue };
                if a.dims() != [r, inp] || b.dims() != [out, r] {
                    return Err(Error::file(
                        &st_path,
                        format!("{ka}: shapes {:?}/{:?} do not fit this model (expected [{r}, {inp}]/[{out}, {r}])", a.dims(), b.dims()),
                    ));
                }
                used += 2;
                slots[p.index()] = Some(LoraPair {
                    a: Var::from_tensor(&a.to_dtype(DType::F32)?)?,
                    b: Var::from_tensor(&b.to_dtype(DType::F32)?)?,
                });
            }
            layers.push(slots);
        }
        if used == 0 {
            return Err(Error::file(&st_path, "no LoRA tensors for this model's layers"));
        }
        if used != tensors.len() {
            return Err(Error::file(
                &st_path,
                format!("{} tensors do not belong to this model (layer count or names differ)", tensors.len() - used),
            ));
        }
        Ok(LoraAdapter { config, layers, outs: out_dims(model) })
    }
}
