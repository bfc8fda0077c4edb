//! Generation endpoints: samples from one source, the infilling playground
//! (k middles per source), and comparisons (one prompt set × several sources,
//! side by side, with metrics per source; without prompts, the task's
//! problems drawn the task's way and scored by its reward).

use std::collections::BTreeMap;

use amortize_shared::api::{
    ApiError, Comparison, ComparisonColumn, CreateComparison, Generation, InfillColumn, InfillMiddle, InfillRequest, InfillResponse, MetricSummary, RateRequest,
    RateResponse, Run, SampleRequest, SampleResponse,
};
use amortize_shared::metrics::mean_std;
use axum::extract::State;

use super::error::{ApiErr, ApiResult, Json, Path};
use super::sampler::{generate_blocking, Source};
use super::AppState;
use crate::baselines::FewShot;
use crate::decode::{self, SampleConfig};
use crate::gfn::probe::{self, Probe, ProbeConfig};
use crate::gfn::Problem;
use crate::model::LanguageModel;
use crate::tasks::{self, infill, PromptTransform};
use crate::Error;

/// Longest prompt text accepted (the token check against the context comes after).
const MAX_PROMPT_BYTES: usize = 64 << 10;

fn check_prompt(field: &str, p: &str) -> ApiResult<()> {
    if p.len() > MAX_PROMPT_BYTES {
        return Err(ApiErr::bad(field, format!("longer than {} KiB", MAX_PROMPT_BYTES >> 10)));
    }
    Ok(())
}

#[utoipa::path(post, path = "/api/samples", request_body = SampleRequest,
    responses((status = 200, body = SampleResponse), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 503, body = ApiError)))]
pub async fn sample(State(s): State<AppState>, Json(req): Json<SampleRequest>) -> ApiResult<Json<SampleResponse>> {
    check_prompt("prompt", &req.prompt)?;
    let source = s.sampler.source(req.run.as_deref()).await?;
    Ok(Json(s.sampler.generate(req.prompt, source, &req.decoding).await?))
}

#[utoipa::path(post, path = "/api/infill", request_body = InfillRequest,
    responses((status = 200, body = InfillResponse), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 503, body = ApiError)))]
pub async fn infill(State(s): State<AppState>, Json(req): Json<InfillRequest>) -> ApiResult<Json<InfillResponse>> {
    check_prompt("beginning", &req.beginning)?;
    check_prompt("end", &req.end)?;
    let ids = if req.runs.is_empty() { vec!["base".to_string()] } else { req.runs.clone() };
    if ids.len() > 8 {
        return Err(ApiErr::bad("runs", "at most 8 sources"));
    }
    let cfg = s.sampler.sample_config(&req.decoding)?;
    let mut columns = Vec::new();
    for id in &ids {
        let source = s.sampler.source(Some(id)).await.map_err(|e| field_error("runs", e))?;
        let (b, e, c, src) = (req.beginning.clone(), req.end.clone(), cfg.clone(), source.clone());
        let middles = s.sampler.run(move |lm| infill::write_middles(lm, src.view(lm, c.n * c.max_new_tokens)?.as_ref(), &b, &e, &c)).await?;
        columns.push(InfillColumn {
            source: source.id.clone(),
            label: source.label.clone(),
            middles: middles.into_iter().map(|m| InfillMiddle { text: m.text, score: m.score, per_token: m.per_token }).collect(),
        });
    }
    let prompt = infill::Story { beginning: req.beginning.clone(), middle: String::new(), end: req.end.clone() }.policy_prompt();
    Ok(Json(InfillResponse { prompt, columns }))
}

/// A bad reference in the body is the client's error: 400 naming the field.
fn field_error(field: &str, e: Error) -> ApiErr {
    match e {
        Error::NotFound(m) | Error::Conflict(m) => ApiErr::bad(field, m),
        other => other.into(),
    }
}

#[utoipa::path(get, path = "/api/comparisons", responses((status = 200, body = [Comparison])))]
pub async fn list_comparisons(State(s): State<AppState>) -> ApiResult<Json<Vec<Comparison>>> {
    Ok(Json(s.store.comparisons().await?))
}

#[utoipa::path(get, path = "/api/comparisons/{id}", params(("id" = i64, Path)), responses((status = 200, body = Comparison), (status = 404, body = ApiError)))]
pub async fn get_comparison(State(s): State<AppState>, Path(id): Path<i64>) -> ApiResult<Json<Comparison>> {
    Ok(Json(s.store.comparison(id).await?))
}

#[utoipa::path(delete, path = "/api/comparisons/{id}", params(("id" = i64, Path)), responses((status = 204), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub async fn delete_comparison(State(s): State<AppState>, Path(id): Path<i64>) -> ApiResult<axum::http::StatusCode> {
    s.store.delete_comparison(id).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/comparisons", request_body = CreateComparison,
    responses((status = 201, body = Comparison), (status = 400, body = ApiError), (status = 503, body = ApiError)))]
pub async fn create_comparison(State(s): State<AppState>, Json(req): Json<CreateComparison>) -> ApiResult<(axum::http::StatusCode, Json<Comparison>)> {
    if req.runs.is_empty() || req.runs.len() > 8 {
        return Err(ApiErr::bad("runs", "name 1 to 8 sources (run ids or \"base\")"));
    }
    if req.prompts.len() > s.sampler.limits.max_prompts {
        return Err(ApiErr::bad("prompts", format!("at most {} prompts", s.sampler.limits.max_prompts)));
    }
    for p in &req.prompts {
        check_prompt("prompts", p)?;
    }
    let cfg = s.sampler.sample_config(&req.decoding)?;
    let mut sources = Vec::new();
    for id in &req.runs {
        sources.push(s.sampler.source(Some(id)).await.map_err(|e| field_error("runs", e))?);
    }
    let c = if req.prompts.is_empty() {
        task_draws(&s, &sources, &cfg).await?
    } else {
        let mut columns = Vec::new();
        for src in sources {
            let (ps, c, sc) = (req.prompts.clone(), cfg.clone(), src.clone());
            let samples = s.sampler.run(move |lm| ps.iter().map(|p| generate_blocking(lm, p, &sc, &c)).collect::<crate::Result<Vec<_>>>()).await?;
            columns.push(column(&src, samples));
        }
        Comparison { id: 0, created_at: String::new(), task: None, prompts: req.prompts.clone(), columns }
    };
    Ok((axum::http::StatusCode::CREATED, Json(s.store.put_comparison(&req, c).await?)))
}

/// Problems a comparison without prompts draws for.
const TASK_PROBLEMS: usize = 8;

/// Without prompts: the first problems of the task the runs share, drawn
/// from every source as its training draws them (the task's allowed tokens,
/// stop token and tool; each run's own lengths, a base run's few-shot
/// prompt; the base model takes the first run's lengths) and scored by the
/// task's reward at T = 1. The problems and the reward are the first run's.
async fn task_draws(s: &AppState, sources: &[Source], cfg: &SampleConfig) -> ApiResult<Comparison> {
    let runs: Vec<_> = sources.iter().filter_map(|x| x.run.clone()).collect();
    let Some(first) = runs.first().cloned() else {
        return Err(ApiErr::bad("prompts", "give prompts, or compare at least one run so its task's problems can be used"));
    };
    if runs.iter().any(|r| r.task != first.task) {
        return Err(ApiErr::bad("prompts", "the runs belong to different tasks: give the prompts"));
    }
    let (task, options) = (first.task.clone(), task_options(s, &first)?);
    let (name, owned, cfg) = (task.clone(), sources.to_vec(), cfg.clone());
    let (prompts, samples) = s
        .sampler
        .run(move |lm| {
            let t = tasks::load(&name, &options)?;
            let train = t.train_task(lm)?;
            let problems: Vec<&Problem> = train.problems.iter().take(TASK_PROBLEMS).collect();
            let texts = problems.iter().map(|p| lm.tokenizer.decode(&p.policy_prompt, false)).collect::<crate::Result<Vec<_>>>()?;
            let mut all = Vec::with_capacity(owned.len());
            for src in &owned {
                let run = src.run.as_ref().unwrap_or(&first);
                let prompts = match src.run.as_ref().and_then(|r| r.shots) {
                    Some(k) => {
                        let few = FewShot::new(t.demonstrations(), k, run.config.seed)?;
                        texts.iter().map(|x| lm.tokenizer.encode(&few.apply(x))).collect::<crate::Result<Vec<_>>>()?
                    }
                    None => problems.iter().map(|p| p.policy_prompt.clone()).collect(),
                };
                let pc = ProbeConfig { n: cfg.n, lengths: (run.config.min_len, run.config.max_len), temperature: cfg.temperature, top_k: cfg.top_k, top_p: cfg.top_p, seed: cfg.seed };
                let view = src.view(lm, cfg.n * problems.len() * run.config.max_len)?;
                let drawn = probe::draw_scored(lm, &train, view.as_ref(), &problems, &prompts, &pc)?;
                all.push(with_base_scores(lm, &problems, drawn)?);
            }
            Ok((texts, all))
        })
        .await?;
    let columns = sources.iter().zip(samples).map(|(src, g)| column(src, g)).collect();
    Ok(Comparison { id: 0, created_at: String::new(), task: Some(task), prompts, columns })
}

/// A run's task options, its uploaded dataset among them.
fn task_options(s: &AppState, run: &Run) -> ApiResult<toml::Table> {
    let mut options = crate::jobs::spec::options_table(&run.task_options)?;
    if let (Some(d), Some((key, _))) = (&run.dataset, tasks::dataset_spec(&run.task)) {
        options.insert(key.into(), toml::Value::String(s.store.dataset_path(d).display().to_string()));
    }
    Ok(options)
}

#[utoipa::path(post, path = "/api/rate", request_body = RateRequest,
    responses((status = 200, body = RateResponse), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 503, body = ApiError)))]
pub async fn rate(State(s): State<AppState>, Json(req): Json<RateRequest>) -> ApiResult<Json<RateResponse>> {
    check_prompt("text", &req.text)?;
    let run = s.store.run(&req.run).await.map_err(|e| field_error("run", e))?;
    let (name, options) = (run.task.clone(), task_options(&s, &run)?);
    let out = s
        .sampler
        .run(move |lm| {
            let train = tasks::load(&name, &options)?.train_task(lm)?;
            let Some(problem) = train.problems.get(req.problem) else {
                return Err(Error::invalid("problem", format!("the task has {} problems (0 to {})", train.problems.len(), train.problems.len().saturating_sub(1))));
            };
            let (t, log_reward) = probe::rate(lm, &train, problem, std::slice::from_ref(&req.text))?.remove(0);
            Ok(RateResponse { prompt: lm.tokenizer.decode(&problem.policy_prompt, false)?, actions: t.num_actions(), text: req.text, log_reward })
        })
        .await?;
    Ok(Json(out))
}

/// The draws as generations, each with log p_base(Z | the problem's policy prompt).
fn with_base_scores(lm: &LanguageModel, problems: &[&Problem], drawn: Vec<Vec<Probe>>) -> crate::Result<Vec<Vec<Generation>>> {
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = problems
        .iter()
        .zip(&drawn)
        .flat_map(|(p, g)| g.iter().filter(|d| !d.trajectory.tokens.is_empty()).map(|d| (p.policy_prompt.clone(), d.trajectory.tokens.clone())))
        .collect();
    let mut scores = decode::score(lm, &pairs, None, 16)?.into_iter();
    Ok(drawn
        .into_iter()
        .map(|g| {
            g.into_iter()
                .map(|d| Generation {
                    base_logprob: if d.trajectory.tokens.is_empty() { 0.0 } else { scores.next().map_or(0.0, |x| x.total as f64) },
                    tokens: d.trajectory.tokens.len(),
                    text: d.text,
                    logprob: d.log_q,
                    log_reward: Some(d.log_r),
                })
                .collect()
        })
        .collect())
}

/// Metrics of one source over the prompts (mean ± std across prompts), plus
/// the run's final task metrics.
fn column(src: &Source, samples: Vec<Vec<Generation>>) -> ComparisonColumn {
    let per_prompt = |f: &dyn Fn(&[Generation]) -> f64| -> MetricSummary {
        let v: Vec<f64> = samples.iter().map(|g| f(g)).collect();
        let (mean, std) = mean_std(&v);
        MetricSummary { mean, std }
    };
    let mean = |g: &[Generation], f: &dyn Fn(&Generation) -> f64| if g.is_empty() { 0.0 } else { g.iter().map(f).sum::<f64>() / g.len() as f64 };
    let mut metrics = BTreeMap::new();
    metrics.insert("base_loglik".to_string(), per_prompt(&|g| mean(g, &|x| x.base_logprob)));
    metrics.insert("distinct2".to_string(), per_prompt(&|g| distinct_bigrams(g)));
    metrics.insert("length".to_string(), per_prompt(&|g| mean(g, &|x| x.tokens as f64)));
    if samples.iter().flatten().any(|x| x.log_reward.is_some()) {
        metrics.insert("log_reward".to_string(), per_prompt(&|g| mean(g, &|x| x.log_reward.unwrap_or(f64::NAN))));
    }
    if let Some(m) = src.run.as_ref().and_then(|r| r.final_metrics.as_ref()) {
        for (k, v) in m {
            metrics.insert(format!("final.{k}"), MetricSummary { mean: *v, std: 0.0 });
        }
    }
    ComparisonColumn { source: src.id.clone(), label: src.label.clone(), task: src.run.as_ref().map(|r| r.task.clone()), samples, metrics }
}

/// Distinct word bigrams over all bigrams of a prompt's samples (0 when none).
fn distinct_bigrams(g: &[Generation]) -> f64 {
    let mut all = Vec::new();
    for x in g {
        let w: Vec<&str> = x.text.split_whitespace().collect();
        all.extend(w.windows(2).map(|p| (p[0].to_string(), p[1].to_string())));
    }
    if all.is_empty() {
        return 0.0;
    }
    let n = all.len() as f64;
    all.sort();
    all.dedup();
    all.len() as f64 / n
}
