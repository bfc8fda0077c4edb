//! Amortize: GFlowNet fine-tuning of language models.
//!
//! The library is the engine; the `amortize` binary (`main.rs`, `cli/`) is a thin
//! edge over it. Data flows top to bottom through the modules:
//! - [`model`]  the Llama-family decoder, LoRA adapters, KV cache, loaders, tokenizer.
//! - [`decode`] sampling, beam search, scoring, tool hooks — over any model + adapter.
//! - [`gfn`]    rewards, losses, replay buffer, the GFlowNet trainer.
//! - [`embed`]  sentence/token embeddings (all-MiniLM-L6-v2) for the embedding metrics.
//! - [`tasks`]  the paper's task presets and their metrics.
//! - [`baselines`] PPO (and SFT) on the same LoRA machinery, for comparisons.
//! - [`store`]  SQLite and the data dir of the server.
//! - [`cancel`] a job's stop request, checked by the engine's long loops;
//!   [`progress`] how far those loops have come, for the job's watcher.
//! - [`jobs`]   the training queue: cancel, resume, crash recovery, live events.
//! - [`server`] the axum API, SSE and the browser app (`amortize serve`).
//!
//! The server, the browser app and the baselines use the engine through these
//! public APIs only.

pub mod cancel;
pub mod baselines;
pub mod decode;
pub mod embed;
pub mod gfn;
pub mod error;
pub mod jobs;
pub mod model;
pub mod progress;
pub mod server;
pub mod store;
pub mod tasks;
pub mod util;

pub use error::{Error, Result};
