//! Parity with Hugging Face transformers on the real SmolLM2-135M-Instruct GGUF:
//! token ids of a varied corpus match HF's tokenizer exactly, and per-token
//! log-probabilities match transformers (float32, GGUF dequantised) within 1e-3.
//! Reference files: backend/tests/data/, made by tools/make_parity_reference.py.
//! Needs `scripts/setup.sh` to have fetched the model (CI runs it first).

use std::path::PathBuf;

use amortize::decode;
use amortize::model::LanguageModel;
use candle_core::{DType, Device};

fn model() -> LanguageModel {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = std::env::var("AMORTIZE_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert!(path.exists(), "{} is missing: run scripts/setup.sh first", path.display());
    // CPU unless AMORTIZE_TEST_DEVICE=cuda (the GPU run of the same check).
    let device = match std::env::var("AMORTIZE_TEST_DEVICE").as_deref() {
        Ok("cuda") => amortize::model::parse_device("cuda").expect("AMORTIZE_TEST_DEVICE=cuda but no CUDA device"),
        _ => Device::Cpu,
    };
    LanguageModel::load(&path, &device, DType::F32).expect("load SmolLM2")
}

fn cases(name: &str) -> Vec<serde_json::Value> {
    // AMORTIZE_TEST_DATA: where the reference files are when the test binary runs elsewhere (GPU machine).
    let dir = std::env::var("AMORTIZE_TEST_DATA").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data"));
    let path = dir.join(name);
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["cases"].as_array().unwrap().clone()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn smollm2_parity_with_transformers() {
    let lm = model();
    // Tokenizer: exact ids, and decoding gives the text back.
    let tok_cases = cases("smollm2_tokens.json");
    assert!(tok_cases.len() >= 15);
    for c in &tok_cases {
        let text = c["text"].as_str().unwrap();
        let want = ids(&c["ids"]);
        assert_eq!(lm.tokenizer.encode(text).unwrap(), want, "token ids of {text:?}");
        assert_eq!(lm.tokenizer.decode(&want, false).unwrap(), text);
    }
    // Log-probabilities, batched (left padding exercised) through the scorer.
    let lp_cases = cases("smollm2_logprobs.json");
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = lp_cases
        .iter()
        .map(|c| {
            let t = ids(&c["ids"]);
            (t[..1].to_vec(), t[1..].to_vec())
        })
        .collect();
    let scored = decode::score(&lm, &pairs, None, 8).unwrap();
    let mut worst = 0f64;
    for (c, s) in lp_cases.iter().zip(&scored) {
        let want: Vec<f64> = c["logprobs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_eq!(want.len(), s.logprobs.len());
        for (w, g) in want.iter().zip(&s.logprobs) {
            worst = worst.max((w - *g as f64).abs());
        }
    }
    eprintln!("max |Δ log p| per token vs transformers: {worst:.2e}");
    assert!(worst < 1e-3, "max per-token difference {worst}");
}
