//! Summary statistics for repeated measurements (seeds, prompts, runs).
//!
//! Results are reported as mean ± sample standard deviation; [`MeanStd`]
//! carries both together with the number of values so that a reader can tell
//! a spread of 0 from a single measurement.

use serde::{Deserialize, Serialize};

/// Mean and sample standard deviation of `values`.
///
/// - mean = Σ xᵢ / n
/// - std = √(Σ (xᵢ − mean)² / (n − 1)) (Bessel-corrected, as `numpy.std(ddof=1)`)
///
/// The std is 0 when `n < 2`; the mean of an empty slice is 0.
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len();
    if n == 0 {
        return (0.0, 0.0);
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return (mean, 0.0);
    }
    let ss: f64 = values.iter().map(|x| (x - mean) * (x - mean)).sum();
    (mean, (ss / (n - 1) as f64).sqrt())
}

/// A mean, its sample standard deviation and the number of values behind
/// them; see [`mean_std`] for the conventions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MeanStd {
    /// Arithmetic mean (0 when `n = 0`).
    pub mean: f64,
    /// Sample standard deviation with the n − 1 denominator (0 when `n < 2`).
    pub std: f64,
    /// Number of values summarised.
    pub n: usize,
}

impl MeanStd {
    /// Summarises `values` with [`mean_std`].
    pub fn from_values(values: &[f64]) -> Self {
        let (mean, std) = mean_std(values);
        MeanStd {
            mean,
            std,
            n: values.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_worked() {
        // mean 5; squared deviations 9+1+1+9 = 20; 20/3.
        let (m, s) = mean_std(&[2.0, 4.0, 6.0, 8.0]);
        assert_eq!(m, 5.0);
        assert!((s - (20.0f64 / 3.0).sqrt()).abs() < 1e-12, "{s}");
    }

    #[test]
    fn small_inputs() {
        assert_eq!(mean_std(&[]), (0.0, 0.0));
        assert_eq!(mean_std(&[3.5]), (3.5, 0.0));
        assert_eq!(mean_std(&[1.0, 1.0]), (1.0, 0.0));
    }

    #[test]
    fn struct_and_serde() {
        let ms = MeanStd::from_values(&[1.0, 3.0]);
        assert_eq!(ms.n, 2);
        assert_eq!(ms.mean, 2.0);
        assert!((ms.std - 2.0f64.sqrt()).abs() < 1e-12);
        let json = serde_json::to_string(&ms).unwrap();
        assert!(json.contains("\"n\":2"), "{json}");
        assert_eq!(serde_json::from_str::<MeanStd>(&json).unwrap(), ms);
    }
}
