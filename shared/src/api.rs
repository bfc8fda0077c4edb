//! Request and response bodies of the `/api` JSON interface, shared by the
//! server (`amortize serve`) and the browser app. Plain serde structs: no
//! behaviour beyond small helpers, no engine types. With the `openapi` feature
//! every type also describes itself for the server's OpenAPI document.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;

#[cfg(feature = "openapi")]
use utoipa::ToSchema;

/// Every error response: a message a person can act on, and the offending
/// request field when there is one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ApiError {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// The base model the server loaded (every run is an adapter over it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ModelInfo {
    pub name: String,
    pub path: String,
    pub parameters: u64,
    pub context_length: usize,
    pub vocab_size: usize,
    pub device: String,
    pub dtype: String,
}

/// A task preset with its default hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct TaskInfo {
    pub name: String,
    pub description: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub default_config: TrainConfig,
    /// The task option an uploaded dataset fills (`None`: the task takes no dataset).
    pub dataset_option: Option<String>,
    /// What one line of a dataset looks like.
    pub dataset_format: Option<String>,
    /// Metric names of `eval` for this task; the first is the key metric.
    pub metrics: Vec<String>,
}

/// A run's method: GFlowNet fine-tuning, supervised fine-tuning on the
/// task's reference Z's, PPO against the task's reward, or the base model
/// itself (no training: the run is its final evaluation, the row every
/// trained method is compared against). The run's `config` supplies steps,
/// batch size, seed and the LoRA/length shape to the three that train, and
/// the seed and lengths to every evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Gfn,
    Sft,
    Ppo,
    Base,
}

impl Method {
    pub const ALL: [Method; 4] = [Method::Gfn, Method::Sft, Method::Ppo, Method::Base];
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Gfn => "gfn",
            Method::Sft => "sft",
            Method::Ppo => "ppo",
            Method::Base => "base",
        }
    }

    /// Whether the run trains an adapter (all but `base`).
    pub fn trains(self) -> bool {
        self != Method::Base
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct CreateExperiment {
    pub name: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Experiment {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub created_at: String,
    pub runs: usize,
}

/// A dataset uploaded for a task (the body of the upload is the file itself).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Dataset {
    pub name: String,
    pub task: String,
    pub lines: usize,
    pub bytes: u64,
    pub created_at: String,
}

/// `POST /api/runs`: a training job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateRun {
    /// Display name; defaults to `TASK-METHOD`.
    #[serde(default)]
    pub name: Option<String>,
    /// Experiment name (created if missing).
    #[serde(default)]
    pub experiment: Option<String>,
    pub task: String,
    #[serde(default)]
    pub method: Option<Method>,
    /// Overrides of the task preset (any field of the training config).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub config: Option<serde_json::Map<String, serde_json::Value>>,
    /// Task options (the `[task]` table of a config file).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub task_options: Option<serde_json::Map<String, serde_json::Value>>,
    /// Name of an uploaded dataset for this task.
    #[serde(default)]
    pub dataset: Option<String>,
    /// Samples of the final evaluation: samples (rng) or samples per question
    /// (0: skip it; default: the task's own number).
    #[serde(default)]
    pub eval_samples: Option<usize>,
    /// Free text: why this run, what to look for (at most [`NOTES_MAX`] characters).
    #[serde(default)]
    pub notes: Option<String>,
    /// A `base` run only: k worked examples from the task's training data
    /// before each evaluation prompt (drawn per prompt, as `amortize
    /// compare`'s `fewshot:k=N`); absent: the plain prompt (zero-shot).
    #[serde(default)]
    pub shots: Option<usize>,
    /// A training run only: the same evaluation every N steps during
    /// training as well as at the end (its `eval_samples`, its seed), for
    /// the task's metrics over training; absent: at the end only.
    #[serde(default)]
    pub eval_every: Option<usize>,
    /// A GFlowNet or PPO run only: its adapter starts as this finished run's
    /// (an SFT run's, say) instead of a fresh one — and PPO's KL penalty keeps
    /// to it instead of the base model; the LoRA rank, alpha and targets of
    /// the two configs must agree. The adapter is copied at creation, so
    /// deleting that run later changes nothing.
    #[serde(default)]
    pub init_from: Option<String>,
}

/// Longest `notes` of a run, in characters.
pub const NOTES_MAX: usize = 10_000;

/// `PATCH /api/runs/{id}`: what a user may change on a run at any time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpdateRun {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub notes: Option<String>,
    /// Moves the run to this experiment (created if missing); "" takes it out of any.
    #[serde(default)]
    pub experiment: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Queued,
    Running,
    /// Training done; the final evaluation is running.
    Evaluating,
    Completed,
    Failed,
    Cancelled,
    /// The server stopped while the run was active; it resumes from its last checkpoint.
    Interrupted,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Evaluating => "evaluating",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Interrupted => "interrupted",
        }
    }
    pub fn parse(s: &str) -> Option<RunStatus> {
        [
            RunStatus::Queued,
            RunStatus::Running,
            RunStatus::Evaluating,
            RunStatus::Completed,
            RunStatus::Failed,
            RunStatus::Cancelled,
            RunStatus::Interrupted,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
    /// Still waiting for or holding the worker.
    pub fn is_active(self) -> bool {
        matches!(self, RunStatus::Queued | RunStatus::Running | RunStatus::Evaluating)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Run {
    pub id: String,
    pub name: String,
    pub experiment: Option<String>,
    pub task: String,
    pub method: Method,
    pub status: RunStatus,
    /// Optimiser steps completed.
    pub step: usize,
    pub steps: usize,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub config: TrainConfig,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub task_options: serde_json::Map<String, serde_json::Value>,
    pub dataset: Option<String>,
    /// Samples of the final evaluation (0: none; `None`: the task's default).
    pub eval_samples: Option<usize>,
    /// Why the run failed, when it did.
    pub error: Option<String>,
    /// The task's metrics after training (see `TaskInfo::metrics`).
    pub final_metrics: Option<BTreeMap<String, f64>>,
    /// Step of the newest checkpoint (its adapter is what sampling uses while training).
    pub checkpoint_step: Option<usize>,
    pub created_at: String,
    pub updated_at: String,
    /// The user's notes ("" when none).
    #[serde(default)]
    pub notes: String,
    /// Few-shot examples before each evaluation prompt (`base` runs).
    #[serde(default)]
    pub shots: Option<usize>,
    /// Steps between evaluations during training (`None`: at the end only).
    #[serde(default)]
    pub eval_every: Option<usize>,
    /// The run whose adapter this one started from (`CreateRun::init_from`).
    #[serde(default)]
    pub init_from: Option<String>,
    /// How far the stage in flight has come while the run sets up (before its
    /// first step) or evaluates: the running job's, in `GET /api/runs` and
    /// `GET /api/runs/{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
}

/// `done` of `total` units of a long stage outside the training steps
/// (`stage`: "scoring the replay buffer's seeds", "drawing samples", …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Progress {
    pub stage: String,
    pub done: usize,
    pub total: usize,
}

/// One optimiser step of a run (the trainer's metrics line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct MetricPoint {
    pub step: usize,
    pub loss: f64,
    pub log_z: Option<f64>,
    pub mean_log_r: f64,
    pub max_log_r: f64,
    pub mean_len: f64,
    /// GFlowNet runs: the effective sample size (a share of the batch, 1 =
    /// exact) of R^(1/T)/q over the step's untempered policy samples, and the
    /// standard deviation of log(R^(1/T)/q) in nats; absent on steps with no
    /// such samples and for other methods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampler_ess: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_w_std: Option<f64>,
    pub lr: f64,
    pub reward_temp: f64,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    pub traj_per_s: f64,
    pub seconds: f64,
}

/// The task's evaluation of a run's adapter at one step of its training
/// (`GET /api/runs/{id}/evals`): every `eval_every` steps and at the last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct EvalPoint {
    pub step: usize,
    pub metrics: BTreeMap<String, f64>,
}

/// A trajectory of a training step, shown in the run page's sample panel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct StepSample {
    pub step: usize,
    pub prompt: String,
    pub text: String,
    pub log_reward: f64,
}

/// Server-sent events of `GET /api/runs/{id}/events` (event name = variant, data = JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(tag = "kind", rename_all = "lowercase")]
#[allow(clippy::large_enum_variant)] // a few events a second: size does not matter
pub enum RunEvent {
    /// The run's row changed (status, step, metrics at the end).
    Status { run: Run },
    Metrics { point: MetricPoint },
    Samples { samples: Vec<StepSample> },
    /// An evaluation during training (`eval_every`), or the last one.
    Eval { point: EvalPoint },
    /// How far a long stage outside the training steps has come (setting up
    /// the task, scoring the replay buffer's seeds, evaluating): `done` of
    /// `total` units of `stage`. At most a few a second, and each stage's last.
    Progress { stage: String, done: usize, total: usize },
}

/// Decoding settings of a sampling request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct Decoding {
    pub n: usize,
    pub max_tokens: usize,
    pub temperature: f64,
    pub top_k: usize,
    pub top_p: f64,
    pub seed: u64,
    /// Stop strings (the model's end-of-text token always stops).
    pub stop: Vec<String>,
}

impl Default for Decoding {
    fn default() -> Self {
        Decoding { n: 4, max_tokens: 32, temperature: 1.0, top_k: 0, top_p: 1.0, seed: 0, stop: vec![] }
    }
}

/// `POST /api/samples`: generate from the base model or a run's adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SampleRequest {
    pub prompt: String,
    /// A run id, or `None` / "base" for the base model.
    #[serde(default)]
    pub run: Option<String>,
    #[serde(default)]
    pub decoding: Decoding,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Generation {
    pub text: String,
    pub tokens: usize,
    /// log q(text | prompt) under the sampling model (sum over tokens).
    pub logprob: f64,
    /// log p_base(text | prompt) under the base model.
    pub base_logprob: f64,
    /// log R(text) under the task's reward at temperature 1 (comparisons
    /// drawn the task's way; see [`Comparison::task`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_reward: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct SampleResponse {
    pub run: Option<String>,
    /// Step of the adapter used (a checkpoint while the run trains).
    pub adapter_step: Option<usize>,
    pub samples: Vec<Generation>,
}

/// `POST /api/rate`: the task's log-reward of a Z written by hand, for one of
/// the problems of a run's task (numbered as a comparison without prompts
/// lists them), the task's tool answers placed as the task would place them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RateRequest {
    pub run: String,
    pub problem: usize,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct RateResponse {
    /// The problem's policy prompt.
    pub prompt: String,
    pub text: String,
    /// Policy actions in the text (the tool's tokens not counted).
    pub actions: usize,
    /// log R(text) at reward temperature 1.
    pub log_reward: f64,
}

/// `POST /api/infill`: k middles between a beginning and an end, per source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct InfillRequest {
    pub beginning: String,
    pub end: String,
    /// Run ids or "base"; empty: the base model only.
    #[serde(default)]
    pub runs: Vec<String>,
    #[serde(default)]
    pub decoding: Decoding,
}

/// One source's column: its generations, best first by `score`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct InfillColumn {
    pub source: String,
    pub label: String,
    pub middles: Vec<InfillMiddle>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct InfillMiddle {
    pub text: String,
    /// log p_base(beginning middle end) − log p_base(beginning): how well the
    /// middle explains the end, the infilling reward.
    pub score: f64,
    /// log p_base(middle end | beginning) per token.
    pub per_token: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct InfillResponse {
    pub prompt: String,
    pub columns: Vec<InfillColumn>,
}

/// `POST /api/comparisons`: one prompt set × several sources, side by side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateComparison {
    /// Run ids or "base" (at least one).
    pub runs: Vec<String>,
    /// Prompts, sampled freely; empty: the first problems of the runs' task
    /// (runs of one task), drawn as its training draws them — its allowed
    /// tokens, stop token, tool and each run's lengths (`max_tokens` and
    /// `stop` do not apply) — and scored by its reward.
    #[serde(default)]
    pub prompts: Vec<String>,
    #[serde(default)]
    pub decoding: Decoding,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Comparison {
    pub id: i64,
    pub created_at: String,
    /// The task whose problems the prompts are, when drawn its way: every
    /// sample then has its `log_reward`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    pub prompts: Vec<String>,
    pub columns: Vec<ComparisonColumn>,
}

/// One source: its samples per prompt (same order as `prompts`) and metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ComparisonColumn {
    pub source: String,
    pub label: String,
    pub task: Option<String>,
    pub samples: Vec<Vec<Generation>>,
    /// Mean base log-likelihood, distinct-2 diversity, mean length, and the
    /// run's final task metrics when it has them.
    pub metrics: BTreeMap<String, MetricSummary>,
}

/// Mean ± standard deviation of a metric over prompts (or seeds).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct MetricSummary {
    pub mean: f64,
    pub std: f64,
}

/// A queued or running job (today: training runs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Job {
    pub run: String,
    pub status: RunStatus,
    /// Position in the queue (0: running).
    pub position: usize,
}

/// Names a user may give (runs, experiments, datasets): 1–64 characters of
/// letters, digits, `-`, `_` and `.`, not starting with `.`; nothing path-like.
pub fn valid_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    if s.starts_with('.') {
        return Err("must not start with `.`".into());
    }
    if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
        return Err(format!("contains `{c}`: use letters, digits, `-`, `_` and `.`"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_reject_paths() {
        assert!(valid_name("rng-gfn_1.2").is_ok());
        for bad in ["", "..", "../x", "a/b", "a\\b", ".hidden", "a b", &"x".repeat(65)] {
            assert!(valid_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn events_round_trip_with_a_kind_tag() {
        let e = RunEvent::Samples { samples: vec![StepSample { step: 3, prompt: "p".into(), text: "t".into(), log_reward: -1.5 }] };
        let s = serde_json::to_string(&e).unwrap();
        assert!(s.starts_with("{\"kind\":\"samples\""), "{s}");
        assert_eq!(serde_json::from_str::<RunEvent>(&s).unwrap(), e);
    }

    #[test]
    fn run_requests_reject_unknown_fields() {
        assert!(serde_json::from_str::<CreateRun>(r#"{"task":"rng","stepz":3}"#).is_err());
        let r: CreateRun = serde_json::from_str(r#"{"task":"rng","config":{"steps":3}}"#).unwrap();
        assert_eq!(r.config.unwrap()["steps"], 3);
    }
}
