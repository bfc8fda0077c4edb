//! Checks the Rust metrics against reference values from sacrebleu and nltk.
//!
//! The reference file is produced by `tools/metrics/make_reference.py`
//! (sacrebleu with tokenize='none', nltk on `str.split()` tokens), so the
//! texts here are split on whitespace too. sacrebleu reports BLEU on a 0–100
//! scale; it is divided by 100 before comparing.

use std::collections::BTreeMap;

use amortize_shared::metrics::{
    corpus_bleu, corpus_gleu, kl_divergence, kl_from_counts, sentence_bleu, sentence_gleu,
    BleuOptions, Smoothing,
};
use serde::Deserialize;

const TOL: f64 = 1e-6;

#[derive(Deserialize)]
struct Reference {
    sentences: Vec<Sentence>,
    corpora: Vec<Corpus>,
    kl: Vec<KlCase>,
    kl_from_counts: Vec<KlCountCase>,
}

#[derive(Deserialize)]
struct Sentence {
    hypothesis: String,
    references: Vec<String>,
    sacrebleu_sentence_bleu: BTreeMap<String, f64>,
    sacrebleu_sentence_bleu_default: f64,
    nltk_sentence_bleu_method1: f64,
    nltk_sentence_gleu: f64,
}

#[derive(Deserialize)]
struct Corpus {
    indices: Vec<usize>,
    sacrebleu_corpus_bleu: BTreeMap<String, f64>,
    sacrebleu_corpus_bleu_default: f64,
    nltk_corpus_bleu_method1: f64,
    nltk_corpus_gleu: f64,
}

#[derive(Deserialize)]
struct KlCase {
    p: Vec<f64>,
    q: Vec<f64>,
    kl: f64,
}

#[derive(Deserialize)]
struct KlCountCase {
    counts: Vec<u64>,
    target: Vec<f64>,
    kl: f64,
}

fn load() -> Reference {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/metric_reference.json"
    );
    let text = std::fs::read_to_string(path).expect("read metric_reference.json");
    serde_json::from_str(&text).expect("parse metric_reference.json")
}

fn split(s: &str) -> Vec<&str> {
    s.split_whitespace().collect()
}

/// Options for a key "method/eff" or "method/noeff", with sacrebleu's
/// default smoothing values (floor 0.1, add-k 1).
fn sacrebleu_options(key: &str) -> BleuOptions {
    let (method, eff) = key.split_once('/').expect("key is method/eff");
    let smoothing = match method {
        "none" => Smoothing::None,
        "floor" => Smoothing::Floor(0.1),
        "add-k" => Smoothing::AddK(1.0),
        "exp" => Smoothing::Exp,
        other => panic!("unknown smooth_method {other}"),
    };
    let effective_order = match eff {
        "eff" => true,
        "noeff" => false,
        other => panic!("unknown effective-order flag {other}"),
    };
    BleuOptions {
        smoothing,
        effective_order,
    }
}

fn check(what: &str, got: f64, want: f64, failures: &mut Vec<String>) {
    if (got - want).abs() > TOL {
        failures.push(format!("{what}: got {got}, want {want}"));
    }
}

fn assert_no_failures(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn sentence_bleu_matches_sacrebleu() {
    let reference = load();
    let mut failures = Vec::new();
    let mut checked = 0;
    for s in &reference.sentences {
        let hyp = split(&s.hypothesis);
        let refs: Vec<Vec<&str>> = s.references.iter().map(|r| split(r)).collect();
        for (key, &want) in &s.sacrebleu_sentence_bleu {
            let got = sentence_bleu(&hyp, &refs, sacrebleu_options(key));
            check(
                &format!("{:?} [{key}]", s.hypothesis),
                got,
                want / 100.0,
                &mut failures,
            );
            checked += 1;
        }
        let got = sentence_bleu(&hyp, &refs, BleuOptions::SACREBLEU_SENTENCE);
        let want = s.sacrebleu_sentence_bleu_default / 100.0;
        check(
            &format!("{:?} [default]", s.hypothesis),
            got,
            want,
            &mut failures,
        );
    }
    assert!(checked >= 80, "only {checked} values checked");
    assert_no_failures(failures);
}

#[test]
fn sentence_bleu_matches_nltk_method1() {
    let reference = load();
    let mut failures = Vec::new();
    for s in &reference.sentences {
        let hyp = split(&s.hypothesis);
        let refs: Vec<Vec<&str>> = s.references.iter().map(|r| split(r)).collect();
        let got = sentence_bleu(&hyp, &refs, BleuOptions::NLTK_METHOD1);
        check(
            &s.hypothesis,
            got,
            s.nltk_sentence_bleu_method1,
            &mut failures,
        );
    }
    assert_no_failures(failures);
}

#[test]
fn sentence_gleu_matches_nltk() {
    let reference = load();
    let mut failures = Vec::new();
    for s in &reference.sentences {
        let hyp = split(&s.hypothesis);
        let refs: Vec<Vec<&str>> = s.references.iter().map(|r| split(r)).collect();
        check(
            &s.hypothesis,
            sentence_gleu(&hyp, &refs),
            s.nltk_sentence_gleu,
            &mut failures,
        );
    }
    assert_no_failures(failures);
}

#[test]
fn corpus_scores_match_sacrebleu_and_nltk() {
    let reference = load();
    let mut failures = Vec::new();
    assert!(!reference.corpora.is_empty());
    for c in &reference.corpora {
        let sentences: Vec<&Sentence> =
            c.indices.iter().map(|&i| &reference.sentences[i]).collect();
        let hyps: Vec<Vec<&str>> = sentences.iter().map(|s| split(&s.hypothesis)).collect();
        let refs: Vec<Vec<Vec<&str>>> = sentences
            .iter()
            .map(|s| s.references.iter().map(|r| split(r)).collect())
            .collect();
        let name = format!("corpus {:?}", c.indices);
        for (key, &want) in &c.sacrebleu_corpus_bleu {
            let got = corpus_bleu(&hyps, &refs, sacrebleu_options(key));
            check(
                &format!("{name} sacrebleu [{key}]"),
                got,
                want / 100.0,
                &mut failures,
            );
        }
        let got = corpus_bleu(&hyps, &refs, BleuOptions::SACREBLEU_CORPUS);
        let want = c.sacrebleu_corpus_bleu_default / 100.0;
        check(
            &format!("{name} sacrebleu [default]"),
            got,
            want,
            &mut failures,
        );
        let got = corpus_bleu(&hyps, &refs, BleuOptions::NLTK_METHOD1);
        check(
            &format!("{name} nltk bleu method1"),
            got,
            c.nltk_corpus_bleu_method1,
            &mut failures,
        );
        let got = corpus_gleu(&hyps, &refs);
        check(
            &format!("{name} nltk gleu"),
            got,
            c.nltk_corpus_gleu,
            &mut failures,
        );
    }
    assert_no_failures(failures);
}

#[test]
fn kl_matches_python() {
    let reference = load();
    let mut failures = Vec::new();
    assert!(!reference.kl.is_empty() && !reference.kl_from_counts.is_empty());
    for case in &reference.kl {
        let got = kl_divergence(&case.p, &case.q);
        check(
            &format!("KL({:?} || {:?})", case.p, case.q),
            got,
            case.kl,
            &mut failures,
        );
    }
    for case in &reference.kl_from_counts {
        let got = kl_from_counts(&case.counts, &case.target);
        check(
            &format!("KL({:?} counts)", case.counts),
            got,
            case.kl,
            &mut failures,
        );
    }
    assert_no_failures(failures);
}
