//! Property tests of the metrics on seeded pseudo-random inputs.
//!
//! A small xorshift generator with fixed seeds keeps the crate free of a
//! property-testing dependency while making every run reproducible; each
//! failure message names the input that broke the property.

use amortize_shared::metrics::{
    bert_score, corpus_bleu, corpus_gleu, kl_divergence, majority_vote,
    mean_pairwise_cosine_distance, sentence_bleu, sentence_gleu, BleuOptions, Smoothing,
};

const CASES: usize = 300;

/// xorshift64* — small, deterministic, good enough for test inputs.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

const VOCAB: [&str; 8] = ["the", "a", "cat", "dog", "sat", "on", "mat", "ran"];

/// A sentence of `min_len..=max_len` tokens from a small vocabulary, so that
/// repeated n-grams (the clipping path) are common.
fn sentence(rng: &mut Rng, min_len: usize, max_len: usize) -> Vec<&'static str> {
    let len = min_len + rng.below(max_len - min_len + 1);
    (0..len).map(|_| VOCAB[rng.below(VOCAB.len())]).collect()
}

fn all_options() -> Vec<BleuOptions> {
    let mut out = Vec::new();
    for smoothing in [
        Smoothing::None,
        Smoothing::Floor(0.1),
        Smoothing::AddK(1.0),
        Smoothing::Exp,
        Smoothing::Epsilon(0.1),
    ] {
        for effective_order in [false, true] {
            out.push(BleuOptions {
                smoothing,
                effective_order,
            });
        }
    }
    out
}

#[test]
fn bleu_of_identical_sentences_is_one() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..CASES {
        let s = sentence(&mut rng, 4, 30);
        for options in all_options() {
            let score = sentence_bleu(&s, std::slice::from_ref(&s), options);
            assert!((score - 1.0).abs() < 1e-12, "{s:?} {options:?}: {score}");
        }
    }
}

#[test]
fn corpus_bleu_of_identical_corpus_is_one() {
    let mut rng = Rng(42);
    for _ in 0..CASES / 10 {
        let hyps: Vec<Vec<&str>> = (0..1 + rng.below(6))
            .map(|_| sentence(&mut rng, 4, 20))
            .collect();
        let refs: Vec<Vec<Vec<&str>>> = hyps.iter().map(|h| vec![h.clone()]).collect();
        for options in all_options() {
            let score = corpus_bleu(&hyps, &refs, options);
            assert!((score - 1.0).abs() < 1e-12, "{hyps:?} {options:?}: {score}");
        }
    }
}

#[test]
fn gleu_of_identical_sentences_is_one() {
    let mut rng = Rng(7);
    for _ in 0..CASES {
        let s = sentence(&mut rng, 4, 30);
        let score = sentence_gleu(&s, std::slice::from_ref(&s));
        assert_eq!(score, 1.0, "{s:?}");
        // An extra, worse reference does not lower it.
        let other = sentence(&mut rng, 1, 10);
        assert_eq!(sentence_gleu(&s, &[other, s.clone()]), 1.0, "{s:?}");
    }
    let hyps: Vec<Vec<&str>> = (0..5).map(|_| sentence(&mut rng, 4, 12)).collect();
    let refs: Vec<Vec<Vec<&str>>> = hyps.iter().map(|h| vec![h.clone()]).collect();
    assert_eq!(corpus_gleu(&hyps, &refs), 1.0);
}

#[test]
fn scores_stay_in_unit_interval_and_gleu_is_symmetric() {
    let mut rng = Rng(2024);
    for _ in 0..CASES {
        let h = sentence(&mut rng, 0, 15);
        let r = sentence(&mut rng, 0, 15);
        for options in all_options() {
            let b = sentence_bleu(&h, std::slice::from_ref(&r), options);
            assert!(
                (0.0..=1.0 + 1e-12).contains(&b),
                "{h:?} / {r:?} {options:?}: {b}"
            );
        }
        let g = sentence_gleu(&h, std::slice::from_ref(&r));
        assert!((0.0..=1.0).contains(&g), "{h:?} / {r:?}: {g}");
        // min(precision, recall) is symmetric for a single reference.
        assert_eq!(
            g,
            sentence_gleu(&r, std::slice::from_ref(&h)),
            "{h:?} / {r:?}"
        );
    }
}

/// A random probability vector of length 1..=12 with some exact zeros.
fn distribution(rng: &mut Rng) -> Vec<f64> {
    let k = 1 + rng.below(12);
    let mut p: Vec<f64> = (0..k)
        .map(|_| {
            if rng.below(4) == 0 {
                0.0
            } else {
                rng.unit() + 1e-3
            }
        })
        .collect();
    if p.iter().all(|&x| x == 0.0) {
        p[0] = 1.0;
    }
    let total: f64 = p.iter().sum();
    p.iter_mut().for_each(|x| *x /= total);
    p
}

#[test]
fn kl_of_identical_distributions_is_zero() {
    let mut rng = Rng(123_456_789);
    for _ in 0..CASES {
        let p = distribution(&mut rng);
        let kl = kl_divergence(&p, &p);
        assert!(kl.abs() < 1e-12, "{p:?}: {kl}");
    }
}

#[test]
fn kl_is_nonnegative() {
    let mut rng = Rng(99);
    for _ in 0..CASES {
        let p = distribution(&mut rng);
        // q over the same support: strictly positive so the value is finite.
        let mut q: Vec<f64> = p.iter().map(|_| rng.unit() + 1e-3).collect();
        let total: f64 = q.iter().sum();
        q.iter_mut().for_each(|x| *x /= total);
        let kl = kl_divergence(&p, &q);
        assert!(kl.is_finite() && kl > -1e-12, "{p:?} || {q:?}: {kl}");
    }
}

#[test]
fn embedding_metrics_on_identical_inputs() {
    let mut rng = Rng(5);
    for _ in 0..CASES / 10 {
        let dim = 1 + rng.below(16);
        let tokens: Vec<Vec<f32>> = (0..1 + rng.below(8))
            .map(|_| (0..dim).map(|_| rng.unit() as f32 - 0.5).collect())
            .collect();
        let s = bert_score(&tokens, &tokens);
        assert!((s.f1 - 1.0).abs() < 1e-6, "{tokens:?}: {s:?}");
        // Copies of one vector (scaled) have no diversity.
        let copies: Vec<Vec<f32>> = (1..4)
            .map(|k| tokens[0].iter().map(|x| x * k as f32).collect())
            .collect();
        let d = mean_pairwise_cosine_distance(&copies);
        // A zero vector has distance 1 to everything by convention.
        if tokens[0].iter().any(|&x| x != 0.0) {
            assert!(d.abs() < 1e-6, "{copies:?}: {d}");
        }
    }
}

#[test]
fn majority_vote_returns_a_most_frequent_answer() {
    let mut rng = Rng(31337);
    let answers = ["1", "2", "3", "4"];
    for _ in 0..CASES {
        let votes: Vec<&str> = (0..1 + rng.below(9))
            .map(|_| answers[rng.below(4)])
            .collect();
        let winner = majority_vote(&votes).expect("non-empty");
        let count = |a: &str| votes.iter().filter(|&&v| v == a).count();
        let first = |a: &str| votes.iter().position(|&v| v == a).unwrap();
        for &a in &votes {
            assert!(count(winner) >= count(a), "{votes:?} -> {winner}");
            if count(a) == count(winner) {
                assert!(
                    first(winner) <= first(a),
                    "{votes:?} -> {winner}: tie not to first"
                );
            }
        }
    }
}
