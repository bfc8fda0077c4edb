//! GLEU-4, the "Google BLEU" sentence metric of Wu et al. (2016), as
//! implemented by nltk's `sentence_gleu` / `corpus_gleu` (min_len 1,
//! max_len 4).
//!
//! For a hypothesis h and one reference r, pool all n-grams of orders 1..4:
//! - tp = Σ_g min(count_h(g), count_r(g)) (matching n-grams),
//! - precision = tp / |ngrams(h)|, recall = tp / |ngrams(r)|,
//! - GLEU = min(precision, recall) = tp / max(|ngrams(h)|, |ngrams(r)|).
//!
//! With several references, the reference giving the highest ratio is used
//! (ties: the first one). Corpus GLEU sums, over sentences, the numerators
//! and denominators of each sentence's chosen reference and divides once.
//! Unlike BLEU there is no smoothing or brevity penalty: the recall term
//! already penalises short hypotheses.
//!
//! Input is pre-tokenized: callers split on whitespace (nltk reference:
//! `str.split()`).

use super::ngram::{as_strs, count_ngrams};

/// Highest n-gram order used by GLEU-4.
pub const GLEU_MAX_ORDER: usize = 4;

/// (tp, max(|ngrams(h)|, |ngrams(r)|)) for the best reference, or `None`
/// when every reference pairs with the hypothesis to zero n-grams on both
/// sides (such pairs are skipped, as in nltk).
fn best_gleu_counts<H, T, R>(hypothesis: &[H], references: &[R]) -> Option<(u64, u64)>
where
    H: AsRef<str>,
    T: AsRef<str>,
    R: AsRef<[T]>,
{
    let hyp = as_strs(hypothesis);
    let hyp_grams = count_ngrams(&hyp, GLEU_MAX_ORDER);
    let hyp_total: u64 = hyp_grams.values().sum();

    let mut best: Option<(u64, u64)> = None;
    for reference in references {
        let r = as_strs(reference.as_ref());
        let ref_grams = count_ngrams(&r, GLEU_MAX_ORDER);
        let ref_total: u64 = ref_grams.values().sum();
        let all = hyp_total.max(ref_total);
        if all == 0 {
            continue;
        }
        let tp: u64 = hyp_grams
            .iter()
            .map(|(g, &c)| c.min(ref_grams.get(g).copied().unwrap_or(0)))
            .sum();
        // Replace only on a strictly higher ratio (exact integer comparison of
        // tp/all > best_tp/best_all), so the first reference wins ties.
        let better = match best {
            None => true,
            Some((btp, ball)) => {
                u128::from(tp) * u128::from(ball) > u128::from(btp) * u128::from(all)
            }
        };
        if better {
            best = Some((tp, all));
        }
    }
    best
}

/// Sentence GLEU-4 of one hypothesis against one or more references, in
/// [0, 1]; 0 if there is nothing to compare (no references, or all sides
/// empty). Matches nltk `sentence_gleu(references, hypothesis)`.
pub fn sentence_gleu<H, T, R>(hypothesis: &[H], references: &[R]) -> f64
where
    H: AsRef<str>,
    T: AsRef<str>,
    R: AsRef<[T]>,
{
    match best_gleu_counts(hypothesis, references) {
        Some((tp, all)) => tp as f64 / all as f64,
        None => 0.0,
    }
}

/// Corpus GLEU-4: Σ tp / Σ max(|ngrams(h)|, |ngrams(r)|) over sentences,
/// each with its best reference; `references[i]` are the references of
/// `hypotheses[i]`. 0 when the denominator is 0. Matches nltk `corpus_gleu`.
///
/// # Panics
/// If `hypotheses` and `references` have different lengths.
pub fn corpus_gleu<Hs, H, Rs, R, T>(hypotheses: &[Hs], references: &[Rs]) -> f64
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
        "corpus_gleu: one reference set per hypothesis"
    );
    let (mut tp, mut all) = (0u64, 0u64);
    for (h, r) in hypotheses.iter().zip(references) {
        if let Some((t, a)) = best_gleu_counts(h.as_ref(), r.as_ref()) {
            tp += t;
            all += a;
        }
    }
    if all == 0 {
        0.0
    } else {
        tp as f64 / all as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<&str> {
        s.split_whitespace().collect()
    }

    #[test]
    fn hand_worked_precision_limited() {
        // hyp "a b c" (3+2+1 = 6 n-grams) vs ref "a b" (2+1 = 3 n-grams):
        // tp = a, b, "a b" = 3; min(3/6, 3/3) = 1/2.
        assert_eq!(sentence_gleu(&toks("a b c"), &[toks("a b")]), 0.5);
        // Swapped it is recall-limited, and the same value.
        assert_eq!(sentence_gleu(&toks("a b"), &[toks("a b c")]), 0.5);
    }

    #[test]
    fn hand_worked_counts_clip() {
        // hyp "a a a a": a×4, "a a"×3, "a a a"×2, "a a a a"×1 → 10 n-grams.
        // ref "a a": a×2, "a a"×1 → 3 n-grams. tp = 2 + 1 = 3; 3 / 10.
        assert_eq!(sentence_gleu(&toks("a a a a"), &[toks("a a")]), 0.3);
    }

    #[test]
    fn best_reference_and_ties() {
        let hyp = toks("a b c");
        // ref1 "x": tp 0 / 6; ref2 "a b c": 6 / 6.
        assert_eq!(sentence_gleu(&hyp, &[toks("x"), toks("a b c")]), 1.0);
        // Equal ratios 1/2 with different counts: "a b" gives 3/6; "a b b c"
        // (4+3+2+1 = 10 n-grams) shares a, b, c, "a b", "b c" and gives 5/10.
        // The first is kept, which matters for the corpus sums.
        let tie = [toks("a b"), toks("a b b c")];
        assert_eq!(sentence_gleu(&hyp, &tie), 0.5);
        assert_eq!(best_gleu_counts(&hyp, &tie), Some((3, 6)));
        let tie_swapped = [toks("a b b c"), toks("a b")];
        assert_eq!(best_gleu_counts(&hyp, &tie_swapped), Some((5, 10)));
    }

    #[test]
    fn corpus_sums_then_divides() {
        // Sentence 1: 3/6. Sentence 2: identical "x y" → 3/3. Corpus 6/9.
        let hyps = vec![toks("a b c"), toks("x y")];
        let refs = vec![vec![toks("a b")], vec![toks("x y")]];
        let g = corpus_gleu(&hyps, &refs);
        assert!((g - 6.0 / 9.0).abs() < 1e-15, "{g}");
        // Not the mean of sentence scores (0.75).
        assert!((g - 0.75).abs() > 1e-3);
    }

    #[test]
    fn degenerate_inputs() {
        let empty: Vec<&str> = vec![];
        assert_eq!(sentence_gleu(&empty, std::slice::from_ref(&empty)), 0.0);
        assert_eq!(
            sentence_gleu(&toks("a b"), std::slice::from_ref(&empty)),
            0.0
        );
        let none: Vec<Vec<&str>> = vec![];
        assert_eq!(sentence_gleu(&toks("a b"), &none), 0.0);
        let no_hyps: Vec<Vec<&str>> = vec![];
        let no_refs: Vec<Vec<Vec<&str>>> = vec![];
        assert_eq!(corpus_gleu(&no_hyps, &no_refs), 0.0);
    }
}
