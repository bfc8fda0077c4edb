//! `amortize compare`: several methods on one task, evaluated the same way
//! (same test items, samples and seeds), as a table of mean ± std over seeds.
//! Trains what is missing (GFlowNet, PPO) under `--out`, reuses adapters given
//! with `--adapters NAME=DIR` or trained by an earlier call.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use amortize::baselines::{train_sft, Ppo, PpoConfig, SftConfig};
use amortize::gfn::{TrainConfig, Trainer};
use amortize::model::{LanguageModel, LoraAdapter, Mode};
use amortize::tasks::{self, EvalOptions, Task};
use amortize_shared::metrics::mean_std;
use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::ModelArgs;

#[derive(Args, Debug)]
pub struct CompareArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long)]
    pub task: String,
    /// TOML: preset overrides (top level), `[task]` options, `[ppo]` and `[sft]` settings.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Comma-separated: base, gfn, ppo, sft, or names given with --adapters; each
    /// may add a decoding to evaluate with: base@greedy, base@t=0.7, gfn@p=0.9, base@k=40+t=0.8.
    #[arg(long, default_value = "base,ppo,gfn", value_delimiter = ',')]
    pub methods: Vec<String>,
    /// NAME=DIR: use this PEFT adapter for method NAME instead of training it.
    #[arg(long = "adapters", value_name = "NAME=DIR")]
    pub adapters: Vec<String>,
    /// Seeds (training and evaluation) to average over.
    #[arg(long, default_value_t = 1)]
    pub seeds: u64,
    /// Training steps for the methods trained here (default: each method's preset).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Evaluation samples (rng) or samples per question; the task's default otherwise.
    #[arg(long)]
    pub samples: Option<usize>,
    /// Test questions per set (tasks with test sets).
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Trained adapters, samples and the tables go here; default runs/compare-TASK.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print one JSON object: {"task", "rows": [{"method", "metrics": {NAME: {"mean", "std"}}}]}.
    #[arg(long)]
    pub json: bool,
    /// Print the Markdown table instead of the plain one.
    #[arg(long)]
    pub markdown: bool,
}

fn bar(len: usize, label: &str) -> ProgressBar {
    let b = ProgressBar::new(len as u64);
    b.set_style(ProgressStyle::with_template("{prefix:>10} {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()));
    b.set_prefix(label.to_string());
    b
}

/// GFlowNet fine-tuning with the task preset, or the adapter of an earlier call.
fn gfn_adapter(lm: &LanguageModel, task: &dyn Task, cfg: &TrainConfig, dir: &Path) -> anyhow::Result<LoraAdapter> {
    let adapter_dir = dir.join("adapter");
    if !adapter_dir.join("adapter_config.json").exists() {
        if dir.join("checkpoints").exists() {
            std::fs::remove_dir_all(dir.join("checkpoints"))?;
        }
        let _ = std::fs::remove_file(dir.join("metrics.jsonl"));
        let mut t = Trainer::new(lm, task.train_task(lm)?, cfg.clone(), Some(dir))?;
        let b = bar(cfg.steps, "gfn");
        t.run(|m| {
            b.set_position(m.step as u64);
            b.set_message(format!("loss {:.3}  log R {:.2}", m.loss, m.mean_log_r));
            ControlFlow::Continue(())
        })?;
        b.finish();
        t.adapter.save_peft(&adapter_dir, &lm.name)?;
    } else {
        eprintln!("gfn: reusing {}", adapter_dir.display());
    }
    Ok(LoraAdapter::load_peft(&adapter_dir, lm.config(), lm.device())?)
}

/// PPO against the task's reward, or the adapter of an earlier call.
fn ppo_adapter(lm: &LanguageModel, task: &dyn Task, shape: &TrainConfig, cfg: &PpoConfig, dir: &Path) -> anyhow::Result<LoraAdapter> {
    let adapter_dir = dir.join("adapter");
    if !adapter_dir.join("adapter_config.json").exists() {
        let _ = std::fs::remove_file(dir.join("metrics.jsonl"));
        let mut p = Ppo::new(lm, task.train_task(lm)?, shape.clone(), cfg.clone())?;
        let b = bar(cfg.steps, "ppo");
        p.run(Some(dir), |m| {
            b.set_position(m.step as u64);
            b.set_message(format!("log R {:.2}  KL {:.2}", m.mean_log_r, m.kl));
            ControlFlow::Continue(())
        })?;
        b.finish();
    } else {
        eprintln!("ppo: reusing {}", adapter_dir.display());
    }
    Ok(LoraAdapter::load_peft(&adapter_dir, lm.config(), lm.device())?)
}

/// Supervised fine-tuning on the task's reference Z's, or the adapter of an earlier call.
fn sft_adapter(lm: &LanguageModel, task: &dyn Task, shape: &TrainConfig, cfg: &SftConfig, dir: &Path) -> anyhow::Result<LoraAdapter> {
    let adapter_dir = dir.join("adapter");
    if !adapter_dir.join("adapter_config.json").exists() {
        let b = bar(0, "sft");
        train_sft(lm, &task.train_task(lm)?, shape, cfg, Some(dir), |m| {
            b.set_position(m.step as u64);
            b.set_message(format!("epoch {}  loss {:.3}", m.epoch, m.loss));
            ControlFlow::Continue(())
        })?;
        b.finish();
    } else {
        eprintln!("sft: reusing {}", adapter_dir.display());
    }
    Ok(LoraAdapter::load_peft(&adapter_dir, lm.config(), lm.device())?)
}

pub fn run(a: CompareArgs) -> anyhow::Result<()> {
    if a.model.adapter.is_some() {
        bail!("invalid --adapter: compare takes adapters per method (--adapters NAME=DIR)");
    }
    if a.seeds == 0 || a.batch == 0 || a.samples == Some(0) {
        bail!("invalid --seeds/--batch/--samples: must be at least 1");
    }
    let mut given = BTreeMap::new();
    for spec in &a.adapters {
        let (name, dir) = spec.split_once('=').with_context(|| format!("invalid --adapters `{spec}`: expected NAME=DIR"))?;
        if !Path::new(dir).join("adapter_config.json").exists() {
            bail!("invalid --adapters {name}: {dir} is not a PEFT adapter directory (no adapter_config.json)");
        }
        given.insert(name.to_string(), PathBuf::from(dir));
    }
    // METHOD or METHOD@DECODING (e.g. base@greedy, gfn@t=0.7+p=0.9).
    let mut decodings = BTreeMap::new();
    for m in &a.methods {
        let (name, decoding) = match m.split_once('@') {
            Some((n, d)) => (n, Some(tasks::Decoding::parse(d).map_err(|e| anyhow::anyhow!("invalid --methods {m}: {e}"))?)),
            None => (m.as_str(), None),
        };
        match name {
            "base" | "gfn" | "ppo" | "sft" => {}
            other if given.contains_key(other) => {}
            other => bail!("invalid --methods: unknown method `{other}` (base, gfn, ppo, sft, or a name given with --adapters; add @greedy, @t=…, @k=…, @p=… for a decoding)"),
        }
        decodings.insert(m.clone(), (name.to_string(), decoding));
    }
    let (task, mut cfg) = super::train::task_and_config(&a.task, a.config.as_deref())?;
    let mut ppo: PpoConfig = toml::Value::Table(tasks::config::section(a.config.as_deref(), "ppo")?)
        .try_into()
        .map_err(|e: toml::de::Error| anyhow::anyhow!("invalid [ppo]: {}", e.message()))?;
    let mut sft: SftConfig = toml::Value::Table(tasks::config::section(a.config.as_deref(), "sft")?)
        .try_into()
        .map_err(|e: toml::de::Error| anyhow::anyhow!("invalid [sft]: {}", e.message()))?;
    sft.validate()?;
    if let Some(s) = a.steps {
        cfg.steps = s;
        ppo.steps = s;
    }
    cfg.validate()?;
    ppo.validate()?;
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(format!("compare-{}", a.task)));
    std::fs::create_dir_all(out.join("samples")).with_context(|| format!("creating {}", out.display()))?;
    let (lm, _) = a.model.load()?;

    // results[method][metric] = one value per seed
    let mut results: BTreeMap<String, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    for seed in 0..a.seeds {
        for m in &a.methods {
            let (name, decoding) = &decodings[m];
            let adapter = match name.as_str() {
                n if given.contains_key(n) => Some(LoraAdapter::load_peft(&given[n], lm.config(), lm.device())?),
                "base" => None,
                "gfn" => Some(gfn_adapter(&lm, task.as_ref(), &TrainConfig { seed: cfg.seed + seed, ..cfg.clone() }, &out.join(format!("gfn-seed{seed}")))?),
                "sft" => {
                    sft.seed = seed;
                    Some(sft_adapter(&lm, task.as_ref(), &cfg, &sft, &out.join(format!("sft-seed{seed}")))?)
                }
                "ppo" => Some(ppo_adapter(&lm, task.as_ref(), &cfg, &PpoConfig { seed: ppo.seed + seed, ..ppo.clone() }, &out.join(format!("ppo-seed{seed}")))?),
                _ => unreachable!("methods were checked above"),
            };
            let view = adapter.as_ref().map(|ad| ad.view(Mode::Infer, lm.llama.dtype())).transpose()?;
            let opts = EvalOptions { samples: a.samples, batch: a.batch, seed, limit: a.limit, lengths: Some((cfg.min_len, cfg.max_len)), decoding: decoding.clone() };
            eprintln!("evaluating {m} (seed {seed})…");
            results.entry(m.clone()).or_default();
            let report = task.evaluate(&lm, view.as_ref(), &opts)?;
            amortize::util::write_atomic(&out.join("samples").join(format!("{}-seed{seed}.json", m.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).collect::<String>())), serde_json::to_string_pretty(&report)?.as_bytes())?;
            for (k, v) in report.metrics {
                results.entry(m.clone()).or_default().entry(k).or_default().push(v);
            }
        }
    }

    let names: Vec<String> = {
        let mut key: Vec<String> = tasks::metric_names(&a.task).iter().map(|s| s.to_string()).collect();
        for r in results.values() {
            for k in r.keys() {
                if !key.contains(k) {
                    key.push(k.clone());
                }
            }
        }
        key
    };
    let rows: Vec<serde_json::Value> = a
        .methods
        .iter()
        .map(|m| {
            let metrics: serde_json::Map<String, serde_json::Value> = results[m]
                .iter()
                .map(|(k, v)| {
                    let (mean, std) = mean_std(v);
                    (k.clone(), serde_json::json!({"mean": mean, "std": std}))
                })
                .collect();
            serde_json::json!({"method": m, "metrics": metrics})
        })
        .collect();
    let json = serde_json::json!({"task": a.task, "seeds": a.seeds, "rows": rows});
    let md = markdown(&a.methods, &names, &results);
    amortize::util::write_atomic(&out.join("compare.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
    amortize::util::write_atomic(&out.join("compare.md"), md.as_bytes())?;
    if a.json {
        println!("{json}");
    } else if a.markdown {
        print!("{md}");
    } else {
        print!("{}", plain(&a.methods, &names, &results));
        eprintln!("tables and samples in {}", out.display());
    }
    Ok(())
}

fn cell(v: Option<&Vec<f64>>) -> String {
    match v {
        Some(v) if v.len() > 1 => {
            let (m, s) = mean_std(v);
            format!("{m:.4} ± {s:.4}")
        }
        Some(v) => format!("{:.4}", v[0]),
        None => "–".into(),
    }
}

fn markdown(methods: &[String], names: &[String], r: &BTreeMap<String, BTreeMap<String, Vec<f64>>>) -> String {
    let mut s = format!("| method | {} |\n|---|{}\n", names.join(" | "), "---|".repeat(names.len()));
    for m in methods {
        let cells: Vec<String> = names.iter().map(|n| cell(r[m].get(n))).collect();
        s.push_str(&format!("| {m} | {} |\n", cells.join(" | ")));
    }
    s
}

fn plain(methods: &[String], names: &[String], r: &BTreeMap<String, BTreeMap<String, Vec<f64>>>) -> String {
    let mut s = format!("{:>8}", "method");
    for n in names {
        s.push_str(&format!(" {n:>20}"));
    }
    s.push('\n');
    for m in methods {
        s.push_str(&format!("{m:>8}"));
        for n in names {
            s.push_str(&format!(" {:>20}", cell(r[m].get(n))));
        }
        s.push('\n');
    }
    s
}
