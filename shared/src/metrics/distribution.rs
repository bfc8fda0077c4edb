//! Distribution-matching metrics over an explicit, finite support.
//!
//! A sampler is judged by how close the empirical distribution of its samples
//! is to a target distribution, measured as KL(empirical ‖ target). Because an
//! empirical distribution from `n` samples is noisy, even a perfect sampler
//! scores above zero; [`finite_sample_kl_floor`] gives the value to expect
//! from one, so that results can be read against it.
//!
//! Distributions are slices of probabilities indexed by outcome; the caller
//! keeps the two slices aligned (outcome `i` at index `i` in both).

/// KL divergence KL(p ‖ q) = Σᵢ pᵢ · ln(pᵢ / qᵢ), in nats.
///
/// Conventions:
/// - terms with `pᵢ = 0` contribute 0 (the limit of x·ln x), whatever `qᵢ` is;
/// - a term with `pᵢ > 0` and `qᵢ = 0` makes the result [`f64::INFINITY`];
/// - the inputs are not renormalised: pass probability vectors.
///
/// Two empty slices give 0.
///
/// # Panics
/// If `p` and `q` have different lengths.
pub fn kl_divergence(p: &[f64], q: &[f64]) -> f64 {
    assert_eq!(
        p.len(),
        q.len(),
        "kl_divergence: p and q must share one support (equal lengths)"
    );
    let mut total = 0.0;
    for (&pi, &qi) in p.iter().zip(q) {
        if pi == 0.0 {
            continue;
        }
        if qi == 0.0 {
            return f64::INFINITY;
        }
        total += pi * (pi / qi).ln();
    }
    total
}

/// Empirical distribution of outcome counts: `countsᵢ / Σ counts`.
///
/// If every count is 0 (no samples) the result is all zeros, which is not a
/// distribution; callers that may have no samples should check the total.
pub fn empirical_distribution(counts: &[u64]) -> Vec<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return vec![0.0; counts.len()];
    }
    let total = total as f64;
    counts.iter().map(|&c| c as f64 / total).collect()
}

/// KL(empirical ‖ target), where the empirical distribution comes from
/// `counts` (see [`empirical_distribution`]) and `target` is a probability
/// vector over the same outcomes.
///
/// This direction is finite whenever every sampled outcome has positive
/// target probability, and its expectation for a perfect sampler is
/// approximately [`finite_sample_kl_floor`]. An outcome that was sampled but
/// has target probability 0 gives [`f64::INFINITY`].
///
/// Returns [`f64::NAN`] when the counts sum to 0 (no samples: undefined).
///
/// # Panics
/// If `counts` and `target` have different lengths.
pub fn kl_from_counts(counts: &[u64], target: &[f64]) -> f64 {
    assert_eq!(
        counts.len(),
        target.len(),
        "kl_from_counts: counts and target must share one support (equal lengths)"
    );
    if counts.iter().all(|&c| c == 0) {
        return f64::NAN;
    }
    kl_divergence(&empirical_distribution(counts), target)
}

/// Expected KL(empirical ‖ target) of a perfect sampler: `(k − 1) / (2n)`.
///
/// `k` is the number of outcomes with positive target probability and `n`
/// the number of samples. This is the leading term of the expansion
/// `2n · KL → χ²(k − 1)`, accurate when every `n·qᵢ` is reasonably large.
/// Gives 0 for `k ≤ 1` and [`f64::INFINITY`] for `n = 0` with `k > 1`.
pub fn finite_sample_kl_floor(k: usize, n: u64) -> f64 {
    if k <= 1 {
        return 0.0;
    }
    if n == 0 {
        return f64::INFINITY;
    }
    (k - 1) as f64 / (2.0 * n as f64)
}

/// Fraction of outputs that are valid: `valid / total`, 0 when `total = 0`.
///
/// # Panics
/// In debug builds, if `valid > total`.
pub fn valid_rate(valid: usize, total: usize) -> f64 {
    debug_assert!(
        valid <= total,
        "valid_rate: valid ({valid}) > total ({total})"
    );
    if total == 0 {
        return 0.0;
    }
    valid as f64 / total as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn kl_hand_worked() {
        // p = (1/2, 1/2), q = (1/4, 3/4):
        // 1/2 ln 2 + 1/2 ln(2/3) = 1/2 ln(4/3)
        let kl = kl_divergence(&[0.5, 0.5], &[0.25, 0.75]);
        assert!(close(kl, 0.5 * (4.0f64 / 3.0).ln()), "{kl}");
        // Asymmetric: KL(q || p) = 1/4 ln(1/2) + 3/4 ln(3/2)
        let rev = kl_divergence(&[0.25, 0.75], &[0.5, 0.5]);
        assert!(close(rev, 0.25 * 0.5f64.ln() + 0.75 * 1.5f64.ln()), "{rev}");
        assert!(!close(kl, rev));
    }

    #[test]
    fn kl_zero_conventions() {
        // p_i = 0 terms vanish even where q_i = 0.
        assert_eq!(kl_divergence(&[0.0, 1.0], &[0.0, 1.0]), 0.0);
        assert!(close(kl_divergence(&[0.0, 1.0], &[0.5, 0.5]), 2.0f64.ln()));
        // q_i = 0 with p_i > 0 is infinite.
        assert_eq!(kl_divergence(&[0.5, 0.5], &[1.0, 0.0]), f64::INFINITY);
        assert_eq!(kl_divergence(&[], &[]), 0.0);
    }

    #[test]
    #[should_panic(expected = "equal lengths")]
    fn kl_length_mismatch_panics() {
        kl_divergence(&[1.0], &[0.5, 0.5]);
    }

    #[test]
    fn empirical_and_counts() {
        assert_eq!(empirical_distribution(&[1, 3, 0]), vec![0.25, 0.75, 0.0]);
        assert_eq!(empirical_distribution(&[0, 0]), vec![0.0, 0.0]);
        let kl = kl_from_counts(&[1, 3], &[0.5, 0.5]);
        assert!(close(kl, 0.25 * 0.5f64.ln() + 0.75 * 1.5f64.ln()), "{kl}");
        assert!(kl_from_counts(&[0, 0], &[0.5, 0.5]).is_nan());
        assert_eq!(kl_from_counts(&[2, 2], &[0.5, 0.5]), 0.0);
        assert_eq!(kl_from_counts(&[1, 1], &[1.0, 0.0]), f64::INFINITY);
    }

    #[test]
    fn floor_and_valid_rate() {
        assert!(close(finite_sample_kl_floor(5, 100), 4.0 / 200.0));
        assert_eq!(finite_sample_kl_floor(1, 100), 0.0);
        assert_eq!(finite_sample_kl_floor(3, 0), f64::INFINITY);
        assert_eq!(valid_rate(3, 4), 0.75);
        assert_eq!(valid_rate(0, 0), 0.0);
    }
}
