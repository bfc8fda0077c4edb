//! `amortize bench …`: throughput of the engine, on the real model or on random
//! weights of a real shape (speed does not depend on the values). Results are
//! ratios within one run where a baseline is named, and absolute tokens/s.

use std::time::Instant;

use amortize::decode::logits::{draw, log_softmax_in_place, sampling_logprobs};
use amortize::decode::{self, SampleConfig};
use amortize::model::{parse_device, parse_dtype, LanguageModel, LoraAdapter, LoraConfig, Mode};
use clap::{Args, Subcommand};
use rand::{Rng, SeedableRng};

use super::common::DEFAULT_MODEL;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// New tokens per second of batched sampling, with the KV cache and (optionally)
    /// without it (every step recomputes the whole sequence) for the speed-up.
    Decode(DecodeArgs),
    /// Seconds per GFlowNet training step of a task preset (after warm-up).
    Step(super::bench_gfn::StepArgs),
    /// Prefix-shared reward vs the naive one (n+1 full passes), at several lengths.
    Reward(super::bench_gfn::RewardArgs),
}

#[derive(Args, Debug)]
pub struct SourceArgs {
    /// A `.gguf` file or HF directory (ignored with --random).
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: std::path::PathBuf,
    /// Random weights of a real shape: smollm2-135m, smollm2-360m, smollm2-1.7b, llama-8b, tiny.
    #[arg(long)]
    pub random: Option<String>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

impl SourceArgs {
    pub fn load(&self) -> anyhow::Result<LanguageModel> {
        let device = parse_device(&self.device)?;
        let dtype = parse_dtype(&self.dtype)?;
        Ok(match &self.random {
            Some(shape) => LanguageModel::random(shape, &device, dtype, 0)?,
            None => LanguageModel::load(&self.model, &device, dtype)?,
        })
    }
}

#[derive(Args, Debug)]
pub struct DecodeArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    pub batch: Vec<usize>,
    #[arg(long, default_value_t = 32)]
    pub new_tokens: usize,
    #[arg(long, default_value_t = 16)]
    pub prompt_len: usize,
    /// Also time decoding without the KV cache and report the speed-up.
    #[arg(long)]
    pub recompute: bool,
    /// Also time choosing tokens on the host (the whole logits copied back every
    /// step) against choosing them on the device.
    #[arg(long)]
    pub host_draw: bool,
    /// Also time the stepwise loop (the draws read back after every token)
    /// against the default, which reads them back every
    /// [`decode::READBACK_EVERY`] tokens when they are chosen on the device.
    #[arg(long)]
    pub stepwise: bool,
    /// Also time decoding with fixed-shape steps, recorded once as a CUDA
    /// graph and replayed (`model::graph`; needs the fused ops), against the
    /// default (`AMORTIZE_CUDA_GRAPH` decides; off unless set to 1).
    #[arg(long)]
    pub graph: bool,
    /// Also time decoding with the gemv blocks (`model::gemv`: five kernels a
    /// block for at most 8 rows; needs the fused ops), and with `--graph`
    /// both together; every other rate of the run is then timed with them
    /// off, so the columns are an A/B (without the flag, `AMORTIZE_GEMV` or
    /// the device's default decides).
    #[arg(long)]
    pub gemv: bool,
    /// Decode through a LoRA adapter of this rank (all projections), and also
    /// through the same adapter folded into the weights (`model::fold`).
    #[arg(long)]
    pub lora_r: Option<usize>,
    /// Fused inference ops (`model::fused`): `true`, `false` or both
    /// (`true,false`: timed one after the other in this process, per batch
    /// size). Default: the model's default for its device.
    #[arg(long, value_delimiter = ',')]
    pub fused: Vec<bool>,
    /// Print one JSON object per batch size (and --fused setting).
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Decode(a) => decode_bench(a),
        BenchCommand::Step(a) => super::bench_gfn::step(a),
        BenchCommand::Reward(a) => super::bench_gfn::reward(a),
    }
}

fn decode_bench(a: DecodeArgs) -> anyhow::Result<()> {
    if a.batch.contains(&0) || a.new_tokens == 0 || a.prompt_len == 0 {
        anyhow::bail!("invalid bench: batch sizes, --new-tokens and --prompt-len must be positive");
    }
    let mut lm = a.source.load()?;
    let settings = if a.fused.is_empty() { vec![lm.llama.fused()] } else { a.fused.clone() };
    let vocab = lm.tokenizer.vocab_size().min(lm.config().vocab_size) as u32;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    if !a.json {
        println!("model {} on {:?} ({:?}), prompt {} tokens, {} new tokens", lm.name, lm.device(), lm.llama.dtype(), a.prompt_len, a.new_tokens);
        if let Some(r) = a.lora_r {
            println!("through a LoRA r{r} adapter (inference view); the last column folds it into the weights");
        }
        println!("{:>6} {:>6} {:>14} {:>16} {:>10} {:>16}", "batch", "fused", "cached tok/s", "recompute tok/s", "speed-up", "host-draw tok/s");
    }
    if a.lora_r == Some(0) {
        anyhow::bail!("invalid bench: --lora-r must be positive");
    }
    let adapter = a.lora_r.map(|r| LoraAdapter::new(lm.config(), LoraConfig { r, ..LoraConfig::default() }, lm.device(), 0)).transpose()?;
    let view = adapter.as_ref().map(|ad| ad.view(Mode::Infer, lm.llama.dtype())).transpose()?;
    // Warm-up (allocations, kernels), with every setting.
    let warm: Vec<u32> = (0..a.prompt_len).map(|_| rng.random_range(0..vocab)).collect();
    for &f in &settings {
        lm.llama.set_fused(f);
        decode::sample(&lm, std::slice::from_ref(&warm), &bench_cfg(1, 2), view.as_ref(), None)?;
    }
    let folded = match &view {
        Some(v) => {
            let t0 = Instant::now();
            let f = lm.llama.fold(v)?;
            lm.device().synchronize()?;
            Some((f, t0.elapsed().as_secs_f64()))
        }
        None => None,
    };
    for &b in &a.batch {
        let prompts: Vec<Vec<u32>> = (0..b).map(|_| (0..a.prompt_len).map(|_| rng.random_range(0..vocab)).collect()).collect();
        let mut first: Option<f64> = None;
        for &fused in &settings {
            lm.llama.set_fused(fused);
            // Untimed, at this batch size: memory pools and library heuristics
            // warm up here, not in whichever timed variant runs first.
            decode::sample(&lm, &prompts, &bench_cfg(1, a.new_tokens.min(8)), view.as_ref(), None)?;
            let base = bench_cfg(1, a.new_tokens);
            let default_gemv = lm.llama.gemv_rows();
            let (gemv, gemv_graph) = if a.gemv {
                lm.llama.set_gemv(true);
                let passes = amortize::model::gemv::block_passes();
                decode::sample(&lm, &prompts, &bench_cfg(1, a.new_tokens.min(8)), view.as_ref(), None)?; // untimed
                let g = timed(&lm, &prompts, base.clone(), view.as_ref())?;
                let gg = a.graph.then(|| timed(&lm, &prompts, SampleConfig { static_steps: Some(true), ..base.clone() }, view.as_ref())).transpose()?;
                lm.llama.set_gemv(false);
                // No rate where the blocks did not apply (more than 8 rows, an unfolded adapter).
                if amortize::model::gemv::block_passes() > passes {
                    (Some(g), gg)
                } else {
                    (None, None)
                }
            } else {
                (None, None)
            };
            let rate = |cfg: SampleConfig, lora: Option<&amortize::model::LoraView>| timed(&lm, &prompts, cfg, lora);
            let cached = rate(base.clone(), view.as_ref())?;
            let fold = folded.as_ref().map(|(f, _)| rate(base.clone(), Some(f))).transpose()?;
            let recompute = if a.recompute { Some(recompute_rate(&lm, &prompts, a.new_tokens)?) } else { None };
            let host = a.host_draw.then(|| rate(SampleConfig { on_device: Some(false), ..base.clone() }, view.as_ref())).transpose()?;
            let stepwise = a.stepwise.then(|| rate(SampleConfig { readback_every: Some(1), ..base.clone() }, view.as_ref())).transpose()?;
            let graph = a.graph.then(|| rate(SampleConfig { static_steps: Some(true), ..base.clone() }, view.as_ref())).transpose()?;
            let over = first.map(|f| cached / f);
            first.get_or_insert(cached);
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({"bench": "decode", "batch": b, "fused": fused, "over_first_setting": over, "new_tokens": a.new_tokens, "prompt_len": a.prompt_len,
                        "tokens_per_s": cached, "recompute_tokens_per_s": recompute, "speedup": recompute.map(|r| cached / r),
                        "host_draw_tokens_per_s": host, "stepwise_tokens_per_s": stepwise, "graph_tokens_per_s": graph, "graphs_recorded": amortize::model::graph::recorded_graphs(),
                        "gemv_tokens_per_s": gemv, "gemv_graph_tokens_per_s": gemv_graph, "gemv_passes": amortize::model::gemv::block_passes(),
                        "gemv_weight_gb_per_s": gemv.map(|g| lm.llama.weight_bytes() as f64 * g / b as f64 / 1e9), "dtype": format!("{:?}", lm.llama.dtype()),
                        "lora_r": a.lora_r, "folded_tokens_per_s": fold, "fold_s": folded.as_ref().map(|f| f.1),
                        "weight_bytes": lm.llama.weight_bytes(), "weight_gb_per_s": lm.llama.weight_bytes() as f64 * cached / b as f64 / 1e9,
                        "device": format!("{:?}", lm.device()), "model": lm.name})
                );
            } else {
                let (r, s) = match recompute {
                    Some(r) => (format!("{r:.1}"), format!("{:.2}x", cached / r)),
                    None => ("-".into(), "-".into()),
                };
                let h = host.map_or("-".into(), |h| format!("{h:.1}"));
                let f = fold.map_or(String::new(), |f| format!(" {f:>14.1} (folded adapter, {:.3} s to fold)", folded.as_ref().map_or(0.0, |x| x.1)));
                let o = over.map_or(String::new(), |o| format!(" ({o:.2}x the first --fused setting)"));
                let w = stepwise.map_or(String::new(), |w| format!(" (stepwise readback: {w:.1} tok/s)"));
                let e = graph.map_or(String::new(), |g| format!(" (graph steps: {g:.1} tok/s)"));
                let v = gemv.map_or(String::new(), |g| format!(" (gemv blocks: {g:.1} tok/s{})", gemv_graph.map_or(String::new(), |x| format!(", with graph steps {x:.1}"))));
                println!("{b:>6} {fused:>6} {cached:>14.1} {r:>16} {s:>10} {h:>16}{f}{o}{w}{e}{v}");
            }
            lm.llama.set_gemv_rows(default_gemv);
        }
    }
    Ok(())
}

/// New tokens per second of one timed decode of `prompts`.
fn timed(lm: &amortize::model::LanguageModel, prompts: &[Vec<u32>], cfg: SampleConfig, lora: Option<&amortize::model::LoraView>) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let out = decode::sample(lm, prompts, &cfg, lora, None)?;
    Ok(elapsed_rate(t0, out.iter().map(|s| s.tokens.len()).sum()))
}

fn bench_cfg(n: usize, new_tokens: usize) -> SampleConfig {
    // No stop tokens: every row generates exactly `new_tokens`.
    SampleConfig { n, max_new_tokens: new_tokens, stop_tokens: Some(vec![]), ..SampleConfig::default() }
}

fn elapsed_rate(t0: Instant, tokens: usize) -> f64 {
    tokens as f64 / t0.elapsed().as_secs_f64().max(1e-9)
}

/// The same sampling loop as `decode::sample`, but every step re-runs the whole
/// sequence from an empty cache (what generation costs without a KV cache).
fn recompute_rate(lm: &LanguageModel, prompts: &[Vec<u32>], new_tokens: usize) -> anyhow::Result<f64> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut seqs = prompts.to_vec();
    let t0 = Instant::now();
    for _ in 0..new_tokens {
        let mut cache = lm.llama.new_cache();
        let hidden = lm.llama.forward(&seqs, &mut cache, None)?;
        let t = hidden.dim(1)?;
        let last = hidden.narrow(1, t - 1, 1)?.squeeze(1)?;
        let logits: Vec<Vec<f32>> = lm.llama.logits(&last)?.to_vec2()?;
        for (seq, mut l) in seqs.iter_mut().zip(logits) {
            log_softmax_in_place(&mut l);
            let s = sampling_logprobs(&l, 1.0, None, None);
            seq.push(draw(&s, &mut rng) as u32);
        }
    }
    Ok(elapsed_rate(t0, prompts.len() * new_tokens))
}
