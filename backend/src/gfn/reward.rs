//! Rewards of terminating at every prefix of Z. The trainer needs
//! `log R(s_i ⊤)` for each state s_0..s_n of each trajectory; rewards here are
//! untempered (the trainer divides by the reward temperature).
//!
//! The LM reward `log p_LM(Z_≤i Y | context)` is computed prefix-shared: the
//! context runs once for the whole batch (its cache is copied to every row), one
//! pass over each row's Z then gives every log p(z_k | …) and the first Y token
//! after every prefix; the rest of Y after all n+1 prefixes runs as branches of
//! the same cached row in one more pass (each branch masked to its own prefix,
//! no cache copies). Cost: the context once, then B·|Z| and B·n·(|Y|−1) tokens,
//! instead of B·(n+1) full sequences. Only the states the caller names
//! ([`States`]) get Y branches: the balance objectives skip the states below
//! the minimum length, TB and evaluations all but the last. [`LmReward::naive_log_rewards`] is the
//! plain reference (tests and the speed bench compare the two).

use std::sync::Mutex;

use candle_core::{Tensor, D};

use super::trajectory::{Problem, Trajectory};
use crate::decode::{fused_rows, TokenMask};
use crate::model::{KvCache, LanguageModel, LoraView};
use crate::{Error, Result};

/// The states whose rewards a caller uses. A balance objective uses only its
/// endpoints: with a minimum length, s_1..s_{min_len−1} cannot terminate and s_0
/// takes its flow from log Z; TB, PPO and evaluations use the last state only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum States {
    /// s_0..s_n.
    All,
    /// s_k..s_n (and s_n when n < k).
    From(usize),
    /// s_n.
    Last,
}

impl States {
    /// The first state scored for a trajectory of `n` actions.
    pub fn first(self, n: usize) -> usize {
        match self {
            States::All => 0,
            States::From(k) => k.min(n),
            States::Last => n,
        }
    }
}

/// Untempered log-rewards of terminating at each state of each trajectory.
pub trait Reward: Send + Sync {
    /// `out[b][i]` = log R(s_i ⊤) of trajectory b for i = `states.first(n_b)`..=n_b;
    /// entries before are 0.0 where the reward skipped them (a reward may also
    /// fill them in when that costs nothing).
    fn log_rewards_of(&self, lm: &LanguageModel, problem: &Problem, trajs: &[Trajectory], states: States) -> Result<Vec<Vec<f32>>>;

    /// Every state's log-reward.
    fn log_rewards(&self, lm: &LanguageModel, problem: &Problem, trajs: &[Trajectory]) -> Result<Vec<Vec<f32>>> {
        self.log_rewards_of(lm, problem, trajs, States::All)
    }
}

/// `log p_LM(Z_≤i Y | prefix · context)` with the base model (or a reward adapter).
pub struct LmReward {
    /// Shared few-shot prefix (its KV cache is computed once).
    pub prefix: Vec<u32>,
    /// Additive penalty on masked tokens, applied when scoring Z's policy tokens.
    mask_bias: Option<Tensor>,
    /// A reward adapter (e.g. an SFT adapter for infilling), or the base model.
    pub lora: Option<LoraView>,
    prefix_cache: Mutex<Option<KvCache>>,
    /// Bytes of logits per pass of Y branches (`None`: ~2 GiB on an
    /// accelerator, ~256 MiB on the CPU); fewer trajectories per pass when lower.
    pub branch_budget: Option<usize>,
}

impl LmReward {
    pub fn new(lm: &LanguageModel, prefix: Vec<u32>, mask: &TokenMask, mask_penalty: f32, lora: Option<LoraView>) -> Result<Self> {
        let mask_bias = match mask.bias(lm.config().vocab_size, mask_penalty) {
            Some(b) => Some(Tensor::from_vec(b, lm.config().vocab_size, lm.device())?),
            None => None,
        };
        Ok(LmReward { prefix, mask_bias, lora, prefix_cache: Mutex::new(None), branch_budget: None })
    }

    /// A cache holding the shared prefix for `rows` rows (empty when no prefix).
    fn cache_for(&self, lm: &LanguageModel, rows: usize) -> Result<KvCache> {
        if self.prefix.is_empty() {
            return Ok(lm.llama.new_cache());
        }
        let mut guard = self.prefix_cache.lock().map_err(|_| Error::invalid("reward", "prefix cache poisoned"))?;
        if guard.is_none() {
            let mut c = lm.llama.new_cache();
            lm.llama.forward(std::slice::from_ref(&self.prefix), &mut c, self.lora.as_ref())?;
            *guard = Some(c);
        }
        guard.as_ref().map(|c| c.repeat_rows(rows)).unwrap_or_else(|| Ok(lm.llama.new_cache()))
    }

    /// Branch positions per pass of Y branches: as many as keep their f32
    /// logits (the largest tensor of the pass) under ~2 GiB on an accelerator,
    /// or ~256 MiB on the CPU.
    fn branch_positions(&self, lm: &LanguageModel) -> usize {
        let budget = self.branch_budget.unwrap_or(if lm.device().is_cpu() { 256 << 20 } else { 2 << 30 });
        (budget / (lm.config().vocab_size * 4)).max(1)
    }

    /// Rows (trajectories) per pass of Y branches, `m` tokens a branch. A pass
    /// pads every row to the most branches among its rows, so rows go in order
    /// of their number of branches (most first) and each pass takes as many as
    /// fit [`Self::branch_positions`] (at least one).
    fn branch_passes(&self, lm: &LanguageModel, starts: &[Vec<usize>], m: usize) -> Vec<Vec<usize>> {
        let per_pass = self.branch_positions(lm);
        let mut order: Vec<usize> = (0..starts.len()).collect();
        order.sort_by_key(|&r| std::cmp::Reverse(starts[r].len()));
        let mut passes: Vec<Vec<usize>> = Vec::new();
        for r in order {
            match passes.last_mut() {
                Some(p) if (p.len() + 1) * starts[p[0]].len().max(1) * m <= per_pass => p.push(r),
                _ => passes.push(vec![r]),
            }
        }
        passes
    }

    /// log-softmax of `logits` rows [N, V] (+ optional bias) → [N, V].
    fn log_probs(logits: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let logits = match bias {
            Some(b) => logits.broadcast_add(b)?,
            None => logits.clone(),
        };
        Ok(candle_nn::ops::log_softmax(&logits, D::Minus1)?)
    }

    /// Row i of `logp` [N, V] at `ids[i]` → [N].
    fn pick(logp: &Tensor, ids: &[u32]) -> Result<Vec<f32>> {
        let idx = Tensor::new(ids, logp.device())?.unsqueeze(1)?;
        Ok(logp.gather(&idx, 1)?.squeeze(1)?.to_vec1()?)
    }

    /// log-softmax of `logits` rows [N, V] (+ optional bias) at each column of
    /// ids (N each) → one [N] per column: one fused op per call when the model's
    /// fused ops are on (no [N, V] log-softmax), else the composed ops.
    fn logprobs_at(lm: &LanguageModel, logits: &Tensor, columns: &[&[u32]], bias: Option<&Tensor>) -> Result<Vec<Vec<f32>>> {
        let n = logits.dim(0)?;
        if columns.iter().any(|c| c.len() != n) {
            return Err(Error::invalid("reward", format!("ids for {n} rows expected")));
        }
        if lm.llama.fused() && !columns.is_empty() {
            let k = columns.len();
            let ids: Vec<u32> = (0..n).flat_map(|r| columns.iter().map(move |c| c[r])).collect();
            let flat: Vec<f32> = fused_rows::logprobs_at(logits, &ids, k, bias)?.flatten_all()?.to_vec1()?;
            return Ok((0..k).map(|c| (0..n).map(|r| flat[r * k + c]).collect()).collect());
        }
        let logp = Self::log_probs(logits, bias)?;
        columns.iter().map(|c| Self::pick(&logp, c)).collect()
    }

    /// log-softmax of `hidden` rows [N, H] (+ optional bias), gathered at `ids` → [N].
    fn gather_logprobs(&self, lm: &LanguageModel, hidden: &Tensor, ids: &[u32], bias: Option<&Tensor>) -> Result<Vec<f32>> {
        Ok(Self::logprobs_at(lm, &lm.llama.logits(hidden)?, &[ids], bias)?.remove(0))
    }

    /// Reference implementation: every prefix's `context · Z_≤i · Y` scored from scratch.
    pub fn naive_log_rewards(&self, lm: &LanguageModel, problem: &Problem, trajs: &[Trajectory]) -> Result<Vec<Vec<f32>>> {
        let ctx = [self.prefix.as_slice(), problem.reward_context.as_slice()].concat();
        let y = &problem.reward_suffix;
        let mut out = Vec::with_capacity(trajs.len());
        for t in trajs {
            let lens = t.state_lens();
            let mut r = Vec::with_capacity(lens.len());
            for &len in &lens {
                let row = [ctx.as_slice(), &t.tokens[..len], y.as_slice()].concat();
                let mut cache = lm.llama.new_cache();
                let hidden = lm.llama.forward(std::slice::from_ref(&row), &mut cache, self.lora.as_ref())?.squeeze(0)?;
                let mut total = 0f32;
                // Z tokens (policy tokens with the mask bias), then Y.
                for (j, &tok) in t.tokens[..len].iter().enumerate() {
                    let pos = ctx.len() + j - 1;
                    let bias = if t.tool[j] { None } else { self.mask_bias.as_ref() };
                    total += self.gather_logprobs(lm, &hidden.narrow(0, pos, 1)?, &[tok], bias)?[0];
                }
                for (j, &tok) in y.iter().enumerate() {
                    let pos = ctx.len() + len + j - 1;
                    total += self.gather_logprobs(lm, &hidden.narrow(0, pos, 1)?, &[tok], None)?[0];
                }
                r.push(total);
            }
            out.push(r);
        }
        Ok(out)
    }
}

impl Reward for LmReward {
    fn log_rewards_of(&self, lm: &LanguageModel, problem: &Problem, trajs: &[Trajectory], states: States) -> Result<Vec<Vec<f32>>> {
        let ctx = &problem.reward_context;
        let y = &problem.reward_suffix;
        if ctx.is_empty() {
            return Err(Error::invalid("reward_context", "the reward needs a non-empty context before Z"));
        }
        if trajs.is_empty() {
            return Ok(Vec::new());
        }
        let b = trajs.len();
        let p0 = self.prefix.len();
        // Pass 1: the context once (every row shares it; its last position
        // predicts Z's first token), copied to each row; then each row's Z.
        let mut cache = self.cache_for(lm, 1)?;
        let ctx_hidden = lm.llama.forward(std::slice::from_ref(ctx), &mut cache, self.lora.as_ref())?; // [1, C, H]
        let h = ctx_hidden.dim(2)?;
        let last_ctx = ctx_hidden.narrow(1, ctx.len() - 1, 1)?.reshape((1, h))?;
        let mut cache = cache.repeat_rows(b)?;
        let z_max = trajs.iter().map(|t| t.tokens.len()).max().unwrap_or(0);
        // Rows of `flat`: 0 is the context's last position, 1 + b·T + i row b's position i.
        let flat = if z_max > 0 {
            let rows: Vec<Vec<u32>> = trajs.iter().map(|t| t.tokens.clone()).collect();
            let hidden = lm.llama.forward(&rows, &mut cache, self.lora.as_ref())?; // [B, T, H], T = z_max
            Tensor::cat(&[&last_ctx, &hidden.reshape((b * z_max, h))?], 0)?
        } else {
            last_ctx
        };
        // Per row, Z token j (0..|Z|) is predicted by the position before it, and
        // the last one (j = |Z|) predicts what follows the full Z.
        let mut pos = Vec::new();
        for (bi, t) in trajs.iter().enumerate() {
            let first = 1 + bi * z_max + z_max - t.tokens.len();
            pos.push(0u32);
            pos.extend((0..t.tokens.len()).map(|j| (first + j) as u32));
        }
        let picked = flat.index_select(&Tensor::new(pos.as_slice(), lm.device())?, 0)?; // [Σ(|Z|+1), H]
        // log p(z_j | …) (mask bias on policy tokens, none on tool tokens).
        let z_ids: Vec<u32> = trajs.iter().flat_map(|t| t.tokens.iter().copied().chain(std::iter::once(0))).collect();
        // One output-head pass; the masked and plain distributions share it.
        let logits = lm.llama.logits(&picked)?;
        let y0 = y.first().copied();
        let y0s = vec![y0.unwrap_or(0); z_ids.len()];
        let columns: &[&[u32]] = if y0.is_some() { &[&z_ids, &y0s] } else { &[&z_ids] };
        let mut plain = Self::logprobs_at(lm, &logits, columns, None)?.into_iter();
        let lp_plain = plain.next().unwrap_or_default();
        let lp_y0 = plain.next().unwrap_or_default();
        let lp_masked = match &self.mask_bias {
            Some(bias) => Self::logprobs_at(lm, &logits, &[&z_ids], Some(bias))?.remove(0),
            None => lp_plain.clone(),
        };
        let mut out: Vec<Vec<f32>> = Vec::with_capacity(b);
        let mut offset = 0;
        // Per trajectory, the scored states (from `from[b]` on) and where each
        // ends in the cache: their Y branches start there.
        let mut from = vec![0usize; b];
        let mut starts: Vec<Vec<usize>> = vec![Vec::new(); b];
        for (bi, t) in trajs.iter().enumerate() {
            let n_tok = t.tokens.len();
            let mut cum = vec![0f32; n_tok + 1];
            for j in 0..n_tok {
                let lp = if t.tool[j] { lp_plain[offset + j] } else { lp_masked[offset + j] };
                cum[j + 1] = cum[j] + lp;
            }
            let lens = t.state_lens();
            from[bi] = states.first(lens.len() - 1);
            let mut r = vec![0f32; lens.len()];
            for (i, &len) in lens.iter().enumerate().skip(from[bi]) {
                r[i] = cum[len] + if y0.is_some() { lp_y0[offset + len] } else { 0.0 };
                starts[bi].push(p0 + ctx.len() + z_max - n_tok + len);
            }
            out.push(r);
            offset += n_tok + 1;
        }
        // Pass 2: Y[1..] after every prefix, as branches of each row of the
        // pass-1 cache (no copy per prefix; see `Llama::forward_branches`).
        if y.len() > 1 {
            let feed = &y[..y.len() - 1];
            let m = feed.len();
            for idx in self.branch_passes(lm, &starts, m) {
                // One pass of every row: the cache as it is, rows in order.
                let all = idx.len() == b;
                let idx = if all { (0..b).collect() } else { idx };
                let mut c = if all { std::mem::replace(&mut cache, lm.llama.new_cache()) } else { cache.select(&idx)? };
                let hid = lm.llama.forward_branches(&idx.iter().map(|&r| starts[r].clone()).collect::<Vec<_>>(), feed, &mut c, self.lora.as_ref())?; // [R, n·m, H]
                let (r, tt, _) = hid.dims3()?;
                // Only real branch positions go through the output head (rows
                // with fewer prefixes are padded to the longest).
                let real: Vec<u32> = idx
                    .iter()
                    .enumerate()
                    .flat_map(|(k, &bi)| (0..starts[bi].len() * m).map(move |j| (k * tt + j) as u32))
                    .collect();
                let picked = hid.reshape((r * tt, h))?.index_select(&Tensor::new(real.as_slice(), lm.device())?, 0)?;
                let ids: Vec<u32> = (0..real.len() / m).flat_map(|_| y[1..].iter().copied()).collect();
                let lp = self.gather_logprobs(lm, &picked, &ids, None)?;
                let mut at = 0;
                for &bi in &idx {
                    for slot in out[bi].iter_mut().skip(from[bi]) {
                        *slot += lp[at..at + m].iter().sum::<f32>();
                        at += m;
                    }
                }
            }
        }
        Ok(out)
    }
}
