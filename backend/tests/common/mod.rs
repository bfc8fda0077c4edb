//! Helpers of the engine and decoding tests: the device under test, the tiny
//! random model written to disk and loaded back through the real loader, full
//! logits without cache reuse, and a perturbed adapter.
#![allow(dead_code)]

use amortize::model::tiny::write_tiny_model;
use amortize::model::{LanguageModel, LoraAdapter};
use candle_core::{DType, Device, Tensor};

/// CPU unless `AMORTIZE_TEST_DEVICE=cuda` (the GPU run of the same checks).
pub fn dev() -> Device {
    match std::env::var("AMORTIZE_TEST_DEVICE").as_deref() {
        Ok("cuda") => amortize::model::parse_device("cuda").expect("AMORTIZE_TEST_DEVICE=cuda but no CUDA device"),
        _ => Device::Cpu,
    }
}

pub fn tiny(dir: &tempfile::TempDir) -> LanguageModel {
    let paths = write_tiny_model(dir.path(), 7).unwrap();
    LanguageModel::load(&paths.gguf, &dev(), DType::F32).unwrap()
}

/// Full logits [T, V] of one sequence, no cache reuse.
pub fn logits_of(lm: &LanguageModel, ids: &[u32], lora: Option<&amortize::model::LoraView>) -> Tensor {
    let mut cache = lm.llama.new_cache();
    let h = lm.llama.forward(&[ids.to_vec()], &mut cache, lora).unwrap();
    lm.llama.logits(&h).unwrap().squeeze(0).unwrap()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// Gives every B matrix random values so the adapter changes the model.
pub fn perturb(adapter: &LoraAdapter, seed: u64) {
    use rand::SeedableRng;
    use rand_distr::Distribution;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let normal = rand_distr::Normal::new(0f32, 0.3).unwrap();
    for (i, v) in adapter.vars().iter().enumerate() {
        if v.dims()[1] == adapter.config.r && i % 2 == 1 {
            let data: Vec<f32> = (0..v.elem_count()).map(|_| normal.sample(&mut rng)).collect();
            let t = Tensor::from_vec(data, v.dims(), v.device()).unwrap();
            v.set(&t).unwrap();
        }
    }
}

pub const TEXT: &str = "the cat and the hat sat on the mat, 12 + 30 = 42.";
