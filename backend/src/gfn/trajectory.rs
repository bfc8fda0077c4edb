//! What the trainer moves around: a `Problem` (one (X, Y) pair as token ids: the
//! policy's prompt, the reward's context and suffix) and a `Trajectory` (a
//! sampled or replayed Z: policy tokens, possibly with tool tokens between them).

use serde::{Deserialize, Serialize};

/// One (X, Y) pair, tokenized for the policy and for the reward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    /// Replay-buffer key (and log Z key for TB).
    pub key: String,
    /// What the policy q(Z | …) conditions on.
    pub policy_prompt: Vec<u32>,
    /// What precedes Z in the reward (after any shared few-shot prefix); not scored.
    pub reward_context: Vec<u32>,
    /// Y: scored after each prefix of Z (may be empty).
    pub reward_suffix: Vec<u32>,
    /// Z's to seed the replay buffer with (rewards computed on insertion).
    pub seeds: Vec<Trajectory>,
}

/// A latent sequence Z: policy actions z_1..z_n with any tool output after them.
/// The stop action is not stored: termination happens after the last action
/// (chosen by the policy, or forced at the maximum length).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Trajectory {
    pub tokens: Vec<u32>,
    /// `tool[i]`: token i was appended by a tool, not chosen by the policy.
    pub tool: Vec<bool>,
}

impl Trajectory {
    /// A trajectory of policy tokens only.
    pub fn from_actions(tokens: Vec<u32>) -> Self {
        let tool = vec![false; tokens.len()];
        Trajectory { tokens, tool }
    }

    /// n: the number of policy actions.
    pub fn num_actions(&self) -> usize {
        self.tool.iter().filter(|&&t| !t).count()
    }

    /// Indices (into `tokens`) of the policy actions.
    pub fn action_indices(&self) -> Vec<usize> {
        self.tool.iter().enumerate().filter(|(_, &t)| !t).map(|(i, _)| i).collect()
    }

    /// Token length of each state s_0..s_n: s_i holds everything up to the next
    /// policy action (so tool output after action i belongs to s_i).
    pub fn state_lens(&self) -> Vec<usize> {
        let mut lens: Vec<usize> = self.action_indices();
        lens.push(self.tokens.len());
        lens
    }

    /// The policy actions z_1..z_n.
    pub fn actions(&self) -> Vec<u32> {
        self.action_indices().into_iter().map(|i| self.tokens[i]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_include_tool_output() {
        // "3", "=", tool " 7", ","  → actions 3, =, ","
        let t = Trajectory { tokens: vec![10, 11, 12, 13, 14], tool: vec![false, false, true, true, false] };
        assert_eq!(t.num_actions(), 3);
        assert_eq!(t.actions(), vec![10, 11, 14]);
        // s_0 = "", s_1 = "3", s_2 = "3 = 7" (tool output included), s_3 = all.
        assert_eq!(t.state_lens(), vec![0, 1, 4, 5]);
    }
}
