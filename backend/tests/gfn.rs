//! GFlowNet engine on the tiny random model: the prefix-shared reward equals
//! the naive one.

use amortize::decode::TokenMask;
use amortize::gfn::{LmReward, Problem, Reward, Trajectory};
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
    let lm = tiny(&dir);
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
        let reward = LmReward::new(&lm, prefix, &mask, -50.0, None).unwrap();
        let fast = reward.log_rewards(&lm, &problem, &trajs).unwrap();
        let slow = reward.naive_log_rewards(&lm, &problem, &trajs).unwrap();
        assert_eq!(fast.len(), trajs.len());
        for (f, s) in fast.iter().zip(&slow) {
            assert_eq!(f.len(), s.len());
            for (a, b) in f.iter().zip(s) {
                assert!((a - b).abs() < 1e-4, "prefix-shared {a} vs naive {b} (|Y| = {})", y.len());
            }
        }
    }
}
