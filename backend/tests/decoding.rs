//! Decoding on the tiny random model: the sampler's log-probabilities agree
//! with the scorer and seeds reproduce, masks, the minimum length and stop
//! strings, tool tokens fed but not taken as actions, beams, on-device draws,
//! chunked read-back and the fixed-shape steps and reserved cache they use.

mod common;

use amortize::decode::{self, beam_search, BeamConfig, SampleConfig, ToolHook};
use amortize::model::{LoraAdapter, LoraConfig, Mode, Proj};
use candle_core::{DType, Tensor};
use common::{dev, logits_of, max_abs_diff, perturb, tiny, TEXT};

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
