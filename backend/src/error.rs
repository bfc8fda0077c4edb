//! The engine's error type. Every user-facing failure (bad file, bad setting,
//! prompt too long) is a variant with a message a person can act on; the CLI
//! prints it on one line and the server maps it to a 4xx.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting or argument is out of range or inconsistent.
    #[error("invalid {field}: {message}")]
    Invalid { field: String, message: String },

    /// A model, tokenizer or adapter file cannot be used.
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },

    /// The model or file format is valid but not one we support.
    #[error("unsupported: {0}")]
    Unsupported(String),

    /// A prompt (plus what is generated) does not fit the model's context.
    #[error("input of {len} tokens exceeds the model's context of {max} tokens")]
    TooLong { len: usize, max: usize },

    /// Training produced NaN/inf (the last good checkpoint is kept).
    #[error("non-finite value: {0}")]
    NonFinite(String),

    /// A long-running job was asked to stop.
    #[error("cancelled")]
    Cancelled,

    /// A run, dataset, experiment or comparison that does not exist.
    #[error("{0}")]
    NotFound(String),

    /// The request conflicts with the current state (e.g. resuming a running job).
    #[error("{0}")]
    Conflict(String),

    /// The server is at capacity; the client may retry.
    #[error("{0}")]
    Busy(String),

    #[error("database: {0}")]
    Db(#[from] sqlx::Error),

    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    #[error(transparent)]
    Io(#[from] std::io::Error),

    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Invalid { field: field.into(), message: message.into() }
    }
    pub fn file(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        Error::File { path: path.into(), message: message.to_string() }
    }
}

impl From<amortize_shared::config::ConfigError> for Error {
    fn from(e: amortize_shared::config::ConfigError) -> Self {
        Error::Invalid { field: e.field, message: e.message }
    }
}
