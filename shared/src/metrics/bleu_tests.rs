//! Hand-worked unit tests for BLEU (the module file keeps only the code).

use super::*;

fn toks(s: &str) -> Vec<&str> {
    s.split_whitespace().collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

fn opts(smoothing: Smoothing, effective_order: bool) -> BleuOptions {
    BleuOptions {
        smoothing,
        effective_order,
    }
}

// hyp "the cat sat on the mat" vs ref "the cat is on the mat":
// p1 = 5/6, p2 = 3/5, p3 = 1/4, p4 = 0/3; c = r = 6.
const HYP: &str = "the cat sat on the mat";
const REF: &str = "the cat is on the mat";

#[test]
fn stats_hand_worked() {
    let s = bleu_stats(&toks(HYP), &[toks(REF)]);
    assert_eq!(s.matches, [5, 3, 1, 0]);
    assert_eq!(s.totals, [6, 5, 4, 3]);
    assert_eq!((s.hyp_len, s.ref_len), (6, 6));
}

#[test]
fn smoothing_variants_hand_worked() {
    let s = bleu_stats(&toks(HYP), &[toks(REF)]);
    // 5/6 · 3/5 · 1/4 = 1/8 before the 4-gram precision.
    assert_eq!(s.score(opts(Smoothing::None, false)), 0.0);
    assert!(close(
        s.score(opts(Smoothing::Exp, false)),
        (1.0f64 / 48.0).powf(0.25)
    ));
    assert!(close(
        s.score(opts(Smoothing::Floor(0.1), false)),
        (1.0f64 / 240.0).powf(0.25)
    ));
    assert!(close(
        s.score(opts(Smoothing::Epsilon(0.1), false)),
        (1.0f64 / 240.0).powf(0.25)
    ));
    // add-1 on n ≥ 2: 5/6 · 4/6 · 2/5 · 1/4 = 1/18.
    assert!(close(
        s.score(opts(Smoothing::AddK(1.0), false)),
        (1.0f64 / 18.0).powf(0.25)
    ));
}

#[test]
fn exp_smoothing_doubles_per_missing_order() {
    // Orders 3 and 4 unmatched: p3 = 1/(2·t3), p4 = 1/(4·t4).
    let s = BleuStats {
        hyp_len: 5,
        ref_len: 5,
        matches: [5, 2, 0, 0],
        totals: [5, 4, 3, 2],
        too_short: [0; 4],
    };
    let expected = (1.0f64 * 0.5 * (1.0 / 6.0) * (1.0 / 8.0)).powf(0.25);
    assert!(close(s.score(BleuOptions::SACREBLEU_CORPUS), expected));
}

#[test]
fn short_hypothesis_brevity_and_effective_order() {
    // c = 2, r = 6: BP = e^(1 − 3) = e^−2; p1 = p2 = 1; no 3- or 4-grams.
    let s = bleu_stats(&toks("the cat"), &[toks(HYP)]);
    assert_eq!(s.totals, [2, 1, 0, 0]);
    assert_eq!(s.too_short, [0, 0, 1, 1]);
    let bp = (-2.0f64).exp();
    assert!(close(brevity_penalty(2, 6), bp));
    assert!(close(s.score(BleuOptions::SACREBLEU_SENTENCE), bp));
    assert_eq!(s.score(BleuOptions::SACREBLEU_CORPUS), 0.0);
    // nltk method1: p3 = p4 = 0.1 / 1, so (1 · 1 · 0.1 · 0.1)^(1/4) = √0.1.
    assert!(close(
        s.score(BleuOptions::NLTK_METHOD1),
        bp * 0.1f64.sqrt()
    ));
    // add-k: t3 = t4 = k, m3 = m4 = k, so p3 = p4 = 1.
    assert!(close(s.score(opts(Smoothing::AddK(1.0), false)), bp));
}

#[test]
fn closest_reference_ties_take_the_shorter() {
    let hyp = toks("a b c d e");
    for refs in [
        [toks("a b c d"), toks("a b c d e f")],
        [toks("a b c d e f"), toks("a b c d")],
    ] {
        let s = bleu_stats(&hyp, &refs);
        assert_eq!(s.ref_len, 4);
    }
    let s = bleu_stats(&toks("a b"), &[toks("a b c d e f"), toks("a b c")]);
    assert_eq!(s.ref_len, 3);
    assert!(close(brevity_penalty(2, 3), (1.0f64 - 1.5).exp()));
    assert_eq!(brevity_penalty(7, 3), 1.0);
    assert_eq!(brevity_penalty(0, 3), 0.0);
}

#[test]
fn clipping_uses_max_count_in_one_reference() {
    let s = bleu_stats(&toks("the the the the"), &[toks("the cat")]);
    assert_eq!(s.matches[0], 1);
    // "a" is allowed twice (second reference) and "b" once (first): 3 of 4.
    // Summing counts over references would wrongly allow "a" three times.
    let s = bleu_stats(&toks("a a a b"), &[toks("a b"), toks("a x a")]);
    assert_eq!(s.matches[0], 3);
    assert_eq!(s.matches[1], 1); // "a b" from the first reference; "a a" nowhere
}

#[test]
fn no_match_or_empty_is_zero() {
    let hyp = toks("alpha beta gamma delta");
    let refs = [toks("one two three four")];
    for smoothing in [
        Smoothing::None,
        Smoothing::Exp,
        Smoothing::Floor(0.1),
        Smoothing::AddK(1.0),
        Smoothing::Epsilon(0.1),
    ] {
        assert_eq!(sentence_bleu(&hyp, &refs, opts(smoothing, true)), 0.0);
        assert_eq!(sentence_bleu(&hyp, &refs, opts(smoothing, false)), 0.0);
    }
    let empty: Vec<&str> = vec![];
    assert_eq!(sentence_bleu(&empty, &refs, BleuOptions::default()), 0.0);
    let no_refs: Vec<Vec<&str>> = vec![];
    assert_eq!(sentence_bleu(&hyp, &no_refs, BleuOptions::default()), 0.0);
}

#[test]
fn corpus_sums_statistics() {
    // Sentence 1 identical (m = t = [4,3,2,1]); sentence 2 no overlap
    // (m = 0, t = [2,1,0,0]). Summed: p = 4/6, 3/4, 2/2, 1/1; c = r = 6.
    let hyps = vec![toks("a b c d"), toks("x y")];
    let refs = vec![vec![toks("a b c d")], vec![toks("z w")]];
    let score = corpus_bleu(&hyps, &refs, opts(Smoothing::None, false));
    assert!(close(score, 0.5f64.powf(0.25)), "{score}");
    // Not the mean of sentence scores (1 and 0).
    assert!(!close(score, 0.5));
}

#[test]
fn nltk_epsilon_counts_one_per_too_short_sentence() {
    // "a b" vs "a b": m = t = [2, 1, 0, 0]; "c" vs "c": m = t = [1, 0, 0, 0].
    // nltk denominators: p2 = 1 / (1 + 1), p3 = 0.1 / 2, p4 = 0.1 / 2.
    let hyps = vec![toks("a b"), toks("c")];
    let refs = vec![vec![toks("a b")], vec![toks("c")]];
    let stats: BleuStats = hyps.iter().zip(&refs).map(|(h, r)| bleu_stats(h, r)).sum();
    assert_eq!(stats.too_short, [0, 1, 2, 2]);
    let expected = (1.0f64 * 0.5 * 0.05 * 0.05).powf(0.25);
    let score = corpus_bleu(&hyps, &refs, BleuOptions::NLTK_METHOD1);
    assert!(close(score, expected), "{score} vs {expected}");
}

#[test]
fn identical_is_one() {
    let t = toks("a quick brown fox jumps");
    for o in [
        BleuOptions::SACREBLEU_CORPUS,
        BleuOptions::SACREBLEU_SENTENCE,
        BleuOptions::NLTK_METHOD1,
    ] {
        assert!(close(sentence_bleu(&t, std::slice::from_ref(&t), o), 1.0));
    }
}

#[test]
fn options_round_trip_through_json() {
    for o in [
        BleuOptions::NLTK_METHOD1,
        opts(Smoothing::AddK(2.0), true),
        opts(Smoothing::None, false),
    ] {
        let json = serde_json::to_string(&o).unwrap();
        assert_eq!(serde_json::from_str::<BleuOptions>(&json).unwrap(), o);
    }
}
