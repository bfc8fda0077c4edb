//! The policy side of the balance losses: log q(z_k | s_{k−1}) and log q(⊤ | s_i)
//! for a batch of trajectories by one teacher-forced pass (with gradients when the
//! adapter view is a training view). Token masks add the same penalty as when
//! sampling; the stop action is the set of stop tokens; termination at the
//! maximum length is forced (log q(⊤) = 0 there). Below the minimum length the
//! stop tokens carry `min_len_penalty`, the same constant the trainer adds to
//! those states' log-rewards: the two cancel in the state's flow
//! log R − log q(⊤), so the (never sampled) stop logit there learns the flow.

use candle_core::{DType, Tensor, D};

use super::trajectory::Trajectory;
use crate::model::{LanguageModel, LoraView};
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
    (min_len, min_len_penalty): (usize, f32),
    max_len: usize,
) -> Result<(Tensor, Tensor, Tensor)> {
    if prompt.is_empty() {
        return Err(Error::invalid("policy_prompt", "must not be empty"));
    }
    if stop_ids.is_empty() {
        return Err(Error::invalid("stop_tokens", "the policy needs at least one stop token"));
    }
    let b = trajs.len();
    let n_max = trajs.iter().map(|t| t.num_actions()).max().unwrap_or(0);
    let s = n_max + 1;
    let rows: Vec<Vec<u32>> = trajs.iter().map(|t| [prompt, t.tokens.as_slice()].concat()).collect();
    let mut cache = lm.llama.new_cache();
    let hidden = lm.llama.forward(&rows, &mut cache, lora)?; // [B, T, H]
    let (_, t_len, h) = hidden.dims3()?;

    // Row-major [B, S]: the position ending each state, the next action, and masks.
    let mut pos = Vec::with_capacity(b * s);
    let mut next = Vec::with_capacity(b * s);
    let mut pf_keep = Vec::with_capacity(b * n_max);
    let mut pt_keep = Vec::with_capacity(b * s);
    for (bi, t) in trajs.iter().enumerate() {
        let lens = t.state_lens();
        let actions = t.actions();
        let n = actions.len();
        let base = bi * t_len + t_len - t.tokens.len() - 1; // last prompt token
        for i in 0..s {
            let i_eff = i.min(n);
            pos.push((base + lens[i_eff]) as u32);
            next.push(if i < n { actions[i] } else { 0 });
            // Forced termination at max_len: log q(⊤) := 0; padding: 0.
            pt_keep.push(if i < n || (i == n && n < max_len) { 1f32 } else { 0.0 });
            if i < n_max {
                pf_keep.push(if i < n { 1f32 } else { 0.0 });
            }
        }
    }
    let dev = lm.device();
    let picked = hidden.reshape((b * t_len, h))?.index_select(&Tensor::new(pos, dev)?, 0)?;
    let mut logits = lm.llama.logits(&picked)?; // [B·S, V] f32
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
        let rows: Vec<f32> = (0..b * s).map(|r| if r % s < min_len { min_len_penalty } else { 0.0 }).collect();
        let pen = Tensor::from_vec(rows, (b * s, 1), dev)?.broadcast_mul(&Tensor::from_vec(onehot, (1, v), dev)?)?;
        logits = (logits + pen)?;
    }
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let pf_all = logp.gather(&Tensor::new(next, dev)?.unsqueeze(1)?, 1)?.reshape((b, s))?;
    let log_pf = (pf_all.narrow(1, 0, n_max)? * Tensor::from_vec(pf_keep, (b, n_max), dev)?)?;
    let pt_all = logp.gather(&stop, 1)?.log_sum_exp(1)?.reshape((b, s))?;
    let log_pt = (pt_all * Tensor::from_vec(pt_keep, (b, s), dev)?)?;
    let states = picked.reshape((b, s, h))?;
    Ok((log_pf.to_dtype(DType::F32)?, log_pt.to_dtype(DType::F32)?, states))
}
