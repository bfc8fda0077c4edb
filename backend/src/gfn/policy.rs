//! The policy side of the balance losses: log q(z_k | s_{k−1}) and log q(⊤ | s_i)
//! for a batch of trajectories by one teacher-forced pass (with gradients when the
//! adapter view is a training view). Token masks add the same penalty as when
//! sampling; the stop action is the set of stop tokens; termination at the
//! maximum length is forced (log q(⊤) = 0 there). Below the minimum length the
//! stop tokens carry `min_len_penalty`, the same constant the trainer adds to
//! those states' log-rewards: the two cancel in the state's flow
//! log R − log q(⊤), so the (never sampled) stop logit there learns the flow.

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var, D};

use super::trajectory::Trajectory;
use crate::model::tape::Tape;
use crate::model::{LanguageModel, LoraGrads, LoraView};
use crate::{Error, Result};

#[allow(clippy::too_many_arguments)]
/// `(log_pf [B, N], log_pt [B, N+1])`, N = most actions in the batch; padding is 0.
pub fn policy_logprobs(
    lm: &LanguageModel,
    lora: Option<&LoraView>,
    prompt: &[u32],
    trajs: &[Trajectory],
    bias: Option<&Tensor>,
    stop_ids: &[u32],
    min_len: (usize, f32),
    max_len: usize,
) -> Result<(Tensor, Tensor)> {
    let (log_pf, log_pt, _) = policy_logprobs_and_states(lm, lora, prompt, trajs, bias, stop_ids, min_len, max_len)?;
    Ok((log_pf, log_pt))
}

/// [`policy_logprobs`] plus the last hidden state of every state s_0..s_N,
/// `[B, N+1, H]` (what a value head reads; PPO uses it).
#[allow(clippy::too_many_arguments)]
pub fn policy_logprobs_and_states(
    lm: &LanguageModel,
    lora: Option<&LoraView>,
    prompt: &[u32],
    trajs: &[Trajectory],
    bias: Option<&Tensor>,
    stop_ids: &[u32],
    min_len: (usize, f32),
    max_len: usize,
) -> Result<(Tensor, Tensor, Tensor)> {
    let plan = Plan::new(prompt, trajs, stop_ids, max_len)?;
    let rows: Vec<Vec<u32>> = trajs.iter().map(|t| [prompt, t.tokens.as_slice()].concat()).collect();
    let mut cache = lm.llama.new_cache();
    let hidden = lm.llama.forward(&rows, &mut cache, lora)?; // [B, T, H]
    let (b, t_len, h) = hidden.dims3()?;
    let pos = plan.positions(t_len, lm.device())?;
    let picked = hidden.reshape((b * t_len, h))?.index_select(&pos, 0)?;
    let logits = lm.llama.logits(&picked)?; // [B·S, V] f32
    let (log_pf, log_pt) = plan.head(lm, &logits, bias, stop_ids, min_len)?;
    Ok((log_pf, log_pt, picked.reshape((b, plan.s, h))?))
}

/// [`policy_logprobs_and_states`] through the taped pass (`model::tape`): the
/// same values, with candle's autograd only from the logits and states on.
/// After `loss.backward()`, [`TapedPolicy::backward`] turns their gradients
/// into the adapter's.
pub struct TapedPolicy {
    /// `[B, N]` and `[B, N+1]`, as from [`policy_logprobs`].
    pub log_pf: Tensor,
    pub log_pt: Tensor,
    /// The last hidden state of every state, `[B, N+1, H]`, a leaf of the
    /// loss's graph like the logits (what PPO's value head reads).
    pub states: Tensor,
    /// The logits [B·S, V] and the states [B·S, H] as leaves of the loss's graph.
    logits: Var,
    states_leaf: Var,
    tape: Tape,
    /// Row of the hidden states [P + B·T, H] (the prompt's, then the rows')
    /// behind each logits row.
    pos: Tensor,
}

/// The taped policy pass; `view` is the adapter's inference view, or a
/// `Mode::Tape` view (or [`LoraView::with_dropout`]) for dropout.
#[allow(clippy::too_many_arguments)]
pub fn policy_logprobs_taped(
    lm: &LanguageModel,
    view: &LoraView,
    prompt: &[u32],
    trajs: &[Trajectory],
    bias: Option<&Tensor>,
    stop_ids: &[u32],
    min_len: (usize, f32),
    max_len: usize,
) -> Result<TapedPolicy> {
    let plan = Plan::new(prompt, trajs, stop_ids, max_len)?;
    // The prompt runs once for the whole batch; each row continues it with its Z.
    let z_rows: Vec<Vec<u32>> = trajs.iter().map(|t| t.tokens.clone()).collect();
    let (hidden, tape) = lm.llama.forward_tape(prompt, &z_rows, view)?; // [P + B·T, H]
    let (_, b, t_len) = tape.dims();
    let h = hidden.dim(1)?;
    let pos = plan.positions_after_prompt(prompt.len(), t_len, lm.device())?;
    let picked = hidden.index_select(&pos, 0)?;
    let logits = Var::from_tensor(&lm.llama.logits(&picked)?)?;
    let (log_pf, log_pt) = plan.head(lm, logits.as_tensor(), bias, stop_ids, min_len)?;
    let states_leaf = Var::from_tensor(&picked)?;
    let states = states_leaf.as_tensor().reshape((b, plan.s, h))?;
    Ok(TapedPolicy { log_pf, log_pt, states, logits, tape, pos, states_leaf })
}

impl TapedPolicy {
    /// The adapter's gradients from the loss's gradient store (zero when the
    /// loss does not depend on the policy).
    pub fn backward(&self, lm: &LanguageModel, view: &LoraView, grads: &GradStore) -> Result<LoraGrads> {
        let mut out = LoraGrads::new(lm.config().num_hidden_layers);
        self.backward_into(lm, view, grads, &mut out)?;
        Ok(out)
    }

    /// As [`TapedPolicy::backward`], added to `into` (several passes, one update).
    pub fn backward_into(&self, lm: &LanguageModel, view: &LoraView, grads: &GradStore, into: &mut LoraGrads) -> Result<()> {
        let (p, b, t) = self.tape.dims();
        let h = lm.config().hidden_size;
        let from_logits = grads.get(self.logits.as_tensor()).map(|d| lm.llama.logits_backward(d)).transpose()?;
        let from_states = grads.get(self.states_leaf.as_tensor()).map(|d| d.to_dtype(lm.llama.dtype())).transpose()?;
        let d_picked = match (from_logits, from_states) {
            (Some(a), Some(b)) => Some((a + b)?),
            (a, b) => a.or(b),
        }; // [B·S, H]
        let d_hidden = match d_picked {
            Some(d) => Tensor::zeros((p + b * t, h), d.dtype(), lm.device())?.index_add(&self.pos, &d, 0)?,
            None => Tensor::zeros((p + b * t, h), lm.llama.dtype(), lm.device())?,
        };
        lm.llama.backward_tape(&self.tape, &d_hidden, view, into)
    }
}

/// Per state of a policy pass: where it ends and what follows.
struct Plan {
    /// Z tokens (actions and tool tokens) per row.
    z_len: Vec<usize>,
    /// States per row (most actions + 1).
    s: usize,
    n_max: usize,
    /// Row-major [B, S]: the Z tokens each state holds, the next action, and the masks.
    held: Vec<usize>,
    next: Vec<u32>,
    pf_keep: Vec<f32>,
    pt_keep: Vec<f32>,
}

impl Plan {
    fn new(prompt: &[u32], trajs: &[Trajectory], stop_ids: &[u32], max_len: usize) -> Result<Self> {
        if prompt.is_empty() {
            return Err(Error::invalid("policy_prompt", "must not be empty"));
        }
        if stop_ids.is_empty() {
            return Err(Error::invalid("stop_tokens", "the policy needs at least one stop token"));
        }
        let b = trajs.len();
        let n_max = trajs.iter().map(|t| t.num_actions()).max().unwrap_or(0);
        let s = n_max + 1;
        let (mut held, mut next) = (Vec::with_capacity(b * s), Vec::with_capacity(b * s));
        let (mut pf_keep, mut pt_keep) = (Vec::with_capacity(b * n_max), Vec::with_capacity(b * s));
        for t in trajs {
            let lens = t.state_lens();
            let actions = t.actions();
            let n = actions.len();
            for i in 0..s {
                held.push(lens[i.min(n)]);
                next.push(if i < n { actions[i] } else { 0 });
                // Forced termination at max_len: log q(⊤) := 0; padding: 0.
                pt_keep.push(if i < n || (i == n && n < max_len) { 1f32 } else { 0.0 });
                if i < n_max {
                    pf_keep.push(if i < n { 1f32 } else { 0.0 });
                }
            }
        }
        Ok(Plan { z_len: trajs.iter().map(|t| t.tokens.len()).collect(), s, n_max, held, next, pf_keep, pt_keep })
    }

    /// Where each state ends in hidden states [B·T, H] of prompt · Z rows
    /// (left-padded: a row's last token at T−1).
    fn positions(&self, t_len: usize, dev: &candle_core::Device) -> Result<Tensor> {
        self.positions_by(dev, |bi, z| bi * t_len + t_len - self.z_len[bi] - 1 + z)
    }

    /// As [`Plan::positions`], for hidden states laid out as the prompt's
    /// [P, H] then the rows' [B·T, H] (each row's Z left-padded to T).
    fn positions_after_prompt(&self, p_len: usize, t_len: usize, dev: &candle_core::Device) -> Result<Tensor> {
        self.positions_by(dev, |bi, z| match z {
            0 => p_len - 1,
            z => p_len + bi * t_len + t_len - self.z_len[bi] + z - 1,
        })
    }

    /// `at(row, z)` for every state (row-major), z the Z tokens it holds.
    fn positions_by(&self, dev: &candle_core::Device, at: impl Fn(usize, usize) -> usize) -> Result<Tensor> {
        let pos: Vec<u32> = self.held.iter().enumerate().map(|(k, &z)| at(k / self.s, z) as u32).collect();
        Ok(Tensor::new(pos, dev)?)
    }

    /// (log_pf, log_pt) from the states' logits [B·S, V] (f32): one op with
    /// its own backward on the CPU when the model's fused ops are on
    /// (`policy_head.rs`), else the composed ops.
    fn head(&self, lm: &LanguageModel, logits: &Tensor, bias: Option<&Tensor>, stop_ids: &[u32], (min_len, min_len_penalty): (usize, f32)) -> Result<(Tensor, Tensor)> {
        let (b, s, n_max) = (self.z_len.len(), self.s, self.n_max);
        let dev = lm.device();
        // The stop action is the set of stop tokens: each counts once.
        let mut stop_set = Vec::with_capacity(stop_ids.len());
        for &t in stop_ids {
            if !stop_set.contains(&t) {
                stop_set.push(t);
            }
        }
        let stop_ids = stop_set.as_slice();
        // Per state: the penalty on its stop tokens (below the minimum length).
        let pen: Vec<f32> = (0..b * s).map(|r| if r % s < min_len { min_len_penalty } else { 0.0 }).collect();
        if lm.llama.fused() && dev.is_cpu() && logits.dtype() == DType::F32 {
            let both = super::policy_head::action_logprobs(logits, bias, stop_ids, &pen, &self.next)?; // [B·S, 2]
            let log_pf = (both.narrow(1, 0, 1)?.reshape((b, s))?.narrow(1, 0, n_max)? * Tensor::from_slice(&self.pf_keep, (b, n_max), dev)?)?;
            let log_pt = (both.narrow(1, 1, 1)?.reshape((b, s))? * Tensor::from_slice(&self.pt_keep, (b, s), dev)?)?;
            return Ok((log_pf, log_pt));
        }
        let mut logits = logits.clone();
        if let Some(bias) = bias {
            logits = logits.broadcast_add(bias)?;
        }
        let k = stop_ids.len();
        let stop = Tensor::new(stop_ids, dev)?.unsqueeze(0)?.broadcast_as((b * s, k))?.contiguous()?;
        if min_len > 0 && min_len_penalty != 0.0 {
            // penalty[row] · onehot(stop tokens), broadcast: [B·S, 1] × [1, V].
            let v = lm.config().vocab_size;
            let mut onehot = vec![0f32; v];
            for &t in stop_ids {
                onehot[t as usize] = 1.0;
            }
            let pen = Tensor::from_vec(pen, (b * s, 1), dev)?.broadcast_mul(&Tensor::from_vec(onehot, (1, v), dev)?)?;
            logits = (logits + pen)?;
        }
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let pf_all = logp.gather(&Tensor::new(self.next.as_slice(), dev)?.unsqueeze(1)?, 1)?.reshape((b, s))?;
        let log_pf = (pf_all.narrow(1, 0, n_max)? * Tensor::from_slice(&self.pf_keep, (b, n_max), dev)?)?;
        let pt_all = logp.gather(&stop, 1)?.log_sum_exp(1)?.reshape((b, s))?;
        let log_pt = (pt_all * Tensor::from_slice(&self.pt_keep, (b, s), dev)?)?;
        Ok((log_pf.to_dtype(DType::F32)?, log_pt.to_dtype(DType::F32)?))
    }
}
