//! Diversity of a set of samples, measured in embedding space.
//!
//! A method that collapses onto one mode produces near-identical samples; the
//! mean pairwise cosine distance between their embeddings (from any sentence
//! encoder) is a simple, length-independent measure of that spread.

use super::similarity::cosine_similarity;

/// Mean pairwise cosine distance over all unordered pairs:
///
/// D = (2 / (m(m − 1))) Σ_{i<j} (1 − cos(eᵢ, eⱼ)), in [0, 2].
///
/// Cosines follow [`cosine_similarity`] (a zero vector has cosine 0, hence
/// distance 1, to everything). Fewer than 2 vectors give 0.
///
/// # Panics
/// If the vectors have different lengths.
pub fn mean_pairwise_cosine_distance<V: AsRef<[f32]>>(embeddings: &[V]) -> f64 {
    let m = embeddings.len();
    if m < 2 {
        return 0.0;
    }
    let mut total = 0.0;
    for i in 0..m {
        for j in (i + 1)..m {
            total += 1.0 - cosine_similarity(embeddings[i].as_ref(), embeddings[j].as_ref());
        }
    }
    let pairs = (m * (m - 1) / 2) as f64;
    total / pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_worked() {
        // Pairs: (e1, e2) distance 1; (e1, e1+e2) 1 − 1/√2; (e2, e1+e2) 1 − 1/√2.
        let e = [vec![1.0f32, 0.0], vec![0.0, 1.0], vec![1.0, 1.0]];
        let expected = (1.0 + 2.0 * (1.0 - 0.5f64.sqrt())) / 3.0;
        let d = mean_pairwise_cosine_distance(&e);
        assert!((d - expected).abs() < 1e-9, "{d} vs {expected}");
    }

    #[test]
    fn extremes() {
        let same = [vec![1.0f32, 2.0], vec![2.0, 4.0], vec![0.5, 1.0]];
        assert!(mean_pairwise_cosine_distance(&same).abs() < 1e-9);
        let opposite = [vec![1.0f32, 0.0], vec![-1.0, 0.0]];
        assert!((mean_pairwise_cosine_distance(&opposite) - 2.0).abs() < 1e-9);
        assert_eq!(mean_pairwise_cosine_distance(&[vec![1.0f32]]), 0.0);
        assert_eq!(mean_pairwise_cosine_distance::<Vec<f32>>(&[]), 0.0);
    }
}
