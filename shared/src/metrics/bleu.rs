//! BLEU-4 (Papineni et al., 2002), sentence- and corpus-level, on a 0–1 scale.
//!
//! BLEU = BP · exp((1/N) Σₙ ln pₙ), with uniform weights over orders n = 1..N,
//! N = 4 (fewer only with [`BleuOptions::effective_order`]):
//! - pₙ = (clipped n-gram matches) / (hypothesis n-grams), where each n-gram's
//!   count is clipped to its largest count in any single reference;
//! - BP = 1 if c ≥ r, else exp(1 − r/c) (0 when c = 0), with c the hypothesis
//!   length and r the length of the reference closest to c (ties: the shorter);
//! - corpus BLEU sums matches, totals, c and r over sentences before scoring
//!   ([`BleuStats`] holds these sufficient statistics and adds up).
//!
//! A score with no matching n-gram at all is 0 under every smoothing (as in
//! both sacrebleu and nltk). Zero precisions are otherwise handled by an
//! explicit [`Smoothing`]; [`BleuOptions`] has presets that reproduce
//! sacrebleu and nltk exactly.
//!
//! Input is pre-tokenized: callers split on whitespace, matching sacrebleu with
//! `tokenize='none'` and nltk with `str.split()`.

use std::ops::AddAssign;

use serde::{Deserialize, Serialize};

use super::ngram::{as_strs, count_ngrams, ngram_total, NgramCounts};

/// Highest n-gram order used by BLEU-4.
pub const BLEU_MAX_ORDER: usize = 4;

/// What to do with an n-gram order that has no match (mₙ = 0, tₙ hypothesis
/// n-grams). Orders with matches always use pₙ = mₙ / tₙ.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Smoothing {
    /// No smoothing: a zero precision makes BLEU 0. sacrebleu `'none'`; nltk
    /// without a smoothing function (nltk returns ~1e-77 there, not exactly 0).
    None,
    /// sacrebleu `'floor'` (Chen & Cherry 2014, method 1): pₙ = ε / tₙ.
    /// sacrebleu's default ε is 0.1.
    Floor(f64),
    /// sacrebleu `'add-k'` (Chen & Cherry method 2): for n ≥ 2 add k to both
    /// mₙ and tₙ (whether or not mₙ = 0); unigrams are left alone.
    AddK(f64),
    /// sacrebleu `'exp'` (NIST mteval-v13a, Chen & Cherry method 3): the i-th
    /// order without a match (i = 1, 2, ...) gets pₙ = 1 / (2ⁱ · tₙ).
    /// sacrebleu's default for both `corpus_bleu` and `sentence_bleu`.
    Exp,
    /// nltk `SmoothingFunction(epsilon=ε).method1`: pₙ = ε / tₙ′, where nltk
    /// counts a denominator of 1 for each sentence too short to have an
    /// n-gram of order n: tₙ′ = tₙ + [`BleuStats::too_short`]ₙ (for one
    /// sentence, max(1, tₙ)). Like [`Smoothing::Floor`] otherwise; a matched
    /// order also uses mₙ / tₙ′. nltk's default ε is 0.1.
    Epsilon(f64),
}

/// How a [`BleuStats`] is turned into a score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BleuOptions {
    /// Treatment of orders without matches.
    pub smoothing: Smoothing,
    /// sacrebleu's `use_effective_order`: orders with no hypothesis n-grams
    /// (tₙ = 0, the hypothesis is shorter than n) are left out and the mean
    /// of logs is taken over the remaining orders. When false, such an order
    /// makes BLEU 0, except under [`Smoothing::Epsilon`] (see there) and [`Smoothing::AddK`] for n ≥ 2 (tₙ becomes k, pₙ = k/k = 1).
    pub effective_order: bool,
}

impl BleuOptions {
    /// sacrebleu `corpus_bleu` defaults: `'exp'` smoothing, no effective order.
    pub const SACREBLEU_CORPUS: Self = BleuOptions {
        smoothing: Smoothing::Exp,
        effective_order: false,
    };
    /// sacrebleu `sentence_bleu` defaults: `'exp'` smoothing, effective order.
    pub const SACREBLEU_SENTENCE: Self = BleuOptions {
        smoothing: Smoothing::Exp,
        effective_order: true,
    };
    /// nltk `sentence_bleu`/`corpus_bleu` with `SmoothingFunction().method1`
    /// (ε = 0.1) and the default uniform weights.
    pub const NLTK_METHOD1: Self = BleuOptions {
        smoothing: Smoothing::Epsilon(0.1),
        effective_order: false,
    };
}

impl Default for BleuOptions {
    /// [`BleuOptions::SACREBLEU_CORPUS`].
    fn default() -> Self {
        Self::SACREBLEU_CORPUS
    }
}

/// Sufficient statistics of BLEU-4 for one sentence or, summed, a corpus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BleuStats {
    /// Hypothesis length c, in tokens.
    pub hyp_len: u64,
    /// Reference length r: the reference length closest to c (ties: shorter).
    pub ref_len: u64,
    /// Clipped matches mₙ for n = 1..4 (index n − 1).
    pub matches: [u64; BLEU_MAX_ORDER],
    /// Hypothesis n-gram counts tₙ = max(0, c − n + 1) for n = 1..4.
    pub totals: [u64; BLEU_MAX_ORDER],
    /// Number of sentences with tₙ = 0 (shorter than n tokens), n = 1..4.
    /// Only [`Smoothing::Epsilon`] uses it, to reproduce nltk's denominators.
    pub too_short: [u64; BLEU_MAX_ORDER],
}

impl AddAssign for BleuStats {
    fn add_assign(&mut self, other: Self) {
        self.hyp_len += other.hyp_len;
        self.ref_len += other.ref_len;
        for n in 0..BLEU_MAX_ORDER {
            self.matches[n] += other.matches[n];
            self.totals[n] += other.totals[n];
            self.too_short[n] += other.too_short[n];
        }
    }
}

impl std::iter::Sum for BleuStats {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        let mut total = BleuStats::default();
        for s in iter {
            total += s;
        }
        total
    }
}

impl BleuStats {
    /// BLEU-4 in [0, 1] from these statistics; see the module doc and
    /// [`Smoothing`] / [`BleuOptions`] for the exact rules.
    pub fn score(&self, options: BleuOptions) -> f64 {
        if self.hyp_len == 0 || self.matches.iter().all(|&m| m == 0) {
            return 0.0;
        }
        let mut log_sum = 0.0;
        let mut orders = 0usize;
        let mut exp_divisor = 1.0;
        for n in 0..BLEU_MAX_ORDER {
            let mut m = self.matches[n] as f64;
            let mut t = self.totals[n] as f64;
            match options.smoothing {
                Smoothing::AddK(k) if n > 0 => {
                    m += k;
                    t += k;
                }
                Smoothing::Epsilon(_) => t += self.too_short[n] as f64,
                _ => {}
            }
            if t == 0.0 {
                if options.effective_order {
                    break;
                }
                return 0.0;
            }
            let p = if m > 0.0 {
                m / t
            } else {
                match options.smoothing {
                    Smoothing::Floor(eps) | Smoothing::Epsilon(eps) => eps / t,
                    Smoothing::Exp => {
                        exp_divisor *= 2.0;
                        1.0 / (exp_divisor * t)
                    }
                    Smoothing::None | Smoothing::AddK(_) => return 0.0,
                }
            };
            log_sum += p.ln();
            orders += 1;
        }
        if orders == 0 {
            return 0.0;
        }
        brevity_penalty(self.hyp_len, self.ref_len) * (log_sum / orders as f64).exp()
    }
}

/// Brevity penalty: 1 if `hyp_len ≥ ref_len`, 0 if `hyp_len = 0`, otherwise
/// exp(1 − ref_len / hyp_len).
pub fn brevity_penalty(hyp_len: u64, ref_len: u64) -> f64 {
    if hyp_len >= ref_len {
        1.0
    } else if hyp_len == 0 {
        0.0
    } else {
        (1.0 - ref_len as f64 / hyp_len as f64).exp()
    }
}

/// BLEU statistics of one tokenized hypothesis against its tokenized
/// references. With no references, r = 0 and nothing matches.
pub fn bleu_stats<H, T, R>(hypothesis: &[H], references: &[R]) -> BleuStats
where
    H: AsRef<str>,
    T: AsRef<str>,
    R: AsRef<[T]>,
{
    let hyp = as_strs(hypothesis);
    let refs: Vec<Vec<&str>> = references.iter().map(|r| as_strs(r.as_ref())).collect();

    // Per n-gram, the largest count in any one reference.
    let mut max_ref: NgramCounts = NgramCounts::new();
    for r in &refs {
        for (gram, count) in count_ngrams(r, BLEU_MAX_ORDER) {
            let entry = max_ref.entry(gram).or_insert(0);
            *entry = (*entry).max(count);
        }
    }

    let mut stats = BleuStats {
        hyp_len: hyp.len() as u64,
        ref_len: closest_ref_len(hyp.len(), refs.iter().map(Vec::len)),
        ..BleuStats::default()
    };
    for n in 1..=BLEU_MAX_ORDER {
        stats.totals[n - 1] = ngram_total(hyp.len(), n);
        stats.too_short[n - 1] = u64::from(stats.totals[n - 1] == 0);
    }
    for (gram, count) in count_ngrams(&hyp, BLEU_MAX_ORDER) {
        let clip = max_ref.get(gram).copied().unwrap_or(0);
        stats.matches[gram.len() - 1] += count.min(clip);
    }
    stats
}

/// Reference length closest to `hyp_len`; ties go to the shorter one.
fn closest_ref_len(hyp_len: usize, ref_lens: impl Iterator<Item = usize>) -> u64 {
    ref_lens
        .min_by_key(|&r| (r.abs_diff(hyp_len), r))
        .unwrap_or(0) as u64
}

/// Sentence BLEU-4 of one hypothesis against one or more references.
///
/// Use [`BleuOptions::SACREBLEU_SENTENCE`] to match `sacrebleu.sentence_bleu`
/// or [`BleuOptions::NLTK_METHOD1`] to match nltk's `sentence_bleu` with
/// `SmoothingFunction().method1`.
pub fn sentence_bleu<H, T, R>(hypothesis: &[H], references: &[R], options: BleuOptions) -> f64
where
    H: AsRef<str>,
    T: AsRef<str>,
    R: AsRef<[T]>,
{
    bleu_stats(hypothesis, references).score(options)
}

/// Corpus BLEU-4: `references[i]` holds the references of `hypotheses[i]`
/// (any number, possibly different per sentence). Statistics are summed over
/// sentences, including c and r for the brevity penalty, then scored once.
///
/// Use [`BleuOptions::SACREBLEU_CORPUS`] to match `sacrebleu.corpus_bleu`.
///
/// # Panics
/// If `hypotheses` and `references` have different lengths.
pub fn corpus_bleu<Hs, H, Rs, R, T>(
    hypotheses: &[Hs],
    references: &[Rs],
    options: BleuOptions,
) -> f64
where
    Hs: AsRef<[H]>,
    H: AsRef<str>,
    Rs: AsRef<[R]>,
    R: AsRef<[T]>,
    T: AsRef<str>,
{
    assert_eq!(
        hypotheses.len(),
        references.len(),
        "corpus_bleu: one reference set per hypothesis"
    );
    hypotheses
        .iter()
        .zip(references)
        .map(|(h, r)| bleu_stats(h.as_ref(), r.as_ref()))
        .sum::<BleuStats>()
        .score(options)
}

#[cfg(test)]
#[path = "bleu_tests.rs"]
mod tests;
