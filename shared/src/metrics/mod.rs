//! Evaluation metrics for comparing samplers and fine-tuning methods.
//!
//! Everything here is plain `f64` arithmetic on data the caller already has
//! (counts, log-likelihoods, tokens, embedding vectors), so the same code runs
//! in the backend and in the browser (wasm32).
//!
//! Conventions shared by all submodules:
//! - Logarithms are natural (`ln`); KL divergences are in nats.
//! - Text metrics take pre-tokenized input. Callers split on whitespace
//!   (`s.split_whitespace()`), which is what the Python references do
//!   (sacrebleu with `tokenize='none'`, nltk with `str.split()`).
//! - Scores are on a 0–1 scale (sacrebleu reports BLEU ×100).
//! - Empty input gives a documented neutral value (usually 0) rather than a
//!   panic; mismatched lengths of paired inputs panic.
//!
//! Submodules, by concept:
//! - [`distribution`]: KL divergence, empirical distributions, valid rate.
//! - [`likelihood`]: per-prompt max/mean log-likelihood and their averages.
//! - [`stats`]: mean and sample standard deviation.
//! - [`diversity`]: mean pairwise cosine distance between embeddings.
//! - [`similarity`]: cosine similarity and BERTScore-style matching.
//! - [`bleu`]: BLEU-4 (sentence and corpus) with explicit smoothing.
//! - [`gleu`]: Google's GLEU-4 (sentence and corpus).
//! - [`accuracy`]: majority vote over sampled answers.
//! - [`calibration`]: batch-calibrated label choices of a likelihood classifier.

pub mod accuracy;
pub mod bleu;
pub mod calibration;
pub mod distribution;
pub mod diversity;
pub mod gleu;
pub mod likelihood;
mod ngram;
pub mod similarity;
pub mod stats;

pub use accuracy::{majority_vote, majority_vote_accuracy};
pub use calibration::batch_calibrated_choices;
pub use bleu::{
    bleu_stats, brevity_penalty, corpus_bleu, sentence_bleu, BleuOptions, BleuStats, Smoothing,
};
pub use distribution::{
    empirical_distribution, finite_sample_kl_floor, kl_divergence, kl_from_counts, valid_rate,
};
pub use diversity::mean_pairwise_cosine_distance;
pub use gleu::{corpus_gleu, sentence_gleu};
pub use likelihood::{
    log_likelihood_summary, prompt_log_likelihood, LogLikelihoodSummary, PromptLogLikelihood,
};
pub use similarity::{bert_score, cosine_similarity, mean_pool, BertScore};
pub use stats::{mean_std, MeanStd};
