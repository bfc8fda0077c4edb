//! Code shared by the Amortize backend and the browser app; it compiles to
//! `wasm32-unknown-unknown` and depends on nothing heavier than `serde`.
//!
//! - API types exchanged between the backend and the frontend (coming).
//! - [`metrics`]: the evaluation metrics used to compare fine-tuning methods
//!   (KL to a target distribution, log-likelihood statistics, diversity,
//!   BLEU-4, GLEU-4, embedding similarity, majority-vote accuracy).

pub mod metrics;
