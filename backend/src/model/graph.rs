//! One decode step in fixed shapes, recorded once as a CUDA graph and replayed.
//!
//! An eager decode step queues about ten kernels per layer, and for small
//! batches the host's cost of queuing them is the step's cost on a GPU. Here
//! the step reads every input from a buffer of fixed address and shape — the
//! token ids, their positions, the additive mask over the cache's whole
//! reserved room, and the write position (read on the device by
//! [`fused::cache_write_at`]) — so it can be captured once and replayed with a
//! single launch per token. Only those small buffers are written from the host
//! between launches; noise and the draw stay outside the graph. On the CPU
//! (or with capture off) the same fixed-shape step runs eagerly, which is how
//! the CPU tests check it against the ordinary decode path. On the GPU the
//! first graph a process records is replayed once on its own step and must
//! give that step's logits; a failed recording or check turns graphs off for
//! the process (eager steps, one warning).
//!
//! Owns the step's buffers and graph; reads the model, writes the cache's
//! reserved room (never reallocates it: a cache without room gets no step).

use candle_core::{DType, Tensor};

use super::cache::KvCache;
use super::fused;
use super::llama::{Llama, MASKED};
use super::lora::LoraView;
use crate::{Error, Result};

/// Whether decoding uses fixed-shape steps unless told otherwise:
/// `AMORTIZE_CUDA_GRAPH=1` or `0` decides; else off. On CUDA they stay off by
/// default until their device tests and timings have run on a GPU (the CPU
/// runs them eagerly, which gains nothing there).
pub fn default_on() -> bool {
    std::env::var("AMORTIZE_CUDA_GRAPH").as_deref() == Ok("1")
}

/// CUDA graphs recorded so far in this process (for tests and benchmarks: a
/// failed recording falls back to eager steps with only a warning).
pub fn recorded_graphs() -> usize {
    RECORDED.load(std::sync::atomic::Ordering::Relaxed)
}

static RECORDED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Set by the first failed recording: later steps of this process do not try
/// again (and do not warn again).
static RECORDING_FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Set once the first recorded graph of this process has been checked against its eager step.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
static CHECKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// How far a replay's logits may be from the eager step's, relative to
/// 1 + their largest magnitude, for an f32 model and a half-precision one:
/// the same kernels on the same inputs agree exactly unless a library picks
/// another algorithm while recording (a few roundings apart); a replay that
/// reads or writes the wrong buffers is off by the logits' own scale.
const REPLAY_TOLERANCE: [f32; 2] = [1e-3, 3e-2];

/// The largest |a − b| (NaN when any difference is not finite: a max skips
/// NaNs, a sum keeps them) and the largest |b| of two logit tensors, in one readback.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn replay_gap(a: &Tensor, b: &Tensor) -> Result<(f32, f32)> {
    let diff = (a - b)?.abs()?.flatten_all()?.to_dtype(DType::F32)?;
    let stats = [diff.max(0)?, diff.sum(0)?, b.abs()?.flatten_all()?.to_dtype(DType::F32)?.max(0)?];
    let v = Tensor::stack(&stats, 0)?.to_vec1::<f32>()?;
    Ok((if v[1].is_finite() { v[0] } else { f32::NAN }, v[2]))
}

/// Whether a replay's largest logit gap `diff` (NaN: not finite) is within
/// tolerance of logits up to `scale` in magnitude, for a model in `model`'s dtype.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn replay_matches(diff: f32, scale: f32, model: DType) -> bool {
    let tol = REPLAY_TOLERANCE[usize::from(model != DType::F32)];
    diff <= tol * (1.0 + scale)
}

/// A fixed-shape decode step for one batch and one cache room.
pub struct StaticStep {
    /// [B] u32: the tokens the step feeds.
    ids: Tensor,
    /// [B] u32: their positions.
    pos: Tensor,
    /// [B, 1, cap] f32: which keys of the room each row sees.
    mask: Tensor,
    /// [1] u32: the room slot the step writes.
    at: Tensor,
    /// [B, V] f32: the step's output.
    logits: Tensor,
    /// The cache's room per layer when the step was made: a recorded graph
    /// writes into these buffers, so they are kept alive, and the step runs
    /// only while the cache still uses them ([`StaticStep::fits`]).
    rooms: Vec<Tensor>,
    b: usize,
    cap: usize,
    /// The model's dtype (how closely a replay must match, [`replay_matches`]).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    dtype: DType,
    /// Record and replay a CUDA graph (off on the CPU, and after a failed capture).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    capture: bool,
    #[cfg(feature = "cuda")]
    graph: Option<candle_core::cuda_backend::cudarc::driver::CudaGraph>,
}

impl StaticStep {
    /// A step for `cache` (its batch and room): `None` when the step cannot
    /// run in fixed shapes (fused ops off, a layer without reserved room, a
    /// room longer than the fused attention takes, an adapter that is trained
    /// or drops out). `capture`: record a CUDA graph (ignored off CUDA).
    pub fn new(llama: &Llama, cache: &KvCache, lora: Option<&LoraView>, capture: bool) -> Result<Option<Self>> {
        let b = cache.batch_size();
        if !llama.fused() || b == 0 || lora.is_some_and(|l| l.tracked || l.dropout > 0.0) {
            return Ok(None);
        }
        let Some(rooms) = (0..llama.config.num_hidden_layers).map(|l| cache.room(l, 1).cloned()).collect::<Option<Vec<Tensor>>>() else { return Ok(None) };
        let cap = rooms.first().map_or(0, |r| r.dims()[3]);
        if cap == 0 || rooms.iter().any(|r| r.dims()[3] != cap) || cap > fused::ATTEND_MAX_S {
            return Ok(None);
        }
        let dev = llama.device();
        Ok(Some(StaticStep {
            ids: Tensor::zeros(b, DType::U32, dev)?,
            pos: Tensor::zeros(b, DType::U32, dev)?,
            mask: Tensor::zeros((b, 1, cap), DType::F32, dev)?,
            at: Tensor::zeros(1, DType::U32, dev)?,
            logits: Tensor::zeros((b, llama.config.vocab_size), DType::F32, dev)?,
            rooms,
            b,
            cap,
            dtype: llama.dtype(),
            capture: capture && dev.is_cuda() && !RECORDING_FAILED.load(std::sync::atomic::Ordering::Relaxed),
            #[cfg(feature = "cuda")]
            graph: None,
        }))
    }

    /// Whether the next step fits: the cache still writes into the room this
    /// step was made for, and one more position fits there.
    pub fn fits(&self, cache: &KvCache) -> bool {
        cache.batch_size() == self.b
            && cache.len() < self.cap
            && self.rooms.iter().enumerate().all(|(l, r)| cache.room(l, 1).is_some_and(|c| c.id() == r.id()))
    }

    /// Feeds `ids` [B] (token ids as u32 or f32, on the device: the previous
    /// draw), one per row, after what `cache` holds; returns the logits [B, V]
    /// (f32) for the next token. The result is the step's output buffer: the
    /// next call overwrites it, so use it (queue the draw) before then.
    pub fn step(&mut self, llama: &Llama, ids: &Tensor, cache: &mut KvCache, lora: Option<&LoraView>) -> Result<Tensor> {
        let (b, cap, len) = (self.b, self.cap, cache.len());
        if ids.dims() != [b] {
            return Err(Error::invalid("decode", format!("{:?} ids for a step of {b} rows", ids.dims())));
        }
        if !self.fits(cache) {
            return Err(Error::invalid("decode", format!("the cache ({len} positions) no longer fits this step's room of {cap}")));
        }
        let next = cache.next_positions();
        let max = llama.config.max_position_embeddings;
        if let Some(&p) = next.iter().max().filter(|&&p| p >= max) {
            return Err(Error::TooLong { len: p + 1, max });
        }
        // A row sees its valid cached keys and the new one; the rest of the room is hidden.
        let mut mask = vec![MASKED; b * cap];
        for (i, row) in cache.valid.iter().enumerate() {
            for (k, _) in row.iter().enumerate().filter(|(_, &v)| v) {
                mask[i * cap + k] = 0.0;
            }
            mask[i * cap + len] = 0.0;
        }
        let dev = llama.device();
        let pos: Vec<u32> = next.iter().map(|&p| p as u32).collect();
        self.pos.slice_set(&Tensor::from_vec(pos, b, dev)?, 0, 0)?;
        self.mask.slice_set(&Tensor::from_vec(mask, (b, 1, cap), dev)?, 0, 0)?;
        self.at.slice_set(&Tensor::from_vec(vec![len as u32], 1, dev)?, 0, 0)?;
        self.ids.slice_set(&ids.to_dtype(DType::U32)?.contiguous()?, 0, 0)?;
        let logits = self.run(llama, cache, lora)?;
        for v in cache.valid.iter_mut() {
            v.push(true);
        }
        Ok(logits)
    }

    /// The step on the current buffers: a graph launch once recorded.
    fn run(&mut self, llama: &Llama, cache: &mut KvCache, lora: Option<&LoraView>) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if self.capture {
            if let Some(graph) = &self.graph {
                graph.launch().map_err(|e| Error::invalid("cuda graph", e.to_string()))?;
                return Ok(self.logits.clone());
            }
            let dev = llama.device().as_cuda_device()?;
            // This step runs eagerly with candle's upload cache on (so that the
            // recording finds each small parameter upload it needs), then the
            // same step is recorded (recording runs nothing) for the next ones.
            let out = {
                let _cache = dev.enable_cuda_graph_htod_cache();
                // A copy: the output buffer is what a replay overwrites.
                self.eager(llama, cache, lora)?.copy()?
            };
            match self.record(dev, llama, cache, lora).and_then(|graph| self.check_first(graph, &out)) {
                Ok(graph) => {
                    tracing::debug!(batch = self.b, room = self.cap, "decode step recorded as a CUDA graph");
                    self.graph = Some(graph);
                    RECORDED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => {
                    if !RECORDING_FAILED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        tracing::warn!("decoding without CUDA graphs from now on: recording a step failed: {e}");
                    }
                    self.capture = false;
                    // Again eagerly: a failed check's replay may have written
                    // wrong values into this step's cache slot.
                    return self.eager(llama, cache, lora);
                }
            }
            return Ok(out);
        }
        self.eager(llama, cache, lora)
    }

    /// The step as ordinary ops (on the CPU, and what a recording captures).
    fn eager(&self, llama: &Llama, cache: &mut KvCache, lora: Option<&LoraView>) -> Result<Tensor> {
        let hidden = llama.run_static(&self.ids, &self.pos, &self.mask, &self.at, cache, lora)?; // [B, 1, H]
        self.logits.slice_set(&llama.logits(&hidden.squeeze(1)?)?, 0, 0)?;
        Ok(self.logits.clone())
    }

    /// The first graph of a process is replayed once on the step it was
    /// recorded from (its cache write repeats the same values in the same
    /// slot) and must give the eager step's logits: a recording that
    /// captured something wrong turns graphs off instead of decoding wrongly.
    #[cfg(feature = "cuda")]
    fn check_first(&self, graph: candle_core::cuda_backend::cudarc::driver::CudaGraph, eager: &Tensor) -> Result<candle_core::cuda_backend::cudarc::driver::CudaGraph> {
        use std::sync::atomic::Ordering::Relaxed;
        if CHECKED.load(Relaxed) {
            return Ok(graph);
        }
        // NaN first: a replay that does not write the output fails too.
        self.logits.slice_set(&Tensor::full(f32::NAN, self.logits.dims(), self.logits.device())?, 0, 0)?;
        graph.launch().map_err(|e| Error::invalid("cuda graph", e.to_string()))?;
        let (diff, scale) = replay_gap(&self.logits, eager)?;
        if !replay_matches(diff, scale, self.dtype) {
            return Err(Error::invalid("cuda graph", format!("a replay of the recorded step differs from the step by {diff} (logits up to {scale})")));
        }
        CHECKED.store(true, Relaxed);
        Ok(graph)
    }

    #[cfg(feature = "cuda")]
    fn record(&self, dev: &candle_core::CudaDevice, llama: &Llama, cache: &mut KvCache, lora: Option<&LoraView>) -> Result<candle_core::cuda_backend::cudarc::driver::CudaGraph> {
        use candle_core::cuda_backend::cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
        let stream = dev.cuda_stream();
        let _cache = dev.enable_cuda_graph_htod_cache();
        let cuda = |e: candle_core::cuda_backend::cudarc::driver::DriverError| Error::invalid("cuda graph", e.to_string());
        stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED).map_err(cuda)?;
        // Every tensor of the pass is dropped inside: its frees are recorded too.
        let recorded = self.eager(llama, cache, lora).map(drop);
        let graph = stream.end_capture(CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH);
        recorded?;
        graph.map_err(cuda)?.ok_or_else(|| Error::invalid("cuda graph", "the recording was empty"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn replay_gap_is_the_largest_difference_and_nan_when_any_is_not_finite() {
        let d = Device::Cpu;
        let b = Tensor::new(&[[1f32, -5.0], [2.0, 3.0]], &d).unwrap();
        let a = Tensor::new(&[[1f32, -5.0], [2.5, 3.0]], &d).unwrap();
        assert_eq!(replay_gap(&a, &b).unwrap(), (0.5, 5.0));
        assert_eq!(replay_gap(&b, &b).unwrap(), (0.0, 5.0));
        let broken = Tensor::new(&[[f32::NAN, -5.0], [2.0, 3.0]], &d).unwrap();
        let (diff, _) = replay_gap(&broken, &b).unwrap();
        assert!(diff.is_nan(), "{diff}");
        // The check in `check_first` rejects NaN and large gaps, accepts rounding.
        assert!(!replay_matches(diff, 5.0, DType::BF16) && !replay_matches(0.5, 5.0, DType::F32) && replay_matches(1e-3, 5.0, DType::F32));
        // A few bf16 roundings of logits near 20 pass in bf16, not in f32.
        assert!(replay_matches(0.15, 20.0, DType::BF16) && !replay_matches(0.15, 20.0, DType::F32));
        assert!(!replay_matches(5.0, 20.0, DType::BF16));
    }
}
