//! Embedding-based similarity between a candidate text and a reference.
//!
//! Two levels:
//! - sentence level: the cosine similarity of two sentence embeddings
//!   ([`cosine_similarity`]; [`mean_pool`] turns token embeddings into one);
//! - token level: BERTScore-style greedy matching ([`bert_score`]), where every
//!   token is matched to its most similar token on the other side.
//!
//! The embeddings come from whatever encoder the caller runs; this module
//! only does the arithmetic (in `f64`, from `f32` inputs).

use serde::{Deserialize, Serialize};

/// Cosine similarity a·b / (‖a‖ ‖b‖), in [-1, 1].
///
/// Convention: 0 when either vector has zero norm (or both are empty).
///
/// # Panics
/// If `a` and `b` have different lengths.
pub fn cosine_similarity(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(
        a.len(),
        b.len(),
        "cosine_similarity: vectors must have equal lengths"
    );
    let (mut dot, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        dot += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        return 0.0;
    }
    // Rounding can push |cos| a hair past 1; keep it in range.
    (dot / (aa.sqrt() * bb.sqrt())).clamp(-1.0, 1.0)
}

/// Mean of token embeddings (one row per token), a common way to get a
/// sentence embedding. Empty input gives an empty vector.
///
/// # Panics
/// If the rows have different lengths.
pub fn mean_pool<V: AsRef<[f32]>>(tokens: &[V]) -> Vec<f32> {
    let Some(first) = tokens.first() else {
        return Vec::new();
    };
    let dim = first.as_ref().len();
    let mut sum = vec![0.0f64; dim];
    for row in tokens {
        let row = row.as_ref();
        assert_eq!(row.len(), dim, "mean_pool: rows must have equal lengths");
        for (s, &x) in sum.iter_mut().zip(row) {
            *s += x as f64;
        }
    }
    let n = tokens.len() as f64;
    sum.into_iter().map(|s| (s / n) as f32).collect()
}

/// BERTScore precision, recall and F1 of a candidate against one reference.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BertScore {
    /// Mean over candidate tokens of their best cosine to a reference token.
    pub precision: f64,
    /// Mean over reference tokens of their best cosine to a candidate token.
    pub recall: f64,
    /// Harmonic mean 2PR / (P + R); 0 when P + R = 0.
    pub f1: f64,
}

/// BERTScore from token embedding matrices (one row per token), following
/// Zhang et al. (2020) without idf weighting and without baseline rescaling:
///
/// - P = (1/|c|) Σ_{i∈c} max_{j∈r} cos(cᵢ, rⱼ)
/// - R = (1/|r|) Σ_{j∈r} max_{i∈c} cos(cᵢ, rⱼ)
/// - F1 = 2PR / (P + R)
///
/// Cosines follow [`cosine_similarity`]. If either side has no tokens all
/// three scores are 0.
///
/// # Panics
/// If the embedding rows have different lengths.
pub fn bert_score<C: AsRef<[f32]>, R: AsRef<[f32]>>(candidate: &[C], reference: &[R]) -> BertScore {
    if candidate.is_empty() || reference.is_empty() {
        return BertScore {
            precision: 0.0,
            recall: 0.0,
            f1: 0.0,
        };
    }
    // sim[i][j] = cos(candidate i, reference j)
    let sim: Vec<Vec<f64>> = candidate
        .iter()
        .map(|c| {
            reference
                .iter()
                .map(|r| cosine_similarity(c.as_ref(), r.as_ref()))
                .collect()
        })
        .collect();
    let best_per_candidate = sim
        .iter()
        .map(|row| row.iter().copied().fold(f64::NEG_INFINITY, f64::max));
    let precision = best_per_candidate.sum::<f64>() / candidate.len() as f64;
    let recall = (0..reference.len())
        .map(|j| {
            sim.iter()
                .map(|row| row[j])
                .fold(f64::NEG_INFINITY, f64::max)
        })
        .sum::<f64>()
        / reference.len() as f64;
    let denom = precision + recall;
    let f1 = if denom == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / denom
    };
    BertScore {
        precision,
        recall,
        f1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn cosine_hand_worked() {
        assert!(close(cosine_similarity(&[1.0, 0.0], &[0.0, 2.0]), 0.0));
        assert!(close(cosine_similarity(&[1.0, 1.0], &[2.0, 2.0]), 1.0));
        assert!(close(cosine_similarity(&[1.0, 0.0], &[-3.0, 0.0]), -1.0));
        // (1,0)·(1,1) / (1 · √2)
        assert!(close(
            cosine_similarity(&[1.0, 0.0], &[1.0, 1.0]),
            0.5f64.sqrt()
        ));
        assert_eq!(cosine_similarity(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
        assert_eq!(cosine_similarity(&[], &[]), 0.0);
    }

    #[test]
    fn mean_pool_hand_worked() {
        assert_eq!(
            mean_pool(&[vec![1.0f32, 2.0], vec![3.0, 6.0]]),
            vec![2.0, 4.0]
        );
        assert!(mean_pool::<Vec<f32>>(&[]).is_empty());
    }

    #[test]
    fn bert_score_hand_worked() {
        // Candidate tokens: e1, e2. Reference tokens: e1, e3, e1+e2.
        let c = [vec![1.0f32, 0.0, 0.0], vec![0.0, 1.0, 0.0]];
        let r = [
            vec![1.0f32, 0.0, 0.0],
            vec![0.0, 0.0, 1.0],
            vec![1.0, 1.0, 0.0],
        ];
        let s = bert_score(&c, &r);
        // P: e1 -> max(1, 0, 1/√2) = 1; e2 -> max(0, 0, 1/√2) = 1/√2.
        let h = 0.5f64.sqrt();
        assert!(close(s.precision, (1.0 + h) / 2.0), "{s:?}");
        // R: e1 -> 1; e3 -> 0; (1,1,0) -> 1/√2.
        assert!(close(s.recall, (1.0 + 0.0 + h) / 3.0), "{s:?}");
        let f1 = 2.0 * s.precision * s.recall / (s.precision + s.recall);
        assert!(close(s.f1, f1));
    }

    #[test]
    fn bert_score_identical_and_empty() {
        let c = [vec![0.3f32, -1.0], vec![2.0, 0.5]];
        let s = bert_score(&c, &c);
        assert!(close(s.precision, 1.0) && close(s.recall, 1.0) && close(s.f1, 1.0));
        let none: [Vec<f32>; 0] = [];
        assert_eq!(bert_score(&c, &none).f1, 0.0);
        assert_eq!(bert_score(&none, &c).precision, 0.0);
    }
}
