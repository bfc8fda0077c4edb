//! The paper's comparison methods on the same LoRA machinery as GFlowNet
//! fine-tuning: PPO against the task's reward, supervised fine-tuning on the
//! task's reference Z's, the EM step (SFT on Z's sampled from a GFlowNet
//! adapter and accepted by the task's reward), and the prompting baselines
//! (zero- and k-shot prompts built from the task's demonstrations). Each
//! trained method produces an adapter that `eval` / `compare` treat like any
//! other; the method names `compare` accepts are parsed here too. Uses the
//! engine's public pieces (task, sampler, policy pass, AdamW); nothing here
//! touches `gfn`'s losses.

pub mod em;
pub mod method;
pub mod ppo;
pub mod prompting;
pub mod sft;

pub use em::{train_gfn_sft, EmConfig, EmStats};
pub use method::{Method, MethodKind};
pub use ppo::{Ppo, PpoConfig, PpoMetrics};
pub use prompting::{FewShot, FewShotConfig};
pub use sft::{train_sft, train_sft_observed, SftConfig, SftMetrics};
