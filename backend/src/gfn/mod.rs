//! GFlowNet fine-tuning: per-prefix rewards, the balance losses (modified SubTB,
//! TB, modified DB), the replay buffer, exploration, schedules and the trainer.
//! Uses the model and decoding engines through their public APIs; knows nothing
//! of HTTP, storage or the browser.

pub mod buffer;
pub mod loss;
pub mod optim;
mod optim_fused;
pub mod reward;
pub mod schedule;
pub mod trajectory;

pub use reward::{log_rewards_in_calls, LmReward, Reward, States, ROWS_PER_CALL};
pub use trajectory::{Problem, Trajectory};
pub mod checkpoint;
pub mod config;
pub mod policy;
mod policy_head;
pub mod probe;
pub mod trainer;

pub use config::{starting_adapter, Objective, TrainConfig};
pub use trainer::{Backward, Phases, RecentSample, StepMetrics, TrainTask, Trainer};
