//! Accuracy of sampled answers under majority voting (self-consistency).
//!
//! For each question a method samples k answers; the most frequent one is its
//! final answer, which is correct when it equals the gold answer. Answers are
//! compared as exact strings: normalise them (trim, extract the number, ...)
//! before calling.

use std::collections::HashMap;

/// The most frequent answer; ties go to the answer whose first occurrence is
/// earliest. `None` for no answers.
pub fn majority_vote<S: AsRef<str>>(answers: &[S]) -> Option<&str> {
    // Distinct answers in order of first occurrence, with their counts.
    let mut order: Vec<(&str, usize)> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for a in answers {
        let a = a.as_ref();
        match index.get(a) {
            Some(&i) => order[i].1 += 1,
            None => {
                index.insert(a, order.len());
                order.push((a, 1));
            }
        }
    }
    let mut best: Option<(&str, usize)> = None;
    for &(a, c) in &order {
        // Strictly greater: an earlier answer keeps a tie.
        if best.is_none_or(|(_, bc)| c > bc) {
            best = Some((a, c));
        }
    }
    best.map(|(a, _)| a)
}

/// Fraction of questions whose majority answer ([`majority_vote`]) equals the
/// gold answer: `samples[q]` are the sampled answers for question `q` and
/// `gold[q]` its gold answer.
///
/// A question without samples counts as wrong; no questions gives 0.
///
/// # Panics
/// If `samples` and `gold` have different lengths.
pub fn majority_vote_accuracy<S, V, G>(samples: &[V], gold: &[G]) -> f64
where
    S: AsRef<str>,
    V: AsRef<[S]>,
    G: AsRef<str>,
{
    assert_eq!(
        samples.len(),
        gold.len(),
        "majority_vote_accuracy: one gold answer per question"
    );
    if samples.is_empty() {
        return 0.0;
    }
    let correct = samples
        .iter()
        .zip(gold)
        .filter(|(s, g)| majority_vote(s.as_ref()) == Some(g.as_ref()))
        .count();
    correct as f64 / samples.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vote_and_ties() {
        assert_eq!(majority_vote(&["4", "5", "5", "4", "5"]), Some("5"));
        // 4 and 5 tie with two votes each; 4 appeared first.
        assert_eq!(majority_vote(&["7", "4", "5", "5", "4"]), Some("4"));
        assert_eq!(majority_vote(&["b", "a"]), Some("b"));
        assert_eq!(majority_vote::<&str>(&[]), None);
        let owned = vec!["x".to_string(), "y".to_string(), "y".to_string()];
        assert_eq!(majority_vote(&owned), Some("y"));
    }

    #[test]
    fn accuracy_hand_worked() {
        let samples = vec![
            vec!["1", "2", "2"], // majority 2, gold 2: right
            vec!["3", "3", "9"], // majority 3, gold 9: wrong
            vec![],              // no samples: wrong
            vec!["a", "b"],      // tie -> "a", gold "a": right
        ];
        let gold = ["2", "9", "0", "a"];
        assert_eq!(majority_vote_accuracy(&samples, &gold), 0.5);
        let none: Vec<Vec<&str>> = vec![];
        assert_eq!(majority_vote_accuracy(&none, &[] as &[&str]), 0.0);
    }
}
