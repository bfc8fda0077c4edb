//! Log-likelihood statistics of sampled outputs.
//!
//! For each prompt a method draws several samples and each sample gets a log
//! likelihood (under the reward or base model, as the caller decides). Per
//! prompt we keep the best (max) and the average (mean) sample; across prompts
//! we report the mean and spread of each, so that "best of k" and "typical
//! sample" quality can be compared between methods.

use serde::{Deserialize, Serialize};

use super::stats::MeanStd;

/// Log-likelihood statistics of the samples for one prompt.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PromptLogLikelihood {
    /// maxᵢ ℓᵢ over the prompt's samples.
    pub max: f64,
    /// (1/k) Σᵢ ℓᵢ over the prompt's k samples.
    pub mean: f64,
    /// Number of samples k.
    pub n: usize,
}

/// Max and mean of one prompt's sample log-likelihoods; `None` when there are
/// no samples. `-inf` values are allowed (the mean is then `-inf`).
pub fn prompt_log_likelihood(samples: &[f64]) -> Option<PromptLogLikelihood> {
    if samples.is_empty() {
        return None;
    }
    let max = samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mean = samples.iter().sum::<f64>() / samples.len() as f64;
    Some(PromptLogLikelihood {
        max,
        mean,
        n: samples.len(),
    })
}

/// Per-prompt max and mean log-likelihoods, summarised over prompts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LogLikelihoodSummary {
    /// Mean (± sample std) over prompts of each prompt's max log-likelihood.
    pub max: MeanStd,
    /// Mean (± sample std) over prompts of each prompt's mean log-likelihood.
    pub mean: MeanStd,
}

/// Summarises sample log-likelihoods grouped by prompt:
/// `per_prompt[j]` holds the log-likelihoods of prompt `j`'s samples.
///
/// Prompts without samples are skipped (`MeanStd::n` counts the prompts
/// used); `None` when no prompt has a sample.
pub fn log_likelihood_summary<V: AsRef<[f64]>>(per_prompt: &[V]) -> Option<LogLikelihoodSummary> {
    let stats: Vec<PromptLogLikelihood> = per_prompt
        .iter()
        .filter_map(|s| prompt_log_likelihood(s.as_ref()))
        .collect();
    if stats.is_empty() {
        return None;
    }
    let maxes: Vec<f64> = stats.iter().map(|s| s.max).collect();
    let means: Vec<f64> = stats.iter().map(|s| s.mean).collect();
    Some(LogLikelihoodSummary {
        max: MeanStd::from_values(&maxes),
        mean: MeanStd::from_values(&means),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_prompt() {
        let s = prompt_log_likelihood(&[-3.0, -1.0, -2.0]).unwrap();
        assert_eq!(s.max, -1.0);
        assert_eq!(s.mean, -2.0);
        assert_eq!(s.n, 3);
        assert!(prompt_log_likelihood(&[]).is_none());
        let inf = prompt_log_likelihood(&[f64::NEG_INFINITY, -1.0]).unwrap();
        assert_eq!(inf.max, -1.0);
        assert_eq!(inf.mean, f64::NEG_INFINITY);
    }

    #[test]
    fn summary_over_prompts() {
        // Prompt A: max -1, mean -2. Prompt B: max -3, mean -4. Empty prompt skipped.
        let data: Vec<Vec<f64>> = vec![vec![-1.0, -3.0], vec![], vec![-3.0, -5.0]];
        let s = log_likelihood_summary(&data).unwrap();
        assert_eq!(s.max.n, 2);
        assert_eq!(s.max.mean, -2.0);
        assert!((s.max.std - 2.0f64.sqrt()).abs() < 1e-12);
        assert_eq!(s.mean.mean, -3.0);
        assert!((s.mean.std - 2.0f64.sqrt()).abs() < 1e-12);
        let empty: Vec<Vec<f64>> = vec![vec![]];
        assert!(log_likelihood_summary(&empty).is_none());
    }
}
