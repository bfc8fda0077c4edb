//! `amortize serve`: the JSON API under `/api` (axum), server-sent events for
//! live progress, the OpenAPI description at `/api/openapi.json`, and the
//! built browser app (`frontend/dist`) at `/`. One base model is loaded once and
//! shared by the training worker and by sampling; every run is an adapter.
//! Owns HTTP concerns only: routing, auth, limits, error mapping.

mod compare;
pub mod error;
mod export;
mod meta;
mod runs;
pub mod sampler;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use amortize_shared::api::ModelInfo;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tower_http::services::{ServeDir, ServeFile};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::jobs::{Jobs, JobsConfig};
use crate::model::LanguageModel;
use crate::store::Store;
use crate::{Error, Result};
use error::ApiErr;
use sampler::{Limits, Sampler};

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub jobs: Jobs,
    pub sampler: Arc<Sampler>,
    pub model: Arc<ModelInfo>,
    /// The task presets, described once at start.
    pub tasks: Arc<Vec<amortize_shared::api::TaskInfo>>,
    token: Option<Arc<str>>,
}

/// What `amortize serve` was asked for.
pub struct ServeOptions {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub token: Option<String>,
    /// The built frontend (served at `/`).
    pub dist: PathBuf,
    /// Resume runs interrupted by a crash or restart.
    pub resume: bool,
    pub max_queue: usize,
    pub limits: Limits,
}

#[derive(OpenApi)]
#[openapi(info(title = "Amortize API", description = "GFlowNet fine-tuning of language models: runs, live progress, sampling, comparisons."))]
struct ApiDoc;

/// Largest JSON body; dataset uploads have their own, larger limit.
const JSON_LIMIT: usize = 1 << 20;
pub(crate) const UPLOAD_LIMIT: usize = 64 << 20;

/// Refuses to expose the API beyond this machine without a token.
pub fn check_exposure(addr: &SocketAddr, token: Option<&str>) -> Result<()> {
    if !addr.ip().is_loopback() && token.is_none_or(str::is_empty) {
        return Err(Error::invalid(
            "addr",
            format!("{addr} is reachable from other machines: set --token (or AMORTIZE_TOKEN) so every API call needs `Authorization: Bearer …`, or bind to 127.0.0.1"),
        ));
    }
    Ok(())
}

/// The API router and its OpenAPI document.
pub fn router(state: AppState, dist: PathBuf) -> Router {
    let uploads = OpenApiRouter::new().routes(routes!(meta::upload_dataset)).layer(DefaultBodyLimit::max(UPLOAD_LIMIT));
    let (api, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(meta::health))
        .routes(routes!(meta::model))
        .routes(routes!(meta::tasks))
        .routes(routes!(meta::list_experiments, meta::create_experiment))
        .routes(routes!(meta::list_datasets))
        .merge(uploads)
        .routes(routes!(runs::list_runs, runs::create_run))
        .routes(routes!(runs::get_run, runs::delete_run, runs::update_run))
        .routes(routes!(runs::run_metrics))
        .routes(routes!(runs::run_evals))
        .routes(routes!(runs::run_samples))
        .routes(routes!(runs::run_events))
        .routes(routes!(runs::cancel_run))
        .routes(routes!(runs::resume_run))
        .routes(routes!(runs::list_jobs))
        .routes(routes!(export::adapter_zip))
        .routes(routes!(export::metrics_csv))
        .routes(routes!(compare::sample))
        .routes(routes!(compare::infill))
        .routes(routes!(compare::rate))
        .routes(routes!(compare::list_comparisons, compare::create_comparison))
        .routes(routes!(compare::get_comparison, compare::delete_comparison))
        .split_for_parts();
    let doc = Arc::new(doc);
    let api = api
        .route("/api/openapi.json", get(move || async move { axum::Json(doc.as_ref().clone()) }))
        .route("/api/{*rest}", get(no_such_endpoint).post(no_such_endpoint).put(no_such_endpoint).delete(no_such_endpoint))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth))
        .layer(DefaultBodyLimit::max(JSON_LIMIT))
        .with_state(state);
    let index = dist.join("index.html");
    let app = if index.exists() {
        Router::new().fallback_service(ServeDir::new(&dist).fallback(ServeFile::new(index)))
    } else {
        Router::new().fallback(move || async move { Html(NO_FRONTEND) })
    };
    api.merge(app)
}

const NO_FRONTEND: &str = "<!doctype html><title>Amortize</title><h1>Amortize</h1>\
<p>The API is up (<a href=\"/api/openapi.json\">/api/openapi.json</a>), but the browser app is not built: \
run <code>scripts/build-frontend.sh</code> and restart, or pass <code>--dist</code>.</p>";

async fn no_such_endpoint() -> ApiErr {
    ApiErr::new(StatusCode::NOT_FOUND, "no such API endpoint (see /api/openapi.json)", None)
}

async fn method_not_allowed() -> ApiErr {
    ApiErr::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this endpoint (see /api/openapi.json)", None)
}

/// With a token configured, every `/api` call needs `Authorization: Bearer TOKEN`
/// (GETs may pass `?token=TOKEN`, for event streams and download links).
async fn auth(State(s): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(token) = &s.token {
        let header = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        // EventSource and plain download links cannot send headers: GETs may
        // carry the token as `?token=…` instead.
        let query = (req.method() == axum::http::Method::GET)
            .then(|| req.uri().query().unwrap_or("").split('&').find_map(|kv| kv.strip_prefix("token=")).map(percent_decode))
            .flatten();
        let given = header.map(str::to_string).or(query);
        let ok = given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes()));
        if !ok {
            return ApiErr::new(StatusCode::UNAUTHORIZED, "missing or wrong `Authorization: Bearer …` token", None).into_response();
        }
    }
    next.run(req).await
}

/// `%XX` escapes and `+` of a query value decoded (invalid escapes kept as they are).
fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let (mut out, mut i) = (Vec::with_capacity(b.len()), 0);
    while i < b.len() {
        match (b[i], b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push(h * 16 + l);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Describes the loaded model for `/api/model`.
pub fn model_info(lm: &LanguageModel, path: &str) -> ModelInfo {
    let c = lm.config();
    ModelInfo {
        name: lm.name.clone(),
        path: path.to_string(),
        parameters: c.num_parameters() as u64,
        context_length: c.max_position_embeddings,
        vocab_size: c.vocab_size,
        device: if lm.device().is_cpu() { "cpu".into() } else { "cuda".into() },
        dtype: format!("{:?}", lm.llama.dtype()).to_lowercase(),
    }
}

/// Serves until SIGINT/SIGTERM; the running job stops as `interrupted` and
/// resumes on the next start. Prints `listening on http://ADDR` once bound.
pub async fn serve(lm: LanguageModel, model_path: &str, opts: ServeOptions) -> anyhow::Result<()> {
    check_exposure(&opts.addr, opts.token.as_deref())?;
    let lm = Arc::new(lm);
    let store = Store::open(&opts.data_dir).await?;
    let jobs = Jobs::start(store.clone(), lm.clone(), JobsConfig { max_queue: opts.max_queue }, opts.resume).await?;
    let state = AppState {
        model: Arc::new(model_info(&lm, model_path)),
        tasks: Arc::new(tokio::task::spawn_blocking(meta::task_infos).await?),
        sampler: Arc::new(Sampler::new(lm.clone(), store.clone(), opts.limits)),
        store,
        jobs: jobs.clone(),
        token: opts.token.filter(|t| !t.is_empty()).map(Arc::from),
    };
    let app = router(state, opts.dist);
    let listener = tokio::net::TcpListener::bind(opts.addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", opts.addr))?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    use std::io::Write;
    std::io::stdout().flush()?;
    axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await?;
    jobs.shutdown(std::time::Duration::from_secs(60)).await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_values_decode() {
        assert_eq!(super::percent_decode("a%2Fb+c%3d%"), "a/b c=%");
        assert_eq!(super::percent_decode("%zz%4"), "%zz%4");
    }
}
