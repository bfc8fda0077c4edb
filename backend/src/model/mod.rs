//! The model engine: a Llama-family decoder with LoRA adapters and a KV cache,
//! its loaders and its tokenizer. Owns weights and the forward pass; sampling and
//! scoring strategies live in `decode`, training objectives in `gfn`.

pub mod branch;
pub mod cache;
pub mod config;
pub mod denormals;
pub mod few_rows;
pub mod fold;
pub mod fused;
#[cfg(feature = "cuda")]
pub(crate) mod fused_cuda;
pub mod fused_grad;
pub mod fused_heads;
pub mod fused_softmax;
pub mod gemv;
mod gemv_layers;
pub mod graph;
pub mod linear;
pub mod llama;
pub mod loader;
pub mod lora;
pub mod lora_view;
pub mod tape;
mod tape_ops;
pub mod threads;
pub mod tiny;
pub mod tokenizer;

use std::path::Path;

use candle_core::{DType, Device};

pub use cache::KvCache;
pub use config::LlamaConfig;
pub use llama::Llama;
pub use lora::{LoraAdapter, LoraConfig, LoraGrads, LoraView, Mode, Proj};
pub use tokenizer::{Tokenizer, TokenizerSpec};

use crate::{Error, Result};

/// A base model with its tokenizer: what every adapter, sampler and trainer shares.
pub struct LanguageModel {
    pub llama: Llama,
    pub tokenizer: Tokenizer,
    /// A display name (file name or shape name).
    pub name: String,
}

impl LanguageModel {
    /// Loads a `.gguf` file or an HF directory.
    pub fn load(path: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let (llama, tokenizer) = loader::load(path, device, dtype)?;
        if tokenizer.vocab_size() > llama.config.vocab_size {
            return Err(Error::file(
                path,
                format!("tokenizer has {} tokens but the model only {}", tokenizer.vocab_size(), llama.config.vocab_size),
            ));
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string());
        Ok(LanguageModel { llama, tokenizer, name })
    }

    /// Random weights of a named real shape (`smollm2-135m`, …), with the tiny
    /// test tokenizer (ids beyond it are valid model tokens that decode to nothing).
    pub fn random(shape: &str, device: &Device, dtype: DType, seed: u64) -> Result<Self> {
        let spec = TokenizerSpec::tiny();
        let cfg = if shape == "tiny" { LlamaConfig::tiny(spec.tokens.len()) } else { LlamaConfig::named_shape(shape)? };
        let llama = loader::random(&cfg, device, dtype, seed)?;
        Ok(LanguageModel { llama, tokenizer: Tokenizer::from_spec(&spec)?, name: format!("random-{shape}") })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.llama.config
    }

    pub fn device(&self) -> &Device {
        self.llama.device()
    }

    /// `adapter` for a long decode (an evaluation): folded into the weights,
    /// one product per projection once instead of two at every step.
    pub fn folded(&self, adapter: &LoraAdapter) -> Result<LoraView> {
        self.llama.fold(&adapter.view(Mode::Infer, self.llama.dtype())?)
    }
}

/// Parses `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when built with it and present).
pub fn parse_device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        // The engine's CUDA device (see `cuda_device`), not candle's plain one.
        "auto" if candle_core::utils::cuda_is_available() => cuda_device(0).or_else(|e| {
            tracing::info!("no usable CUDA device, running on the CPU: {e}");
            Ok(Device::Cpu)
        }),
        "auto" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ord = s.strip_prefix("cuda:").map(|n| n.parse::<usize>()).transpose().map_err(|_| Error::invalid("device", format!("bad ordinal in `{s}`")))?;
            if !candle_core::utils::cuda_is_available() {
                return Err(Error::invalid("device", "this binary was built without CUDA (build with --features cuda)"));
            }
            cuda_device(ord.unwrap_or(0))
        }
        other => Err(Error::invalid("device", format!("`{other}` (use cpu, cuda, cuda:N or auto)"))),
    }
}

/// A CUDA device as the engine uses it: candle's per-thread stream, without
/// cudarc's event tracking. That tracking creates two CUDA events per
/// allocation (and destroys them on free), i.e. per op output, but only
/// synchronises anything once a context runs several explicit streams, which
/// candle's device never creates: here it is pure launch overhead.
/// `AMORTIZE_CUDA_EVENTS=1` keeps it (for A/B timings).
///
/// The device's memory pool also keeps what it has grown to: by default a
/// stream-ordered pool hands its free memory back to the driver at every
/// synchronisation (each decode step's readback, each phase boundary), and
/// the next step's allocations must map it again (PyTorch's caching
/// allocator avoids the same). `AMORTIZE_CUDA_POOL_RELEASE=1` keeps the
/// driver's default.
#[allow(unused_variables)]
pub fn cuda_device(ordinal: usize) -> Result<Device> {
    let device = Device::new_cuda(ordinal).map_err(|e| Error::invalid("device", e.to_string()))?;
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = &device {
        if std::env::var("AMORTIZE_CUDA_EVENTS").as_deref() != Ok("1") {
            // SAFETY: cudarc only records and waits on these events in
            // multi-stream mode (streams made with `new_stream`), which candle's
            // device never enters: with or without them, nothing is ordered
            // differently.
            unsafe { d.disable_event_tracking() };
        }
        if std::env::var("AMORTIZE_CUDA_POOL_RELEASE").as_deref() != Ok("1") {
            if let Err(e) = keep_pool_memory(d) {
                tracing::debug!("the CUDA memory pool keeps its default release threshold: {e}");
            }
        }
    }
    Ok(device)
}

/// Sets the device's default memory pool (where candle's stream-ordered
/// allocations come from) to keep freed memory instead of releasing it at
/// each synchronisation.
#[cfg(feature = "cuda")]
fn keep_pool_memory(d: &candle_core::CudaDevice) -> std::result::Result<(), String> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let stream = d.cuda_stream();
    let ctx = stream.context();
    ctx.bind_to_thread().map_err(|e| e.to_string())?;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut keep = u64::MAX;
    // SAFETY: plain driver calls on the context bound above; `pool` and `keep`
    // outlive them, and the attribute takes a u64 (cuMemPoolSetAttribute).
    let r = unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) };
    if r != sys::CUresult::CUDA_SUCCESS {
        return Err(format!("{r:?}"));
    }
    let r = unsafe { sys::cuMemPoolSetAttribute(pool, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, (&mut keep as *mut u64).cast()) };
    if r != sys::CUresult::CUDA_SUCCESS {
        return Err(format!("{r:?}"));
    }
    Ok(())
}

/// Parses `f32`, `bf16` or `f16`.
pub fn parse_dtype(name: &str) -> Result<DType> {
    match name {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        other => Err(Error::invalid("dtype", format!("`{other}` (use f32, bf16 or f16)"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse_or_fail_clearly() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        // `auto` is the CPU in a CPU build, and on a CUDA build without a GPU.
        let auto = parse_device("auto").unwrap();
        assert_eq!(auto.is_cpu(), !candle_core::utils::cuda_is_available() || Device::new_cuda(0).is_err());
        for bad in ["tpu", "cuda:x", ""] {
            let e = parse_device(bad).unwrap_err().to_string();
            assert!(e.contains("device"), "{bad}: {e}");
        }
        assert_eq!(parse_dtype("bf16").unwrap(), DType::BF16);
        assert!(parse_dtype("f8").unwrap_err().to_string().contains("f32, bf16 or f16"));
    }
}
