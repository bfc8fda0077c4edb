//! The training loop: exploration (policy / tempered policy / replay), rewards,
//! the balance loss, AdamW with warm-up, gradient accumulation and clipping,
//! checkpoints with exact resume, a NaN guard, and a metrics stream (a JSONL
//! file and a callback the server can forward). Every step's randomness is a
//! pure function of (seed, step), so a resumed run repeats the same steps.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Tensor, Var};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::buffer::{BufferEntry, ReplayBuffer};
use super::config::{Objective, TrainConfig};
use super::optim::{AdamW, AdamWConfig};
use super::policy::{policy_logprobs, policy_logprobs_taped};
use super::reward::{log_rewards_in_calls, Reward, States, ROWS_PER_CALL};
use super::schedule::warmup_lr;
use super::trajectory::{Problem, Trajectory};
use super::{checkpoint, loss};
use crate::decode::{TokenMask, ToolHook};
use crate::model::{LanguageModel, LoraAdapter, LoraGrads, Mode};
use crate::{Error, Result};

/// What a task gives the trainer.
pub struct TrainTask {
    pub problems: Vec<Problem>,
    pub reward: Box<dyn Reward>,
    pub stop_tokens: Vec<u32>,
    pub mask: TokenMask,
    pub mask_penalty: f32,
    pub tool: Option<Box<dyn ToolHook>>,
}

/// One optimiser step, as streamed to the JSONL file and the callback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    pub step: usize,
    pub loss: f64,
    /// Mean learned log Z of the step's problems: TB's, or with `min_len > 0`
    /// the flow out of s_0 (which cannot stop); `None` otherwise.
    pub log_z: Option<f64>,
    /// Untempered log-reward of the full trajectories: mean and max.
    pub mean_log_r: f64,
    pub max_log_r: f64,
    /// Mean number of policy actions.
    pub mean_len: f64,
    /// How close the policy is to the tempered reward on its own samples
    /// ([`loss::SamplerFit`]), averaged over the step's micro-batches drawn from
    /// the untempered policy; `None` when every micro-batch came from the
    /// tempered policy or the replay buffer. With LoRA dropout, q is the
    /// training pass's (dropout on), a little off the sampler's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampler_ess: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_w_std: Option<f64>,
    pub lr: f64,
    pub reward_temp: f64,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    pub traj_per_s: f64,
    /// Micro-batches from the policy, the tempered policy and the replay buffer.
    pub sources: [usize; 3],
    pub buffer_size: usize,
    pub seconds: f64,
    /// Where the step's time went, when the trainer is profiling (`bench step`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phases: Option<Phases>,
}

/// Seconds of one step by phase. Measured with a device synchronisation at each
/// boundary, so only taken when asked for (it costs a few host round trips).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Phases {
    /// Sampling trajectories from the policy (decode).
    pub decode: f64,
    /// Log-rewards of every prefix.
    pub reward: f64,
    /// The teacher-forced policy pass, the loss and its backward pass.
    pub backward: f64,
    /// Of `backward`: the teacher-forced policy pass alone (log P_F, log P_T).
    #[serde(default)]
    pub policy_pass: f64,
    /// Clipping and the optimiser update.
    pub optimizer: f64,
}

/// A trajectory of the last step, for display (the server's sample panel).
#[derive(Debug, Clone)]
pub struct RecentSample {
    /// The problem's key.
    pub problem: String,
    /// What the policy conditioned on.
    pub prompt: Vec<u32>,
    pub tokens: Vec<u32>,
    /// Untempered log-reward of the whole trajectory.
    pub log_reward: f64,
}

/// Trajectories kept per step in [`Trainer::recent`].
const RECENT: usize = 8;

pub struct Trainer<'a> {
    lm: &'a LanguageModel,
    task: TrainTask,
    pub cfg: TrainConfig,
    pub adapter: LoraAdapter,
    opt: AdamW,
    log_z: Vec<Var>,
    logz_opt: Option<AdamW>,
    pub buffer: ReplayBuffer,
    /// Steps completed.
    pub step: usize,
    /// A few trajectories of the last step with their rewards.
    pub recent: Vec<RecentSample>,
    out: Option<PathBuf>,
    bias: Option<Tensor>,
    /// Time each step's phases (see [`Phases`]).
    pub profile: bool,
    /// How the policy's gradients are computed.
    pub backward: Backward,
    /// Sample from the adapter folded into the weights (`model::fold`);
    /// `None`: where that pays (`Llama::fold_pays`).
    pub fold: Option<bool>,
}

/// How a training step computes the adapter's gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backward {
    /// The hand-written backward (`model::tape`): no gradients for frozen weights.
    #[default]
    Taped,
    /// candle's autograd through the whole model (the reference).
    Autograd,
}

fn mix(seed: u64, a: u64, b: u64) -> u64 {
    // Distinct, well-spread seeds per (run, step, micro-batch).
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ a.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ b.wrapping_mul(0x8CB9_2BA7_2F3D_8DD7)
}

impl<'a> Trainer<'a> {
    /// A fresh run: new adapter, empty optimiser, buffer seeded with the task's Z's.
    pub fn new(lm: &'a LanguageModel, task: TrainTask, cfg: TrainConfig, out: Option<&Path>) -> Result<Self> {
        cfg.validate()?;
        let adapter = LoraAdapter::new(lm.config(), super::config::lora_config(&cfg)?, lm.device(), cfg.seed)?;
        Self::starting_from(lm, task, cfg, out, adapter)
    }

    /// A fresh run whose adapter starts as `adapter` (an SFT adapter, say;
    /// see [`super::config::starting_adapter`]) instead of B = 0: new
    /// optimiser and log Z, buffer seeded with the task's Z's.
    pub fn starting_from(lm: &'a LanguageModel, task: TrainTask, cfg: TrainConfig, out: Option<&Path>, adapter: LoraAdapter) -> Result<Self> {
        cfg.validate()?;
        if task.problems.is_empty() {
            return Err(Error::invalid("dataset", "the task has no problems to train on"));
        }
        let mut t = Self::assemble(lm, task, cfg, adapter, out)?;
        t.seed_buffer()?;
        Ok(t)
    }

    /// Continues the run saved under `out` from its latest checkpoint.
    pub fn resume(lm: &'a LanguageModel, task: TrainTask, cfg: TrainConfig, out: &Path) -> Result<Self> {
        cfg.validate()?;
        let ck = checkpoint::latest(out)?.ok_or_else(|| Error::file(out, "no checkpoint to resume from"))?;
        let adapter = LoraAdapter::load_peft(&ck.join("adapter"), lm.config(), lm.device())?;
        let mut t = Self::assemble(lm, task, cfg, adapter, Some(out))?;
        checkpoint::load(&ck, &mut t.opt, &t.log_z, t.logz_opt.as_mut(), &mut t.buffer, &mut t.step)?;
        checkpoint::truncate_metrics(out, t.step)?;
        Ok(t)
    }

    fn assemble(lm: &'a LanguageModel, task: TrainTask, cfg: TrainConfig, adapter: LoraAdapter, out: Option<&Path>) -> Result<Self> {
        let mut opt = AdamW::new(adapter.vars(), AdamWConfig { weight_decay: cfg.weight_decay, ..Default::default() })?;
        opt.fused = lm.llama.fused();
        // log Z per problem: TB's, and s_0's flow when a minimum length makes s_0 non-terminable.
        let (log_z, logz_opt) = if cfg.objective == Objective::Tb || cfg.min_len > 0 {
            let z = (0..task.problems.len()).map(|_| Var::zeros(1, DType::F32, lm.device())).collect::<candle_core::Result<Vec<_>>>()?;
            let o = AdamW::new(z.clone(), AdamWConfig { weight_decay: 0.0, ..Default::default() })?;
            (z, Some(o))
        } else {
            (Vec::new(), None)
        };
        let bias = match task.mask.bias(lm.config().vocab_size, task.mask_penalty) {
            Some(b) => Some(Tensor::from_vec(b, lm.config().vocab_size, lm.device())?),
            None => None,
        };
        if let Some(out) = out {
            std::fs::create_dir_all(out)?;
        }
        Ok(Trainer {
            lm,
            buffer: ReplayBuffer::new(cfg.buffer_capacity, cfg.buffer_tolerance)?,
            task,
            cfg,
            adapter,
            opt,
            log_z,
            logz_opt,
            step: 0,
            recent: Vec::new(),
            out: out.map(Path::to_path_buf),
            bias,
            profile: false,
            backward: Backward::default(),
            fold: None,
        })
    }

    /// The states whose rewards the objective uses: its balance endpoints
    /// (see `loss::Start`). With a minimum length, s_0 takes its flow from log Z
    /// and s_1..s_{min_len−1} cannot terminate; TB uses the last state only.
    pub fn reward_states(&self) -> States {
        match self.cfg.objective {
            Objective::Tb => States::Last,
            _ if self.cfg.min_len > 0 => States::From(self.cfg.min_len),
            _ => States::All,
        }
    }

    /// Untempered log-rewards of the states [`Self::reward_states`] names (the
    /// others hold 0.0: they are not endpoints of the balance, so their values
    /// are never used). A reward is a function of the trajectory, so each
    /// distinct trajectory is scored once, and one the replay buffer holds for
    /// this problem takes the rewards stored with it (when they cover those
    /// states): a policy that has concentrated on a few sequences mostly
    /// re-samples them.
    fn rewards(&self, problem: &Problem, trajs: &[Trajectory]) -> Result<Vec<Vec<f32>>> {
        let states = self.reward_states();
        let stored = self.buffer.entries(&problem.key);
        let mut first: HashMap<(&[u32], &[bool]), usize> = HashMap::new();
        let mut todo: Vec<Trajectory> = Vec::new();
        // Per trajectory: its stored rewards, or its index in `todo`.
        let plan: Vec<std::result::Result<&[f32], usize>> = trajs
            .iter()
            .map(|t| match stored.iter().find(|e| e.tokens == t.tokens && e.tool == t.tool && covers(e, t, states)) {
                Some(e) => Ok(e.log_rewards.as_slice()),
                None => Err(*first.entry((&t.tokens, &t.tool)).or_insert_with(|| {
                    todo.push(t.clone());
                    todo.len() - 1
                })),
            })
            .collect();
        let buffered = plan.iter().filter(|p| p.is_ok()).count();
        tracing::debug!(trajectories = trajs.len(), buffered, scored = todo.len(), "rewards");
        let scored = if todo.is_empty() { Vec::new() } else { self.task.reward.log_rewards_of(self.lm, problem, &todo, states)? };
        if scored.len() != todo.len() {
            return Err(Error::invalid("reward", format!("{} rewards for {} trajectories", scored.len(), todo.len())));
        }
        Ok(plan.into_iter().map(|p| p.map_or_else(|i| scored[i].clone(), <[f32]>::to_vec)).collect())
    }

    fn remember(&mut self, key: &str, trajs: &[Trajectory], rewards: &[Vec<f32>]) -> Result<()> {
        let states = self.reward_states();
        for (t, r) in trajs.iter().zip(rewards) {
            let text = self.lm.tokenizer.decode(&t.tokens, false)?;
            let scored_from = states.first(t.num_actions());
            self.buffer.add(key, BufferEntry { tokens: t.tokens.clone(), tool: t.tool.clone(), text, log_rewards: r.clone(), scored_from });
        }
        Ok(())
    }

    /// Puts every problem's seed trajectories in the buffer. Problems hold a
    /// few seeds each (often one), so the seeds of many problems share the
    /// reward's passes.
    fn seed_buffer(&mut self) -> Result<()> {
        let problems = self.task.problems.clone();
        let items: Vec<(&Problem, &[Trajectory])> = problems.iter().filter(|p| !p.seeds.is_empty()).map(|p| (p, p.seeds.as_slice())).collect();
        let rewards = log_rewards_in_calls(self.task.reward.as_ref(), self.lm, &items, self.reward_states(), ROWS_PER_CALL, "scoring the replay buffer's seeds")?;
        for ((p, seeds), r) in items.iter().zip(&rewards) {
            self.remember(&p.key, seeds, r)?;
        }
        Ok(())
    }

    /// Runs until `cfg.steps`, checkpointing on schedule; `on_step` may stop it.
    pub fn run(&mut self, mut on_step: impl FnMut(&StepMetrics) -> ControlFlow<()>) -> Result<()> {
        self.run_observed(|_, m| on_step(m))
    }

    /// [`Trainer::run`] with the trainer itself passed to `on_step` (to read
    /// [`Trainer::recent`], the step or the checkpoint just written).
    pub fn run_observed(&mut self, mut on_step: impl FnMut(&Self, &StepMetrics) -> ControlFlow<()>) -> Result<()> {
        while self.step < self.cfg.steps {
            // Steps are whole: a stop request is seen between them (`crate::cancel`).
            crate::cancel::check()?;
            let m = crate::cancel::shielded(|| self.train_step())?;
            if let Some(out) = &self.out {
                crate::util::append_metrics(out, &m)?;
            }
            let every = self.cfg.checkpoint_every;
            if self.out.is_some() && ((every > 0 && self.step.is_multiple_of(every)) || self.step == self.cfg.steps) {
                self.save_checkpoint()?;
            }
            if on_step(self, &m).is_break() {
                return Err(Error::Cancelled);
            }
        }
        Ok(())
    }

    /// Writes a checkpoint for the current step (a no-op without an output dir).
    pub fn save_checkpoint(&self) -> Result<Option<PathBuf>> {
        let Some(out) = &self.out else { return Ok(None) };
        let dir = checkpoint::save(out, self.step, &self.adapter, &self.lm.name, &self.opt, &self.log_z, self.logz_opt.as_ref(), &self.buffer)?;
        Ok(Some(dir))
    }

    /// One optimiser step over `grad_accum` micro-batches.
    pub fn train_step(&mut self) -> Result<StepMetrics> {
        let t0 = Instant::now();
        let step = self.step;
        let temp = self.cfg.reward_temperature(step);
        let vars = self.adapter.vars();
        // The adapter's gradients: the taped passes add theirs here, autograd's go to `grads`.
        let mut taped_grads = LoraGrads::new(self.lm.config().num_hidden_layers);
        let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
        let mut z_grads: Vec<Option<Tensor>> = vec![None; self.log_z.len()];
        let (mut loss_sum, mut sources, mut finals, mut lens, mut tokens) = (0.0, [0usize; 3], Vec::new(), Vec::new(), 0usize);
        let mut logz_used = Vec::new();
        let mut fits = Vec::new();
        self.recent.clear();
        let mut phases = Phases::default();
        let mut clock = Instant::now();
        // The adapter does not change within a step: one inference view serves
        // exploration and the taped policy pass of every micro-batch.
        let infer = self.adapter.view(Mode::Infer, self.lm.llama.dtype())?;
        let sampled = self.cfg.grad_accum * self.cfg.batch_size * self.cfg.max_len;
        let fold = self.fold.unwrap_or_else(|| self.lm.llama.fold_pays(&infer, sampled));
        // Folded on first use (a step drawn from the replay buffer samples nothing).
        let mut folded: Option<crate::model::LoraView> = None;
        for micro in 0..self.cfg.grad_accum {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(mix(self.cfg.seed, step as u64, micro as u64));
            if !self.lm.device().is_cpu() {
                self.lm.device().set_seed(rng.random())?;
            }
            let pi = rng.random_range(0..self.task.problems.len());
            let problem = self.task.problems[pi].clone();
            let u: f64 = rng.random();
            let (trajs, rewards, on_policy) = if u < self.cfg.p_replay && self.buffer.len(&problem.key) > 0 {
                sources[2] += 1;
                let e = self.buffer.sample(&problem.key, self.cfg.batch_size, temp, &mut rng);
                let trajs = e.iter().map(|e| Trajectory { tokens: e.tokens.clone(), tool: e.tool.clone() }).collect::<Vec<_>>();
                let states = self.reward_states();
                // Entries stored under another objective or minimum length may
                // lack some states this one uses: those are scored again.
                let rewards = if e.iter().zip(&trajs).all(|(e, t)| covers(e, t, states)) {
                    e.into_iter().map(|e| e.log_rewards).collect::<Vec<_>>()
                } else {
                    self.rewards(&problem, &trajs)?
                };
                (trajs, rewards, false)
            } else {
                let tempered = u < self.cfg.p_replay + self.cfg.p_tempered;
                sources[usize::from(tempered)] += 1;
                let pf_temp = if tempered { rng.random_range(self.cfg.pf_temp_low..=self.cfg.pf_temp_high) } else { 1.0 };
                if fold && folded.is_none() {
                    folded = Some(self.lm.llama.fold(&infer)?);
                }
                let sampler = folded.as_ref().unwrap_or(&infer);
                let trajs = sample_trajectories(self.lm, &self.task, sampler, &problem, self.cfg.batch_size, (self.cfg.min_len, self.cfg.max_len), pf_temp as f32, rng.random())?;
                self.lap(&mut clock, &mut phases.decode)?;
                let rewards = self.rewards(&problem, &trajs)?;
                self.lap(&mut clock, &mut phases.reward)?;
                self.remember(&problem.key, &trajs, &rewards)?;
                (trajs, rewards, !tempered)
            };
            for (t, r) in trajs.iter().zip(&rewards).take(RECENT.saturating_sub(self.recent.len())) {
                let log_reward = *r.last().unwrap_or(&0.0) as f64;
                self.recent.push(RecentSample { problem: problem.key.clone(), prompt: problem.policy_prompt.clone(), tokens: t.tokens.clone(), log_reward });
            }
            let lens_b: Vec<usize> = trajs.iter().map(|t| t.num_actions()).collect();
            let n_max = lens_b.iter().copied().max().unwrap_or(0);
            // log R / T, padded with zeros past each row's last state.
            let mut lr_flat = vec![0f32; trajs.len() * (n_max + 1)];
            for (b, r) in rewards.iter().enumerate() {
                for (i, v) in r.iter().enumerate().take(n_max + 1) {
                    lr_flat[b * (n_max + 1) + i] = (*v as f64 / temp) as f32;
                }
                finals.push(*r.last().unwrap_or(&0.0) as f64);
            }
            let log_r = Tensor::from_vec(lr_flat, (trajs.len(), n_max + 1), self.lm.device())?;
            let (min_len, stops) = ((self.cfg.min_len, self.cfg.min_len_penalty as f32), &self.task.stop_tokens);
            let dtype = self.lm.llama.dtype();
            let seed: u64 = rng.random();
            // Without dropout the step's inference view is the taped pass's view.
            let tape_view = if self.adapter.config.dropout > 0.0 { Some(infer.with_dropout(self.adapter.config.dropout as f32, seed)?) } else { None };
            let tape_view = tape_view.as_ref().unwrap_or(&infer);
            let (log_pf, log_pt, taped) = if self.backward == Backward::Taped {
                let p = policy_logprobs_taped(self.lm, tape_view, &problem.policy_prompt, &trajs, self.bias.as_ref(), stops, min_len, self.cfg.max_len)?;
                (p.log_pf.clone(), p.log_pt.clone(), Some(p))
            } else {
                let view = self.adapter.view_seeded(Mode::Train, dtype, seed)?;
                let (pf, pt) = policy_logprobs(self.lm, Some(&view), &problem.policy_prompt, &trajs, self.bias.as_ref(), stops, min_len, self.cfg.max_len)?;
                (pf, pt, None)
            };
            let mut pass = 0.0;
            self.lap(&mut clock, &mut pass)?;
            phases.backward += pass;
            phases.policy_pass += pass;
            let z = if self.log_z.is_empty() {
                None
            } else {
                if self.log_z[pi].as_tensor().to_vec1::<f32>()?[0] == 0.0 {
                    // First use: start log Z at the batch's mean of G at the first
                    // endpoint after s_0 (TB: the last state), so early gradients are sane.
                    let (tb, first) = (self.cfg.objective == Objective::Tb, self.cfg.min_len.max(1));
                    let est = loss::log_z_estimate(&log_pf, &log_pt, &log_r, &lens_b, |n| if tb { n } else { first.min(n) })?;
                    self.log_z[pi].set(&Tensor::new(&[est as f32], self.lm.device())?)?;
                }
                logz_used.push(self.log_z[pi].as_tensor().to_vec1::<f32>()?[0] as f64);
                Some(self.log_z[pi].as_tensor().broadcast_as(trajs.len())?)
            };
            let start = loss::Start { min_len: self.cfg.min_len, log_z: z.as_ref() };
            let l = match self.cfg.objective {
                Objective::Subtb => loss::subtb_loss(&log_pf, &log_pt, &log_r, &lens_b, self.cfg.subtb_lambda, start)?,
                Objective::Db => loss::db_loss(&log_pf, &log_pt, &log_r, &lens_b, start)?,
                Objective::Tb => loss::tb_loss(&log_pf, &log_pt, &log_r, &lens_b, z.as_ref().ok_or_else(|| Error::invalid("objective", "TB needs log Z"))?)?,
            };
            let l = (l / self.cfg.grad_accum as f64)?;
            let lv = l.to_scalar::<f32>()? as f64;
            if !lv.is_finite() {
                return Err(Error::NonFinite(format!("loss at step {step}")));
            }
            loss_sum += lv;
            if on_policy {
                // After the loss's read-back, so it adds no wait of its own on a GPU.
                fits.extend(loss::sampler_fit(&log_pf, &log_pt, &log_r, &lens_b)?);
            }
            let g = l.backward()?;
            match taped {
                Some(p) => p.backward_into(self.lm, tape_view, &g, &mut taped_grads)?,
                None => accumulate(&mut grads, &vars, &g)?,
            }
            accumulate(&mut z_grads, &self.log_z, &g)?;
            lens.extend(lens_b);
            tokens += trajs.iter().map(|t| t.tokens.len()).sum::<usize>();
            self.lap(&mut clock, &mut phases.backward)?;
        }
        if self.backward == Backward::Taped {
            grads = taped_grads.in_var_order(&self.adapter)?;
        }
        let lr = warmup_lr(self.cfg.lr, self.cfg.warmup_steps, step);
        let norm = self.opt.step_clipped(&grads, lr, self.cfg.max_grad_norm)?;
        if !norm.is_finite() {
            return Err(Error::NonFinite(format!("gradient norm at step {step}")));
        }
        if let Some(o) = self.logz_opt.as_mut() {
            o.step(&z_grads, self.cfg.logz_lr)?;
        }
        self.lap(&mut clock, &mut phases.optimizer)?;
        self.step += 1;
        let secs = t0.elapsed().as_secs_f64();
        let n = finals.len().max(1) as f64;
        Ok(StepMetrics {
            step: self.step,
            loss: loss_sum,
            log_z: (!logz_used.is_empty()).then(|| logz_used.iter().sum::<f64>() / logz_used.len() as f64),
            mean_log_r: finals.iter().sum::<f64>() / n,
            max_log_r: finals.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            mean_len: lens.iter().sum::<usize>() as f64 / n,
            sampler_ess: mean_of(fits.iter().map(|f| f.ess)),
            log_w_std: mean_of(fits.iter().map(|f| f.log_w_std)),
            lr,
            reward_temp: temp,
            grad_norm: norm,
            tokens_per_s: tokens as f64 / secs,
            traj_per_s: finals.len() as f64 / secs,
            sources,
            buffer_size: self.buffer.total_len(),
            seconds: secs,
            phases: self.profile.then_some(phases),
        })
    }

    /// Profiling: waits for the device, adds the time since `clock` to `into`.
    fn lap(&self, clock: &mut Instant, into: &mut f64) -> Result<()> {
        if self.profile {
            self.lm.device().synchronize()?;
            *into += clock.elapsed().as_secs_f64();
            *clock = Instant::now();
        }
        Ok(())
    }
}

/// `n` trajectories for `problem` from the policy `view`, with the task's mask,
/// stop tokens and tool, between `min_len` and `max_len` actions; the stop
/// token itself is not part of a trajectory. (The trainer's and PPO's sampler.)
#[allow(clippy::too_many_arguments)]
pub fn sample_trajectories(
    lm: &LanguageModel,
    task: &TrainTask,
    view: &crate::model::LoraView,
    problem: &Problem,
    n: usize,
    (min_len, max_len): (usize, usize),
    temperature: f32,
    seed: u64,
) -> Result<Vec<Trajectory>> {
    let cfg = super::probe::ProbeConfig { n, lengths: (min_len, max_len), temperature, top_k: None, top_p: None, seed };
    let drawn = super::probe::draw(lm, task, Some(view), std::slice::from_ref(&problem.policy_prompt), &cfg)?;
    Ok(drawn.into_iter().map(|d| d.trajectory).collect())
}

fn accumulate(acc: &mut [Option<Tensor>], vars: &[Var], g: &candle_core::backprop::GradStore) -> Result<()> {
    for (slot, v) in acc.iter_mut().zip(vars) {
        if let Some(gv) = g.get(v.as_tensor()) {
            *slot = Some(match slot.take() {
                Some(prev) => (prev + gv)?,
                None => gv.clone(),
            });
        }
    }
    Ok(())
}

/// Whether a stored entry's rewards (of trajectory `t`) include every state
/// `states` names (entries record the first state they scored).
fn covers(e: &BufferEntry, t: &Trajectory, states: States) -> bool {
    e.scored_from <= states.first(t.num_actions())
}

/// The mean of some numbers, `None` for none.
fn mean_of(xs: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| sum / n as f64)
}
