//! Draws from a policy the way its training draws them — the task's token
//! mask, stop tokens, tool and lengths — each scored by the task's reward at
//! T = 1: what a side-by-side of trained policies shows per problem (the
//! app's comparisons, `amortize sample --task`). Reads a [`TrainTask`];
//! never trains, never touches a buffer or an optimiser.

use super::{Problem, States, TrainTask, Trajectory};
use crate::decode::{self, SampleConfig, StopReason};
use crate::model::{LanguageModel, LoraView};
use crate::Result;

/// How to draw: `n` per problem, between `lengths.0` and `lengths.1` policy
/// actions, at `temperature` (top-k / top-p optional), from `seed`.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    pub n: usize,
    pub lengths: (usize, usize),
    pub temperature: f32,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub seed: u64,
}

impl ProbeConfig {
    /// The decoding settings, without the task's mask, stop tokens and tool.
    fn decoding(&self) -> SampleConfig {
        SampleConfig {
            n: self.n,
            min_new_tokens: self.lengths.0,
            max_new_tokens: self.lengths.1,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
            ..SampleConfig::default()
        }
    }

    /// Checks the settings (what [`draw_scored`] would refuse), before a model is loaded.
    pub fn validate(&self) -> Result<()> {
        self.decoding().validate()
    }
}

/// One drawn Z and what the task makes of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// Z as text (tool output included, the stop token not).
    pub text: String,
    pub trajectory: Trajectory,
    /// The policy chose to stop (not cut at the maximum length).
    pub stopped: bool,
    /// log q(Z ⊤ | prompt) at temperature 1 with the task's mask (the stop
    /// action included when it was chosen).
    pub log_q: f64,
    /// log R(Z ⊤) at reward temperature 1: the task's reward of Z's last state.
    pub log_r: f64,
}

/// One draw before it is scored.
#[derive(Debug, Clone)]
pub struct Drawn {
    /// Which prompt it continues.
    pub prompt: usize,
    /// Z, without the stop token.
    pub trajectory: Trajectory,
    pub stopped: bool,
    /// log q(Z ⊤) at temperature 1 with the task's mask.
    pub log_q: f64,
}

/// `cfg.n` draws for each prompt with the task's mask, stop tokens and tool
/// (the trainer's, PPO's and the probe's draws).
pub fn draw(lm: &LanguageModel, task: &TrainTask, view: Option<&LoraView>, prompts: &[Vec<u32>], cfg: &ProbeConfig) -> Result<Vec<Drawn>> {
    let sc = SampleConfig { mask: task.mask.clone(), mask_penalty: task.mask_penalty, stop_tokens: Some(task.stop_tokens.clone()), ..cfg.decoding() };
    Ok(decode::sample(lm, prompts, &sc, view, task.tool.as_deref())?
        .into_iter()
        .map(|mut s| {
            let log_q = s.logprob() as f64;
            let stopped = s.stop == StopReason::StopToken;
            if stopped {
                s.tokens.pop();
                s.tool.pop();
            }
            Drawn { prompt: s.prompt_index, trajectory: Trajectory { tokens: s.tokens, tool: s.tool }, stopped, log_q }
        })
        .collect())
}

/// `cfg.n` draws for each problem, from `view` (the base model when `None`)
/// conditioned on `prompts[k]` (usually `problems[k].policy_prompt`; a
/// few-shot run reads a longer one), scored by `task.reward` on `problems[k]`.
pub fn draw_scored(lm: &LanguageModel, task: &TrainTask, view: Option<&LoraView>, problems: &[&Problem], prompts: &[Vec<u32>], cfg: &ProbeConfig) -> Result<Vec<Vec<Probe>>> {
    if problems.len() != prompts.len() {
        return Err(crate::Error::invalid("prompts", format!("{} prompts for {} problems", prompts.len(), problems.len())));
    }
    let mut drawn: Vec<Vec<Drawn>> = vec![Vec::new(); problems.len()];
    for d in draw(lm, task, view, prompts, cfg)? {
        drawn[d.prompt].push(d);
    }
    let trajs: Vec<Vec<Trajectory>> = drawn.iter().map(|g| g.iter().map(|d| d.trajectory.clone()).collect()).collect();
    let items: Vec<(&Problem, &[Trajectory])> = problems.iter().zip(&trajs).map(|(p, t)| (*p, t.as_slice())).collect();
    let rewards = task.reward.log_rewards_many(lm, &items, States::Last)?;
    drawn
        .into_iter()
        .zip(rewards)
        .map(|(group, r)| {
            group
                .into_iter()
                .zip(r)
                .map(|(d, r)| {
                    let log_r = r.last().copied().unwrap_or(f32::NEG_INFINITY) as f64;
                    Ok(Probe { text: lm.tokenizer.decode(&d.trajectory.tokens, true)?, trajectory: d.trajectory, stopped: d.stopped, log_q: d.log_q, log_r })
                })
                .collect()
        })
        .collect()
}

/// `text` as the task's trajectory: cut where the task's tool answers (its
/// hook fires on the text so far), the pieces between encoded as the
/// policy's actions and each answer as the tool's tokens — what a draw that
/// wrote `text` holds, up to how the policy split its pieces into tokens.
/// A text that goes on otherwise where the tool answers is no draw of the
/// task: an error that names the place.
pub fn trajectory_of(lm: &LanguageModel, task: &TrainTask, text: &str) -> Result<Trajectory> {
    let mut t = Trajectory::default();
    let push = |piece: &str, tool: bool, t: &mut Trajectory| -> Result<()> {
        for id in lm.tokenizer.encode(piece)? {
            t.tokens.push(id);
            t.tool.push(tool);
        }
        Ok(())
    };
    let (mut start, mut i) = (0, 0);
    while let Some(c) = text[i..].chars().next() {
        i += c.len_utf8();
        let Some(answer) = task.tool.as_ref().and_then(|tool| tool.after_token(&text[..i])) else { continue };
        if !text[i..].starts_with(&answer) {
            let rest: String = text[i..].chars().take(answer.chars().count().max(1)).collect();
            return Err(crate::Error::invalid("text", format!("the task's tool answers {:?} with {answer:?}, but the text goes on with {rest:?}", &text[start..i])));
        }
        push(&text[start..i], false, &mut t)?;
        push(&answer, true, &mut t)?;
        i += answer.len();
        start = i;
    }
    push(&text[start..], false, &mut t)?;
    Ok(t)
}

/// log R (T = 1) of each text as a Z of `problem` ([`trajectory_of`]).
pub fn rate(lm: &LanguageModel, task: &TrainTask, problem: &Problem, texts: &[String]) -> Result<Vec<(Trajectory, f64)>> {
    let trajs = texts.iter().map(|x| trajectory_of(lm, task, x)).collect::<Result<Vec<_>>>()?;
    let rewards = task.reward.log_rewards_of(lm, problem, &trajs, States::Last)?;
    Ok(trajs.into_iter().zip(rewards).map(|(t, r)| (t, r.last().copied().unwrap_or(f32::NEG_INFINITY) as f64)).collect())
}
