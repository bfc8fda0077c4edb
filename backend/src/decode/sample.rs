//! Batched ancestral sampling: each prompt is run once, its KV cache forked per
//! sample, and rows advance together (finished rows sit idle as padding, or,
//! where the draws stay on the device between readbacks, run on unread).
//! Returns, per sample, the tokens, the text and the per-token log-probability
//! under the policy (masks applied, temperature 1) — what the trainer needs —
//! and under the distribution actually sampled from.

use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::draw::{DeviceDraw, Pick};
use super::logits::{argmax, draw, log_softmax_in_place, sampling_logprobs, TokenMask};
use super::prefix;
use super::tool::ToolHook;
use crate::model::graph::{self, StaticStep};
use crate::model::{LanguageModel, LoraView};
use crate::{Error, Result};

/// How to sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SampleConfig {
    /// Samples per prompt.
    pub n: usize,
    /// Policy tokens at most (tool tokens not counted).
    pub max_new_tokens: usize,
    /// Stop tokens are forbidden before this many policy tokens.
    pub min_new_tokens: usize,
    pub temperature: f32,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    /// Take the most likely token (ignores temperature, top-k, top-p).
    pub greedy: bool,
    pub mask: TokenMask,
    /// Additive logit penalty for masked tokens.
    pub mask_penalty: f32,
    /// Ids that end a sample (kept in `tokens`, not in `text`). `None`: the
    /// tokenizer's EOS-like tokens.
    pub stop_tokens: Option<Vec<u32>>,
    /// Strings that end a sample once the generated text contains them (kept).
    pub stop_strings: Vec<String>,
    pub seed: u64,
    /// Choose tokens on the model's device (`None`: yes off the CPU, unless top-k
    /// or top-p needs the host's sort). On CUDA the draw uses the device's
    /// generator, seeded with `seed` at the start of the call.
    #[serde(skip)]
    pub on_device: Option<bool>,
    /// With on-device choice and no tool or stop string: decode steps between
    /// copies of the draws to the host (`None`: [`READBACK_EVERY`]; 1: the
    /// stepwise loop, one copy and one host round trip per token).
    #[serde(skip)]
    pub readback_every: Option<usize>,
    /// Run decode steps that feed one token per row in fixed shapes
    /// (`model::graph`), recorded once as a CUDA graph and replayed on CUDA
    /// (`None`: [`crate::model::graph::default_on`]; on the CPU `Some(true)`
    /// runs the same fixed-shape step eagerly). Needs the fused ops.
    #[serde(skip)]
    pub static_steps: Option<bool>,
}

/// Decode steps queued between readbacks when the draws stay on the device: the
/// host queues step k + 1 while the device runs step k, and a loop whose rows
/// have all finished runs at most this many steps too many.
pub const READBACK_EVERY: usize = 8;

impl Default for SampleConfig {
    fn default() -> Self {
        SampleConfig {
            n: 1,
            max_new_tokens: 64,
            min_new_tokens: 0,
            temperature: 1.0,
            top_k: None,
            top_p: None,
            greedy: false,
            mask: TokenMask::None,
            mask_penalty: -99.0,
            stop_tokens: None,
            stop_strings: Vec::new(),
            seed: 0,
            on_device: None,
            readback_every: None,
            static_steps: None,
        }
    }
}

impl SampleConfig {
    pub fn validate(&self) -> Result<()> {
        if self.n == 0 {
            return Err(Error::invalid("n", "must be at least 1"));
        }
        if self.max_new_tokens == 0 {
            return Err(Error::invalid("max_new_tokens", "must be at least 1"));
        }
        if self.min_new_tokens > self.max_new_tokens {
            return Err(Error::invalid("min_new_tokens", "exceeds max_new_tokens"));
        }
        #[allow(clippy::nonminimal_bool)] // written so that NaN fails too
        if !self.greedy && !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(Error::invalid("temperature", "must be > 0 when sampling"));
        }
        if self.top_k == Some(0) {
            return Err(Error::invalid("top_k", "must be at least 1"));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(Error::invalid("top_p", "must be in (0, 1]"));
            }
        }
        if !self.mask_penalty.is_finite() || self.mask_penalty > 0.0 {
            return Err(Error::invalid("mask_penalty", "must be finite and ≤ 0"));
        }
        if self.stop_strings.iter().any(|s| s.is_empty()) {
            return Err(Error::invalid("stop", "stop strings must not be empty"));
        }
        if self.readback_every == Some(0) {
            return Err(Error::invalid("readback_every", "must be at least 1"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    StopToken,
    StopString,
    MaxTokens,
}

/// One sampled continuation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    /// Which prompt it continues.
    pub prompt_index: usize,
    /// Generated ids: policy tokens, tool tokens and the stop token if any.
    pub tokens: Vec<u32>,
    /// `tool[i]`: token i was appended by a tool (not a policy action).
    pub tool: Vec<bool>,
    /// log q(token | prefix) at temperature 1 with masks; 0 for tool tokens.
    pub logprobs: Vec<f32>,
    /// log-probability under the distribution sampled from; 0 for tool tokens.
    pub sample_logprobs: Vec<f32>,
    /// Decoded text of the generated tokens (special tokens dropped).
    pub text: String,
    pub stop: StopReason,
}

impl Sample {
    /// Sum of the policy log-probabilities.
    pub fn logprob(&self) -> f32 {
        self.logprobs.iter().sum()
    }
}

struct Row {
    tokens: Vec<u32>,
    tool: Vec<bool>,
    logprobs: Vec<f32>,
    sample_logprobs: Vec<f32>,
    actions: usize,
    stop: Option<StopReason>,
}

impl Row {
    /// Appends a policy action (counted) or a tool's token (log-probabilities 0).
    fn push(&mut self, token: u32, tool: bool, logprob: f32, sample_logprob: f32) {
        self.tokens.push(token);
        self.tool.push(tool);
        self.logprobs.push(logprob);
        self.sample_logprobs.push(sample_logprob);
        self.actions += usize::from(!tool);
    }
}

/// Samples `cfg.n` continuations of every prompt; results are grouped by prompt
/// (`n` consecutive samples each). `lora: None` samples from the base model.
pub fn sample(
    lm: &LanguageModel,
    prompts: &[Vec<u32>],
    cfg: &SampleConfig,
    lora: Option<&LoraView>,
    tool: Option<&dyn ToolHook>,
) -> Result<Vec<Sample>> {
    cfg.validate()?;
    if prompts.is_empty() {
        return Ok(Vec::new());
    }
    if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
        return Err(Error::invalid("prompt", format!("prompt {i} is empty")));
    }
    let ctx = lm.config().max_position_embeddings;
    let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
    if longest + cfg.max_new_tokens > ctx {
        return Err(Error::TooLong { len: longest + cfg.max_new_tokens, max: ctx });
    }
    let vocab = lm.config().vocab_size;
    let stop_ids = cfg.stop_tokens.clone().unwrap_or_else(|| lm.tokenizer.stop_ids.clone());
    let bias = cfg.mask.bias(vocab, cfg.mask_penalty);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed);
    let on_device = cfg.on_device.unwrap_or(!lm.device().is_cpu()) && cfg.top_k.is_none() && cfg.top_p.is_none();
    let device_draw = if on_device {
        if !lm.device().is_cpu() {
            lm.device().set_seed(cfg.seed)?;
        }
        Some(DeviceDraw::new(vocab, bias.as_deref(), &stop_ids, lm.device())?.with_fused(lm.llama.fused()))
    } else {
        None
    };

    // Prefill each prompt once (a run every prompt begins with, once for all),
    // then fork the cache per sample.
    let shared = prefix::shared_len(prompts.iter().map(Vec::as_slice));
    let (mut cache, hidden) = match prefix::shared_cache(lm, &prompts[0], shared, prompts.len(), prefix::MIN_SHARED, lora)? {
        Some(base) => {
            let mut cache = base.select(&vec![0; prompts.len()])?;
            let rests: Vec<Vec<u32>> = prompts.iter().map(|p| p[shared..].to_vec()).collect();
            let hidden = lm.llama.forward(&rests, &mut cache, lora)?;
            (cache, hidden)
        }
        None => {
            let mut cache = lm.llama.new_cache();
            let hidden = lm.llama.forward(prompts, &mut cache, lora)?;
            (cache, hidden)
        }
    };
    let t = hidden.dim(1)?;
    let mut last = hidden.narrow(1, t - 1, 1)?.squeeze(1)?; // [P, H]
    if cfg.n > 1 {
        cache = cache.repeat_rows(cfg.n)?;
        let idx: Vec<u32> = (0..prompts.len() as u32).flat_map(|p| std::iter::repeat_n(p, cfg.n)).collect();
        last = last.contiguous()?.index_select(&candle_core::Tensor::new(idx, lm.device())?, 0)?;
    }
    // Room for every policy token: decode steps then append in place.
    cache.reserve(cfg.max_new_tokens)?;
    let b = prompts.len() * cfg.n;
    let mut rows: Vec<Row> = (0..b)
        .map(|_| Row { tokens: vec![], tool: vec![], logprobs: vec![], sample_logprobs: vec![], actions: 0, stop: None })
        .collect();

    let chunk = cfg.readback_every.unwrap_or(READBACK_EVERY);
    if let Some(d) = device_draw.as_ref().filter(|_| chunk > 1 && tool.is_none() && cfg.stop_strings.is_empty()) {
        decode_on_device(lm, d, last, &mut cache, &mut rows, &stop_ids, cfg, (lora, &mut rng), chunk)?;
        return samples(lm, rows, cfg.n);
    }

    // Steps where every row feeds one token run in fixed shapes (a CUDA graph on CUDA).
    let mut fixed = fixed_steps(lm, &cache, cfg, lora)?;
    let mut logits = lm.llama.logits(&last)?; // [B, V] f32
    // Every unfinished row has taken the same number of actions so far.
    for step in 0.. {
        crate::cancel::check()?;
        let below_min = step < cfg.min_new_tokens;
        let picks: Vec<Option<Pick>> = match &device_draw {
            Some(d) => {
                let uniform = if cfg.greedy { None } else { Some(noise(logits.dims2()?, &mut rng, lm.device())?) };
                d.choose(&logits, below_min, cfg.temperature, cfg.greedy, uniform.as_ref())?.into_iter().map(Some).collect()
            }
            None => {
                let logits: Vec<Vec<f32>> = logits.to_vec2()?;
                rows.iter().zip(logits).map(|(row, l)| row.stop.is_none().then(|| host_pick(l, bias.as_deref(), below_min, &stop_ids, cfg, &mut rng))).collect()
            }
        };
        let mut next: Vec<Vec<u32>> = vec![Vec::new(); b];
        for (i, (row, pick)) in rows.iter_mut().zip(picks).enumerate() {
            if row.stop.is_some() {
                continue;
            }
            let Some(Pick { token: tok, logprob, sample_logprob: slp }) = pick else { continue };
            row.push(tok, false, logprob, slp);
            next[i].push(tok);

            if stop_ids.contains(&tok) {
                row.stop = Some(StopReason::StopToken);
                continue;
            }
            if !cfg.stop_strings.is_empty() || tool.is_some() {
                let text = lm.tokenizer.decode(&row.tokens, true)?;
                if cfg.stop_strings.iter().any(|s| text.contains(s.as_str())) {
                    row.stop = Some(StopReason::StopString);
                    continue;
                }
                if let Some(extra) = tool.and_then(|h| h.after_token(&text)) {
                    let ids = lm.tokenizer.encode(&extra)?;
                    for id in ids {
                        row.push(id, true, 0.0, 0.0);
                        next[i].push(id);
                    }
                }
            }
            if row.actions >= cfg.max_new_tokens {
                row.stop = Some(StopReason::MaxTokens);
            }
        }
        if rows.iter().all(|r| r.stop.is_some()) {
            break;
        }
        // Finished rows contribute nothing (an all-padding slot; in a
        // fixed-shape step, a token whose outputs are never read).
        for (i, r) in rows.iter().enumerate() {
            if r.stop.is_some() {
                next[i].clear();
            }
        }
        let one_each = rows.iter().zip(&next).all(|(r, n)| r.stop.is_some() || n.len() == 1);
        logits = match fixed.as_mut().filter(|f| one_each && f.fits(&cache)) {
            Some(f) => {
                let ids: Vec<u32> = next.iter().map(|n| n.first().copied().unwrap_or(0)).collect();
                f.step(&lm.llama, &candle_core::Tensor::new(ids, lm.device())?, &mut cache, lora)?
            }
            None => {
                let hidden = lm.llama.forward(&next, &mut cache, lora)?;
                let t = hidden.dim(1)?;
                lm.llama.logits(&hidden.narrow(1, t - 1, 1)?.squeeze(1)?)?
            }
        };
    }

    samples(lm, rows, cfg.n)
}

/// The decode loop with the draws kept on the device: each step's tokens feed
/// the next step directly ([`crate::model::Llama::forward_ids`]) and the host
/// reads the draws back once per `chunk` steps, so it queues work while the
/// device runs instead of waiting on every token. Finished rows keep running
/// (what they draw after their stop is dropped); the loop ends at a readback
/// that finds every row done. It gives the stepwise loop's samples: a row's
/// values never depend on another row's, and the noise is drawn in the same order.
#[allow(clippy::too_many_arguments)]
fn decode_on_device(
    lm: &LanguageModel,
    draw: &DeviceDraw,
    last: candle_core::Tensor,
    cache: &mut crate::model::KvCache,
    rows: &mut [Row],
    stop_ids: &[u32],
    cfg: &SampleConfig,
    (lora, rng): (Option<&LoraView>, &mut rand_chacha::ChaCha8Rng),
    chunk: usize,
) -> Result<()> {
    let mut fixed = fixed_steps(lm, cache, cfg, lora)?;
    let mut logits = lm.llama.logits(&last)?; // [B, V] f32
    let mut step = 0;
    while step < cfg.max_new_tokens {
        crate::cancel::check()?;
        let k = chunk.min(cfg.max_new_tokens - step);
        let mut drawn = Vec::with_capacity(k);
        for j in step..step + k {
            let uniform = if cfg.greedy { None } else { Some(noise(logits.dims2()?, rng, lm.device())?) };
            let picked = draw.choose_rows(&logits, j < cfg.min_new_tokens, cfg.temperature, cfg.greedy, uniform.as_ref())?; // [B, 3]
            // The next step is queued before the readback (wasted only when every row has finished).
            if j + 1 < cfg.max_new_tokens {
                let ids = picked.narrow(1, 0, 1)?.squeeze(1)?;
                logits = match fixed.as_mut().filter(|f| f.fits(cache)) {
                    Some(f) => f.step(&lm.llama, &ids, cache, lora)?,
                    None => lm.llama.logits(&lm.llama.forward_ids(&ids, cache, lora)?.squeeze(1)?)?,
                };
            }
            drawn.push(picked);
        }
        step += k;
        let drawn: Vec<Vec<f32>> = candle_core::Tensor::cat(&drawn, 1)?.to_vec2()?; // [B, 3k]
        for (row, picks) in rows.iter_mut().zip(drawn) {
            for p in picks.chunks_exact(3) {
                if row.stop.is_some() {
                    break;
                }
                let tok = p[0] as u32;
                row.push(tok, false, p[1], p[2]);
                if stop_ids.contains(&tok) {
                    row.stop = Some(StopReason::StopToken);
                } else if row.actions >= cfg.max_new_tokens {
                    row.stop = Some(StopReason::MaxTokens);
                }
            }
        }
        if rows.iter().all(|r| r.stop.is_some()) {
            break;
        }
    }
    Ok(())
}

/// The fixed-shape step for this decode (`model::graph`), when asked for and
/// possible; recorded as a CUDA graph off the CPU.
fn fixed_steps(lm: &LanguageModel, cache: &crate::model::KvCache, cfg: &SampleConfig, lora: Option<&LoraView>) -> Result<Option<StaticStep>> {
    if !cfg.static_steps.unwrap_or_else(graph::default_on) {
        return Ok(None);
    }
    StaticStep::new(&lm.llama, cache, lora, !lm.device().is_cpu())
}

/// U(0, 1) noise `[B, V]`: the device's generator off the CPU, the seeded host
/// generator on it (candle's CPU generator cannot be seeded).
fn noise(shape: (usize, usize), rng: &mut rand_chacha::ChaCha8Rng, device: &candle_core::Device) -> Result<candle_core::Tensor> {
    use rand::Rng;
    if device.is_cpu() {
        let u: Vec<f32> = (0..shape.0 * shape.1).map(|_| rng.random::<f32>()).collect();
        Ok(candle_core::Tensor::from_vec(u, shape, device)?)
    } else {
        Ok(candle_core::Tensor::rand(0f32, 1f32, shape, device)?)
    }
}

/// One row's choice on the host: bias, stop mask, log-softmax, temperature,
/// top-k / top-p, draw.
fn host_pick(mut l: Vec<f32>, bias: Option<&[f32]>, below_min: bool, stop_ids: &[u32], cfg: &SampleConfig, rng: &mut rand_chacha::ChaCha8Rng) -> Pick {
    if let Some(bias) = bias {
        l.iter_mut().zip(bias).for_each(|(x, b)| *x += b);
    }
    if below_min {
        for &s in stop_ids {
            if let Some(x) = l.get_mut(s as usize) {
                *x = f32::NEG_INFINITY;
            }
        }
    }
    log_softmax_in_place(&mut l);
    let (tok, slp) = if cfg.greedy {
        (argmax(&l), 0.0)
    } else {
        let s = sampling_logprobs(&l, cfg.temperature, cfg.top_k, cfg.top_p);
        let tok = draw(&s, rng);
        (tok, s[tok])
    };
    Pick { token: tok as u32, logprob: l[tok], sample_logprob: slp }
}

fn samples(lm: &LanguageModel, rows: Vec<Row>, n: usize) -> Result<Vec<Sample>> {
    rows.into_iter()
        .enumerate()
        .map(|(i, r)| {
            Ok(Sample {
                prompt_index: i / n,
                text: lm.tokenizer.decode(&r.tokens, true)?,
                tokens: r.tokens,
                tool: r.tool,
                logprobs: r.logprobs,
                sample_logprobs: r.sample_logprobs,
                stop: r.stop.unwrap_or(StopReason::MaxTokens),
            })
        })
        .collect()
}
