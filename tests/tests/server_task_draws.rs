//! The real `amortize serve` on a tiny random model: a comparison without
//! prompts draws the runs' task's first problems the way its training draws
//! them (arithmetic: only digits, signs, '=', ',' and spaces; the stop token
//! not shown) from every source — a trained run, a few-shot base run and the
//! base model — and gives every sample its log-reward; a Z written by hand
//! is rated for one of those problems; with prompts, samples are free text
//! without a reward.

use std::time::Duration;

use amortize::model::tiny::write_tiny_model;
use amortize_tests::{finished, Server};
use serde_json::json;

#[test]
fn a_comparison_without_prompts_draws_the_tasks_way_with_rewards() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_tiny_model(&dir.path().join("model"), 3).unwrap().gguf;
    let server = Server::start(&model, &dir.path().join("data"), &[]);
    let options = json!({"generated": 4, "k_shot": 1, "eval_limit": 1, "eval_samples": 1});
    let config = json!({"steps": 1, "batch_size": 2, "min_len": 3, "max_len": 10, "lora_r": 4});
    let mut ids = Vec::new();
    for req in [
        json!({"name": "gfn", "task": "arithmetic", "eval_samples": 0, "task_options": options, "config": config}),
        json!({"name": "two-shot", "task": "arithmetic", "method": "base", "shots": 2, "eval_samples": 1, "task_options": options, "config": config}),
        json!({"name": "rng", "task": "rng", "eval_samples": 0, "config": {"steps": 1, "batch_size": 2}}),
    ] {
        let (s, r) = server.post("/api/runs", &req);
        assert_eq!(s, 201, "{r}");
        let r = server.wait_run(r["id"].as_str().unwrap(), Duration::from_secs(300), finished);
        assert_eq!(r["status"], "completed", "{r}");
        ids.push(r["id"].as_str().unwrap().to_string());
    }

    // Temperature 3: the random policy stops now and then.
    let req = json!({"runs": [ids[0], ids[1], "base"], "decoding": {"n": 3, "temperature": 3.0, "seed": 1}});
    let (s, cmp) = server.post("/api/comparisons", &req);
    assert_eq!(s, 201, "{cmp}");
    assert_eq!(cmp["task"], "arithmetic");
    let prompts: Vec<&str> = cmp["prompts"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert!(!prompts.is_empty() && prompts.iter().all(|p| p.starts_with("Question: ") && p.ends_with("= ? Answer:")), "{prompts:?}");
    let cols = cmp["columns"].as_array().unwrap();
    assert_eq!(cols.len(), 3);
    let mut texts = Vec::new();
    for c in cols {
        let samples = c["samples"].as_array().unwrap();
        assert_eq!(samples.len(), prompts.len(), "a list per problem");
        for g in samples.iter().flat_map(|g| g.as_array().unwrap()) {
            assert_eq!(g.as_object().unwrap().len(), 5, "{g}");
            let text = g["text"].as_str().unwrap();
            assert!(text.chars().all(|ch| ch.is_ascii_digit() || " +-=,".contains(ch)), "the task's tokens only: {text:?}");
            let r = g["log_reward"].as_f64().unwrap();
            assert!(r.is_finite() && r < 0.0, "{g}");
            texts.push(text.to_string());
        }
        let m = &c["metrics"]["log_reward"]["mean"];
        assert!(m.as_f64().is_some_and(f64::is_finite), "{}", c["metrics"]);
    }
    // Both sample the base model with the same seed; only the examples differ.
    assert_ne!(cols[1]["samples"], cols[2]["samples"], "the few-shot run reads its examples first");
    assert!(texts.iter().any(|t| t.chars().filter(|c| !c.is_whitespace()).count() >= 3), "the lengths of the runs: {texts:?}");
    let (s, again) = server.get(&format!("/api/comparisons/{}", cmp["id"]));
    assert_eq!((s, &again), (200, &cmp));
    // The same seed draws the same samples.
    let (_, twice) = server.post("/api/comparisons", &req);
    assert_eq!(twice["columns"], cmp["columns"]);

    // A Z written by hand, rated for one of those problems (the calculator's answer in it).
    let (s, r) = server.post("/api/rate", &json!({"run": ids[0], "problem": 1, "text": " 2 + 3 = 5, 5 - 1 = 4"}));
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["prompt"].as_str(), Some(prompts[1]), "{r}");
    assert!(r["log_reward"].as_f64().is_some_and(|x| x.is_finite() && x < 0.0) && r["actions"].as_u64().unwrap() > 0, "{r}");
    for (body, field, needle) in [
        (json!({"run": ids[0], "problem": 1, "text": " 2 + 3 = 7"}), "text", "tool answers \" 2 + 3 =\" with \" 5\""),
        (json!({"run": ids[0], "problem": 999, "text": " 1"}), "problem", "problems"),
        (json!({"run": "run-nope", "problem": 0, "text": " 1"}), "run", "run-nope"),
    ] {
        let (s, e) = server.post("/api/rate", &body);
        assert!(s == 400 && e["field"] == field && e["error"].as_str().unwrap().contains(needle), "{body}: {s} {e}");
    }

    // Prompts given: free text, no reward.
    let (s, free) = server.post("/api/comparisons", &json!({"runs": [ids[0], "base"], "prompts": ["one"], "decoding": {"n": 2, "max_tokens": 4}}));
    assert_eq!(s, 201, "{free}");
    assert!(free.get("task").is_none(), "{free}");
    assert!(free["columns"][0]["samples"][0][0].get("log_reward").is_none(), "{free}");
    assert!(free["columns"][0]["metrics"].get("log_reward").is_none());

    // Runs of two tasks have no shared problems.
    let (s, e) = server.post("/api/comparisons", &json!({"runs": [ids[0], ids[2]]}));
    assert_eq!((s, e["field"].as_str()), (400, Some("prompts")), "{e}");
}
