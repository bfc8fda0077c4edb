//! `amortize bench step` and `amortize bench reward`: GFlowNet training speed.

use std::time::Instant;

use amortize::gfn::{Backward, LmReward, Phases, Problem, Reward, Trainer, Trajectory};
use amortize::tasks;
use amortize::decode::TokenMask;
use clap::Args;
use rand::{Rng, SeedableRng};

use super::bench::SourceArgs;

#[derive(Args, Debug)]
pub struct StepArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[arg(long, default_value = "arithmetic")]
    pub task: String,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Maximum policy actions (|Z|).
    #[arg(long, default_value_t = 20)]
    pub max_len: usize,
    /// Timed steps (after one warm-up step).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// LoRA rank (the paper's timing shape: 64).
    #[arg(long, default_value_t = 64)]
    pub lora_r: usize,
    /// Time the phases of each step (decode / reward / backward / optimizer);
    /// on by default off the CPU. It adds a device synchronisation per phase.
    #[arg(long)]
    pub phases: Option<bool>,
    /// How gradients are computed: `taped` (hand-written backward) and/or
    /// `autograd` (candle's); several run one after the other in this process,
    /// from the same seed, and the first is the baseline of the printed ratios.
    #[arg(long, value_delimiter = ',', default_value = "taped")]
    pub backward: Vec<BackwardArg>,
    /// Sample from the adapter folded into the weights (default: where that
    /// pays, always off the CPU).
    #[arg(long)]
    pub fold: Option<bool>,
    /// Fused inference ops in sampling and the reward (`model::fused`): `true`,
    /// `false` or both; every --backward runs with every setting, in this
    /// process. Default: the model's default for its device.
    #[arg(long, value_delimiter = ',')]
    pub fused: Vec<bool>,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackwardArg {
    Taped,
    Autograd,
}

impl From<BackwardArg> for Backward {
    fn from(b: BackwardArg) -> Self {
        match b {
            BackwardArg::Taped => Backward::Taped,
            BackwardArg::Autograd => Backward::Autograd,
        }
    }
}

pub fn step(a: StepArgs) -> anyhow::Result<()> {
    if a.batch == 0 || a.max_len == 0 || a.steps == 0 || a.lora_r == 0 {
        anyhow::bail!("invalid bench: --batch, --max-len, --steps and --lora-r must be positive");
    }
    let task = tasks::load(&a.task, &toml::Table::new())?;
    let mut cfg = task.default_config();
    cfg.batch_size = a.batch;
    cfg.max_len = a.max_len;
    cfg.min_len = cfg.min_len.min(a.max_len);
    cfg.steps = a.steps + 1;
    cfg.warmup_steps = 0;
    cfg.checkpoint_every = 0;
    // Every step samples from the policy: the expensive, representative path.
    cfg.p_replay = 0.0;
    cfg.p_tempered = 0.0;
    cfg.lora_r = a.lora_r;
    if a.backward.is_empty() {
        anyhow::bail!("invalid bench: --backward needs at least one of taped, autograd");
    }
    let mut lm = a.source.load()?;
    let settings = if a.fused.is_empty() { vec![lm.llama.fused()] } else { a.fused.clone() };
    let mut first: Option<f64> = None;
    for (mode, fused) in a.backward.iter().flat_map(|&m| settings.iter().map(move |&f| (m, f))) {
        lm.llama.set_fused(fused);
        let lm = &lm;
        let train_task = task.train_task(lm)?;
        let shape = TokenShape::of(&train_task.problems);
        let mut trainer = Trainer::new(lm, train_task, cfg.clone(), None)?;
        trainer.profile = a.phases.unwrap_or(!lm.device().is_cpu());
        trainer.backward = mode.into();
        trainer.fold = a.fold;
        trainer.train_step()?; // warm-up
        let t0 = Instant::now();
        let (mut trajs, mut tokens) = (0.0, 0.0);
        let mut phases = Phases::default();
        let mut flops = 0.0;
        for _ in 0..a.steps {
            let m = trainer.train_step()?;
            flops += shape.step_flops(lm.llama.weight_bytes() as f64 / lm.llama.dtype().size_in_bytes() as f64, a.batch as f64, m.mean_len);
            trajs += m.traj_per_s * m.seconds;
            tokens += m.tokens_per_s * m.seconds;
            if let Some(p) = m.phases {
                phases.decode += p.decode;
                phases.reward += p.reward;
                phases.backward += p.backward;
                phases.policy_pass += p.policy_pass;
                phases.optimizer += p.optimizer;
            }
        }
        let total = t0.elapsed().as_secs_f64();
        let secs = total / a.steps as f64;
        let speedup = first.map(|f| f / secs);
        first.get_or_insert(secs);
        let traj_per_s = trajs / total;
        let tokens_per_s = tokens / total;
        let share = trainer.profile.then(|| {
            let s = |x: f64| x / total;
            serde_json::json!({"decode": s(phases.decode), "reward": s(phases.reward), "backward": s(phases.backward), "policy_pass": s(phases.policy_pass), "optimizer": s(phases.optimizer)})
        });
        let per_step = trainer.profile.then(|| {
            let s = |x: f64| x / a.steps as f64;
            serde_json::json!({"decode": s(phases.decode), "reward": s(phases.reward), "backward": s(phases.backward), "policy_pass": s(phases.policy_pass), "optimizer": s(phases.optimizer)})
        });
        let tflops = flops / total / 1e12;
        let backward = format!("{mode:?}").to_lowercase();
        if a.json {
            println!("{}", serde_json::json!({"bench": "step", "task": a.task, "graphs_recorded": amortize::model::graph::recorded_graphs(), "gemv_passes": amortize::model::gemv::block_passes(), "batch": a.batch, "max_len": a.max_len, "lora_r": a.lora_r,
                "backward": backward, "fold": a.fold, "fused": fused, "sec_per_step": secs, "traj_per_s": traj_per_s, "tokens_per_s": tokens_per_s, "share": share,
                "phase_sec_per_step": per_step, "baseline_over_this": speedup,
                "model_tflops_per_s": tflops, "mfu_h100_bf16": tflops / H100_BF16_TFLOPS,
                "device": format!("{:?}", lm.device()), "dtype": format!("{:?}", lm.llama.dtype()), "model": lm.name}));
        } else {
            println!("{} on {:?} ({:?}): batch {}, |Z| ≤ {}, LoRA r{}, {backward} backward, fused {fused}: {secs:.3} s/step, {traj_per_s:.1} trajectories/s, {tokens_per_s:.1} Z tokens/s",
                lm.name, lm.device(), lm.llama.dtype(), a.batch, a.max_len, a.lora_r);
            if let Some(x) = speedup {
                println!("  {x:.2}× the speed of the first run ({:?} backward, fused {})", a.backward[0], settings[0]);
            }
            println!("  model FLOPs (estimate, see TokenShape): {tflops:.2} TFLOP/s = {:.2}% of an H100's dense bf16 peak", 100.0 * tflops / H100_BF16_TFLOPS);
            if trainer.profile {
                let pct = |x: f64| 100.0 * x / total;
                let ms = |x: f64| 1e3 * x / a.steps as f64;
                println!("  share of the step: decode {:.0}%, reward {:.0}%, backward {:.0}%, optimizer {:.0}% ({:.0} / {:.0} / {:.0} / {:.0} ms; the policy pass {:.0} ms of the backward)",
                    pct(phases.decode), pct(phases.reward), pct(phases.backward), pct(phases.optimizer),
                    ms(phases.decode), ms(phases.reward), ms(phases.backward), ms(phases.optimizer), ms(phases.policy_pass));
            }
        }
    }
    Ok(())
}

/// Dense bf16 peak of an H100 SXM (TFLOP/s), the denominator of MFU.
const H100_BF16_TFLOPS: f64 = 989.4;

/// Mean token counts of a task's problems, for a model-FLOPs estimate.
struct TokenShape {
    prompt: f64,
    context: f64,
    suffix: f64,
}

impl TokenShape {
    fn of(problems: &[Problem]) -> Self {
        let n = problems.len().max(1) as f64;
        let mean = |f: &dyn Fn(&Problem) -> usize| problems.iter().map(f).sum::<usize>() as f64 / n;
        TokenShape { prompt: mean(&|p| p.policy_prompt.len()), context: mean(&|p| p.reward_context.len()), suffix: mean(&|p| p.reward_suffix.len()) }
    }

    /// 2·N FLOPs per token through a model of N weights (attention's own
    /// FLOPs left out: small at these lengths), counting: the prompt's prefill
    /// and B·n̄ decoded tokens; the reward's pass over context·Z and its Y tails
    /// after each of the n̄+1 prefixes; the teacher-forced pass over prompt·Z
    /// and its backward (gradients for activations only: the base is frozen).
    fn step_flops(&self, n_weights: f64, batch: f64, mean_len: f64) -> f64 {
        let decode = self.prompt + batch * mean_len;
        let reward = batch * (self.context + mean_len) + batch * (mean_len + 1.0) * (self.suffix - 1.0).max(0.0);
        let policy = 2.0 * batch * (self.prompt + mean_len);
        2.0 * n_weights * (decode + reward + policy)
    }
}

#[derive(Args, Debug)]
pub struct RewardArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Lengths of Z, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "5,20,50")]
    pub n: Vec<usize>,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Length of Y.
    #[arg(long, default_value_t = 8)]
    pub y_len: usize,
    #[arg(long, default_value_t = 32)]
    pub context_len: usize,
    /// Fused ops (`true`, `false` or both, timed one after the other in this
    /// process for every n; the first is the baseline of the ratio). Default:
    /// the model's default for its device.
    #[arg(long, value_delimiter = ',')]
    pub fused: Vec<bool>,
    /// Also time the naive reward (n+1 full passes a trajectory), with the
    /// first --fused setting.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub naive: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn reward(a: RewardArgs) -> anyhow::Result<()> {
    if a.batch == 0 || a.y_len == 0 || a.context_len == 0 || a.n.contains(&0) {
        anyhow::bail!("invalid bench: lengths and batch must be positive");
    }
    let mut lm = a.source.load()?;
    let settings = if a.fused.is_empty() { vec![lm.llama.fused()] } else { a.fused.clone() };
    let vocab = lm.tokenizer.vocab_size().min(lm.config().vocab_size) as u32;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut toks = |k: usize| -> Vec<u32> { (0..k).map(|_| rng.random_range(3..vocab)).collect() };
    let problem = Problem { key: "bench".into(), policy_prompt: toks(4), reward_context: toks(a.context_len), reward_suffix: toks(a.y_len), seeds: vec![] };
    let reward = LmReward::new(&lm, vec![], &TokenMask::None, -99.0, None)?;
    if !a.json {
        println!("{} on {:?}: batch {}, context {}, |Y| {}", lm.name, lm.device(), a.batch, a.context_len, a.y_len);
        println!("{:>5} {:>6} {:>14} {:>14} {:>9}", "n", "fused", "shared s", "naive s", "speed-up");
    }
    for &n in &a.n {
        let trajs: Vec<Trajectory> = (0..a.batch).map(|_| Trajectory::from_actions(toks(n))).collect();
        let mut first: Option<(f64, Vec<Vec<f32>>)> = None;
        for &fused in &settings {
            lm.llama.set_fused(fused);
            reward.log_rewards(&lm, &problem, &trajs[..1])?; // warm-up
            lm.device().synchronize()?;
            let t0 = Instant::now();
            let fast = reward.log_rewards(&lm, &problem, &trajs)?;
            let shared = t0.elapsed().as_secs_f64();
            let diff = |a: &[Vec<f32>], b: &[Vec<f32>]| a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            let naive = match (&first, a.naive) {
                (None, true) => {
                    let t0 = Instant::now();
                    let slow = reward.naive_log_rewards(&lm, &problem, &trajs)?;
                    Some((t0.elapsed().as_secs_f64(), diff(&fast, &slow)))
                }
                _ => None,
            };
            // Against the first setting: its time and its rewards.
            let over = first.as_ref().map(|(t, r)| (t / shared, diff(&fast, r)));
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({"bench": "reward", "n": n, "batch": a.batch, "fused": fused, "shared_s": shared, "naive_s": naive.map(|x| x.0),
                        "speedup": naive.map(|x| x.0 / shared), "max_abs_diff": naive.map(|x| x.1),
                        "over_first_setting": over.map(|x| x.0), "max_abs_diff_first_setting": over.map(|x| x.1)})
                );
            } else {
                let (t, s) = naive.map_or(("-".into(), "-".into()), |(t, d)| (format!("{t:.3}"), format!("{:.1}x   (max |Δ| {d:.1e})", t / shared)));
                let o = over.map_or(String::new(), |(r, d)| format!(" ({r:.2}x the first --fused setting, max |Δ| {d:.1e})"));
                println!("{n:>5} {fused:>6} {shared:>14.3} {t:>14} {s:>9}{o}");
            }
            first.get_or_insert((shared, fast));
        }
    }
    Ok(())
}
