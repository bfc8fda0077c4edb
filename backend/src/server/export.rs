//! Downloads: a run's adapter as a zip in the PEFT layout, its metrics as CSV.

use std::io::Write;

use amortize_shared::api::{ApiError, RunStatus};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::error::{check_name, ApiResult, Path};
use super::AppState;
use crate::gfn::checkpoint;
use crate::Error;

/// The adapter's files zipped (stored, not deflated: f32 weights barely compress).
#[utoipa::path(get, path = "/api/runs/{id}/adapter.zip", params(("id" = String, Path)),
    responses((status = 200, content_type = "application/zip", description = "adapter_config.json + adapter_model.safetensors"), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn adapter_zip(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    check_name("id", &id)?;
    let run = s.store.run(&id).await?;
    if !run.method.trains() {
        return Err(Error::Conflict(format!("run `{id}` evaluates the base model: it has no adapter")).into());
    }
    let dir = s.store.run_dir(&id);
    let adapter = if run.status == RunStatus::Completed && dir.join("adapter").is_dir() {
        dir.join("adapter")
    } else {
        checkpoint::latest(&dir)?.map(|c| c.join("adapter")).ok_or_else(|| Error::Conflict(format!("run `{id}` has no adapter yet")))?
    };
    let bytes = tokio::task::spawn_blocking(move || zip_dir(&adapter)).await.map_err(|e| Error::Conflict(e.to_string()))??;
    let name = format!("{}-{}-adapter.zip", run.name, run.id);
    Ok(([(header::CONTENT_TYPE, "application/zip".to_string()), (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\""))], bytes).into_response())
}

fn zip_dir(dir: &std::path::Path) -> crate::Result<Vec<u8>> {
    let mut files: Vec<_> = std::fs::read_dir(dir).map_err(|e| Error::file(dir, e))?.filter_map(|e| e.ok()).filter(|e| e.path().is_file()).collect();
    files.sort_by_key(|e| e.file_name());
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored).large_file(false);
    for f in files {
        let name = f.file_name().to_string_lossy().into_owned();
        let data = std::fs::read(f.path()).map_err(|e| Error::file(f.path(), e))?;
        zip.start_file(name, opts).map_err(|e| Error::file(dir, e))?;
        zip.write_all(&data)?;
    }
    Ok(zip.finish().map_err(|e| Error::file(dir, e))?.into_inner())
}

const CSV_HEADER: &str = "step,loss,log_z,mean_log_r,max_log_r,mean_len,sampler_ess,log_w_std,lr,reward_temp,grad_norm,tokens_per_s,traj_per_s,seconds";

#[utoipa::path(get, path = "/api/runs/{id}/metrics.csv", params(("id" = String, Path)),
    responses((status = 200, content_type = "text/csv", description = "one row per step"), (status = 404, body = ApiError)))]
pub async fn metrics_csv(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    check_name("id", &id)?;
    let run = s.store.run(&id).await?;
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    for p in s.store.metrics(&id, None).await? {
        let opt = |x: Option<f64>| x.map(|x| x.to_string()).unwrap_or_default();
        let (z, ess, w) = (opt(p.log_z), opt(p.sampler_ess), opt(p.log_w_std));
        out.push_str(&format!(
            "{},{},{z},{},{},{},{ess},{w},{},{},{},{},{},{}\n",
            p.step, p.loss, p.mean_log_r, p.max_log_r, p.mean_len, p.lr, p.reward_temp, p.grad_norm, p.tokens_per_s, p.traj_per_s, p.seconds
        ));
    }
    let name = format!("{}-{}-metrics.csv", run.name, run.id);
    Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()), (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\""))], out).into_response())
}
