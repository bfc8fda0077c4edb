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
//! the minimum length, TB and evaluations all but the last.
//! [`LmReward::naive_log_rewards`] is the plain reference (tests and the speed
//! bench compare the two).
//!
//! Callers with a few trajectories of each of many problems (the replay
//! buffer's seeds, evaluations) use [`Reward::log_rewards_many`]: the same
//! passes over all of them, each problem's context once, each row with its
//! own Y.

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

    /// Several problems' trajectories at once: `out[k]` is what
    /// `log_rewards_of(items[k])` gives. By default one call per problem; the
    /// LM reward runs them all through the same passes (the replay buffer's
    /// seeds and the evaluations score a few trajectories of many problems).
    fn log_rewards_many(&self, lm: &LanguageModel, items: &[(&Problem, &[Trajectory])], states: States) -> Result<Vec<Vec<Vec<f32>>>> {
        items.iter().map(|(p, t)| self.log_rewards_of(lm, p, t, states)).collect()
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

    /// Rows (trajectories) per pass of Y branches, `m` tokens a branch, row r
    /// with `branches[r]` of them. A pass pads every row to the most branches
    /// among its rows, so rows go in order of their number of branches (most
    /// first) and each pass takes as many as fit [`Self::branch_positions`]
    /// (at least one).
    fn branch_passes(&self, lm: &LanguageModel, branches: &[usize], m: usize) -> Vec<Vec<usize>> {
        let per_pass = self.branch_positions(lm);
        let mut order: Vec<usize> = (0..branches.len()).collect();
        order.sort_by_key(|&r| std::cmp::Reverse(branches[r]));
        let mut passes: Vec<Vec<usize>> = Vec::new();
        for r in order {
            match passes.last_mut() {
                Some(p) if (p.len() + 1) * branches[p[0]].max(1) * m <= per_pass => p.push(r),
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

/// Trajectories per call of [`log_rewards_in_calls`] (the first pass keeps
/// f32 logits for every Z position of every row: 32 rows × 21 positions of
/// SmolLM2's vocabulary are 126 MiB).
pub const ROWS_PER_CALL: usize = 32;

/// [`Reward::log_rewards_many`] in calls of at most `rows` trajectories (a
/// problem with more is split across calls), so that memory stays bounded
/// however many problems there are; `out[k]` belongs to `items[k]`. Reports
/// trajectories scored as `stage` ([`crate::progress`]).
pub fn log_rewards_in_calls(reward: &dyn Reward, lm: &LanguageModel, items: &[(&Problem, &[Trajectory])], states: States, rows: usize, stage: &str) -> Result<Vec<Vec<Vec<f32>>>> {
    let rows = rows.max(1);
    let total: usize = items.iter().map(|(_, ts)| ts.len()).sum();
    crate::progress::report(stage, 0, total);
    let mut out: Vec<Vec<Vec<f32>>> = items.iter().map(|(_, ts)| Vec::with_capacity(ts.len())).collect();
    let mut pending: Vec<(usize, &Problem, &[Trajectory])> = Vec::new();
    let mut n = 0;
    for (k, (p, ts)) in items.iter().enumerate() {
        for part in ts.chunks(rows) {
            if n + part.len() > rows {
                score_pending(reward, lm, &mut pending, states, &mut out, (stage, total))?;
                n = 0;
            }
            pending.push((k, p, part));
            n += part.len();
        }
    }
    score_pending(reward, lm, &mut pending, states, &mut out, (stage, total))?;
    Ok(out)
}

/// One call of [`log_rewards_in_calls`]: scores `pending` and appends each
/// part's rewards to its item's.
fn score_pending(
    reward: &dyn Reward,
    lm: &LanguageModel,
    pending: &mut Vec<(usize, &Problem, &[Trajectory])>,
    states: States,
    out: &mut [Vec<Vec<f32>>],
    (stage, total): (&str, usize),
) -> Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    crate::cancel::check()?;
    let call: Vec<(&Problem, &[Trajectory])> = pending.iter().map(|&(_, p, ts)| (p, ts)).collect();
    let got = reward.log_rewards_many(lm, &call, states)?;
    if got.len() != call.len() || got.iter().zip(&call).any(|(g, (_, ts))| g.len() != ts.len()) {
        return Err(Error::invalid("reward", "rewards do not match the trajectories scored"));
    }
    for ((k, _, _), g) in pending.drain(..).zip(got) {
        out[k].extend(g);
    }
    crate::progress::report(stage, out.iter().map(Vec::len).sum(), total);
    Ok(())
}

/// What the first passes (contexts, then Z) leave for [`LmReward::finish`]:
/// hidden states `flat` [N, H]; per row, the `flat` rows predicting
/// z_0..z_{n−1} and, last, Y's first token (`pred`, |Z| + 1 a row, rows one
/// after another); the cache position where each row's Z starts (`zero`);
/// the cache of every row.
struct FirstPass {
    flat: Tensor,
    pred: Vec<u32>,
    zero: Vec<usize>,
    cache: KvCache,
}

impl Reward for LmReward {
    fn log_rewards_of(&self, lm: &LanguageModel, problem: &Problem, trajs: &[Trajectory], states: States) -> Result<Vec<Vec<f32>>> {
        Ok(self.log_rewards_many(lm, &[(problem, trajs)], states)?.remove(0))
    }

    /// Every problem's context runs once (their rows left-padded to the
    /// longest) and its cache is copied to each of its trajectories' rows; one
    /// pass over every row's Z follows, then the Y branches of all rows share
    /// passes.
    fn log_rewards_many(&self, lm: &LanguageModel, items: &[(&Problem, &[Trajectory])], states: States) -> Result<Vec<Vec<Vec<f32>>>> {
        if let Some((p, _)) = items.iter().find(|(p, _)| p.reward_context.is_empty()) {
            return Err(Error::invalid("reward_context", format!("problem {}: the reward needs a non-empty context before Z", p.key)));
        }
        // The problems with trajectories, and each row (trajectory) with its problem's index among them.
        let (mut used, mut rows): (Vec<&Problem>, Vec<(usize, &Problem, &Trajectory)>) = (Vec::new(), Vec::new());
        for (p, ts) in items.iter().filter(|(_, ts)| !ts.is_empty()) {
            rows.extend(ts.iter().map(|t| (used.len(), *p, t)));
            used.push(p);
        }
        if rows.is_empty() {
            return Ok(items.iter().map(|_| Vec::new()).collect());
        }
        let (np, b) = (used.len(), rows.len());
        // The contexts: the last position of each predicts its Z's first token.
        let mut cache = self.cache_for(lm, np)?;
        let ctxs: Vec<Vec<u32>> = used.iter().map(|p| p.reward_context.clone()).collect();
        let ctx_hidden = lm.llama.forward(&ctxs, &mut cache, self.lora.as_ref())?; // [P, C, H], rows left-padded
        let (_, c_len, h) = ctx_hidden.dims3()?;
        let last_ctx = ctx_hidden.narrow(1, c_len - 1, 1)?.reshape((np, h))?;
        let mut cache = cache.select(&rows.iter().map(|r| r.0).collect::<Vec<_>>())?;
        let z_max = rows.iter().map(|r| r.2.tokens.len()).max().unwrap_or(0);
        // Rows of `flat`: k < P is problem k's last context position, P + r·T + i row r's position i.
        let flat = if z_max > 0 {
            crate::cancel::check()?;
            let zs: Vec<Vec<u32>> = rows.iter().map(|r| r.2.tokens.clone()).collect();
            let hidden = lm.llama.forward(&zs, &mut cache, self.lora.as_ref())?; // [R, T, H], T = z_max
            Tensor::cat(&[&last_ctx, &hidden.reshape((b * z_max, h))?], 0)?
        } else {
            last_ctx
        };
        let (mut pred, mut zero) = (Vec::new(), Vec::with_capacity(b));
        for (r, &(k, _, t)) in rows.iter().enumerate() {
            let first = np + r * z_max + z_max - t.tokens.len();
            pred.push(k as u32);
            pred.extend((0..t.tokens.len()).map(|j| (first + j) as u32));
            zero.push(self.prefix.len() + c_len + z_max - t.tokens.len());
        }
        let scored: Vec<(&Trajectory, &[u32])> = rows.iter().map(|&(_, p, t)| (t, p.reward_suffix.as_slice())).collect();
        let mut out = self.finish(lm, FirstPass { flat, pred, zero, cache }, &scored, states)?.into_iter();
        Ok(items.iter().map(|(_, ts)| out.by_ref().take(ts.len()).collect()).collect())
    }
}

impl LmReward {
    /// The log-rewards of `rows` (each a trajectory and its Y) from a first
    /// pass: log p(Z_≤i | …) and Y's first token from the pass's states, then
    /// Y[1..] after every scored prefix, as branches of each row's cache (no
    /// copy per prefix; see `Llama::forward_branches`).
    fn finish(&self, lm: &LanguageModel, first: FirstPass, rows: &[(&Trajectory, &[u32])], states: States) -> Result<Vec<Vec<f32>>> {
        let FirstPass { flat, pred, zero, mut cache } = first;
        let b = rows.len();
        let h = flat.dim(1)?;
        let picked = flat.index_select(&Tensor::new(pred.as_slice(), lm.device())?, 0)?; // [Σ(|Z|+1), H]
        // log p(z_j | …) (mask bias on policy tokens, none on tool tokens), and
        // Y's first token after every prefix: one output-head pass, which the
        // masked and plain distributions share.
        let z_ids: Vec<u32> = rows.iter().flat_map(|(t, _)| t.tokens.iter().copied().chain(std::iter::once(0))).collect();
        let y0s: Vec<u32> = rows.iter().flat_map(|(t, y)| std::iter::repeat_n(y.first().copied().unwrap_or(0), t.tokens.len() + 1)).collect();
        let logits = lm.llama.logits(&picked)?;
        let mut plain = Self::logprobs_at(lm, &logits, &[&z_ids, &y0s], None)?.into_iter();
        let lp_plain = plain.next().unwrap_or_default();
        let lp_y0 = plain.next().unwrap_or_default();
        let lp_masked = match &self.mask_bias {
            Some(bias) => Self::logprobs_at(lm, &logits, &[&z_ids], Some(bias))?.remove(0),
            None => lp_plain.clone(),
        };
        let mut out: Vec<Vec<f32>> = Vec::with_capacity(b);
        let mut offset = 0;
        // Per row, the scored states (from `from[b]` on) and where each ends in
        // the cache: their Y branches start there (none when Y has one token).
        let mut from = vec![0usize; b];
        let mut starts: Vec<Vec<usize>> = vec![Vec::new(); b];
        for (bi, (t, y)) in rows.iter().enumerate() {
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
                r[i] = cum[len] + if y.is_empty() { 0.0 } else { lp_y0[offset + len] };
                if y.len() > 1 {
                    starts[bi].push(zero[bi] + len);
                }
            }
            out.push(r);
            offset += n_tok + 1;
        }
        // Y[1..] after the scored prefixes: each row's feed is its Y but the
        // last token, padded at the end to the longest (m).
        let m = rows.iter().map(|(_, y)| y.len().saturating_sub(1)).max().unwrap_or(0);
        if m == 0 {
            return Ok(out);
        }
        let feeds: Vec<Vec<u32>> = rows.iter().map(|(_, y)| (0..m).map(|j| if j + 1 < y.len() { y[j] } else { 0 }).collect()).collect();
        let with_branches: Vec<usize> = (0..b).filter(|&r| !starts[r].is_empty()).collect();
        for pass in self.branch_passes(lm, &with_branches.iter().map(|&r| starts[r].len()).collect::<Vec<_>>(), m) {
            crate::cancel::check()?;
            let idx: Vec<usize> = pass.iter().map(|&k| with_branches[k]).collect();
            // One pass of every row: the cache as it is, rows in order.
            let all = idx.len() == b;
            let idx = if all { (0..b).collect() } else { idx };
            let mut c = if all { std::mem::replace(&mut cache, lm.llama.new_cache()) } else { cache.select(&idx)? };
            let row_starts: Vec<Vec<usize>> = idx.iter().map(|&r| starts[r].clone()).collect();
            let row_feeds: Vec<&[u32]> = idx.iter().map(|&r| feeds[r].as_slice()).collect();
            let hid = lm.llama.forward_branches(&row_starts, &row_feeds, &mut c, self.lora.as_ref())?; // [R, n·m, H]
            let (r, tt, _) = hid.dims3()?;
            // Only real positions go through the output head: a row's padded
            // branches and, in each branch, the padding after its Y.
            let mut real = Vec::new();
            let mut ids = Vec::new();
            for (k, &bi) in idx.iter().enumerate() {
                let y = rows[bi].1;
                for i in 0..starts[bi].len() {
                    real.extend((0..y.len() - 1).map(|j| (k * tt + i * m + j) as u32));
                    ids.extend_from_slice(&y[1..]);
                }
            }
            let picked = hid.reshape((r * tt, h))?.index_select(&Tensor::new(real.as_slice(), lm.device())?, 0)?;
            let lp = self.gather_logprobs(lm, &picked, &ids, None)?;
            let mut at = 0;
            for &bi in &idx {
                let len = rows[bi].1.len() - 1;
                for slot in out[bi].iter_mut().skip(from[bi]) {
                    *slot += lp[at..at + len].iter().sum::<f32>();
                    at += len;
                }
            }
        }
        Ok(out)
    }
}
