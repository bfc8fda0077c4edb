//! `gfn::probe::draw_scored` on the tiny random model and the arithmetic
//! task: draws follow the task's rules (allowed tokens, the calculator, the
//! lengths), each is paired with its own problem's reward at its last state,
//! and a seed repeats them; a text becomes the task's trajectory (the tool's
//! answers as tool tokens) and is rated by the same reward.

use amortize::gfn::probe::{draw_scored, rate, trajectory_of, ProbeConfig};
use amortize::decode::ToolHook;
use amortize::gfn::Problem;
use amortize::model::tiny::write_tiny_model;
use amortize::model::LanguageModel;
use amortize::tasks::arithmetic::{generate, worked, Arithmetic, Item};
use amortize::tasks::Task;
use candle_core::{DType, Device};
use rand::SeedableRng;

/// The tiny model and an arithmetic task over `n` generated worked questions
/// (no others), `k` of them in the reward's prompt.
fn tiny_arithmetic(dir: &std::path::Path, n: u64, k: usize) -> (LanguageModel, Vec<Item>, Arithmetic) {
    let lm = LanguageModel::load(&write_tiny_model(dir, 7).unwrap().gguf, &Device::Cpu, DType::F32).unwrap();
    let demos = dir.join("demos.json");
    let items: Vec<_> = (0..n).map(|i| generate(3 + i as usize % 2, &mut rand_chacha::ChaCha8Rng::seed_from_u64(i))).collect();
    std::fs::write(&demos, serde_json::to_string(&items).unwrap()).unwrap();
    let task = Arithmetic::from_options(&format!("demos_file = {:?}\ngenerated = 0\nk_shot = {k}", demos.display().to_string()).parse().unwrap()).unwrap();
    (lm, items, task)
}

struct Plus;

impl ToolHook for Plus {
    fn after_token(&self, generated: &str) -> Option<String> {
        generated.ends_with('+').then(|| " 7".to_string())
    }
}

#[test]
fn draws_follow_the_task_and_carry_their_own_problems_reward() {
    let dir = tempfile::tempdir().unwrap();
    let (lm, _, task) = tiny_arithmetic(dir.path(), 4, 3);
    let mut tt = task.train_task(&lm).unwrap();
    // Random weights write no two-term sums, so the calculator would stay
    // silent: a tool that answers every "+" shows the draws call the task's.
    tt.tool = Some(Box::new(Plus));
    let problems: Vec<&Problem> = tt.problems.iter().take(3).collect();
    let prompts: Vec<Vec<u32>> = problems.iter().map(|p| p.policy_prompt.clone()).collect();
    let cfg = ProbeConfig { n: 6, lengths: (4, 16), temperature: 4.0 /* the random policy rarely stops at 1 */, top_k: None, top_p: None, seed: 5 };
    let drawn = draw_scored(&lm, &tt, None, &problems, &prompts, &cfg).unwrap();
    assert_eq!(drawn.iter().map(Vec::len).collect::<Vec<_>>(), [6, 6, 6]);

    let allowed: Vec<String> = (0..lm.config().vocab_size as u32)
        .filter(|&t| match &tt.mask {
            amortize::decode::TokenMask::Allow(ids) => ids.contains(&t),
            _ => panic!("arithmetic allows a set of tokens"),
        })
        .map(|t| lm.tokenizer.decode(&[t], false).unwrap())
        .collect();
    let mut tool_calls = 0;
    for (k, group) in drawn.iter().enumerate() {
        let t: Vec<_> = group.iter().map(|d| d.trajectory.clone()).collect();
        let by_reward = tt.reward.log_rewards(&lm, problems[k], &t).unwrap();
        for (d, r) in group.iter().zip(by_reward) {
            let n = d.trajectory.num_actions();
            assert!((4..=16).contains(&n), "{n} actions: {:?}", d.text);
            assert!(d.stopped || n == 16, "only the length cap ends a draw without the stop token");
            for a in d.trajectory.actions() {
                let s = lm.tokenizer.decode(&[a], false).unwrap();
                assert!(allowed.contains(&s), "policy token {s:?} is not allowed");
            }
            let answered = d.text.matches("+ 7").count();
            assert_eq!(answered, d.text.matches('+').count(), "{:?}", d.text);
            tool_calls += answered;
            assert!(d.log_q < 0.0 && d.log_q.is_finite());
            // The reward of the draw's last state, for its own problem (the
            // three problems' rewards differ).
            let last = *r.last().unwrap() as f64;
            assert!((d.log_r - last).abs() < 1e-4, "{} vs {last}", d.log_r);
            let other = tt.reward.log_rewards(&lm, problems[(k + 1) % 3], std::slice::from_ref(&d.trajectory)).unwrap();
            assert!((d.log_r - *other[0].last().unwrap() as f64).abs() > 1e-3, "another problem's reward");
            assert_eq!(d.text, lm.tokenizer.decode(&d.trajectory.tokens, true).unwrap());
        }
    }
    assert!(drawn.iter().flatten().any(|d| d.stopped), "some draws stop (at 4 and more actions)");
    assert!(tool_calls > 0, "the tool answered some '+'");
    assert_eq!(draw_scored(&lm, &tt, None, &problems, &prompts, &cfg).unwrap(), drawn, "a seed repeats the draws");
    let other = draw_scored(&lm, &tt, None, &problems, &prompts, &ProbeConfig { seed: 6, ..cfg.clone() }).unwrap();
    assert_ne!(other, drawn);
    assert!(draw_scored(&lm, &tt, None, &problems, &prompts[..2], &cfg).is_err(), "a prompt per problem");
}

/// A worked rationale's text becomes the trajectory the task seeds its buffer
/// with (the calculator's answers as tool tokens) and is rated by the task's
/// reward; a text that overrules the calculator is refused, naming the place.
#[test]
fn texts_become_the_tasks_trajectories_and_are_rated() {
    let dir = tempfile::tempdir().unwrap();
    let (lm, items, task) = tiny_arithmetic(dir.path(), 3, 1);
    let tt = task.train_task(&lm).unwrap();
    for (it, problem) in items.iter().zip(&tt.problems) {
        let rationale = it.str_rationale.as_deref().unwrap();
        let text = format!(" {}", worked(rationale));
        let t = trajectory_of(&lm, &tt, &text).unwrap();
        assert_eq!(t, Arithmetic::seed_trajectory(&lm, rationale).unwrap(), "{text:?}");
        assert!(t.tool.iter().any(|&x| x), "the calculator's answers");
        let rated = rate(&lm, &tt, problem, &[text.clone(), " 1, 1".into()]).unwrap();
        let want = *tt.reward.log_rewards(&lm, problem, std::slice::from_ref(&t)).unwrap()[0].last().unwrap() as f64;
        assert!((rated[0].1 - want).abs() < 1e-4, "{} vs {want}", rated[0].1);
        assert!(rated[1].0.tool.iter().all(|&x| !x) && rated[1].1 < 0.0, "no '=': every token the policy's");
    }
    let e = trajectory_of(&lm, &tt, " 2 + 3 = 7").unwrap_err().to_string();
    assert!(e.contains("\" 2 + 3 =\"") && e.contains("\" 5\"") && e.contains("\" 7\""), "{e}");
}
