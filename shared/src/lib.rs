//! Code shared by the Amortize backend and the browser app; it compiles to
//! `wasm32-unknown-unknown` and depends on nothing heavier than `serde`.
//!
//! - [`api`]: request and response bodies of the server's JSON API.
//! - [`config`]: the training hyper-parameters and their validation.
//! - [`groups`]: runs that repeat one setup over seeds, grouped.
//! - [`sweep`]: one hyper-parameter's values, each checked like the config.
//! - [`metrics`]: the evaluation metrics used to compare fine-tuning methods
//!   (KL to a target distribution, log-likelihood statistics, diversity,
//!   BLEU-4, GLEU-4, embedding similarity, majority-vote accuracy).

pub mod api;
pub mod config;
pub mod groups;
pub mod metrics;
pub mod sweep;
