//! `amortize compare`: several methods on one task, evaluated the same way
//! (same test items, samples and seeds), as a table of mean ± std over seeds.
//! Methods: the base model, prompting (zero-/k-shot), GFlowNet, PPO, SFT, the
//! EM step (gfn+sft), the GFlowNet and PPO started from the SFT adapter
//! (sft+gfn, sft+ppo), adapters given with `--adapters NAME=DIR`, each with an
//! optional decoding (`@greedy`, `@t=…`, `@beam`, `@dbeam+x5`, …). Without
//! `--methods`, the task's preset (the paper's table for it). Trains what is
//! missing under `--out`, reuses what an earlier call trained. With
//! `[task] reward_adapter = "sft"` (infilling), the GFlowNet's reward scores
//! with the SFT adapter trained here first, the paper's §4.2 recipe in one call.
//! The adapters trained here are evaluated at their last step into their
//! folder (the row; `amortize import` reads it as the final metrics); with
//! `--eval-every N`, along their training too, and the curves over seeds are
//! tabulated (`along`). With
//! `--sweep KEY=V1,V2,…`, the GFlowNet trains once per value (`sweep`).
//! See docs/compare.md.

mod adapters;
mod along;
mod sweep;
mod table;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use amortize::baselines::{EmConfig, FewShot, FewShotConfig, Method, MethodKind, PpoConfig, SftConfig};
use amortize::gfn::TrainConfig;
use amortize::model::LoraAdapter;
use amortize::tasks::{self, EvalOptions, PromptTransform};
use anyhow::{bail, Context};
use clap::Args;
use serde::de::DeserializeOwned;

use super::common::{EvalSize, StageBar};
use super::ModelArgs;

#[derive(Args, Debug)]
pub struct CompareArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long)]
    pub task: String,
    /// TOML: preset overrides (top level), `[task]` options, and `[ppo]`, `[sft]`,
    /// `[fewshot]`, `[em]` settings.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Comma-separated: base, zeroshot, fewshot[:k=N], gfn, ppo, sft, gfn+sft
    /// (SFT on the GFlowNet's samples), sft+gfn, sft+ppo (from SFT's adapter), or
    /// names given with --adapters; each may add a decoding: base@greedy,
    /// base@t=0.7, gfn@p=0.9, base@beam, base@dbeam=8+g=4, base@dbeam+x5, gfn@x5.
    /// Default: the task's preset (the paper's table; see docs/compare.md).
    #[arg(long, value_delimiter = ',')]
    pub methods: Option<Vec<String>>,
    /// NAME=DIR: use this PEFT adapter for method NAME instead of training it.
    #[arg(long = "adapters", value_name = "NAME=DIR")]
    pub adapters: Vec<String>,
    /// Seeds (training, few-shot draws and evaluation) to average over.
    #[arg(long, default_value_t = 1)]
    pub seeds: u64,
    /// Training steps for the methods trained here (default: each method's preset).
    #[arg(long)]
    pub steps: Option<usize>,
    #[command(flatten)]
    pub size: EvalSize,
    /// Also evaluate each adapter trained here (GFlowNet, PPO, SFT) every N of
    /// its training steps and at its last, the comparison's evaluation with
    /// the plain decoding, into its folder's evals.jsonl; the curves (mean ±
    /// std over seeds by step) go to curves.md and compare.json's "curves".
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// KEY=V1,V2,…: train the GFlowNet once per value of this config key (each
    /// over the seeds, in gfn-KEYV-seedS), a row per value (gfn[KEY=V], and
    /// gfn+sft[KEY=V], sft+gfn[KEY=V]); the other methods keep the config.
    #[arg(long, value_name = "KEY=V1,V2,…")]
    pub sweep: Option<String>,
    /// Trained adapters, samples and the tables go here; default runs/compare-TASK.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print one JSON object: {"task", "seeds", "rows": [{"method", "metrics": {NAME: {"mean", "std"}}}]}.
    #[arg(long)]
    pub json: bool,
    /// Print the Markdown table instead of the plain one.
    #[arg(long)]
    pub markdown: bool,
}

/// The `[name]` table of the config file as `T` (unknown keys are errors).
fn section<T: DeserializeOwned>(file: Option<&Path>, name: &str) -> anyhow::Result<T> {
    toml::Value::Table(tasks::config::section(file, name)?).try_into().map_err(|e: toml::de::Error| anyhow::anyhow!("invalid [{name}]: {}", e.message()))
}

/// The `[task] reward_adapter` value that names this comparison's SFT adapter.
const SFT_REWARD: &str = "sft";

/// A file-system-safe name for a method's sample file.
fn file_name(label: &str) -> String {
    label.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).collect()
}

pub fn run(a: CompareArgs) -> anyhow::Result<()> {
    if a.model.adapter.is_some() {
        bail!("invalid --adapter: compare takes adapters per method (--adapters NAME=DIR)");
    }
    if a.seeds == 0 || a.size.batch == 0 || a.size.samples == Some(0) {
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
    let labels: Vec<String> = match &a.methods {
        Some(m) => m.iter().map(|s| s.trim().to_string()).collect(),
        None => tasks::compare_methods(&a.task).iter().map(|s| s.to_string()).collect(),
    };
    let names: Vec<&str> = given.keys().map(String::as_str).collect();
    let mut methods = Vec::new();
    for l in &labels {
        if methods.iter().any(|m: &Method| &m.label == l) {
            bail!("invalid --methods: `{l}` is given twice");
        }
        methods.push(Method::parse(l, &names).map_err(|e| anyhow::anyhow!("invalid --methods: {e}"))?);
    }
    // `[task] reward_adapter = "sft"`: the comparison's own SFT adapter (per seed).
    let mut task_opts = super::train::task_options(a.config.as_deref())?;
    let sft_reward = tasks::takes_reward_adapter(&a.task) && task_opts.get("reward_adapter").and_then(|v| v.as_str()) == Some(SFT_REWARD);
    if sft_reward {
        task_opts.remove("reward_adapter");
    }
    let (task, mut cfg) = super::train::task_and_config_from(&a.task, &task_opts, a.config.as_deref())?;
    let mut ppo: PpoConfig = section(a.config.as_deref(), "ppo")?;
    let mut sft: SftConfig = section(a.config.as_deref(), "sft")?;
    let fewshot: FewShotConfig = section(a.config.as_deref(), "fewshot")?;
    let em: EmConfig = section(a.config.as_deref(), "em")?;
    sft.validate()?;
    em.validate()?;
    if let Some(s) = a.steps {
        cfg.steps = s;
        ppo.steps = s;
    }
    cfg.validate()?;
    ppo.validate()?;
    let variants = sweep::variants(&cfg, a.sweep.as_deref())?;
    if a.sweep.is_some() {
        if given.contains_key("gfn") {
            bail!("invalid --sweep: --adapters gfn=DIR gives the GFlowNet adapter; a sweep trains one per value");
        } else if !methods.iter().any(|m| sweep::swept(&m.kind)) {
            bail!("invalid --sweep: it varies the GFlowNet's training, and no method trains one (gfn, gfn+sft, sft+gfn do)");
        }
    }
    if let Some(n) = a.eval_every {
        // The trainings this call can run (a given adapter trains nothing).
        let runs = |k: &str| methods.iter().any(|m| trainings(&m.kind).contains(&k)) || (k == "sft" && sft_reward && methods.iter().any(|m| trainings(&m.kind).contains(&"gfn")));
        let trains = |k: &str| !given.contains_key(k) && runs(k);
        let mut steps: Vec<(String, &str, usize)> = variants.iter().flat_map(|v| [(format!("gfn{}", v.suffix), "gfn", v.cfg.steps), (format!("sft+gfn{}", v.suffix), "sft-gfn", v.cfg.steps)]).collect();
        steps.push(("ppo".into(), "ppo", ppo.steps));
        steps.push(("sft+ppo".into(), "sft-ppo", ppo.steps));
        if n == 0 {
            bail!("invalid --eval-every: must be at least 1");
        } else if !along::TRAINED.iter().any(|k| trains(k)) {
            bail!("invalid --eval-every: none of the methods trains an adapter here (gfn, ppo, sft, gfn+sft, sft+gfn, sft+ppo do)");
        } else if let Some((name, _, s)) = steps.iter().find(|(_, k, s)| trains(k) && n > *s) {
            bail!("invalid --eval-every: {n} is more than {name}'s {s} training steps");
        }
    }
    // Everything that can be refused is refused before anything trains.
    let demos = task.demonstrations();
    let mut shots = BTreeMap::new();
    for m in &methods {
        if let MethodKind::FewShot { k } = m.kind {
            let k = k.or(fewshot.k).unwrap_or_else(|| task.default_shots());
            FewShot::new(demos.clone(), k, 0).map_err(|e| anyhow::anyhow!("invalid --methods {}: task {}: {e}", m.label, a.task))?;
            shots.insert(m.label.clone(), k);
        }
        let probe = EvalOptions { decoding: m.decoding.clone(), ..Default::default() };
        task.check_eval(&probe).map_err(|e| anyhow::anyhow!("invalid --methods {}: {e}", m.label))?;
    }
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(format!("compare-{}", a.task)));
    std::fs::create_dir_all(out.join("samples")).with_context(|| format!("creating {}", out.display()))?;
    let (lm, _) = a.model.load()?;
    // What each training writes to its run.json (`amortize import` reads it).
    let src = adapters::Source { task: a.task.clone(), model: a.model.model.clone(), task_options: super::train::json_table(&task_opts)?, eval_every: a.eval_every, eval_samples: a.size.samples };

    let rows = sweep::rows(&methods, &variants);
    let labels: Vec<String> = rows.iter().map(|(l, _, _)| l.clone()).collect();
    let mut results = table::Results::new();
    for seed in 0..a.seeds {
        let sft_dir = out.join(format!("sft-seed{seed}"));
        sft.seed = seed;
        // The plain decoding of the comparison's evaluation (of a variant's
        // lengths), at each training's last step and every --eval-every.
        let along_with = |c: &TrainConfig| along::Along { every: a.eval_every, task: task.as_ref(), opts: plain_eval(&a, c, seed) };
        let along = along_with(&cfg);
        let along = Some(&along);
        // This seed's SFT adapter where another training needs it (the reward's,
        // sft+gfn's start): --adapters sft=DIR, else trained if missing. (SFT keeps
        // the comparison's config; when not a row, it is evaluated only along
        // training, with --eval-every.)
        let sft_adapter = || -> anyhow::Result<PathBuf> {
            if let Some(dir) = given.get("sft") {
                return Ok(dir.clone());
            }
            adapters::sft(&lm, task.as_ref(), &cfg, &sft, &sft_dir, a.eval_every.map(|_| along_with(&cfg)).as_ref(), &src)?;
            Ok(sft_dir.join("adapter"))
        };
        // A GFlowNet of variant `v`, fresh or (sft+gfn) from the SFT adapter.
        // --adapters gfn=DIR stands in for the fresh one here too (gfn+sft samples from it).
        let gfn = |v: &sweep::Variant, from_sft: bool| -> anyhow::Result<adapters::Trained> {
            let gfn_cfg = TrainConfig { seed: v.cfg.seed + seed, ..v.cfg.clone() };
            let gfn_dir = out.join(format!("{}{}-seed{seed}", if from_sft { "sft-gfn" } else { "gfn" }, v.stem));
            let along = along_with(&v.cfg);
            if let (Some(dir), false) = (given.get("gfn"), from_sft) {
                return Ok((LoraAdapter::load_peft(dir, lm.config(), lm.device())?, None));
            }
            // (An adapter an earlier call trained is reused, and needs neither.)
            let fresh = !adapters::trained(&gfn_dir);
            let start = if from_sft && fresh { Some(sft_adapter()?) } else { None };
            if sft_reward && fresh {
                let reward_dir = sft_adapter()?;
                eprintln!("gfn: the reward scores with the SFT adapter {}", reward_dir.display());
                let mut opts = task_opts.clone();
                opts.insert("reward_adapter".into(), toml::Value::String(reward_dir.to_string_lossy().into_owned()));
                let src = adapters::Source { task_options: super::train::json_table(&opts)?, ..src.clone() };
                return adapters::gfn(&lm, tasks::load(&a.task, &opts)?.as_ref(), &gfn_cfg, &gfn_dir, Some(&along), &src, start.as_deref());
            }
            adapters::gfn(&lm, task.as_ref(), &gfn_cfg, &gfn_dir, Some(&along), &src, start.as_deref())
        };
        for (label, m, v) in &rows {
            // A GFlowNet row has its variant; the rest keep the config.
            let own = v.map_or(&cfg, |v| &v.cfg);
            let variant = || v.ok_or_else(|| anyhow::anyhow!("{label}: a GFlowNet row without its config"));
            // With the adapter, its final evaluation along training when this call trained it.
            let (adapter, last_eval) = match &m.kind {
                MethodKind::Adapter(n) => (Some(LoraAdapter::load_peft(&given[n.as_str()], lm.config(), lm.device())?), None),
                MethodKind::Base | MethodKind::ZeroShot | MethodKind::FewShot { .. } => (None, None),
                MethodKind::Gfn => {
                    let (g, r) = gfn(variant()?, false)?;
                    (Some(g), r)
                }
                MethodKind::SftGfn => {
                    let (g, r) = gfn(variant()?, true)?;
                    (Some(g), r)
                }
                MethodKind::Sft => {
                    let (s, r) = adapters::sft(&lm, task.as_ref(), &cfg, &sft, &sft_dir, along, &src)?;
                    (Some(s), r)
                }
                MethodKind::Ppo | MethodKind::SftPpo => {
                    let from_sft = m.kind == MethodKind::SftPpo;
                    let dir = out.join(format!("{}-seed{seed}", if from_sft { "sft-ppo" } else { "ppo" }));
                    // (An adapter an earlier call trained is reused, and needs no start.)
                    let start = if from_sft && !adapters::trained(&dir) { Some(sft_adapter()?) } else { None };
                    let (p, r) = adapters::ppo(&lm, task.as_ref(), (&cfg, &PpoConfig { seed: ppo.seed + seed, ..ppo.clone() }), &dir, along, &src, start.as_deref())?;
                    (Some(p), r)
                }
                MethodKind::GfnSft => {
                    let v = variant()?;
                    let (g, _) = gfn(v, false)?;
                    (Some(adapters::gfn_sft(&lm, task.as_ref(), &g, &v.cfg, (&em, &sft), &out.join(format!("gfn-sft{}-seed{seed}", v.stem)), &src)?), None)
                }
            };
            let prompt: Option<Arc<dyn PromptTransform>> = match shots.get(&m.label) {
                Some(&k) => Some(Arc::new(FewShot::new(demos.clone(), k, seed)?.fixed(fewshot.fixed))),
                None => None,
            };
            let report = match last_eval.filter(|_| m.decoding.is_none() && prompt.is_none()) {
                // The row's very evaluation (plain decoding, same samples and seed), made along training.
                Some(r) => {
                    eprintln!("{label} (seed {seed}): the evaluation at its last training step");
                    r
                }
                None => {
                    // Folded into the weights: evaluation decodes thousands of tokens.
                    let view = adapter.as_ref().map(|ad| lm.folded(ad)).transpose()?;
                    let opts = EvalOptions { decoding: m.decoding.clone(), prompt, ..plain_eval(&a, own, seed) };
                    eprintln!("evaluating {label} (seed {seed})…");
                    let stages = StageBar::new(false);
                    let report = task.evaluate(&lm, view.as_ref(), &opts)?;
                    drop(stages);
                    report
                }
            };
            amortize::util::write_atomic(&out.join("samples").join(format!("{}-seed{seed}.json", file_name(label))), serde_json::to_string_pretty(&report)?.as_bytes())?;
            let row = results.entry(label.clone()).or_default();
            for (k, v) in report.metrics {
                row.entry(k).or_default().push(v);
            }
        }
    }

    let columns = table::columns(tasks::metric_names(&a.task), &labels, &results);
    let mut json = table::json(&a.task, a.seeds, &labels, &results);
    if a.sweep.is_some() {
        json["sweep"] = sweep::json(&variants);
    }
    let md = table::markdown(&labels, &columns, &results);
    if a.eval_every.is_some() {
        let curves = curves(&a, &cfg, &variants, &out);
        json["curves"] = along::json(&curves);
        amortize::util::write_atomic(&out.join("curves.md"), along::markdown(&columns, &curves).as_bytes())?;
    }
    amortize::util::write_atomic(&out.join("compare.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
    amortize::util::write_atomic(&out.join("compare.md"), md.as_bytes())?;
    if a.json {
        println!("{json}");
    } else if a.markdown {
        print!("{md}");
    } else {
        print!("{}", table::plain(&labels, &columns, &results));
        eprintln!("tables{} and samples in {}", if a.eval_every.is_some() { " (curves.md: evaluations along training)" } else { "" }, out.display());
        if has_trainings(&out) {
            eprintln!("`amortize import {}` shows the trainings in the app", out.display());
        }
    }
    Ok(())
}

/// Whether `out` holds a finished training (`gfn-seed0/`, `ppo-seed1/`, …).
fn has_trainings(out: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(out) else { return false };
    entries.flatten().any(|e| e.path().join("adapter").exists() && e.path().join("run.json").exists())
}

/// The trainings (folder stems) a method runs when its adapters are missing.
fn trainings(kind: &MethodKind) -> &'static [&'static str] {
    match kind {
        MethodKind::Gfn | MethodKind::GfnSft => &["gfn"],
        MethodKind::SftGfn => &["sft", "sft-gfn"],
        MethodKind::SftPpo => &["sft", "sft-ppo"],
        MethodKind::Ppo => &["ppo"],
        MethodKind::Sft => &["sft"],
        _ => &[],
    }
}

/// The comparison's evaluation at `seed` with the plain decoding and prompt.
fn plain_eval(a: &CompareArgs, cfg: &TrainConfig, seed: u64) -> EvalOptions {
    EvalOptions { samples: a.size.samples, batch: a.size.batch, seed, limit: a.size.limit, lengths: Some((cfg.min_len, cfg.max_len)), decoding: None, prompt: None }
}

/// The evaluations along training of the adapters in `out` made as this
/// call's, as curves over its seeds (a method whose seeds have none is left
/// out), the GFlowNet's once per variant.
fn curves(a: &CompareArgs, cfg: &TrainConfig, variants: &[sweep::Variant], out: &Path) -> along::Curves {
    let mut curves = along::Curves::new();
    let trained = along::TRAINED.iter().flat_map(|&k| match k {
        "gfn" => variants.iter().map(|v| (format!("gfn{}", v.suffix), format!("gfn{}", v.stem), &v.cfg)).collect(),
        "sft-gfn" => variants.iter().map(|v| (format!("sft+gfn{}", v.suffix), format!("sft-gfn{}", v.stem), &v.cfg)).collect(),
        "sft-ppo" => vec![("sft+ppo".to_string(), k.to_string(), cfg)],
        _ => vec![(k.to_string(), k.to_string(), cfg)],
    });
    for (kind, stem, cfg) in trained {
        let mut seeds = Vec::new();
        for seed in 0..a.seeds {
            let dir = out.join(format!("{stem}-seed{seed}"));
            let (points, other) = along::read(&dir, &plain_eval(a, cfg, seed));
            if other > 0 {
                eprintln!("{kind} seed {seed}: {other} evaluations along training made otherwise (an earlier call's sizes) left out");
            }
            if dir.join("adapter").exists() {
                if points.is_empty() && other == 0 {
                    eprintln!("{kind} seed {seed}: no evaluations along training (its folder has no evals.jsonl)");
                }
                seeds.push(points);
            }
        }
        if seeds.iter().any(|s| !s.is_empty()) {
            curves.insert(kind.to_string(), along::curves_of(&seeds));
        }
    }
    curves
}
