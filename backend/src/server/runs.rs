//! Runs: create (validated like the CLI's config), list, inspect, metric
//! series, evaluations during training, recent samples, live events (SSE),
//! cancel and resume; the job queue.

use std::convert::Infallible;

use amortize_shared::api::{ApiError, CreateRun, EvalPoint, Job, MetricPoint, Method, Run, RunEvent, StepSample, UpdateRun, NOTES_MAX};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use rand::Rng;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;

use super::error::{check_name, ApiErr, ApiResult, Json, Path, Query};
use super::AppState;
use crate::jobs::spec;
use crate::store::NewRun;
use crate::Error;

#[utoipa::path(get, path = "/api/runs", responses((status = 200, body = [Run])))]
pub async fn list_runs(State(s): State<AppState>) -> ApiResult<Json<Vec<Run>>> {
    let mut runs = s.store.runs().await?;
    for r in runs.iter_mut().filter(|r| r.status.is_active()) {
        r.progress = s.jobs.progress(&r.id);
    }
    Ok(Json(runs))
}

/// Task options that name files on the server cannot come over the API
/// (they would read any path); data comes in as an uploaded dataset.
fn check_task_options(options: &serde_json::Map<String, serde_json::Value>) -> ApiResult<()> {
    for key in options.keys() {
        if key.ends_with("_file") || key.ends_with("_files") || key == "reward_adapter" {
            return Err(ApiErr::bad(&format!("task_options.{key}"), format!("`{key}` names a file on the server and cannot be set over the API; upload a dataset and pass `dataset`")));
        }
    }
    Ok(())
}

#[utoipa::path(post, path = "/api/runs", request_body = CreateRun,
    responses((status = 201, body = Run), (status = 400, body = ApiError), (status = 503, body = ApiError)))]
pub async fn create_run(State(s): State<AppState>, Json(req): Json<CreateRun>) -> ApiResult<(StatusCode, Json<Run>)> {
    let method = req.method.unwrap_or(Method::Gfn);
    if !method.trains() && req.eval_samples == Some(0) {
        return Err(ApiErr::bad("eval_samples", "a base-model run is only its evaluation: eval_samples cannot be 0"));
    }
    match req.shots {
        Some(_) if method.trains() => return Err(ApiErr::bad("shots", "few-shot prompting is for base-model runs (method `base`)")),
        Some(0) => return Err(ApiErr::bad("shots", "must be at least 1 (leave it out for zero-shot)")),
        _ => {}
    }
    match req.eval_every {
        Some(0) => return Err(ApiErr::bad("eval_every", "must be at least 1 (leave it out to evaluate at the end only)")),
        Some(_) if !method.trains() => return Err(ApiErr::bad("eval_every", "a base-model run trains nothing to evaluate along the way")),
        Some(_) if req.eval_samples == Some(0) => return Err(ApiErr::bad("eval_every", "eval_samples is 0: there is no evaluation to repeat")),
        _ => {}
    }
    let init_from = match &req.init_from {
        Some(_) if !matches!(method, Method::Gfn | Method::Ppo) => return Err(ApiErr::bad("init_from", format!("a {} run starts from a fresh adapter; init_from is for GFlowNet and PPO runs", method.as_str()))),
        Some(from) => match s.store.run(from).await {
            Err(Error::NotFound(_)) => return Err(ApiErr::bad("init_from", format!("no run `{from}`"))),
            found => Some(found?),
        },
        None => None,
    };
    if let Some(n) = &req.name {
        check_name("name", n)?;
    }
    if let Some(e) = &req.experiment {
        check_name("experiment", e)?;
    }
    check_notes(req.notes.as_deref())?;
    let options = req.task_options.clone().unwrap_or_default();
    check_task_options(&options)?;
    let dataset = match &req.dataset {
        Some(d) => {
            check_name("dataset", d)?;
            let ds = s.store.dataset(d).await.map_err(|e| ApiErr::bad("dataset", e.to_string()))?;
            if ds.task != req.task {
                return Err(ApiErr::bad("dataset", format!("dataset `{d}` was uploaded for task `{}`, not `{}`", ds.task, req.task)));
            }
            Some(s.store.dataset_path(d))
        }
        None => None,
    };
    let overrides = req.config.clone().unwrap_or_default();
    let task = req.task.clone();
    let shots = req.shots;
    let resolved = tokio::task::spawn_blocking(move || -> ApiResult<_> {
        let sp = spec::resolve(&task, &overrides, &options, dataset.as_deref())?;
        if let Some(k) = shots {
            // The task's training data must hold k worked examples.
            crate::baselines::FewShot::new(sp.task.demonstrations(), k, 0).map_err(|e| ApiErr::bad("shots", e.to_string()))?;
        }
        Ok(sp.config)
    })
    .await
    .map_err(|e| ApiErr::from(Error::Conflict(e.to_string())))??;
    // (SFT's steps are its epochs' batches, not the config's.)
    if let Some(n) = req.eval_every.filter(|&n| n > resolved.steps && method != Method::Sft) {
        return Err(ApiErr::bad("eval_every", format!("{n} is more than the run's {} steps: leave it out to evaluate at the end only", resolved.steps)));
    }
    if !s.jobs.has_room() {
        return Err(Error::Busy("the job queue is full; try again later".into()).into());
    }
    let id = format!("run-{:08x}", rand::rng().random::<u32>());
    if let Some(from) = init_from {
        // Checked and copied into the new run's folder before the run exists.
        let (lm, cfg, from_dir, to) = (s.jobs.lm(), resolved.clone(), s.store.run_dir(&from.id), s.store.run_dir(&id));
        let taken = tokio::task::spawn_blocking(move || {
            let r = crate::jobs::start::take(&lm, &from, &from_dir, &cfg, &to);
            if r.is_err() {
                let _ = std::fs::remove_dir_all(&to);
            }
            r
        });
        taken.await.map_err(|e| ApiErr::from(Error::Conflict(e.to_string())))??;
    }
    let inserted = s
        .store
        .insert_run(NewRun {
            id: id.clone(),
            name: req.name.clone().unwrap_or_else(|| match req.shots {
                Some(k) => format!("{}-{}shot", req.task, k),
                None => format!("{}-{}", req.task, method.as_str()),
            }),
            experiment: req.experiment.clone(),
            task: req.task.clone(),
            method,
            config: resolved,
            task_options: req.task_options.clone().unwrap_or_default(),
            dataset: req.dataset.clone(),
            eval_samples: req.eval_samples,
            notes: req.notes.clone().unwrap_or_default(),
            shots: req.shots,
            eval_every: req.eval_every,
            init_from: req.init_from.clone(),
        })
        .await;
    let run = match inserted {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(s.store.run_dir(&id));
            return Err(e.into());
        }
    };
    s.jobs.enqueue(&id).await?;
    let run = s.store.run(&run.id).await?;
    Ok((StatusCode::CREATED, Json(run)))
}

fn check_notes(notes: Option<&str>) -> ApiResult<()> {
    match notes {
        Some(n) if n.chars().count() > NOTES_MAX => Err(ApiErr::bad("notes", format!("notes are at most {NOTES_MAX} characters"))),
        _ => Ok(()),
    }
}

/// Renames a run, replaces its notes or moves it to another experiment,
/// whatever its status.
#[utoipa::path(patch, path = "/api/runs/{id}", params(("id" = String, Path)), request_body = UpdateRun,
    responses((status = 200, body = Run), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub async fn update_run(State(s): State<AppState>, Path(id): Path<String>, Json(req): Json<UpdateRun>) -> ApiResult<Json<Run>> {
    existing(&s, &id).await?;
    if let Some(n) = &req.name {
        check_name("name", n)?;
    }
    check_notes(req.notes.as_deref())?;
    if let Some(e) = req.experiment.as_deref().filter(|e| !e.is_empty()) {
        check_name("experiment", e)?;
    }
    Ok(Json(s.store.update_run(&id, req.name.as_deref(), req.notes.as_deref(), req.experiment.as_deref()).await?))
}

async fn existing(s: &AppState, id: &str) -> ApiResult<Run> {
    check_name("id", id)?;
    Ok(s.store.run(id).await?)
}

#[utoipa::path(get, path = "/api/runs/{id}", params(("id" = String, Path)), responses((status = 200, body = Run), (status = 404, body = ApiError)))]
pub async fn get_run(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Run>> {
    let mut run = existing(&s, &id).await?;
    if run.status.is_active() {
        run.progress = s.jobs.progress(&id);
    }
    Ok(Json(run))
}

/// `GET /api/runs/{id}/metrics?after=N`: only the steps after N, so a page
/// that holds a live run's series fetches what is new.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MetricsQuery {
    /// Only steps greater than this one.
    after: Option<usize>,
}

#[utoipa::path(get, path = "/api/runs/{id}/metrics", params(("id" = String, Path), MetricsQuery),
    responses((status = 200, body = [MetricPoint]), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub async fn run_metrics(State(s): State<AppState>, Path(id): Path<String>, Query(q): Query<MetricsQuery>) -> ApiResult<Json<Vec<MetricPoint>>> {
    existing(&s, &id).await?;
    Ok(Json(s.store.metrics(&id, q.after).await?))
}

/// The task's evaluations of the run's adapter during training
/// (`eval_every`), the last step's included, by step.
#[utoipa::path(get, path = "/api/runs/{id}/evals", params(("id" = String, Path)), responses((status = 200, body = [EvalPoint]), (status = 404, body = ApiError)))]
pub async fn run_evals(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Vec<EvalPoint>>> {
    existing(&s, &id).await?;
    Ok(Json(s.store.evals(&id).await?))
}

#[utoipa::path(get, path = "/api/runs/{id}/samples", params(("id" = String, Path)), responses((status = 200, body = [StepSample]), (status = 404, body = ApiError)))]
pub async fn run_samples(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Vec<StepSample>>> {
    existing(&s, &id).await?;
    Ok(Json(s.store.step_samples(&id).await?))
}

/// Live progress: `status` first, then `metrics` and `samples` per step,
/// `eval` after each evaluation during training and `progress` through the
/// long stages; the stream ends after the run reaches a final state.
#[utoipa::path(get, path = "/api/runs/{id}/events", params(("id" = String, Path)),
    responses((status = 200, description = "text/event-stream of RunEvent (event names: status, metrics, samples, eval, progress)", body = RunEvent), (status = 404, body = ApiError)))]
pub async fn run_events(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    check_name("id", &id)?;
    let mut rx = s.jobs.subscribe(&id); // before reading the row: no event is missed
    let run = s.store.run(&id).await?;
    let (tx, out) = tokio::sync::mpsc::channel::<Result<Event, Infallible>>(64);
    tokio::spawn(async move {
        let mut done = !run.status.is_active();
        if tx.send(Ok(event(&RunEvent::Status { run }))).await.is_err() {
            return;
        }
        while !done {
            match rx.recv().await {
                Ok(e) => {
                    if let RunEvent::Status { run } = &e {
                        done = !run.status.is_active();
                    }
                    if tx.send(Ok(event(&e))).await.is_err() {
                        return;
                    }
                }
                // A slow client skips events; it can re-read /metrics.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    Ok(Sse::new(ReceiverStream::new(out)).keep_alive(KeepAlive::default()))
}

fn event(e: &RunEvent) -> Event {
    let name = match e {
        RunEvent::Status { .. } => "status",
        RunEvent::Metrics { .. } => "metrics",
        RunEvent::Samples { .. } => "samples",
        RunEvent::Progress { .. } => "progress",
        RunEvent::Eval { .. } => "eval",
    };
    Event::default().event(name).data(serde_json::to_string(e).unwrap_or_default())
}

#[utoipa::path(post, path = "/api/runs/{id}/cancel", params(("id" = String, Path)),
    responses((status = 200, body = Run), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn cancel_run(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Run>> {
    existing(&s, &id).await?;
    Ok(Json(s.jobs.cancel(&id).await?))
}

#[utoipa::path(post, path = "/api/runs/{id}/resume", params(("id" = String, Path)),
    responses((status = 200, body = Run), (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 503, body = ApiError)))]
pub async fn resume_run(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Run>> {
    existing(&s, &id).await?;
    Ok(Json(s.jobs.resume(&id).await?))
}

/// Deletes a finished, failed, cancelled or interrupted run with its files
/// (saved comparisons keep their samples).
#[utoipa::path(delete, path = "/api/runs/{id}", params(("id" = String, Path)),
    responses((status = 204), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn delete_run(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    existing(&s, &id).await?;
    s.jobs.delete(&id).await?;
    s.sampler.forget(&s.store.run_dir(&id));
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/jobs", responses((status = 200, body = [Job])))]
pub async fn list_jobs(State(s): State<AppState>) -> ApiResult<Json<Vec<Job>>> {
    Ok(Json(s.jobs.list().await?))
}
