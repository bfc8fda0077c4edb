//! The model engine on a tiny random model written to disk and loaded back
//! through the real GGUF / HF loaders: LoRA identities, gradients, KV cache,
//! padding, adapter files, and agreement between sampler, scorer and beams.
//! (The taped backward is checked in `taped.rs`, the fused ops in `fused.rs`.)

use amortize::decode::{self, beam_search, BeamConfig, SampleConfig, ToolHook};
use amortize::model::tiny::write_tiny_model;
use amortize::model::{LanguageModel, LoraAdapter, LoraConfig, Mode, Proj};
use candle_core::{DType, Device, Tensor};

/// CPU unless `AMORTIZE_TEST_DEVICE=cuda` (the GPU run of the same checks).
fn dev() -> Device {
    match std::env::var("AMORTIZE_TEST_DEVICE").as_deref() {
        Ok("cuda") => amortize::model::parse_device("cuda").expect("AMORTIZE_TEST_DEVICE=cuda but no CUDA device"),
        _ => Device::Cpu,
    }
}

fn tiny(dir: &tempfile::TempDir) -> LanguageModel {
    let paths = write_tiny_model(dir.path(), 7).unwrap();
    LanguageModel::load(&paths.gguf, &dev(), DType::F32).unwrap()
}

/// Full logits [T, V] of one sequence, no cache reuse.
fn logits_of(lm: &LanguageModel, ids: &[u32], lora: Option<&amortize::model::LoraView>) -> Tensor {
    let mut cache = lm.llama.new_cache();
    let h = lm.llama.forward(&[ids.to_vec()], &mut cache, lora).unwrap();
    lm.llama.logits(&h).unwrap().squeeze(0).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// Gives every B matrix random values so the adapter changes the model.
fn perturb(adapter: &LoraAdapter, seed: u64) {
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

const TEXT: &str = "the cat and the hat sat on the mat, 12 + 30 = 42.";

#[test]
fn gguf_and_hf_loaders_give_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let paths = write_tiny_model(dir.path(), 7).unwrap();
    let a = LanguageModel::load(&paths.gguf, &dev(), DType::F32).unwrap();
    let b = LanguageModel::load(&paths.hf_dir, &dev(), DType::F32).unwrap();
    let ids = a.tokenizer.encode(TEXT).unwrap();
    assert_eq!(ids, b.tokenizer.encode(TEXT).unwrap());
    // Identical weights after GGUF's Q/K permutation is undone.
    assert_eq!(max_abs_diff(&logits_of(&a, &ids, None), &logits_of(&b, &ids, None)), 0.0);
}

#[test]
fn lora_with_zero_b_is_the_base_model() {
    let dir = tempfile::tempdir().unwrap();
    let lm = tiny(&dir);
    let ids = lm.tokenizer.encode(TEXT).unwrap();
    let cfg = LoraConfig { r: 4, alpha: 8.0, dropout: 0.0, targets: Proj::ALL.to_vec() };
    let adapter = LoraAdapter::new(lm.config(), cfg, &dev(), 1).unwrap();
    let view = adapter.view(Mode::Infer, DType::F32).unwrap();
    assert_eq!(max_abs_diff(&logits_of(&lm, &ids, None), &logits_of(&lm, &ids, Some(&view))), 0.0);
    perturb(&adapter, 3);
    let view = adapter.view(Mode::Infer, DType::F32).unwrap();
    assert!(max_abs_diff(&logits_of(&lm, &ids, None), &logits_of(&lm, &ids, Some(&view))) > 1e-3);
}

#[test]
fn gradients_reach_only_lora_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let lm = tiny(&dir);
    let ids = lm.tokenizer.encode(TEXT).unwrap();
    let cfg = LoraConfig { r: 4, alpha: 8.0, dropout: 0.0, targets: vec![Proj::Q, Proj::V, Proj::Down] };
    let adapter = LoraAdapter::new(lm.config(), cfg, &dev(), 1).unwrap();
    perturb(&adapter, 5);
    let view = adapter.view(Mode::Train, DType::F32).unwrap();
    let logits = logits_of(&lm, &ids, Some(&view));
    let loss = candle_nn::ops::log_softmax(&logits, 1).unwrap().mean_all().unwrap();
    let grads = loss.backward().unwrap();
    for v in adapter.vars() {
        let g = grads.get(v.as_tensor()).expect("every LoRA parameter gets a gradient");
        let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(norm > 0.0 && norm.is_finite());
    }
    let w = lm.llama.weights().unwrap();
    for base in [&w.embed, &w.norm, &w.blocks[0].q.weight, &w.blocks[1].down.weight] {
        assert!(grads.get(base).is_none(), "base weights must not be trained");
    }
    assert_eq!(adapter.vars().len(), 2 * 3 * lm.config().num_hidden_layers);
}

#[test]
fn kv_cache_decoding_equals_full_recomputation() {
    let dir = tempfile::tempdir().unwrap();
    let lm = tiny(&dir);
    let ids = lm.tokenizer.encode(TEXT).unwrap();
    let full = logits_of(&lm, &ids, None);
    // Prefill 5 tokens, then one token at a time, then a chunk of 3.
    let mut cache = lm.llama.new_cache();
    let mut parts = vec![lm.llama.logits(&lm.llama.forward(&[ids[..5].to_vec()], &mut cache, None).unwrap()).unwrap()];
    for &id in &ids[5..ids.len() - 3] {
        parts.push(lm.llama.logits(&lm.llama.forward(&[vec![id]], &mut cache, None).unwrap()).unwrap());
    }
    parts.push(lm.llama.logits(&lm.llama.forward(&[ids[ids.len() - 3..].to_vec()], &mut cache, None).unwrap()).unwrap());
    let inc = Tensor::cat(&parts, 1).unwrap().squeeze(0).unwrap();
    // CUDA f32 products of different shapes round differently (measured up to 1.2e-5).
    assert!(max_abs_diff(&full, &inc) < 5e-5, "{}", max_abs_diff(&full, &inc));
}

#[test]
fn left_padded_batch_equals_rows_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let lm = tiny(&dir);
    let rows: Vec<Vec<u32>> = ["the cat", "and the hat sat on it", "12 + 3 = 15, done"]
        .iter()
        .map(|t| lm.tokenizer.encode(t).unwrap())
        .collect();
    let mut cache = lm.llama.new_cache();
    let batch = lm.llama.logits(&lm.llama.forward(&rows, &mut cache, None).unwrap()).unwrap();
    let t = batch.dim(1).unwrap();
    // One more step on the padded cache, per row.
    let next: Vec<Vec<u32>> = vec![vec![40], vec![41], vec![42]];
    let step = lm.llama.logits(&lm.llama.forward(&next, &mut cache, None).unwrap()).unwrap();
    for (i, r) in rows.iter().enumerate() {
        let alone = logits_of(&lm, r, None);
        let padded = batch.get(i).unwrap().narrow(0, t - r.len(), r.len()).unwrap();
        assert!(max_abs_diff(&alone, &padded) < 1e-5);
        let mut longer = r.clone();
        longer.push(next[i][0]);
        let alone_next = logits_of(&lm, &longer, None).get(r.len()).unwrap();
        assert!(max_abs_diff(&alone_next, &step.get(i).unwrap().get(0).unwrap()) < 1e-5);
    }
}

#[test]
fn cache_fork_and_truncate() {
    let dir = tempfile::tempdir().unwrap();
    let lm = tiny(&dir);
    let a = lm.tokenizer.encode("the cat and").unwrap();
    let b = lm.tokenizer.encode(" the hat").unwrap();
    let c = lm.tokenizer.encode(" on the mat").unwrap();
    let mut cache = lm.llama.new_cache();
    lm.llama.forward(std::slice::from_ref(&a), &mut cache, None).unwrap();
    let mut forked = cache.repeat_rows(2).unwrap();
    lm.llama.forward(std::slice::from_ref(&b), &mut cache, None).unwrap();
    cache.truncate(a.len()).unwrap();
    let after_truncate = lm.llama.logits(&lm.llama.forward(std::slice::from_ref(&c), &mut cache, None).unwrap()).unwrap();
    let both = lm.llama.logits(&lm.llama.forward(&[c.clone(), b.clone()], &mut forked, None).unwrap()).unwrap();
    let fresh = logits_of(&lm, &[a.clone(), c.clone()].concat(), None).narrow(0, a.len(), c.len()).unwrap();
    assert!(max_abs_diff(&after_truncate.squeeze(0).unwrap(), &fresh) < 1e-5);
    let t = both.dim(1).unwrap();
    assert!(max_abs_diff(&both.get(0).unwrap().narrow(0, t - c.len(), c.len()).unwrap(), &fresh) < 1e-5);
}

#[test]
fn adapter_files_round_trip_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let lm = tiny(&dir);
    let cfg = LoraConfig { r: 3, alpha: 6.0, dropout: 0.1, targets: vec![Proj::K, Proj::O, Proj::Gate, Proj::Up] };
    let adapter = LoraAdapter::new(lm.config(), cfg.clone(), &dev(), 9).unwrap();
    perturb(&adapter, 11);
    let out = dir.path().join("adapter");
    adapter.save_peft(&out, "tiny").unwrap();
    let back = LoraAdapter::load_peft(&out, lm.config(), &dev()).unwrap();
    let mut targets = back.config.targets.clone();
    targets.sort();
    assert_eq!((back.config.r, back.config.alpha, back.config.dropout, targets), (cfg.r, cfg.alpha, cfg.dropout, cfg.targets));
    let (x, y) = (adapter.tensors(), back.tensors());
    assert_eq!(x.len(), y.len());
    for (k, t) in &x {
        assert_eq!(max_abs_diff(t, &y[k]), 0.0, "{k}");
    }
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(json["peft_type"], "LORA");
    assert!(x.contains_key("base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight"));
    // An adapter for another shape is refused with a message, not a panic.
    let mut other = lm.config().clone();
    other.hidden_size = 64;
    other.head_dim = 16;
    assert!(LoraAdapter::load_peft(&out, &other, &dev()).is_err());
}

#[test]
fn sampler_logprobs_match_the_scorer_and_seeds_reproduce() {
    let dir = tempfile::tempdir().unwrap();
    let lm = tiny(&dir);
    let adapter = LoraAdapter::new(lm.config(), LoraConfig { r: 2, alpha: 4.0, dropout: 0.0, targets: vec![Proj::V] }, &dev(), 2).unwrap();
    perturb(&adapter, 13);
    let view = adapter.view(Mode::Infer, DType::F32).unwrap();
    let prompts = vec![lm.tokenizer.encode("the cat").unwrap(), lm.tokenizer.encode("12 + 3 =").unwrap()];
    let cfg = SampleConfig { n: 3, max_new_tokens: 12, temperature: 0.7, top_p: Some(0.9), seed: 4, ..Default::default() };
    let a = decode::sample(&lm, &prompts, &cfg, Some(&view), None).unwrap();
    let b = decode::sample(&lm, &prompts, &cfg, Some(&view), None).unwrap();
    assert_eq!(a.len(), 6);
    assert_eq!(a.iter().map(|s| &s.tokens).collect::<Vec<_>>(), b.iter().map(|s| &s.tokens).collect::<Vec<_>>());
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = a.iter().map(|s| (prompts[s.prompt_index].clone(), s.tokens.clone())).collect();
    let scored = decode::score(&lm, &pairs, Some(&view), 4).unwrap();
    for (s, sc) in a.iter().zip(&scored) {
        for (x, y) in s.logprobs.iter().zip(&sc.logprobs) {
            assert!((x - y).abs() < 1e-4, "sampler {x} vs scorer {y}");
        }
        // Sampled tokens are inside the nucleus: finite sampling log-probs.
        assert!(s.sample_logprobs.iter().all(|x| x.is_finite()));
    }
}

#[test]
fn masks_min_length_and_stop_strings() {
    let dir = tempfile::tempdir().unwrap();
    let lm = tiny(&dir);
    let digits: Vec<u32> = "0123456789".chars().map(|c| lm.tokenizer.token_to_id(&c.to_string()).unwrap()).collect();
    let stop = lm.tokenizer.eos.unwrap();
    let prompt = vec![lm.tokenizer.encode("x =").unwrap()];
    let mut allowed = digits.clone();
    allowed.push(stop);
    let cfg = SampleConfig {
        n: 8,
        max_new_tokens: 6,
        min_new_tokens: 3,
        mask: decode::TokenMask::Allow(allowed),
        seed: 1,
        ..Default::default()
    };
    for s in decode::sample(&lm, &prompt, &cfg, None, None).unwrap() {
        assert!(s.tokens.len() >= 3);
        assert!(s.tokens.iter().all(|t| digits.contains(t) || *t == stop), "{:?}", s.tokens);
    }
    let cfg = SampleConfig { n: 4, max_new_tokens: 40, stop_strings: vec!["e".into()], stop_tokens: Some(vec![]), seed: 2, ..Default::default() };
    for s in decode::sample(&lm, &prompt, &cfg, None, None).unwrap() {
        match s.stop {
            decode::StopReason::StopString => assert!(s.text.ends_with('e') || s.text.contains('e')),
            _ => assert!(!s.text.contains('e') && s.tokens.len() == 40),
        }
    }
}

/// Appends " 7" after every "=" (a calculator stand-in).
struct Seven;
impl ToolHook for Seven {
    fn after_token(&self, generated: &str) -> Option<String> {
        generated.ends_with('=').then(|| " 7".to_string())
    }
}

#[test]
fn tool_tokens_are_fed_but_not_policy_actions() {
    let dir = tempfile::tempdir().unwrap();
    let lm = tiny(&dir);
    let eq = lm.tokenizer.token_to_id("=").unwrap();
    let prompt = vec![lm.tokenizer.encode("1 + 2").unwrap()];
    // Make "=" likely by allowing only a few tokens.
    let allowed = vec![eq, lm.tokenizer.token_to_id("+").unwrap(), lm.tokenizer.token_to_id("1").unwrap()];
    let cfg = SampleConfig { n: 6, max_new_tokens: 8, temperature: 20.0, mask: decode::TokenMask::Allow(allowed), stop_tokens: Some(vec![]), seed: 3, ..Default::default() };
    let samples = decode::sample(&lm, &prompt, &cfg, None, Some(&Seven)).unwrap();
    assert!(samples.iter().any(|s| s.tool.iter().any(|&t| t)), "the tool never fired");
    for s in &samples {
        assert_eq!(s.tool.iter().filter(|&&t| !t).count(), 8, "8 policy actions");
        for (i, &t) in s.tool.iter().enumerate() {
            if t {
                assert_eq!(s.logprobs[i], 0.0);
                assert!(i > 0 && (s.tokens[i - 1] == eq || s.tool[i - 1]));
            }
        }
    }
    // KV cache stays consistent: policy log-probs equal teacher-forced scores.
    let cfg = SampleConfig { n: 4, max_new_tokens: 10, stop_tokens: Some(vec![]), seed: 5, ..Default::default() };
    let always = AlwaysTool;
    for s in decode::sample(&lm, &prompt, &cfg, None, Some(&always)).unwrap() {
        let scored = decode::score(&lm, &[(prompt[0].clone(), s.tokens.clone())], None, 1).unwrap();
        for i in 0..s.tokens.len() {
            if !s.tool[i] {
                assert!((s.logprobs[i] - scored[0].logprobs[i]).abs() < 1e-4);
            }
        }
        assert!(s.tool.iter().filter(|&&t| t).count() >= 9);
    }
}

/// Appends "x" after every policy token.
struct AlwaysTool;
impl ToolHook for AlwaysTool {
    fn after_token(&self, _: &str) -> Option<String> {
        Some("x".into())
    }
}

#[test]
fn beams_score_consistently_and_groups_diversify() {
    let dir = tempfile::tempdir().unwrap();
    let lm = tiny(&dir);
    let prompt = lm.tokenizer.encode("the cat and").unwrap();
    let cfg = BeamConfig { beams: 4, max_new_tokens: 6, stop_tokens: Some(vec![]), ..Default::default() };
    let hyps = beam_search(&lm, &prompt, &cfg, None).unwrap();
    assert_eq!(hyps.len(), 4);
    let pairs: Vec<_> = hyps.iter().map(|h| (prompt.clone(), h.tokens.clone())).collect();
    for (h, s) in hyps.iter().zip(decode::score(&lm, &pairs, None, 4).unwrap()) {
        assert!((h.logprob - s.total).abs() < 1e-3, "{} vs {}", h.logprob, s.total);
        assert_eq!(h.tokens.len(), 6);
    }
    assert!(hyps.windows(2).all(|w| w[0].logprob >= w[1].logprob));
    // Greedy = one beam.
    let one = beam_search(&lm, &prompt, &BeamConfig { beams: 1, ..cfg.clone() }, None).unwrap();
    let greedy = decode::sample(&lm, std::slice::from_ref(&prompt), &SampleConfig { greedy: true, max_new_tokens: 6, stop_tokens: Some(vec![]), ..Default::default() }, None, None).unwrap();
    assert_eq!(one[0].tokens, greedy[0].tokens);
    // A strong Hamming penalty makes each group start differently.
    let diverse = BeamConfig { beams: 4, groups: 4, diversity_penalty: 100.0, ..cfg };
    let hyps = beam_search(&lm, &prompt, &diverse, None).unwrap();
    let mut firsts: Vec<u32> = hyps.iter().map(|h| h.tokens[0]).collect();
    firsts.sort();
    firsts.dedup();
    assert_eq!(firsts.len(), 4);
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let lm = tiny(&dir);
    let p = vec![lm.tokenizer.encode("the").unwrap()];
    for cfg in [
        SampleConfig { n: 0, ..Default::default() },
        SampleConfig { temperature: 0.0, ..Default::default() },
        SampleConfig { top_p: Some(1.5), ..Default::default() },
        SampleConfig { top_p: Some(0.0), ..Default::default() },
        SampleConfig { max_new_tokens: 10_000, ..Default::default() },
    ] {
        assert!(decode::sample(&lm, &p, &cfg, None, None).is_err(), "{cfg:?}");
    }
    assert!(decode::sample(&lm, &[vec![]], &SampleConfig::default(), None, None).is_err());
    let mut cache = lm.llama.new_cache();
    assert!(lm.llama.forward(&[vec![100_000]], &mut cache, None).is_err());
    // Corrupt and missing files.
    let bad = dir.path().join("bad.gguf");
    std::fs::write(&bad, b"GGUF nonsense").unwrap();
    assert!(LanguageModel::load(&bad, &dev(), DType::F32).is_err());
    assert!(LanguageModel::load(&dir.path().join("missing.gguf"), &dev(), DType::F32).is_err());
}

/// The adapter, merged into the base weights (W + scale·B·A), is the same model
/// as the base plus the adapter, through both adapter paths: the fused one of
/// inference views (q/k/v and gate/up as one block-diagonal pair) and the
/// per-projection one of training views. Targets leave gaps in both groups.
#[test]
fn merged_adapter_equals_fused_and_per_projection_views() {
    let dir = tempfile::tempdir().unwrap();
    let lm = tiny(&dir);
    let cfg = LoraConfig { r: 3, alpha: 6.0, dropout: 0.0, targets: vec![Proj::Q, Proj::V, Proj::Up, Proj::Down] };
    let adapter = LoraAdapter::new(lm.config(), cfg, &dev(), 5).unwrap();
    perturb(&adapter, 21);
    let scale = adapter.config.scale();
    let t = adapter.tensors();
    let merge = |w: &Tensor, l: usize, parent: &str, name: &str| -> Tensor {
        let key = |ab: &str| format!("base_model.model.model.layers.{l}.{parent}.{name}.lora_{ab}.weight");
        match (t.get(&key("A")), t.get(&key("B"))) {
            (Some(a), Some(b)) => (w + (b.matmul(a).unwrap() * scale).unwrap()).unwrap(),
            _ => w.clone(),
        }
    };
    let mut w = lm.llama.weights().unwrap();
    for (l, b) in w.blocks.iter_mut().enumerate() {
        b.q.weight = merge(&b.q.weight, l, "self_attn", "q_proj");
        b.k.weight = merge(&b.k.weight, l, "self_attn", "k_proj");
        b.v.weight = merge(&b.v.weight, l, "self_attn", "v_proj");
        b.up.weight = merge(&b.up.weight, l, "mlp", "up_proj");
        b.down.weight = merge(&b.down.weight, l, "mlp", "down_proj");
    }
    let merged = amortize::model::Llama::new(lm.config().clone(), w, &dev()).unwrap();
    let ids = lm.tokenizer.encode(TEXT).unwrap();
    let mut cache = merged.new_cache();
    let want = merged.logits(&merged.forward(std::slice::from_ref(&ids), &mut cache, None).unwrap()).unwrap().squeeze(0).unwrap();
    for mode in [Mode::Infer, Mode::Train] {
        let view = adapter.view(mode, DType::F32).unwrap();
        let got = logits_of(&lm, &ids, Some(&view));
        let d = max_abs_diff(&got, &want);
        assert!(d < 1e-3, "{mode:?}: max |Δ logit| {d}");
    }
    // The adapter folded into the weights by the engine (`model::fold`).
    let infer = adapter.view(Mode::Infer, DType::F32).unwrap();
    let folded = lm.llama.fold(&infer).unwrap();
    let d = max_abs_diff(&logits_of(&lm, &ids, Some(&folded)), &want);
    assert!(d < 1e-3, "folded: max |Δ logit| {d}");
    // Seeded sampling with a cache reads the folded weights at every step.
    let greedy = SampleConfig { n: 2, max_new_tokens: 12, seed: 3, stop_tokens: Some(vec![]), ..Default::default() };
    let prompts = [ids[..4].to_vec(), ids[2..9].to_vec()];
    let toks = |v: &amortize::model::LoraView| decode::sample(&lm, &prompts, &greedy, Some(v), None).unwrap().into_iter().map(|s| s.tokens).collect::<Vec<_>>();
    assert_eq!(toks(&folded), toks(&infer));
    // On the CPU folding pays only for enough tokens (FLOPs: the adapter's
    // products per token against one product per projection).
    if dev().is_cpu() {
        assert!(!lm.llama.fold_pays(&infer, 1) && lm.llama.fold_pays(&infer, 100_000));
    }
    // Neither a folded view nor a training view can be folded (again).
    assert!(lm.llama.fold(&folded).is_err());
    assert!(lm.llama.fold(&adapter.view(Mode::Train, DType::F32).unwrap()).is_err());
    // And the adapter does change the model.
    assert!(max_abs_diff(&logits_of(&lm, &ids, None), &want) > 1e-2);
}

/// Choosing tokens on the device (forced here, the default off the CPU): the
/// log-probabilities it reports agree with the scorer, masks and the minimum
/// length hold, a seed reproduces, and greedy equals the host's greedy.
#[test]
fn on_device_draws_agree_with_the_scorer_and_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let lm = tiny(&dir);
    let adapter = LoraAdapter::new(lm.config(), LoraConfig { r: 2, alpha: 4.0, dropout: 0.0, targets: Proj::ALL.to_vec() }, &dev(), 2).unwrap();
    perturb(&adapter, 17);
    let view = adapter.view(Mode::Infer, DType::F32).unwrap();
    let prompts = vec![lm.tokenizer.encode("the cat").unwrap(), lm.tokenizer.encode("12 + 3 =").unwrap()];
    let stop = lm.tokenizer.eos.unwrap();
    let digits: Vec<u32> = "0123456789".chars().map(|c| lm.tokenizer.token_to_id(&c.to_string()).unwrap()).collect();
    let cfg = SampleConfig {
        n: 4,
        max_new_tokens: 8,
        min_new_tokens: 2,
        temperature: 0.8,
        mask: decode::TokenMask::Forbid(digits.clone()),
        mask_penalty: -5.0,
        stop_tokens: Some(vec![stop]),
        seed: 9,
        on_device: Some(true),
        ..Default::default()
    };
    let a = decode::sample(&lm, &prompts, &cfg, Some(&view), None).unwrap();
    let b = decode::sample(&lm, &prompts, &cfg, Some(&view), None).unwrap();
    assert_eq!(a.iter().map(|s| &s.tokens).collect::<Vec<_>>(), b.iter().map(|s| &s.tokens).collect::<Vec<_>>());
    // The scorer has no mask: compare on samples without penalised tokens, and check the penalty is felt.
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = a.iter().map(|s| (prompts[s.prompt_index].clone(), s.tokens.clone())).collect();
    let scored = decode::score(&lm, &pairs, Some(&view), 4).unwrap();
    let mut compared = 0;
    for (s, sc) in a.iter().zip(&scored) {
        assert!(s.tokens.iter().take(2).all(|&t| t != stop), "stop before the minimum length");
        for (j, (x, y)) in s.logprobs.iter().zip(&sc.logprobs).enumerate() {
            if j >= 2 && !digits.contains(&s.tokens[j]) {
                // Unmasked token: masked log q ≥ plain log q (mass moved off the digits).
                assert!(*x >= *y - 1e-4, "{x} < {y}");
                compared += 1;
            }
        }
        assert!(s.sample_logprobs.iter().all(|x| x.is_finite()));
    }
    assert!(compared > 0);
    // Without masks, the reported log q is exactly the scorer's.
    let plain = SampleConfig { mask: decode::TokenMask::None, min_new_tokens: 0, ..cfg.clone() };
    let c = decode::sample(&lm, &prompts, &plain, Some(&view), None).unwrap();
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = c.iter().map(|s| (prompts[s.prompt_index].clone(), s.tokens.clone())).collect();
    for (s, sc) in c.iter().zip(decode::score(&lm, &pairs, Some(&view), 4).unwrap()) {
        for (x, y) in s.logprobs.iter().zip(&sc.logprobs) {
            assert!((x - y).abs() < 1e-4, "device draw {x} vs scorer {y}");
        }
    }
    let greedy = SampleConfig { greedy: true, n: 1, ..cfg.clone() };
    let dg = decode::sample(&lm, &prompts, &greedy, Some(&view), None).unwrap();
    let hg = decode::sample(&lm, &prompts, &SampleConfig { on_device: Some(false), ..greedy }, Some(&view), None).unwrap();
    assert_eq!(dg.iter().map(|s| &s.tokens).collect::<Vec<_>>(), hg.iter().map(|s| &s.tokens).collect::<Vec<_>>());
}

/// The on-device loop that reads the draws back every few steps (the default
/// off the CPU), with or without fixed-shape steps (CUDA graphs), gives
/// exactly the stepwise loop's samples: stops inside a chunk, rows that run on
/// after their stop, the minimum length, a mask, greedy, and a chunk longer
/// than the whole decode.
#[test]
fn draws_read_back_in_chunks_equal_the_stepwise_loop() {
    let dir = tempfile::tempdir().unwrap();
    let lm = tiny(&dir);
    let adapter = LoraAdapter::new(lm.config(), LoraConfig { r: 2, alpha: 4.0, dropout: 0.0, targets: Proj::ALL.to_vec() }, &dev(), 2).unwrap();
    perturb(&adapter, 5);
    let view = adapter.view(Mode::Infer, DType::F32).unwrap();
    let prompts = vec![lm.tokenizer.encode("the cat sat").unwrap(), lm.tokenizer.encode("1 +").unwrap()];
    let enc = |s: &str| lm.tokenizer.encode(s).unwrap();
    let mut base = SampleConfig {
        n: 6,
        max_new_tokens: 11,
        min_new_tokens: 2,
        temperature: 0.9,
        mask: decode::TokenMask::Forbid(enc("cat")),
        mask_penalty: -3.0,
        stop_tokens: Some(vec![]),
        seed: 4,
        on_device: Some(true),
        ..Default::default()
    };
    // The stop tokens: the two ids this model draws most often, so that rows stop early.
    let free = decode::sample(&lm, &prompts, &base, Some(&view), None).unwrap();
    let mut counts = std::collections::HashMap::<u32, usize>::new();
    free.iter().flat_map(|s| &s.tokens).for_each(|&t| *counts.entry(t).or_default() += 1);
    let mut by_count: Vec<(usize, u32)> = counts.into_iter().map(|(t, c)| (c, t)).collect();
    by_count.sort_unstable_by(|a, b| b.cmp(a));
    base.stop_tokens = Some(by_count.iter().take(2).map(|&(_, t)| t).collect());
    let key = |v: &[decode::Sample]| v.iter().map(|s| (s.tokens.clone(), s.logprobs.clone(), s.sample_logprobs.clone(), s.stop)).collect::<Vec<_>>();
    let graphs = amortize::model::graph::recorded_graphs();
    for greedy in [false, true] {
        let cfg = SampleConfig { greedy, ..base.clone() };
        let stepwise = decode::sample(&lm, &prompts, &SampleConfig { readback_every: Some(1), ..cfg.clone() }, Some(&view), None).unwrap();
        if !greedy {
            let early = |lo: usize, hi: usize| stepwise.iter().any(|s| s.stop == decode::StopReason::StopToken && (lo..=hi).contains(&s.tokens.len()));
            // Stops inside a chunk (not at its end), in the first and a later chunk.
            assert!(early(3, 5) || early(7, 8), "no row stops inside a chunk: {:?}", stepwise.iter().map(|s| s.tokens.len()).collect::<Vec<_>>());
            assert!(stepwise.iter().any(|s| s.tokens.len() == base.max_new_tokens), "no row runs to the end");
        }
        // Also with each step in fixed shapes (`model::graph`: a replayed CUDA graph on CUDA, eager here).
        for (every, fixed) in [Some(3), None, Some(50)].into_iter().flat_map(|e| [(e, Some(false)), (e, Some(true))]) {
            let chunked = decode::sample(&lm, &prompts, &SampleConfig { readback_every: every, static_steps: fixed, ..cfg.clone() }, Some(&view), None).unwrap();
            assert_eq!(key(&chunked), key(&stepwise), "readback every {every:?}, fixed shapes {fixed:?}, greedy {greedy}");
        }
    }
    let bad = SampleConfig { readback_every: Some(0), ..base };
    assert!(decode::sample(&lm, &prompts, &bad, Some(&view), None).is_err());
    // On CUDA the fixed-shape steps were recorded and replayed as graphs (a failed recording only warns).
    assert_eq!(amortize::model::graph::recorded_graphs() > graphs, lm.device().is_cuda(), "CUDA graphs recorded");
}

/// A tool that appends one or two tokens after some policy tokens (a pure
/// function of the text, as `ToolHook` requires).
struct Every3rd;

impl decode::ToolHook for Every3rd {
    fn after_token(&self, generated: &str) -> Option<String> {
        match generated.len() % 3 {
            0 => Some(" the".into()),
            1 if generated.len() > 6 => Some(" a the".into()),
            _ => None,
        }
    }
}

/// In the stepwise loop (a tool), steps where every row feeds one token run in
/// fixed shapes (`model::graph`) and the others eagerly: the same samples as
/// all-eager, after the cache's reserved room is used up too.
#[test]
fn fixed_shape_steps_between_tool_calls_equal_eager_steps() {
    let dir = tempfile::tempdir().unwrap();
    let lm = tiny(&dir);
    let prompts = vec![lm.tokenizer.encode("the cat sat").unwrap(), lm.tokenizer.encode("1 +").unwrap()];
    let cfg = SampleConfig { n: 3, max_new_tokens: 9, temperature: 0.9, stop_tokens: Some(vec![]), seed: 11, on_device: Some(true), ..Default::default() };
    let eager = decode::sample(&lm, &prompts, &SampleConfig { static_steps: Some(false), ..cfg.clone() }, None, Some(&Every3rd)).unwrap();
    let graphs = amortize::model::graph::recorded_graphs();
    let fixed = decode::sample(&lm, &prompts, &SampleConfig { static_steps: Some(true), ..cfg.clone() }, None, Some(&Every3rd)).unwrap();
    assert_eq!(amortize::model::graph::recorded_graphs() > graphs, lm.device().is_cuda(), "CUDA graphs recorded");
    let key = |v: &[decode::Sample]| v.iter().map(|s| (s.tokens.clone(), s.tool.clone(), s.logprobs.clone())).collect::<Vec<_>>();
    assert_eq!(key(&fixed), key(&eager));
    // The tool fired (steps with two or three new tokens ran eagerly), and the rows outgrew the room.
    assert!(eager.iter().any(|s| s.tool.iter().filter(|&&t| t).count() >= 2));
    assert!(eager.iter().any(|s| s.tokens.len() > cfg.max_new_tokens + 2));
}

/// A fixed-shape step gives the logits of the ordinary forward pass, then
/// refuses (an error, no panic) once the cache's room is full or the cache
/// no longer writes into the room it was made for.
#[test]
fn fixed_shape_steps_match_forward_and_stop_at_the_room() {
    use amortize::model::graph::StaticStep;
    let dir = tempfile::tempdir().unwrap();
    let lm = tiny(&dir);
    let prompts = vec![lm.tokenizer.encode("the cat").unwrap(), lm.tokenizer.encode("1 + 2 =").unwrap()];
    let feed: [u32; 2] = [40, 41];
    let run = |fixed: bool| -> (Vec<Tensor>, amortize::model::KvCache, Option<StaticStep>) {
        let mut cache = lm.llama.new_cache();
        lm.llama.forward(&prompts, &mut cache, None).unwrap();
        cache.reserve(2).unwrap();
        let mut step = StaticStep::new(&lm.llama, &cache, None, false).unwrap();
        assert_eq!(step.is_some(), lm.llama.fused());
        let mut out = Vec::new();
        for _ in 0..2 {
            out.push(match step.as_mut().filter(|_| fixed) {
                Some(s) => s.step(&lm.llama, &Tensor::new(&feed, lm.device()).unwrap(), &mut cache, None).unwrap().copy().unwrap(),
                None => {
                    let rows: Vec<Vec<u32>> = feed.iter().map(|&t| vec![t]).collect();
                    let h = lm.llama.forward(&rows, &mut cache, None).unwrap();
                    lm.llama.logits(&h.squeeze(1).unwrap()).unwrap()
                }
            });
        }
        (out, cache, step)
    };
    let (eager, _, _) = run(false);
    let (fixed, mut cache, step) = run(true);
    for (a, b) in eager.iter().zip(&fixed) {
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-5, "fixed-shape step vs forward: {d}");
    }
    let mut step = step.unwrap();
    // The room (2 positions) is full.
    assert!(!step.fits(&cache));
    assert!(step.step(&lm.llama, &Tensor::new(&feed, lm.device()).unwrap(), &mut cache, None).is_err());
    // A cache with new room (a new buffer) is not the step's room either.
    cache.reserve(4).unwrap();
    assert!(!step.fits(&cache));
    assert!(step.step(&lm.llama, &Tensor::new(&feed, lm.device()).unwrap(), &mut cache, None).is_err());
    // Ids of the wrong shape are an error.
    let mut fresh = StaticStep::new(&lm.llama, &cache, None, false).unwrap().unwrap();
    assert!(fresh.step(&lm.llama, &Tensor::new(&[1u32, 2, 3], lm.device()).unwrap(), &mut cache, None).is_err());
}

/// With room reserved, appends write into the cache in place: one token at a
/// time gives the full pass's logits, and after a rewind the overwritten tail
/// gives them again.
#[test]
fn reserved_cache_appends_in_place_and_rewinds() {
    let dir = tempfile::tempdir().unwrap();
    let lm = tiny(&dir);
    let ids = lm.tokenizer.encode(TEXT).unwrap();
    let full = logits_of(&lm, &ids, None);
    let mut cache = lm.llama.new_cache();
    lm.llama.forward(&[ids[..4].to_vec()], &mut cache, None).unwrap();
    cache.reserve(ids.len()).unwrap();
    let mut parts = Vec::new();
    for &id in &ids[4..] {
        parts.push(lm.llama.logits(&lm.llama.forward(&[vec![id]], &mut cache, None).unwrap()).unwrap());
    }
    let inc = Tensor::cat(&parts, 1).unwrap().squeeze(0).unwrap();
    let n = ids.len();
    assert!(max_abs_diff(&full.narrow(0, 4, n - 4).unwrap(), &inc) < 5e-5);
    cache.truncate(6).unwrap();
    let again = lm.llama.logits(&lm.llama.forward(&[ids[6..].to_vec()], &mut cache, None).unwrap()).unwrap().squeeze(0).unwrap();
    assert!(max_abs_diff(&full.narrow(0, 6, n - 6).unwrap(), &again) < 5e-5);
}
