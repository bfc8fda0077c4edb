//! The paper's comparison methods on the same LoRA machinery as GFlowNet
//! fine-tuning: PPO against the task's reward (and, next, supervised
//! fine-tuning). Each trains an adapter that `eval` / `compare` treat like any
//! other. Uses the engine's public pieces; nothing here touches `gfn`'s losses.

pub mod ppo;

pub use ppo::{Ppo, PpoConfig, PpoMetrics};
