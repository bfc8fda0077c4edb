//! N-gram counting shared by BLEU and GLEU.
//!
//! N-grams are contiguous token windows; they are keyed by slices of the
//! token vector, so counting allocates no strings.

use std::collections::HashMap;

/// Counts of n-grams keyed by the token window; the key length is the order.
pub(crate) type NgramCounts<'t, 's> = HashMap<&'t [&'s str], u64>;

/// Borrows each token as `&str`.
pub(crate) fn as_strs<S: AsRef<str>>(tokens: &[S]) -> Vec<&str> {
    tokens.iter().map(|t| t.as_ref()).collect()
}

/// Counts every n-gram of order 1..=`max_order` in `tokens`.
pub(crate) fn count_ngrams<'t, 's>(tokens: &'t [&'s str], max_order: usize) -> NgramCounts<'t, 's> {
    let mut counts = HashMap::new();
    for n in 1..=max_order {
        for window in tokens.windows(n) {
            *counts.entry(window).or_insert(0) += 1;
        }
    }
    counts
}

/// Number of n-grams of order `n` in a sequence of `len` tokens:
/// max(0, len − n + 1).
pub(crate) fn ngram_total(len: usize, n: usize) -> u64 {
    (len + 1).saturating_sub(n) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_totals() {
        let t = ["a", "b", "a", "b"];
        let c = count_ngrams(&t, 2);
        assert_eq!(c[&["a"][..]], 2);
        assert_eq!(c[&["a", "b"][..]], 2);
        assert_eq!(c[&["b", "a"][..]], 1);
        assert_eq!(c.len(), 4);
        assert_eq!(ngram_total(4, 1), 4);
        assert_eq!(ngram_total(4, 4), 1);
        assert_eq!(ngram_total(3, 4), 0);
        assert_eq!(ngram_total(0, 1), 0);
    }
}
