//! The paper's comparison methods on the same LoRA machinery as GFlowNet
//! fine-tuning: PPO against the task's reward, and supervised fine-tuning on
//! the task's reference Z's. Each trains an adapter that `eval` / `compare`
//! treat like any other. Uses the engine's public pieces (task, sampler, policy
//! pass, AdamW); nothing here touches `gfn`'s losses.

pub mod ppo;
pub mod sft;

pub use ppo::{Ppo, PpoConfig, PpoMetrics};
pub use sft::{train_sft, SftConfig, SftMetrics};
