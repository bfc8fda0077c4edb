//! GFlowNet engine on the tiny random model: the prefix-shared reward equals
//! the naive one.

use amortize::decode::TokenMask;
use amortize::gfn::{LmReward, Problem, Reward, States, Trajectory};
use amortize::model::tiny::write_tiny_model;
use amortize::model::LanguageModel;
use candle_core::{DType, Device};

fn tiny(dir: &tempfile::TempDir) -> LanguageModel {
    let paths = write_tiny_model(dir.path(), 7).unwrap();
    LanguageModel::load(&paths.gguf, &Device::Cpu, DType::F32).unwrap()
}

#[test]
fn prefix_shared_reward_equals_naive() {
    let dir = tempfile::tempdir().unwrap();
    let mut lm = tiny(&dir);
    for fused in [false, true] {
        lm.llama.set_fused(fused);
        prefix_shared_reward_equals_naive_with(&lm);
    }
}

fn prefix_shared_reward_equals_naive_with(lm: &LanguageModel) {
    let enc = |s: &str| lm.tokenizer.encode(s).unwrap();
    let trajs = vec![
        Trajectory::from_actions(enc(" 3 + 4")),
        Trajectory::from_actions(enc(" the")),
        Trajectory::from_actions(vec![]),
        // "=" then a tool's " 7", then more actions.
        Trajectory { tokens: [enc(" 3 + 4 ="), enc(" 7"), enc(", 7 - 1")].concat(), tool: [vec![false; enc(" 3 + 4 =").len()], vec![true; enc(" 7").len()], vec![false; enc(", 7 - 1").len()]].concat() },
    ];
    let mask = TokenMask::Forbid(enc("x+"));
    for (prefix, y) in [(enc("Q: 1 + 1 = 2.\n"), enc(" The answer is 6.")), (vec![], enc(".")), (enc("demo"), vec![])] {
        let problem = Problem { key: "k".into(), policy_prompt: enc("Q"), reward_context: enc("Question: 3 + 4 - 1 ="), reward_suffix: y.clone(), seeds: vec![] };
        let mut reward = LmReward::new(lm, prefix, &mask, -50.0, None).unwrap();
        let slow = reward.naive_log_rewards(lm, &problem, &trajs).unwrap();
        let fast = reward.log_rewards(lm, &problem, &trajs).unwrap();
        // One trajectory per pass of Y branches (each a copy of its cache row),
        // or room for 10 branches a pass (passes of rows with 13 | 5, 2 | 1
        // branches): the same numbers.
        let ten = 10 * y.len().saturating_sub(1) * lm.config().vocab_size * 4;
        for budget in [Some(1), Some(ten)] {
            reward.branch_budget = budget;
            let chunked = reward.log_rewards(lm, &problem, &trajs).unwrap();
            for (f, c) in fast.iter().flatten().zip(chunked.iter().flatten()) {
                assert!((f - c).abs() < 1e-4, "one pass {f} vs passes of {budget:?} bytes {c}");
            }
        }
        assert_eq!(fast.len(), trajs.len());
        for (f, s) in fast.iter().zip(&slow) {
            assert_eq!(f.len(), s.len());
            for (a, b) in f.iter().zip(s) {
                assert!((a - b).abs() < 1e-4, "prefix-shared {a} vs naive {b} (|Y| = {}, fused {})", y.len(), lm.llama.fused());
            }
        }
        // Only some states scored (in one pass and one trajectory per pass):
        // those equal the naive rewards, the skipped ones hold 0.
        for budget in [None, Some(1), Some(ten)] {
            reward.branch_budget = budget;
            for states in [States::From(2), States::From(9), States::Last] {
                let part = reward.log_rewards_of(lm, &problem, &trajs, states).unwrap();
                for ((p, s), t) in part.iter().zip(&slow).zip(&trajs) {
                    assert_eq!(p.len(), s.len());
                    let first = states.first(t.num_actions());
                    assert!(p[..first].iter().all(|&v| v == 0.0), "{states:?}: skipped states {:?}", &p[..first]);
                    for (a, b) in p[first..].iter().zip(&s[first..]) {
                        assert!((a - b).abs() < 1e-4, "{states:?}: {a} vs naive {b} (|Y| = {})", y.len());
                    }
                }
            }
        }
    }
}

/// Several problems scored in shared passes (contexts of different lengths,
/// each row with its own Y) give the naive rewards of each.
#[test]
fn rewards_of_many_problems_equal_one_problem_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut lm = tiny(&dir);
    let enc = |lm: &LanguageModel, s: &str| lm.tokenizer.encode(s).unwrap();
    for fused in [false, true] {
        lm.llama.set_fused(fused);
        let lm = &lm;
        let trajs = [
            Trajectory::from_actions(enc(lm, " 3 + 4")),
            Trajectory::from_actions(vec![]),
            Trajectory { tokens: [enc(lm, " 3 + 4 ="), enc(lm, " 7"), enc(lm, ", 7 - 1")].concat(), tool: [vec![false; enc(lm, " 3 + 4 =").len()], vec![true; enc(lm, " 7").len()], vec![false; enc(lm, ", 7 - 1").len()]].concat() },
            Trajectory::from_actions(enc(lm, " the end")),
        ];
        // Contexts and Ys of different lengths (Y of one token and none too).
        let problem = |key: &str, ctx: &str, y: &str| Problem { key: key.into(), policy_prompt: enc(lm, "Q"), reward_context: enc(lm, ctx), reward_suffix: enc(lm, y), seeds: vec![] };
        let problems = [
            problem("a", "Question: 3 + 4 - 1 =", " The answer is 6."),
            problem("b", "Q", "."),
            problem("c", "A much longer question about numbers and words,", " yes it is"),
            problem("d", "Empty answer", ""),
            problem("e", "Nothing to score", " x"),
        ];
        let groups: [&[Trajectory]; 5] = [&trajs[..3], &trajs[1..2], &trajs[..], &trajs[2..], &[]];
        let items: Vec<(&Problem, &[Trajectory])> = problems.iter().zip(groups).collect();
        let mask = TokenMask::Forbid(enc(lm, "x+"));
        for prefix in [enc(lm, "Q: 1 + 1 = 2.\n"), vec![]] {
            let mut reward = LmReward::new(lm, prefix, &mask, -50.0, None).unwrap();
            for budget in [None, Some(1), Some(7 * 4 * lm.config().vocab_size * 4)] {
                reward.branch_budget = budget;
                for states in [States::All, States::From(2), States::Last] {
                    let many = reward.log_rewards_many(lm, &items, states).unwrap();
                    assert_eq!(many.len(), items.len());
                    for ((p, ts), got) in items.iter().zip(&many) {
                        let want = reward.naive_log_rewards(lm, p, ts).unwrap();
                        assert_eq!(got.len(), want.len(), "problem {}", p.key);
                        for ((g, w), t) in got.iter().zip(&want).zip(ts.iter()) {
                            assert_eq!(g.len(), w.len());
                            let first = states.first(t.num_actions());
                            assert!(g[..first].iter().all(|&v| v == 0.0), "{states:?}: skipped states {:?}", &g[..first]);
                            for (a, b) in g[first..].iter().zip(&w[first..]) {
                                assert!((a - b).abs() < 1e-4, "problem {} {states:?} budget {budget:?} fused {fused}: many {a} vs naive {b}", p.key);
                            }
                        }
                    }
                }
            }
            // A problem without a context is refused, naming it.
            let bad = problem("no-context", "", ".");
            let err = reward.log_rewards_many(lm, &[(&problems[0], &trajs[..1]), (&bad, &trajs[..1])], States::All).unwrap_err();
            assert!(err.to_string().contains("no-context"), "{err}");
        }
    }
}

mod exact_posterior {
    use super::*;
    use amortize::gfn::policy::policy_logprobs;
    use amortize::gfn::{Objective, TrainConfig, TrainTask, Trainer};
    use amortize::model::Mode;

    /// Every Z over `alphabet` of length 0..=max_len.
    fn all_sequences(alphabet: &[u32], max_len: usize) -> Vec<Trajectory> {
        let mut out = vec![vec![]];
        let mut frontier = vec![vec![]];
        for _ in 0..max_len {
            let mut next = Vec::new();
            for s in &frontier {
                for &a in alphabet {
                    let mut t: Vec<u32> = s.clone();
                    t.push(a);
                    next.push(t);
                }
            }
            out.extend(next.iter().cloned());
            frontier = next;
        }
        out.into_iter().map(Trajectory::from_actions).collect()
    }

    fn log_normalize(v: &[f64]) -> Vec<f64> {
        let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + v.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        v.iter().map(|x| x - lse).collect()
    }

    /// KL(true posterior ‖ learned sampler) over every terminal Z.
    #[allow(clippy::too_many_arguments)]
    fn kl_true_learned(trainer: &Trainer, lm: &LanguageModel, problem: &Problem, zs: &[Trajectory], temp: f64, stop: u32, mask: &TokenMask, (min_len, max_len): (usize, usize)) -> f64 {
        // Terminal states shorter than min_len do not exist; the sampler never stops
        // below min_len (the stop logit is penalised there, as when sampling).
        let zs: Vec<Trajectory> = zs.iter().filter(|z| z.num_actions() >= min_len).cloned().collect();
        let zs = &zs[..];
        let reward = LmReward::new(lm, vec![], mask, -99.0, None).unwrap();
        let log_r = reward.log_rewards(lm, problem, zs).unwrap();
        let target = log_normalize(&log_r.iter().map(|r| *r.last().unwrap() as f64 / temp).collect::<Vec<_>>());
        let view = trainer.adapter.view(Mode::Infer, DType::F32).unwrap();
        let bias = Tensor::from_vec(mask.bias(lm.config().vocab_size, -99.0).unwrap(), lm.config().vocab_size, &Device::Cpu).unwrap();
        let (pf, pt) = policy_logprobs(lm, Some(&view), &problem.policy_prompt, zs, Some(&bias), &[stop], (min_len, -99.0), max_len).unwrap();
        let (pf, pt): (Vec<Vec<f32>>, Vec<Vec<f32>>) = (pf.to_vec2().unwrap(), pt.to_vec2().unwrap());
        let learned: Vec<f64> = zs.iter().enumerate().map(|(b, z)| {
            let n = z.num_actions();
            pf[b][..n].iter().map(|&x| x as f64).sum::<f64>() + pt[b][n] as f64
        }).collect();
        target.iter().zip(&learned).map(|(p, q)| p.exp() * (p - q)).sum()
    }

    use candle_core::Tensor;

    fn train_to_posterior(objective: Objective, min_len: usize) -> (f64, f64) {
        let dir = tempfile::tempdir().unwrap();
        let lm = tiny(&dir);
        let enc = |s: &str| lm.tokenizer.encode(s).unwrap();
        let alphabet: Vec<u32> = ["a", "b", "c", "d"].iter().map(|s| lm.tokenizer.token_to_id(s).unwrap()).collect();
        let stop = lm.tokenizer.eos.unwrap();
        let mask = TokenMask::Allow([alphabet.clone(), vec![stop]].concat());
        let max_len = 3;
        let problem = Problem { key: "toy".into(), policy_prompt: enc("the cat"), reward_context: enc("the cat"), reward_suffix: enc(" sat on the mat"), seeds: vec![] };
        let temp = 0.5;
        let cfg = TrainConfig {
            objective,
            lora_r: 8,
            lora_alpha: 16.0,
            lora_dropout: 0.0,
            lr: 5e-3,
            // TB learns from the sampled ends only: it needs wider exploration and
            // a faster log Z (see `tb_learns_the_exact_posterior`).
            logz_lr: if min_len > 0 || objective == Objective::Tb { 2e-1 } else { 5e-2 },
            warmup_steps: 5,
            weight_decay: 0.0,
            batch_size: 16,
            steps: if min_len > 0 { 900 } else { 500 },
            p_replay: 0.2,
            p_tempered: 0.4,
            pf_temp_low: 1.0,
            pf_temp_high: if objective == Objective::Tb { 4.0 } else { 2.0 },
            reward_temp_start: temp,
            reward_temp_end: temp,
            max_len,
            min_len,
            checkpoint_every: 0,
            seed: std::env::var("KLSEED").map_or(1, |v| v.parse().unwrap()),
            ..TrainConfig::default()
        };
        let task = TrainTask {
            problems: vec![problem.clone()],
            reward: Box::new(LmReward::new(&lm, vec![], &mask, -99.0, None).unwrap()),
            stop_tokens: vec![stop],
            mask: mask.clone(),
            mask_penalty: -99.0,
            tool: None,
        };
        let mut trainer = Trainer::new(&lm, task, cfg, None).unwrap();
        let zs = all_sequences(&alphabet, max_len);
        let before = kl_true_learned(&trainer, &lm, &problem, &zs, temp, stop, &mask, (min_len, max_len));
        let mut ess = Vec::new();
        trainer.run(|m| {
            ess.extend(m.sampler_ess);
            std::ops::ControlFlow::Continue(())
        }).unwrap();
        let after = kl_true_learned(&trainer, &lm, &problem, &zs, temp, stop, &mask, (min_len, max_len));
        let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
        let late = mean(&ess[ess.len() - 50..]);
        eprintln!("{objective:?}, min_len {min_len}: KL(true ‖ learned) {before:.4} → {after:.4}; sampler ESS over the last 50 steps with untempered samples {late:.3}");
        // The trainer's diagnostic agrees: once the policy matches the tempered
        // posterior, its samples weigh alike (here 0.94–0.99 over the four
        // cases; with the reward's temperature left out of the weights,
        // 0.64–0.67, and 0.91 with the minimum length). Early values say
        // little: a policy collapsed onto one Z also reads 1.
        assert!(late > 0.85, "sampler ESS over the last 50 steps: {late}");
        (before, after)
    }

    #[test]
    fn subtb_learns_the_exact_posterior() {
        let (before, after) = train_to_posterior(Objective::Subtb, 0);
        assert!(after < 0.05 && before >= 10.0 * 0.05, "KL {before} → {after}");
    }

    /// States below the minimum length cannot terminate; the balance still holds.
    /// The end point is noisier here (a constant learning rate, a larger log Z
    /// step): over seeds 1–4, with the composed and the fused inference ops,
    /// eight runs ended between 0.0004 and 0.073, so the bound is 0.1 (from 8.16).
    #[test]
    fn subtb_learns_the_exact_posterior_with_a_minimum_length() {
        let (before, after) = train_to_posterior(Objective::Subtb, 2);
        assert!(after < 0.1 && before >= 10.0 * 0.1, "KL {before} → {after}");
    }

    /// TB balances whole trajectories only, so a mode no sampled trajectory
    /// ends in stays unlearned: here 82% of the posterior is one 1-token Z. With
    /// the settings of SubTB (tempered sampling up to T = 2, log Z lr 0.05), 2 of
    /// seeds 1–5 never sampled it and ended at KL ≈ 11; with T up to 4 and log Z
    /// lr 0.2, seeds 1–6 ended between 0.0017 and 0.032.
    #[test]
    fn tb_learns_the_exact_posterior() {
        let (before, after) = train_to_posterior(Objective::Tb, 0);
        assert!(after < 0.05 && before >= 10.0 * 0.05, "KL {before} → {after}");
    }

    #[test]
    fn db_learns_the_exact_posterior() {
        let (before, after) = train_to_posterior(Objective::Db, 0);
        assert!(after < 0.05 && before >= 10.0 * 0.05, "KL {before} → {after}");
    }
}

mod checkpoints {
    use super::*;
    use amortize::gfn::{TrainConfig, TrainTask, Trainer};

    fn task(lm: &LanguageModel) -> TrainTask {
        let enc = |s: &str| lm.tokenizer.encode(s).unwrap();
        let problem = Problem { key: "p".into(), policy_prompt: enc("the cat"), reward_context: enc("the cat"), reward_suffix: enc(" sat."), seeds: vec![Trajectory::from_actions(enc(" and"))] };
        TrainTask {
            problems: vec![problem],
            reward: Box::new(LmReward::new(lm, vec![], &TokenMask::None, -99.0, None).unwrap()),
            stop_tokens: vec![lm.tokenizer.eos.unwrap()],
            mask: TokenMask::None,
            mask_penalty: -99.0,
            tool: None,
        }
    }

    fn cfg(steps: usize) -> TrainConfig {
        TrainConfig { lora_r: 4, lora_dropout: 0.1, batch_size: 4, grad_accum: 2, steps, max_len: 5, min_len: 1, checkpoint_every: 2, lr: 1e-2, seed: 3, ..TrainConfig::default() }
    }

    fn metrics(dir: &std::path::Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[test]
    fn resume_repeats_the_uninterrupted_run_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let lm = tiny(&dir);
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let mut full = Trainer::new(&lm, task(&lm), cfg(4), Some(&a)).unwrap();
        full.run(|_| std::ops::ControlFlow::Continue(())).unwrap();
        // Interrupted after step 2 (its checkpoint), with a stray metrics line from step 3.
        let mut first = Trainer::new(&lm, task(&lm), cfg(4), Some(&b)).unwrap();
        first.run(|m| if m.step == 3 { std::ops::ControlFlow::Break(()) } else { std::ops::ControlFlow::Continue(()) }).unwrap_err();
        drop(first);
        let mut resumed = Trainer::resume(&lm, task(&lm), cfg(4), &b).unwrap();
        assert_eq!(resumed.step, 2);
        resumed.run(|_| std::ops::ControlFlow::Continue(())).unwrap();
        let (x, y) = (full.adapter.tensors(), resumed.adapter.tensors());
        for (k, t) in &x {
            let d = (t - &y[k]).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            assert_eq!(d, 0.0, "{k} differs after resume");
        }
        let (ma, mb) = (metrics(&a), metrics(&b));
        assert_eq!(mb.iter().map(|m| m["step"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        for (p, q) in ma.iter().zip(&mb) {
            assert_eq!(p["loss"], q["loss"]);
        }
        // A cancelled run keeps its last checkpoint; a missing one is a clear error.
        assert!(Trainer::resume(&lm, task(&lm), cfg(4), &dir.path().join("none")).is_err());
    }
}

/// Whole training steps through the taped pass (`model::tape`; its gradients
/// are checked against autograd in `tests/engine.rs`).
mod taped_backward {
    use amortize::gfn::Trajectory;
    use amortize::model::loader;
    use amortize::model::{LanguageModel, LlamaConfig, Tokenizer, TokenizerSpec};
    use candle_core::{DType, Device};

    fn model() -> LanguageModel {
        let spec = TokenizerSpec::tiny();
        let mut cfg = LlamaConfig::tiny(spec.tokens.len());
        cfg.num_hidden_layers = 3;
        let llama = loader::random(&cfg, &Device::Cpu, DType::F32, 11).unwrap();
        LanguageModel { llama, tokenizer: Tokenizer::from_spec(&spec).unwrap(), name: "tiny".into() }
    }

    /// Whole training steps: the taped trainer, sampling from the folded
    /// adapter, follows the autograd trainer (same samples, same losses, same
    /// adapter afterwards, to rounding).
    #[test]
    fn taped_and_folded_training_follows_autograd() {
        use amortize::decode::TokenMask;
        use amortize::gfn::{Backward, LmReward, Problem, TrainConfig, TrainTask, Trainer};
        let lm = model();
        let task = || {
            let enc = |s: &str| lm.tokenizer.encode(s).unwrap();
            let problem = Problem { key: "p".into(), policy_prompt: enc("the cat"), reward_context: enc("the cat"), reward_suffix: enc(" sat."), seeds: vec![Trajectory::from_actions(enc(" and"))] };
            TrainTask {
                problems: vec![problem],
                reward: Box::new(LmReward::new(&lm, vec![], &TokenMask::None, -99.0, None).unwrap()),
                stop_tokens: vec![lm.tokenizer.eos.unwrap()],
                mask: TokenMask::None,
                mask_penalty: -99.0,
                tool: None,
            }
        };
        let run = |backward: Backward, fold: bool, lora_dropout: f64| {
            let cfg = TrainConfig { lora_r: 4, lora_dropout, batch_size: 4, grad_accum: 2, steps: 5, max_len: 5, min_len: 1, checkpoint_every: 0, lr: 2e-2, warmup_steps: 0, seed: 3, ..TrainConfig::default() };
            let mut t = Trainer::new(&lm, task(), cfg.clone(), None).unwrap();
            (t.backward, t.fold) = (backward, Some(fold));
            let losses: Vec<(f64, f64)> = (0..cfg.steps).map(|_| t.train_step().unwrap()).map(|m| (m.loss, m.grad_norm)).collect();
            (losses, t.adapter.tensors())
        };
        // Without dropout (with it, the taped pass draws its own masks: see
        // the finite-difference test in tests/engine.rs).
        for dropout in [0.0] {
            let (want, want_w) = run(Backward::Autograd, false, dropout);
            let (got, got_w) = run(Backward::Taped, true, dropout);
            for (i, ((l0, g0), (l1, g1))) in want.iter().zip(&got).enumerate() {
                assert!((l0 - l1).abs() <= 1e-3 * l0.abs().max(1.0), "dropout {dropout}, step {i}: loss {l0} vs {l1}");
                assert!((g0 - g1).abs() <= 1e-3 * g0.abs().max(1.0), "dropout {dropout}, step {i}: gradient norm {g0} vs {g1}");
            }
            assert!(want.iter().any(|(_, g)| *g > 1e-3), "the run must have learned something: {want:?}");
            for (k, w) in &want_w {
                let d = (w - &got_w[k]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(d < 1e-3, "dropout {dropout}, {k}: max |Δ| {d}");
            }
        }
    }
}

mod reward_reuse {
    use super::*;
    use amortize::gfn::buffer::BufferEntry;
    use amortize::gfn::{Objective, TrainConfig, TrainTask, Trainer};
    use std::sync::{Arc, Mutex};

    /// The LM reward, recording every batch of trajectories it scores and the
    /// states asked for.
    struct Recording {
        inner: LmReward,
        calls: Calls,
        states: Asked,
    }

    impl Reward for Recording {
        fn log_rewards_of(&self, lm: &LanguageModel, problem: &Problem, trajs: &[Trajectory], states: States) -> amortize::Result<Vec<Vec<f32>>> {
            self.calls.lock().unwrap().push(trajs.to_vec());
            self.states.lock().unwrap().push(states);
            self.inner.log_rewards_of(lm, problem, trajs, states)
        }
    }

    type Calls = Arc<Mutex<Vec<Vec<Trajectory>>>>;
    type Asked = Arc<Mutex<Vec<States>>>;

    /// One problem's task with the LM reward behind a [`Recording`].
    fn recorded_task(lm: &LanguageModel, problem: &Problem, mask: TokenMask) -> (TrainTask, Calls, Asked) {
        let (calls, asked): (Calls, Asked) = (Arc::default(), Arc::default());
        let inner = LmReward::new(lm, vec![], &TokenMask::None, -99.0, None).unwrap();
        let task = TrainTask {
            problems: vec![problem.clone()],
            reward: Box::new(Recording { inner, calls: calls.clone(), states: asked.clone() }),
            stop_tokens: vec![lm.tokenizer.eos.unwrap()],
            mask,
            mask_penalty: -99.0,
            tool: None,
        };
        (task, calls, asked)
    }

    /// With two allowed tokens and at most two actions there are six
    /// trajectories: the trainer scores each distinct one once per batch, never
    /// one the replay buffer holds, and what it stores equals the reward.
    #[test]
    fn each_distinct_trajectory_is_scored_once_and_buffered_ones_not_again() {
        let dir = tempfile::tempdir().unwrap();
        let lm = tiny(&dir);
        let enc = |s: &str| lm.tokenizer.encode(s).unwrap();
        let allowed = [enc(" a"), enc(" b")].concat();
        let problem = Problem { key: "p".into(), policy_prompt: enc("the cat"), reward_context: enc("the cat"), reward_suffix: enc(" sat."), seeds: vec![] };
        let (task, calls, asked) = recorded_task(&lm, &problem, TokenMask::Allow(allowed.clone()));
        let cfg = TrainConfig { lora_r: 4, batch_size: 12, grad_accum: 1, steps: 4, max_len: 2, min_len: 2, p_replay: 0.0, buffer_tolerance: 0.0, seed: 5, ..TrainConfig::default() };
        let mut trainer = Trainer::new(&lm, task, cfg, None).unwrap();
        let mut buffered: Vec<Vec<u32>> = Vec::new();
        let (mut sampled, mut seen) = (0, 0);
        trainer
            .run_observed(|t, _| {
                let calls = calls.lock().unwrap();
                // This step's scoring (none when every trajectory was buffered).
                assert!(calls.len() - seen <= 1, "{} reward calls in one step", calls.len() - seen);
                let scored = if calls.len() > seen { calls[seen].clone() } else { Vec::new() };
                seen = calls.len();
                for (i, s) in scored.iter().enumerate() {
                    assert!(s.tokens.iter().all(|x| allowed.contains(x)) && s.tokens.len() == 2, "{:?}", s.tokens);
                    assert!(!scored[..i].iter().any(|o| o.tokens == s.tokens), "scored twice in one batch: {:?}", s.tokens);
                    assert!(!buffered.contains(&s.tokens), "scored again though buffered: {:?}", s.tokens);
                }
                sampled += 12;
                buffered = t.buffer.entries("p").iter().map(|e| e.tokens.clone()).collect();
                std::ops::ControlFlow::Continue(())
            })
            .unwrap();
        let scored: usize = calls.lock().unwrap().iter().map(Vec::len).sum();
        assert!(scored <= 4 && sampled == 48, "{scored} of {sampled} sampled trajectories scored");
        // SubTB with a minimum length of 2 uses s_2 on: only those were scored.
        assert!(asked.lock().unwrap().iter().all(|&s| s == States::From(2)), "{:?}", asked.lock().unwrap());
        // The stored rewards are the reward's, from the first scored state on.
        let fresh = LmReward::new(&lm, vec![], &TokenMask::None, -99.0, None).unwrap();
        for e in trainer.buffer.entries("p") {
            assert_eq!(e.scored_from, 2);
            let r = fresh.log_rewards(&lm, &problem, &[Trajectory { tokens: e.tokens.clone(), tool: e.tool.clone() }]).unwrap();
            for (a, b) in r[0].iter().zip(&e.log_rewards).skip(e.scored_from) {
                assert!((a - b).abs() < 1e-4, "{a} vs {b}");
            }
        }
    }

    /// A replayed entry scored from a later state than the objective uses (a
    /// run resumed with another minimum length or objective) is scored again;
    /// one that covers the states is not.
    #[test]
    fn replayed_entries_missing_states_are_scored_again() {
        let dir = tempfile::tempdir().unwrap();
        let lm = tiny(&dir);
        let enc = |s: &str| lm.tokenizer.encode(s).unwrap();
        let problem = Problem { key: "p".into(), policy_prompt: enc("the cat"), reward_context: enc("the cat"), reward_suffix: enc(" sat."), seeds: vec![] };
        let tokens = enc(" a b");
        for (objective, scored_from, rescored) in [(Objective::Subtb, 1, true), (Objective::Subtb, 0, false), (Objective::Tb, 1, false)] {
            let (task, calls, asked) = recorded_task(&lm, &problem, TokenMask::None);
            // Every step replays; without a minimum length SubTB uses every state.
            let cfg = TrainConfig { objective, lora_r: 4, batch_size: 2, grad_accum: 1, steps: 1, max_len: 4, min_len: 0, p_replay: 1.0, p_tempered: 0.0, seed: 3, ..TrainConfig::default() };
            let mut trainer = Trainer::new(&lm, task, cfg, None).unwrap();
            let n = tokens.len();
            let log_rewards = (0..=n).map(|i| if i < scored_from { 0.0 } else { -1.0 - i as f32 }).collect();
            trainer.buffer.add("p", BufferEntry { tokens: tokens.clone(), tool: vec![false; n], text: " a b".into(), log_rewards, scored_from });
            trainer.run_observed(|_, _| std::ops::ControlFlow::Continue(())).unwrap();
            let calls = calls.lock().unwrap();
            assert_eq!(!calls.is_empty(), rescored, "{objective:?}, scored from {scored_from}: {} reward calls", calls.len());
            let want = if objective == Objective::Tb { States::Last } else { States::All };
            assert!(asked.lock().unwrap().iter().all(|&s| s == want), "{:?}", asked.lock().unwrap());
        }
    }
}
