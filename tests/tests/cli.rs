//! The real `amortize` binary on a tiny random model written to disk: sample and
//! score print well-formed JSON, and every bad input exits non-zero with one
//! clear line (no panic, no backtrace).

use amortize::model::tiny::write_tiny_model;
use amortize_tests::run;

fn tiny() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let paths = write_tiny_model(dir.path(), 3).unwrap();
    let gguf = paths.gguf.to_string_lossy().into_owned();
    (dir, gguf)
}

fn stdout(o: &std::process::Output) -> String {
    assert!(o.status.success(), "failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).unwrap()
}

#[test]
fn sample_prints_one_json_object_per_sample() {
    let (_dir, model) = tiny();
    let out = stdout(&run(&["sample", "--model", &model, "--prompt", "the cat", "-n", "3", "--max-tokens", "5", "--seed", "2", "--json"]));
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    for l in &lines {
        let toks = l["tokens"].as_array().unwrap();
        assert!(!toks.is_empty() && toks.len() <= 5);
        assert!(l["text"].is_string());
        assert!(l["logprob"].as_f64().unwrap() < 0.0);
    }
    // Same seed, same samples.
    let again = stdout(&run(&["sample", "--model", &model, "--prompt", "the cat", "-n", "3", "--max-tokens", "5", "--seed", "2", "--json"]));
    assert_eq!(out, again);
}

#[test]
fn score_prints_tokens_logprobs_and_total() {
    let (_dir, model) = tiny();
    let out = stdout(&run(&["score", "--model", &model, "--text", "the hat sat", "--json"]));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let n = v["tokens"].as_array().unwrap().len();
    let lps: Vec<f64> = v["logprobs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(lps.len(), n - 1, "one log-prob per token after the first");
    assert!((lps.iter().sum::<f64>() - v["total"].as_f64().unwrap()).abs() < 1e-3);
    // With a context every text token is scored.
    let out = stdout(&run(&["score", "--model", &model, "--context", "the cat", "--text", " and the hat", "--json"]));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["logprobs"].as_array().unwrap().len(), v["tokens"].as_array().unwrap().len());
}

#[test]
fn bad_inputs_exit_nonzero_with_one_clear_line() {
    let (dir, model) = tiny();
    let corrupt = dir.path().join("corrupt.gguf");
    std::fs::write(&corrupt, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    let corrupt = corrupt.to_string_lossy().into_owned();
    let not_llama = dir.path().join("bert");
    std::fs::create_dir_all(&not_llama).unwrap();
    std::fs::write(not_llama.join("config.json"), r#"{"model_type":"bert","vocab_size":10,"hidden_size":8,"intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":2}"#).unwrap();
    let not_llama = not_llama.to_string_lossy().into_owned();
    let long_prompt = "the ".repeat(400);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["sample", "--model", "/nonexistent/model.gguf", "--prompt", "x"], "no such model"),
        (vec!["sample", "--model", &corrupt, "--prompt", "x"], "GGUF"),
        (vec!["sample", "--model", &not_llama, "--prompt", "x"], "architecture"),
        (vec!["sample", "--model", &model, "--prompt", &long_prompt], "context"),
        (vec!["sample", "--model", &model, "--prompt", "x", "-n", "0"], "n"),
        (vec!["sample", "--model", &model, "--prompt", "x", "--temperature", "0"], "temperature"),
        (vec!["sample", "--model", &model, "--prompt", "x", "--temperature", "-1"], "temperature"),
        (vec!["sample", "--model", &model, "--prompt", "x", "--top-p", "1.5"], "top_p"),
        (vec!["sample", "--model", &model, "--prompt", "x", "--top-p", "0"], "top_p"),
        (vec!["sample", "--model", &model, "--prompt", ""], "empty"),
        (vec!["sample", "--model", &model, "--prompt", "x", "--adapter", "/nonexistent/adapter"], "adapter"),
        (vec!["score", "--model", &model, "--text", "t", "--json"], "2 tokens"),
        (vec!["sample", "--model", &model, "--prompt", "x", "--device", "tpu"], "device"),
    ];
    for (args, needle) in cases {
        let o = run(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} should fail");
        assert_ne!(o.status.code(), Some(101), "{args:?} panicked: {err}");
        assert!(!err.contains("panicked") && !err.contains("backtrace"), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line, got {err}");
        assert!(err.to_lowercase().contains(&needle.to_lowercase()), "{args:?}: {err:?} lacks {needle:?}");
    }
}

#[test]
fn compare_trains_what_is_missing_and_prints_one_row_per_method() {
    let (dir, model) = tiny();
    let out = dir.path().join("cmp");
    let args = ["compare", "--task", "rng", "--model", &model, "--methods", "base,ppo,gfn,base@greedy,gfn@t=0.5+p=0.9", "--steps", "2", "--samples", "16", "--seeds", "2", "--json", "--out", out.to_str().unwrap()];
    let o = run(&args);
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["task"], "rng");
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.iter().map(|r| r["method"].as_str().unwrap()).collect::<Vec<_>>(), ["base", "ppo", "gfn", "base@greedy", "gfn@t=0.5+p=0.9"]);
    for r in rows {
        assert!(r["metrics"]["valid_rate"]["std"].as_f64().is_some(), "{r}");
        // KL exists only when some sample was a valid number.
        assert_eq!(r["metrics"]["kl"].is_object(), r["metrics"]["valid_samples"]["mean"].as_f64().unwrap() > 0.0, "{r}");
    }
    for f in ["compare.json", "compare.md", "ppo-seed1/adapter/adapter_config.json", "gfn-seed0/adapter/adapter_config.json", "samples/base-seed1.json", "samples/base_greedy-seed0.json"] {
        assert!(out.join(f).exists(), "missing {f}");
    }
    // A second call reuses the trained adapters and, with the same seeds, agrees.
    let again: serde_json::Value = serde_json::from_str(stdout(&run(&args)).trim()).unwrap();
    assert_eq!(again, v);
    // Bad methods and adapters are refused with a message.
    for (bad, want) in [(vec!["--methods", "base,magic"], "magic"), (vec!["--methods", "sft"], "no reference"), (vec!["--adapters", "x=/nonexistent"], "adapter"), (vec!["--methods", "base@beam"], "beam")] {
        let o = run(&[&["compare", "--task", "rng", "--model", &model, "--out", out.to_str().unwrap()], bad.as_slice()].concat());
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want) && err.lines().count() == 1, "{err}");
    }
}
