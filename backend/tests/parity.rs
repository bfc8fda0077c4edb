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

/// The arithmetic preset's `max_len` leaves room on SmolLM2's tokenizer for
/// the full chain of every question the paper tests (3–5 one-digit operands)
/// and the stop token after it: the policy can always finish a chain.
#[test]
fn arithmetic_chains_fit_the_preset_on_smollm2() {
    use amortize::tasks::arithmetic::{generate, worked, Arithmetic, Item};
    use amortize::tasks::Task;
    use rand::SeedableRng;
    let lm = model();
    let task = Arithmetic::from_options(&toml::Table::new()).unwrap();
    let max_len = task.default_config().max_len;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut questions: Vec<_> = (0..300).map(|i| generate(3 + i % 3, &mut rng)).collect();
    // The longest: every accumulator after the first has two digits.
    questions.push(Item { str_query: "Question: 9 + 9 + 9 + 9 + 9 = ? Answer:".into(), num_sol: 45, str_rationale: Some("9 + 9 =, 18 + 9 =, 27 + 9 =, 36 + 9 =".into()) });
    questions.push(Item { str_query: "Question: 0 - 9 - 9 - 9 - 9 = ? Answer:".into(), num_sol: -36, str_rationale: Some("0 - 9 =, -9 - 9 =, -18 - 9 =, -27 - 9 =".into()) });
    let mut longest = (0, String::new());
    for q in &questions {
        let rationale = q.str_rationale.as_deref().unwrap();
        let t = Arithmetic::seed_trajectory(&lm, rationale).unwrap();
        // The calculator's tokens are not actions, and its results are the chain's.
        assert_eq!(lm.tokenizer.decode(&t.tokens, true).unwrap().trim(), worked(rationale), "{rationale}");
        if t.num_actions() > longest.0 {
            longest = (t.num_actions(), worked(rationale));
        }
    }
    eprintln!("longest chain: {} actions ({:?}); preset max_len {max_len}", longest.0, longest.1);
    assert!(longest.0 < max_len, "{:?} needs {} actions and the stop; max_len is {max_len}", longest.1, longest.0);
    assert!(longest.0 >= 30, "the two-digit worst case should need 30 actions, got {}", longest.0);
}
