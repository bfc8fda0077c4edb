//! The model engine on a tiny random model written to disk and loaded back
//! through the real GGUF / HF loaders: LoRA identities, gradients, KV cache,
//! padding, adapter files, merged adapters and bad inputs. (Decoding is
//! checked in `decoding.rs`, the taped backward in `taped.rs`, the fused ops in
//! `fused.rs`.)

mod common;

use amortize::decode::{self, SampleConfig};
use amortize::model::tiny::write_tiny_model;
use amortize::model::{LanguageModel, LoraAdapter, LoraConfig, Mode, Proj};
use candle_core::{DType, Tensor};
use common::{dev, logits_of, max_abs_diff, perturb, tiny, TEXT};

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
