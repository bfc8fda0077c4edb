//! The model, the task presets, experiments and datasets.

use amortize_shared::api::{ApiError, CreateExperiment, Dataset, Experiment, ModelInfo, TaskInfo};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;

use super::error::{check_name, ApiErr, ApiResult, Json, Path};
use super::AppState;
use crate::tasks;

#[utoipa::path(get, path = "/api/model", responses((status = 200, body = ModelInfo)))]
pub async fn model(State(s): State<AppState>) -> Json<ModelInfo> {
    Json(s.model.as_ref().clone())
}

#[utoipa::path(get, path = "/api/tasks", responses((status = 200, body = [TaskInfo])))]
pub async fn tasks(State(s): State<AppState>) -> Json<Vec<TaskInfo>> {
    Json(s.tasks.as_ref().clone())
}

/// The presets with their defaults (built once at start: loading a task reads its data).
pub fn task_infos() -> Vec<TaskInfo> {
    tasks::NAMES
        .iter()
        .map(|name| {
            // `custom` needs templates to load, so it is described by its defaults.
            let (description, default_config) = match tasks::load(name, &toml::Table::new()) {
                Ok(t) => (t.description().to_string(), t.default_config()),
                Err(_) => ("Your own task: policy and reward prompt templates with {X}, {Z} and {Y}, and a JSONL dataset of (x, y) pairs.".to_string(), Default::default()),
            };
            let spec = tasks::dataset_spec(name);
            TaskInfo {
                name: name.to_string(),
                description,
                default_config,
                dataset_option: spec.map(|s| s.0.to_string()),
                dataset_format: spec.map(|s| s.1.to_string()),
                metrics: tasks::metric_names(name).iter().map(|m| m.to_string()).collect(),
            }
        })
        .collect()
}

#[utoipa::path(get, path = "/api/experiments", responses((status = 200, body = [Experiment])))]
pub async fn list_experiments(State(s): State<AppState>) -> ApiResult<Json<Vec<Experiment>>> {
    Ok(Json(s.store.experiments().await?))
}

#[utoipa::path(post, path = "/api/experiments", request_body = CreateExperiment,
    responses((status = 201, body = Experiment), (status = 400, body = ApiError), (status = 409, body = ApiError)))]
pub async fn create_experiment(State(s): State<AppState>, Json(req): Json<CreateExperiment>) -> ApiResult<(StatusCode, Json<Experiment>)> {
    check_name("name", &req.name)?;
    if req.description.len() > 4096 {
        return Err(ApiErr::bad("description", "at most 4096 bytes"));
    }
    Ok((StatusCode::CREATED, Json(s.store.create_experiment(&req.name, &req.description).await?)))
}

#[utoipa::path(get, path = "/api/datasets", responses((status = 200, body = [Dataset])))]
pub async fn list_datasets(State(s): State<AppState>) -> ApiResult<Json<Vec<Dataset>>> {
    Ok(Json(s.store.datasets().await?))
}

/// Upload a dataset for a task: the request body is the file (JSONL or text,
/// see the task's `dataset_format`), checked line by line before it is stored.
#[utoipa::path(post, path = "/api/datasets/{task}/{name}", request_body(content = String, content_type = "text/plain"),
    params(("task" = String, Path), ("name" = String, Path)),
    responses((status = 201, body = Dataset), (status = 400, body = ApiError), (status = 413, body = ApiError)))]
pub async fn upload_dataset(State(s): State<AppState>, Path((task, name)): Path<(String, String)>, req: Request) -> ApiResult<(StatusCode, Json<Dataset>)> {
    check_name("name", &name)?;
    if !tasks::NAMES.contains(&task.as_str()) {
        return Err(ApiErr::bad("task", format!("unknown task `{}` (known: {})", task.chars().take(40).collect::<String>(), tasks::NAMES.join(", "))));
    }
    let bytes = read_body(req.into_body(), super::UPLOAD_LIMIT).await?;
    let text = std::str::from_utf8(&bytes).map_err(|e| ApiErr::bad("body", format!("the file is not valid UTF-8 (byte {})", e.valid_up_to())))?;
    let lines = tasks::validate_dataset(&task, &name, text)?;
    Ok((StatusCode::CREATED, Json(s.store.put_dataset(&name, &task, &bytes, lines).await?)))
}

/// The whole body, or 413 past `limit` bytes.
async fn read_body(body: Body, limit: usize) -> ApiResult<axum::body::Bytes> {
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiErr::new(StatusCode::PAYLOAD_TOO_LARGE, format!("body larger than {} MiB or unreadable", limit >> 20), Some("body")))
}

/// Liveness and SQLite's integrity check (`"db": "ok"` when intact).
#[utoipa::path(get, path = "/api/health", responses((status = 200, description = "{\"status\": \"ok\", \"db\": \"ok\"}")))]
pub async fn health(State(s): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    let db = s.store.integrity_check().await?;
    Ok(Json(serde_json::json!({ "status": "ok", "db": db })))
}
