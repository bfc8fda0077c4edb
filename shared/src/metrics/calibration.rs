//! Batch calibration of a classifier that is a language model's likelihood
//! of each label (Zhou et al., "Batch Calibration", ICLR 2024).
//!
//! A small model often prefers one label whatever the input (its "contextual
//! prior"). Batch calibration estimates that prior as the mean, over a batch
//! of inputs, of each input's label distribution p_i(y) (the labels'
//! likelihoods normalised over the labels), and picks
//! argmax_y log p_i(y) − log π(y). It reads no gold labels, but it is
//! transductive: every input's choice depends on the whole batch.

/// For each input, the label chosen after batch calibration. `log_scores[i][y]`
/// is log p(label y | input i) up to a constant per input (e.g. the summed
/// log-probability of the label's tokens); every row must have the same
/// number of labels. Ties go to the lower label index. No inputs give none.
///
/// # Panics
/// If the rows have different lengths.
pub fn batch_calibrated_choices<V: AsRef<[f64]>>(log_scores: &[V]) -> Vec<usize> {
    let Some(first) = log_scores.first() else { return Vec::new() };
    let labels = first.as_ref().len();
    // p_i(y): each row normalised over the labels (a stable softmax).
    let probs: Vec<Vec<f64>> = log_scores
        .iter()
        .map(|row| {
            let row = row.as_ref();
            assert_eq!(row.len(), labels, "batch_calibrated_choices: one score per label in every row");
            let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = row.iter().map(|&s| (s - max).exp()).collect();
            let z: f64 = e.iter().sum();
            e.into_iter().map(|x| x / z).collect()
        })
        .collect();
    // π(y) = mean_i p_i(y).
    let prior: Vec<f64> = (0..labels).map(|y| probs.iter().map(|p| p[y]).sum::<f64>() / probs.len() as f64).collect();
    probs
        .iter()
        .map(|p| {
            let mut best = 0;
            for y in 1..labels {
                // Compare p(y)/π(y) without logs: π(y) > 0 for any label some row gives mass.
                if p[y] * prior[best] > p[best] * prior[y] {
                    best = y;
                }
            }
            best
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_hand_worked() {
        // p(label 1) = 0.9, 0.8, 0.6, 0.7: uncalibrated, every input picks 1.
        // Prior π = (0.25, 0.75). Ratios p/π: (0.4, 1.2), (0.8, 1.067), (1.6, 0.8), (1.2, 0.933).
        let rows: Vec<Vec<f64>> = [0.9f64, 0.8, 0.6, 0.7].iter().map(|&p| vec![(1.0 - p).ln(), p.ln()]).collect();
        assert_eq!(batch_calibrated_choices(&rows), vec![1, 1, 0, 0]);
        // Unnormalised scores (a constant added per row) choose the same.
        let shifted: Vec<Vec<f64>> = rows.iter().enumerate().map(|(i, r)| r.iter().map(|s| s - 40.0 * i as f64).collect()).collect();
        assert_eq!(batch_calibrated_choices(&shifted), vec![1, 1, 0, 0]);
    }

    #[test]
    fn a_balanced_batch_is_left_alone_and_empty_is_empty() {
        // π = (0.5, 0.5): calibration changes nothing; an exact tie picks label 0.
        let rows = vec![vec![0.7f64.ln(), 0.3f64.ln()], vec![0.3f64.ln(), 0.7f64.ln()], vec![0.0, 0.0]];
        assert_eq!(batch_calibrated_choices(&rows), vec![0, 1, 0]);
        assert!(batch_calibrated_choices::<Vec<f64>>(&[]).is_empty());
    }
}
