//! Decoding over a base model and an optional adapter: batched sampling with
//! temperature / top-k / top-p / token masks / stop rules / tool hooks, greedy,
//! beam and diverse beam search, and scoring `log p(continuation | context)`.
//! Owns no weights and no training state; the trainer uses the same functions.

pub mod beam;
pub mod draw;
pub(crate) mod fused_rows;
pub mod logits;
pub mod prefix;
pub mod sample;
pub mod score;
pub mod tool;

pub use beam::{beam_search, BeamConfig, Hypothesis};
pub use logits::TokenMask;
pub use sample::{sample, Sample, SampleConfig, StopReason, READBACK_EVERY};
pub use score::{score, Scored};
pub use tool::{Calculator, ToolHook};
