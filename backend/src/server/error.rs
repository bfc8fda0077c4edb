//! The one error type of the HTTP layer: every failure becomes a status code
//! and a JSON body `{error, field?}`; extractor rejections (bad JSON, bad path)
//! are turned into the same shape by the [`Json`], [`Path`] and [`Query`] wrappers.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use amortize_shared::api::ApiError;

use crate::Error;

/// An error response.
#[derive(Debug)]
pub struct ApiErr {
    pub status: StatusCode,
    pub body: ApiError,
}

pub type ApiResult<T> = std::result::Result<T, ApiErr>;

impl ApiErr {
    pub fn new(status: StatusCode, error: impl Into<String>, field: Option<&str>) -> Self {
        ApiErr { status, body: ApiError { error: error.into(), field: field.map(String::from) } }
    }
    pub fn bad(field: &str, error: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error, Some(field))
    }
}

impl From<Error> for ApiErr {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match e {
            Error::Invalid { field, .. } => ApiErr::new(StatusCode::BAD_REQUEST, msg, Some(&field)),
            Error::TooLong { .. } => ApiErr::new(StatusCode::BAD_REQUEST, msg, Some("prompt")),
            Error::Unsupported(_) | Error::Tokenizer(_) => ApiErr::new(StatusCode::BAD_REQUEST, msg, None),
            // A data file the request named or uploaded.
            Error::File { .. } => ApiErr::new(StatusCode::BAD_REQUEST, msg, None),
            Error::NotFound(_) => ApiErr::new(StatusCode::NOT_FOUND, msg, None),
            Error::Conflict(_) => ApiErr::new(StatusCode::CONFLICT, msg, None),
            Error::Busy(_) => ApiErr::new(StatusCode::SERVICE_UNAVAILABLE, msg, None),
            _ => {
                tracing::error!("internal error: {msg}");
                ApiErr::new(StatusCode::INTERNAL_SERVER_ERROR, msg, None)
            }
        }
    }
}

impl IntoResponse for ApiErr {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

/// `axum::Json` whose rejections are [`ApiErr`]s.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiErr;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(r) => Err(json_rejection(r)),
        }
    }
}

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

fn json_rejection(r: JsonRejection) -> ApiErr {
    // axum's own status: 415 without a JSON content type, 413 over the body
    // limit, 400 for bad syntax or UTF-8, 422 for a body of the wrong shape.
    ApiErr::new(r.status(), format!("invalid request body: {}", r.body_text()), None)
}

/// `axum::extract::Path` whose rejections are [`ApiErr`]s.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiErr;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(r) => Err(path_rejection(r)),
        }
    }
}

fn path_rejection(r: PathRejection) -> ApiErr {
    ApiErr::new(StatusCode::BAD_REQUEST, format!("invalid path: {}", r.body_text()), None)
}

/// `axum::extract::Query` whose rejections are [`ApiErr`]s.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiErr;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(r) => Err(query_rejection(r)),
        }
    }
}

fn query_rejection(r: QueryRejection) -> ApiErr {
    ApiErr::new(StatusCode::BAD_REQUEST, format!("invalid query: {}", r.body_text()), None)
}

/// Rejects a user-given name that could be a path (see `valid_name`).
pub fn check_name(field: &str, name: &str) -> ApiResult<()> {
    amortize_shared::api::valid_name(name).map_err(|m| ApiErr::bad(field, format!("invalid {field} `{}`: {m}", name.chars().take(80).collect::<String>())))
}
