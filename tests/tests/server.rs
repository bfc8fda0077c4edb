//! The real `amortize serve` binary on a tiny random model, driven over HTTP:
//! a run from creation to completion watched over SSE, sampling from its
//! adapter, a comparison of two runs, downloads, the OpenAPI document, bad
//! input, the token guard, and a SIGKILL in the middle of a run.

use std::time::Duration;

use amortize::model::tiny::write_tiny_model;
use amortize_tests::{finished, Server};
use serde_json::{json, Value};

fn tiny() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let paths = write_tiny_model(&dir.path().join("model"), 3).unwrap();
    (dir, paths.gguf)
}

/// A small RNG run on the tiny model.
fn rng_run(name: &str, steps: usize, every: usize, eval_samples: usize) -> Value {
    json!({
        "name": name,
        "experiment": "e2e",
        "task": "rng",
        "config": {"steps": steps, "batch_size": 4, "checkpoint_every": every, "warmup_steps": 2},
        "eval_samples": eval_samples,
    })
}

#[test]
fn a_run_from_creation_to_comparison() {
    let (dir, model) = tiny();
    let server = Server::start(&model, &dir.path().join("data"), &[]);

    let (s, m) = server.get("/api/model");
    assert_eq!(s, 200, "{m}");
    assert!(m["parameters"].as_u64().unwrap() > 0 && m["context_length"].as_u64().unwrap() > 0, "{m}");
    let (_, tasks) = server.get("/api/tasks");
    let names: Vec<&str> = tasks.as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"rng") && names.contains(&"infill"), "{names:?}");
    let rng = tasks.as_array().unwrap().iter().find(|t| t["name"] == "rng").unwrap();
    assert_eq!(rng["metrics"][0], "kl");

    // Create a run and watch it over SSE to the end.
    let mut req = rng_run("first", 12, 4, 40);
    req["notes"] = json!("first try");
    let (s, run) = server.post("/api/runs", &req);
    assert_eq!(s, 201, "{run}");
    let id = run["id"].as_str().unwrap().to_string();
    assert_eq!(run["config"]["steps"], 12);
    let events = server.events(&format!("/api/runs/{id}/events"), Duration::from_secs(300));
    let steps: Vec<u64> = events.iter().filter(|(n, _)| n == "metrics").map(|(_, e)| e["point"]["step"].as_u64().unwrap()).collect();
    assert!(!steps.is_empty(), "no metrics events: {events:?}");
    assert!(steps.windows(2).all(|w| w[1] == w[0] + 1), "steps not consecutive: {steps:?}");
    assert_eq!(*steps.last().unwrap(), 12);
    assert!(events.iter().any(|(n, e)| n == "samples" && !e["samples"].as_array().unwrap().is_empty()));
    // The evaluation's 40 samples streamed as progress, after the last step.
    let progress: Vec<&Value> = events.iter().filter(|(n, _)| n == "progress").map(|(_, e)| e).collect();
    assert!(progress.iter().all(|e| e["stage"] == "drawing samples" && e["total"] == 40 && e["done"].as_u64() <= Some(40)), "{progress:?}");
    assert_eq!(progress.last().map(|e| e["done"].as_u64()), Some(Some(40)), "{progress:?}");
    let last_step = events.iter().rposition(|(n, _)| n == "metrics").unwrap();
    assert!(events.iter().position(|(n, _)| n == "progress").unwrap() > last_step, "{events:?}");
    let (name, last) = events.last().unwrap();
    assert_eq!(name, "status");
    assert_eq!(last["run"]["status"], "completed", "{last}");
    let (_, run) = server.get(&format!("/api/runs/{id}"));
    assert_eq!(run["step"], 12);
    let fm = &run["final_metrics"];
    assert!(fm["valid_rate"].as_f64().is_some() && fm["samples"].as_f64() == Some(40.0), "{run}");
    assert_eq!(fm["kl"].is_number(), fm["valid_samples"].as_f64().unwrap() > 0.0, "KL only with valid samples: {run}");
    let (_, series) = server.get(&format!("/api/runs/{id}/metrics"));
    assert_eq!(series.as_array().unwrap().len(), 12);
    // The sampler's fit comes with the steps that drew from the untempered policy.
    let ess: Vec<f64> = series.as_array().unwrap().iter().filter_map(|p| p["sampler_ess"].as_f64()).collect();
    assert!(!ess.is_empty() && ess.iter().all(|&e| e > 0.0 && e <= 1.0 + 1e-9), "{series}");
    // Renamed and annotated at any time; the notes given at creation were kept.
    assert_eq!(run["notes"], "first try", "{run}");
    let (s, v) = server.patch(&format!("/api/runs/{id}"), &json!({"name": "renamed", "notes": "KL looks fine\nnext: lower lr"}));
    assert_eq!(s, 200, "{v}");
    let (_, list) = server.get("/api/runs");
    let row = list.as_array().unwrap().iter().find(|r| r["id"] == id.as_str()).unwrap().clone();
    assert_eq!((row["name"].as_str(), row["notes"].as_str()), (Some("renamed"), Some("KL looks fine\nnext: lower lr")), "{row}");
    let (s, v) = server.patch(&format!("/api/runs/{id}"), &json!({"notes": ""}));
    assert_eq!((s, v["name"].as_str(), v["notes"].as_str()), (200, Some("renamed"), Some("")), "a name left out is kept: {v}");
    assert_eq!(v["experiment"], "e2e");
    let (s, v) = server.patch(&format!("/api/runs/{id}"), &json!({"experiment": "sweep-1"}));
    assert_eq!((s, v["experiment"].as_str(), v["name"].as_str()), (200, Some("sweep-1"), Some("renamed")), "{v}");
    let (_, exps) = server.get("/api/experiments");
    assert!(exps.as_array().unwrap().iter().any(|e| e["name"] == "sweep-1" && e["runs"] == 1), "{exps}");
    let (s, v) = server.patch(&format!("/api/runs/{id}"), &json!({"experiment": ""}));
    assert_eq!((s, v["experiment"].clone()), (200, Value::Null), "{v}");
    let (s, v) = server.patch(&format!("/api/runs/{id}"), &json!({"experiment": "e2e"}));
    assert_eq!((s, v["experiment"].as_str()), (200, Some("e2e")), "{v}");
    for (body, want, field) in [
        (json!({"name": "../x"}), 400, Some("name")),
        (json!({"experiment": "a/b"}), 400, Some("experiment")),
        (json!({"notes": "n".repeat(10_001)}), 400, Some("notes")),
        (json!({"status": "completed"}), 422, None),
    ] {
        let (s, v) = server.patch(&format!("/api/runs/{id}"), &body);
        assert_eq!((s, v["field"].as_str()), (want, field), "{v}");
        assert!(v["error"].is_string(), "{v}");
    }
    assert_eq!(server.patch("/api/runs/run-00000000", &json!({"notes": "x"})).0, 404);

    // `?after=N`: only the later steps (what a page holding the series lacks).
    let (_, tail) = server.get(&format!("/api/runs/{id}/metrics?after=9"));
    let steps: Vec<u64> = tail.as_array().unwrap().iter().map(|p| p["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [10, 11, 12], "{tail}");
    let (_, none) = server.get(&format!("/api/runs/{id}/metrics?after=12"));
    assert_eq!(none, json!([]));

    // Sample from the run's adapter and from the base model.
    let req = json!({"prompt": "a random integer", "run": id, "decoding": {"n": 3, "max_tokens": 6, "seed": 1}});
    let (s, out) = server.post("/api/samples", &req);
    assert_eq!(s, 200, "{out}");
    assert_eq!(out["samples"].as_array().unwrap().len(), 3);
    assert_eq!(out["adapter_step"], 12);
    assert!(out["samples"][0]["base_logprob"].as_f64().unwrap() <= 0.0);
    let (s, base) = server.post("/api/samples", &json!({"prompt": "a random integer", "decoding": {"n": 2, "max_tokens": 4}}));
    assert_eq!((s, base["run"].clone()), (200, Value::Null), "{base}");

    // A second run, then a side-by-side comparison of both and the base.
    let (s, second) = server.post("/api/runs", &rng_run("second", 6, 3, 0));
    assert_eq!(s, 201, "{second}");
    let id2 = second["id"].as_str().unwrap().to_string();
    let done = server.wait_run(&id2, Duration::from_secs(300), |r| r["status"] == "completed");
    assert_eq!(done["status"], "completed", "{done}");
    assert!(done["final_metrics"].is_null(), "eval_samples 0 skips evaluation");
    let (s, cmp) = server.post("/api/comparisons", &json!({"runs": [id, id2, "base"], "prompts": ["one", "two"], "decoding": {"n": 2, "max_tokens": 5}}));
    assert_eq!(s, 201, "{cmp}");
    let cols = cmp["columns"].as_array().unwrap();
    assert_eq!(cols.len(), 3);
    for c in cols {
        assert_eq!(c["samples"].as_array().unwrap().len(), 2, "one list per prompt");
        assert_eq!(c["samples"][0].as_array().unwrap().len(), 2, "n per prompt");
        assert!(c["metrics"]["base_loglik"]["mean"].as_f64().is_some());
    }
    assert!(cols[0]["metrics"]["final.valid_rate"]["mean"].as_f64().is_some());
    let (s, again) = server.get(&format!("/api/comparisons/{}", cmp["id"]));
    assert_eq!((s, &again), (200, &cmp));
    // Without prompts: the runs' task supplies them.
    let (s, cmp2) = server.post("/api/comparisons", &json!({"runs": [id, "base"], "decoding": {"n": 1, "max_tokens": 3}}));
    assert_eq!(s, 201, "{cmp2}");
    assert!(!cmp2["prompts"].as_array().unwrap().is_empty());

    // Infilling playground: k middles per source.
    let (s, inf) = server.post("/api/infill", &json!({"beginning": "the cat sat", "end": "so it slept", "runs": ["base", id], "decoding": {"n": 2, "max_tokens": 4}}));
    assert_eq!(s, 200, "{inf}");
    assert_eq!(inf["columns"].as_array().unwrap().len(), 2);
    assert_eq!(inf["columns"][1]["middles"].as_array().unwrap().len(), 2);

    // Downloads.
    let (s, zip) = server.get_bytes(&format!("/api/runs/{id}/adapter.zip"));
    assert_eq!(s, 200);
    assert!(zip.starts_with(b"PK"));
    let names = String::from_utf8_lossy(&zip);
    assert!(names.contains("adapter_config.json") && names.contains("adapter_model.safetensors"));
    let (s, csv) = server.get_bytes(&format!("/api/runs/{id}/metrics.csv"));
    assert_eq!(s, 200);
    let csv = String::from_utf8(csv).unwrap();
    assert_eq!(csv.lines().count(), 13, "{csv}");
    assert!(csv.starts_with("step,loss,") && csv.lines().next().unwrap().contains(",sampler_ess,log_w_std,"), "{csv}");

    // Listing endpoints and the OpenAPI description, which names every route.
    let (_, runs) = server.get("/api/runs");
    assert_eq!(runs.as_array().unwrap().len(), 2);
    let (_, exps) = server.get("/api/experiments");
    assert_eq!(exps[0]["name"], "e2e");
    assert_eq!(exps[0]["runs"], 2);
    let (s, api) = server.get("/api/openapi.json");
    assert_eq!(s, 200);
    for path in [
        "/api/model",
        "/api/tasks",
        "/api/runs",
        "/api/runs/{id}",
        "/api/runs/{id}/events",
        "/api/runs/{id}/metrics",
        "/api/runs/{id}/evals",
        "/api/runs/{id}/cancel",
        "/api/runs/{id}/resume",
        "/api/runs/{id}/adapter.zip",
        "/api/runs/{id}/metrics.csv",
        "/api/samples",
        "/api/infill",
        "/api/comparisons",
        "/api/datasets/{task}/{name}",
        "/api/jobs",
    ] {
        assert!(api["paths"][path].is_object(), "OpenAPI lacks {path}");
    }
    assert!(api["components"]["schemas"]["CreateRun"].is_object() && api["components"]["schemas"]["EvalPoint"].is_object());
    let params = api["paths"]["/api/runs/{id}/metrics"]["get"]["parameters"].as_array().cloned().unwrap_or_default();
    assert!(params.iter().any(|p| p["name"] == "after" && p["in"] == "query"), "{params:?}");
}

#[test]
fn cancel_and_resume() {
    let (dir, model) = tiny();
    let server = Server::start(&model, &dir.path().join("data"), &[]);
    let (s, run) = server.post("/api/runs", &rng_run("long", 100_000, 10, 0));
    assert_eq!(s, 201, "{run}");
    let id = run["id"].as_str().unwrap().to_string();
    server.wait_run(&id, Duration::from_secs(120), |r| r["step"].as_u64().unwrap() >= 3);
    let (s, _) = server.post(&format!("/api/runs/{id}/cancel"), &json!({}));
    assert_eq!(s, 200);
    let r = server.wait_run(&id, Duration::from_secs(60), |r| r["status"] == "cancelled");
    assert_eq!(r["status"], "cancelled", "{r}");
    let stopped = r["step"].as_u64().unwrap();
    assert_eq!(r["checkpoint_step"].as_u64(), Some(stopped), "cancel keeps a checkpoint at the step it stopped");
    let (s, again) = server.post(&format!("/api/runs/{id}/cancel"), &json!({}));
    assert_eq!(s, 409, "{again}");
    let (s, _) = server.post(&format!("/api/runs/{id}/resume"), &json!({}));
    assert_eq!(s, 200);
    let r = server.wait_run(&id, Duration::from_secs(120), |r| r["step"].as_u64().unwrap() >= stopped + 2);
    assert_eq!(r["status"], "running", "{r}");
    let (_, jobs) = server.get("/api/jobs");
    assert_eq!(jobs[0]["run"], id.as_str());
    let (s, v) = server.delete(&format!("/api/runs/{id}"));
    assert_eq!(s, 409, "a running run is not deleted: {v}");
    assert!(v["error"].as_str().is_some_and(|e| e.contains("cancel")), "{v}");
    server.post(&format!("/api/runs/{id}/cancel"), &json!({}));
    let r = server.wait_run(&id, Duration::from_secs(60), |r| r["status"] == "cancelled");
    let (_, series) = server.get(&format!("/api/runs/{id}/metrics"));
    let steps: Vec<u64> = series.as_array().unwrap().iter().map(|p| p["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (1..=r["step"].as_u64().unwrap()).collect::<Vec<_>>(), "the series continues across the resume");

    // Deleted once stopped: its rows and folder go; a saved comparison stays.
    let (s, cmp) = server.post("/api/comparisons", &json!({"runs": [id, "base"], "prompts": ["one"], "decoding": {"n": 1, "max_tokens": 3}}));
    assert_eq!(s, 201, "{cmp}");
    let folder = dir.path().join("data").join("runs").join(&id);
    assert!(folder.join("checkpoints").is_dir(), "{}", folder.display());
    let (s, v) = server.delete(&format!("/api/runs/{id}"));
    assert_eq!(s, 204, "{v}");
    assert!(!folder.exists(), "the run's folder is gone");
    for path in [format!("/api/runs/{id}"), format!("/api/runs/{id}/metrics"), format!("/api/runs/{id}/adapter.zip")] {
        assert_eq!(server.get(&path).0, 404, "{path}");
    }
    assert_eq!(server.delete(&format!("/api/runs/{id}")).0, 404);
    assert_eq!(server.get("/api/runs").1, json!([]));
    let (s, saved) = server.get(&format!("/api/comparisons/{}", cmp["id"]));
    assert_eq!((s, saved["columns"].as_array().map(Vec::len)), (200, Some(2)), "{saved}");
    // A saved comparison is deleted on its own.
    assert_eq!(server.delete(&format!("/api/comparisons/{}", cmp["id"])).0, 204);
    assert_eq!(server.get(&format!("/api/comparisons/{}", cmp["id"])).0, 404);
    assert_eq!(server.get("/api/comparisons").1, json!([]));
    let (s, v) = server.delete(&format!("/api/comparisons/{}", cmp["id"]));
    assert_eq!(s, 404, "{v}");
    assert_eq!(server.delete("/api/comparisons/first").0, 400);
    let (s, v) = server.post("/api/samples", &json!({"prompt": "one", "run": id}));
    assert_eq!(s, 404, "{v}");
}

#[test]
fn cancel_stops_an_evaluation_and_resume_evaluates_again() {
    let (dir, model) = tiny();
    let server = Server::start(&model, &dir.path().join("data"), &[]);
    // Far more evaluation samples than the test waits for.
    let (s, run) = server.post("/api/runs", &rng_run("eval", 2, 0, 50_000_000));
    assert_eq!(s, 201, "{run}");
    let id = run["id"].as_str().unwrap().to_string();
    let r = server.wait_run(&id, Duration::from_secs(120), |r| r["status"] == "evaluating");
    assert_eq!(r["status"], "evaluating", "{r}");
    // The run's row carries the stage in flight.
    let r = server.wait_run(&id, Duration::from_secs(60), |r| r["progress"]["done"].as_u64() > Some(0));
    assert_eq!(r["progress"]["stage"], "drawing samples", "{r}");
    assert_eq!(r["progress"]["total"], 50_000_000, "{r}");
    let (s, _) = server.post(&format!("/api/runs/{id}/cancel"), &json!({}));
    assert_eq!(s, 200);
    let r = server.wait_run(&id, Duration::from_secs(60), |r| r["status"] == "cancelled");
    assert_eq!(r["status"], "cancelled", "a cancel ends the evaluation: {r}");
    assert!(r["final_metrics"].is_null() && r.get("progress").is_none(), "{r}");
    assert_eq!(r["checkpoint_step"].as_u64(), Some(2), "{r}");
    // Resumed, the trained run goes straight back to its evaluation.
    let (s, _) = server.post(&format!("/api/runs/{id}/resume"), &json!({}));
    assert_eq!(s, 200);
    let r = server.wait_run(&id, Duration::from_secs(120), |r| r["status"] == "evaluating");
    assert_eq!(r["status"], "evaluating", "{r}");
    let (_, series) = server.get(&format!("/api/runs/{id}/metrics"));
    let steps: Vec<u64> = series.as_array().unwrap().iter().map(|p| p["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, vec![1, 2], "no step trained again");
    server.post(&format!("/api/runs/{id}/cancel"), &json!({}));
    let r = server.wait_run(&id, Duration::from_secs(60), |r| r["status"] == "cancelled");
    assert_eq!(r["status"], "cancelled", "{r}");
}

#[test]
fn sigkill_mid_run_then_restart_resumes_it() {
    let (dir, model) = tiny();
    let data = dir.path().join("data");
    let server = Server::start(&model, &data, &[]);
    let (_, done) = server.post("/api/runs", &rng_run("before", 4, 2, 0));
    let before = done["id"].as_str().unwrap().to_string();
    server.wait_run(&before, Duration::from_secs(120), |r| r["status"] == "completed");
    let (s, run) = server.post("/api/runs", &rng_run("victim", 60, 5, 0));
    assert_eq!(s, 201, "{run}");
    let id = run["id"].as_str().unwrap().to_string();
    let seen = server.wait_run(&id, Duration::from_secs(120), |r| r["step"].as_u64().unwrap() >= 12);
    assert!(seen["step"].as_u64().unwrap() >= 12 && seen["status"] == "running", "{seen}");
    server.kill();

    let server = Server::start(&model, &data, &[]);
    let r = server.wait_run(&id, Duration::from_secs(300), |r| r["status"] == "completed");
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(r["step"], 60);
    let (_, series) = server.get(&format!("/api/runs/{id}/metrics"));
    let steps: Vec<u64> = series.as_array().unwrap().iter().map(|p| p["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (1..=60).collect::<Vec<_>>(), "metrics series has gaps or repeats");
    // What was stored before the crash is intact.
    let (_, b) = server.get(&format!("/api/runs/{before}"));
    assert_eq!(b["status"], "completed");
    let (_, bs) = server.get(&format!("/api/runs/{before}/metrics"));
    assert_eq!(bs.as_array().unwrap().len(), 4);
    let (_, health) = server.get("/api/health");
    assert_eq!(health["db"], "ok", "{health}");
}

/// Every bad request gets a 4xx with a JSON `{error, field?}`, and the server keeps serving.
#[test]
fn bad_input_gets_4xx_with_a_message() {
    let (dir, model) = tiny();
    let server = Server::start(&model, &dir.path().join("data"), &["--max-samples", "16", "--max-tokens", "32"]);
    let long_prompt = "word ".repeat(5000);
    let cases: Vec<(&str, &str, Value, u16, Option<&str>)> = vec![
        ("POST", "/api/runs", json!({"task": "nope"}), 400, Some("task")),
        ("POST", "/api/runs", json!({"task": "rng", "config": {"stepz": 1}}), 400, Some("config.stepz")),
        ("POST", "/api/runs", json!({"task": "rng", "config": {"lr": -1.0}}), 400, Some("config.lr")),
        ("POST", "/api/runs", json!({"task": "rng", "config": {"steps": "many"}}), 400, Some("config.steps")),
        ("POST", "/api/runs", json!({"task": "rng", "config": {"min_len": 5, "max_len": 2}}), 400, Some("config.max_len")),
        ("POST", "/api/runs", json!({"task": "rng", "config": {"batch_size": 0}}), 400, Some("config.batch_size")),
        ("POST", "/api/runs", json!({"task": "rng", "method": "magic"}), 422, None),
        ("POST", "/api/runs", json!({"task": "rng", "name": "../../etc"}), 400, Some("name")),
        ("POST", "/api/runs", json!({"task": "rng", "experiment": "a/b"}), 400, Some("experiment")),
        ("POST", "/api/runs", json!({"task": "infill", "task_options": {"data_file": "/etc/passwd"}}), 400, Some("task_options.data_file")),
        ("POST", "/api/runs", json!({"task": "rng", "task_options": {"no_such": 1}}), 400, None),
        ("POST", "/api/runs", json!({"task": "rng", "dataset": "missing"}), 400, Some("dataset")),
        ("POST", "/api/runs", json!({"task": "rng", "notes": "n".repeat(10_001)}), 400, Some("notes")),
        ("POST", "/api/runs", json!({"task": "rng", "surprise": true}), 422, None),
        ("POST", "/api/samples", json!({"prompt": ""}), 400, Some("prompt")),
        ("POST", "/api/samples", json!({"prompt": "hi", "decoding": {"n": 0}}), 400, Some("decoding.n")),
        ("POST", "/api/samples", json!({"prompt": "hi", "decoding": {"n": 17}}), 400, Some("decoding.n")),
        ("POST", "/api/samples", json!({"prompt": "hi", "decoding": {"max_tokens": 33}}), 400, Some("decoding.max_tokens")),
        ("POST", "/api/samples", json!({"prompt": "hi", "decoding": {"temperature": 0.0}}), 400, Some("decoding.temperature")),
        ("POST", "/api/samples", json!({"prompt": "hi", "decoding": {"top_p": 1.5}}), 400, Some("decoding.top_p")),
        ("POST", "/api/samples", json!({"prompt": long_prompt, "decoding": {"max_tokens": 4}}), 400, Some("prompt")),
        ("POST", "/api/samples", json!({"prompt": "hi", "run": "run-00000000"}), 404, None),
        ("POST", "/api/samples", json!({"prompt": "hi", "run": "../x"}), 400, Some("run")),
        ("POST", "/api/infill", json!({"beginning": "", "end": "x"}), 400, Some("beginning")),
        ("POST", "/api/infill", json!({"beginning": "a", "end": "b", "runs": ["run-00000000"]}), 400, Some("runs")),
        ("POST", "/api/comparisons", json!({"runs": []}), 400, Some("runs")),
        ("POST", "/api/comparisons", json!({"runs": ["base"]}), 400, Some("prompts")),
        ("POST", "/api/experiments", json!({"name": ".."}), 400, Some("name")),
        ("GET", "/api/runs/run-00000000", Value::Null, 404, None),
        ("GET", "/api/runs/..%2F..%2Fetc", Value::Null, 400, Some("id")),
        ("GET", "/api/comparisons/notanumber", Value::Null, 400, None),
        ("GET", "/api/runs/run-00000000/metrics?after=soon", Value::Null, 400, None),
        ("GET", "/api/runs/run-00000000/metrics?after=-1", Value::Null, 400, None),
        ("GET", "/api/comparisons/999", Value::Null, 404, None),
        ("GET", "/api/nothing/here", Value::Null, 404, None),
        ("POST", "/api/runs/run-00000000/resume", json!({}), 404, None),
    ];
    for (method, path, body, want, field) in cases {
        let (status, v) = if method == "GET" { server.get(path) } else { server.post(path, &body) };
        assert_eq!(status, want, "{method} {path} {body} → {v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{method} {path}: no error message in {v}");
        if let Some(f) = field {
            assert_eq!(v["field"], f, "{method} {path} {body} → {v}");
        }
    }
    // Bodies that are not JSON, not UTF-8, too big, or of the wrong type.
    for (ct, body, want) in [
        ("application/json", b"{".to_vec(), 400),
        ("application/json", vec![b'"', 0xff, 0xfe, b'"'], 400),
        ("text/plain", b"{}".to_vec(), 415),
        ("application/json", vec![b' '; 2 << 20], 413),
    ] {
        // Announced, so the oversized one is refused before it is uploaded.
        let (status, v) = server.post_announced("/api/runs", ct, &body);
        assert_eq!(status, want, "{ct} {} bytes → {v}", body.len());
        assert!(v["error"].is_string(), "{v}");
    }
    let (s, v) = server.delete("/api/runs");
    assert_eq!(s, 405, "{v}");
    assert!(v["error"].is_string());
    // Datasets are checked line by line.
    let (s, v) = server.post_raw("/api/datasets/infill/stories.jsonl", "text/plain", b"{\"beginning\":\"a\",\"middle\":\"b\",\"end\":\"c\"}\n{\"beginning\":\"a\"\n");
    assert_eq!(s, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("line 2"), "{v}");
    let (s, v) = server.post_raw("/api/datasets/infill/stories.jsonl", "text/plain", &[0xff, 0xfe]);
    assert_eq!(s, 400, "{v}");
    let (s, v) = server.post_raw("/api/datasets/nope/x.jsonl", "text/plain", b"x");
    assert_eq!((s, v["field"].as_str()), (400, Some("task")), "{v}");
    let (s, v) = server.post_raw("/api/datasets/rng/x.txt", "text/plain", b"x");
    assert_eq!(s, 400, "{v}");
    let good = "{\"beginning\":\"a b\",\"middle\":\"c d\",\"end\":\"e f\"}\n".repeat(3);
    let (s, v) = server.post_raw("/api/datasets/infill/stories.jsonl", "text/plain", good.as_bytes());
    assert_eq!((s, v["lines"].as_u64()), (201, Some(3)), "{v}");
    let (s, v) = server.post("/api/runs", &json!({"task": "rng", "dataset": "stories.jsonl"}));
    assert_eq!((s, v["field"].as_str()), (400, Some("dataset")), "a dataset of another task: {v}");
    // Nothing was created by the bad requests, and the server still answers.
    let (_, runs) = server.get("/api/runs");
    assert_eq!(runs.as_array().unwrap().len(), 0, "{runs}");
    let (s, _) = server.get("/api/health");
    assert_eq!(s, 200);
}

#[test]
fn tokens_guard_the_api_and_exposure() {
    let (dir, model) = tiny();
    // Beyond loopback without a token: refused before anything starts.
    let out = amortize_tests::run(&["serve", "--addr", "0.0.0.0:0", "--model", model.to_str().unwrap(), "--data-dir", dir.path().join("d0").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--token"), "{}", String::from_utf8_lossy(&out.stderr));
    let server = Server::start(&model, &dir.path().join("d1"), &["--token", "s3cret"]);
    let (s, v) = server.get("/api/model");
    assert_eq!(s, 401, "{v}");
    assert_eq!(server.get("/api/model?token=s3cret").0, 200, "GETs may carry the token in the query");
    assert_eq!(server.post("/api/experiments?token=s3cret", &json!({"name": "x"})).0, 401, "but not POSTs");
    let server = server.with_token("wrong");
    assert_eq!(server.get("/api/model").0, 401);
    let server = server.with_token("s3cret");
    assert_eq!(server.get("/api/model").0, 200);
}

#[test]
fn a_diverging_run_fails_with_its_reason_and_the_server_keeps_serving() {
    let (dir, model) = tiny();
    let server = Server::start(&model, &dir.path().join("data"), &[]);
    let mut req = rng_run("diverge", 50, 10, 0);
    req["config"]["lr"] = json!(1e30);
    req["config"]["warmup_steps"] = json!(0);
    req["config"]["max_grad_norm"] = json!(0.0);
    let (s, run) = server.post("/api/runs", &req);
    assert_eq!(s, 201, "{run}");
    let id = run["id"].as_str().unwrap();
    let r = server.wait_run(id, Duration::from_secs(120), |r| !matches!(r["status"].as_str(), Some("queued" | "running")));
    assert_eq!(r["status"], "failed", "{r}");
    assert!(r["error"].as_str().unwrap().contains("non-finite"), "{r}");
    let (s, out) = server.post("/api/samples", &json!({"prompt": "still here", "decoding": {"n": 1, "max_tokens": 3}}));
    assert_eq!(s, 200, "{out}");
}

#[test]
fn ppo_sft_and_base_runs_over_the_api() {
    let (dir, model) = tiny();
    let server = Server::start(&model, &dir.path().join("data"), &[]);
    let mut req = rng_run("ppo", 5, 0, 20);
    req["method"] = json!("ppo");
    let (s, run) = server.post("/api/runs", &req);
    assert_eq!(s, 201, "{run}");
    let r = server.wait_run(run["id"].as_str().unwrap(), Duration::from_secs(120), finished);
    assert_eq!((r["status"].as_str(), r["method"].as_str(), r["step"].as_u64()), (Some("completed"), Some("ppo"), Some(5)), "{r}");
    assert!(r["final_metrics"]["valid_rate"].as_f64().is_some(), "{r}");
    let (_, series) = server.get(&format!("/api/runs/{}/metrics", r["id"].as_str().unwrap()));
    assert_eq!(series.as_array().unwrap().len(), 5);
    let (s, out) = server.post("/api/samples", &json!({"prompt": "x", "run": r["id"], "decoding": {"n": 2, "max_tokens": 3}}));
    assert_eq!(s, 200, "{out}");
    // SFT needs reference Z's: RNG has none, and the run says so.
    let mut req = rng_run("sft", 5, 0, 0);
    req["method"] = json!("sft");
    let (_, run) = server.post("/api/runs", &req);
    let r = server.wait_run(run["id"].as_str().unwrap(), Duration::from_secs(60), |r| !matches!(r["status"].as_str(), Some("queued" | "running")));
    assert_eq!(r["status"], "failed", "{r}");
    assert!(r["error"].as_str().unwrap().contains("no reference"), "{r}");

    // A base-model run trains nothing and is its evaluation.
    let mut req = rng_run("untrained", 5, 0, 0);
    req["method"] = json!("base");
    let (s, e) = server.post("/api/runs", &req);
    assert_eq!((s, e["field"].as_str()), (400, Some("eval_samples")), "{e}");
    req["eval_samples"] = json!(30);
    let (s, run) = server.post("/api/runs", &req);
    assert_eq!((s, run["steps"].as_u64()), (201, Some(0)), "{run}");
    let id = run["id"].as_str().unwrap().to_string();
    let r = server.wait_run(&id, Duration::from_secs(120), finished);
    assert_eq!((r["status"].as_str(), r["method"].as_str(), r["step"].as_u64()), (Some("completed"), Some("base"), Some(0)), "{r}");
    assert_eq!(r["final_metrics"]["samples"].as_f64(), Some(30.0), "{r}");
    let (_, series) = server.get(&format!("/api/runs/{id}/metrics"));
    assert_eq!(series.as_array().map(Vec::len), Some(0), "{series}");
    let (s, e) = server.get(&format!("/api/runs/{id}/adapter.zip"));
    assert!(s == 409 && e["error"].as_str().unwrap().contains("base model"), "{s} {e}");
    // It samples as the base model: the same seed draws the same texts.
    let texts = |source: &str| {
        let (s, out) = server.post("/api/samples", &json!({"prompt": "x", "run": source, "decoding": {"n": 3, "max_tokens": 4, "seed": 7}}));
        assert_eq!(s, 200, "{out}");
        out["samples"].as_array().unwrap().iter().map(|g| g["text"].as_str().unwrap().to_string()).collect::<Vec<_>>()
    };
    assert_eq!(texts(&id), texts("base"));

    // Few-shot: base runs only, k ≥ 1, and the task must have k worked examples.
    let mut req = rng_run("shots", 5, 0, 10);
    for (method, shots, want) in [("gfn", 1, "base-model runs"), ("base", 0, "at least 1"), ("base", 1, "no demonstrations")] {
        req["method"] = json!(method);
        req["shots"] = json!(shots);
        let (s, e) = server.post("/api/runs", &req);
        assert!(s == 400 && e["field"] == "shots" && e["error"].as_str().unwrap().contains(want), "{method} {shots}: {s} {e}");
    }
    // Infilling from short uploaded stories: the worked example changes what the base model writes.
    let stories = b"{\"beginning\": \"Ann had a ball.\", \"middle\": \"It fell.\", \"end\": \"Ann was sad.\"}\n{\"beginning\": \"Tim ate.\", \"middle\": \"He was full.\", \"end\": \"Tim slept.\"}\n{\"beginning\": \"It rained.\", \"middle\": \"Joe read.\", \"end\": \"Joe smiled.\"}\n";
    let (s, v) = server.post_raw("/api/datasets/infill/short.jsonl", "text/plain", stories);
    assert_eq!(s, 201, "{v}");
    let (s, e) = server.post("/api/runs", &json!({"task": "infill", "method": "base", "dataset": "short.jsonl", "shots": 3, "eval_samples": 2}));
    assert!(s == 400 && e["field"] == "shots" && e["error"].as_str().unwrap().contains("the task has 2"), "{s} {e}");
    let mut finals = Vec::new();
    for shots in [json!(null), json!(1)] {
        let (s, run) = server.post("/api/runs", &json!({"task": "infill", "method": "base", "dataset": "short.jsonl", "shots": shots, "eval_samples": 2, "config": {"seed": 3}}));
        assert_eq!(s, 201, "{run}");
        let r = server.wait_run(run["id"].as_str().unwrap(), Duration::from_secs(120), finished);
        assert_eq!((r["status"].as_str(), &r["shots"]), (Some("completed"), &shots), "{r}");
        finals.push(r["final_metrics"].clone());
    }
    assert_eq!(finals[1]["samples"], finals[0]["samples"]);
    assert_ne!(finals[0]["loglik"], finals[1]["loglik"], "{finals:?}");
}

#[test]
fn evaluations_along_training_over_the_api() {
    let (dir, model) = tiny();
    let server = Server::start(&model, &dir.path().join("data"), &[]);
    // A custom task: its mean log-likelihood moves with every step of the adapter.
    let custom = |name: &str, steps: usize| {
        json!({
            "name": name,
            "task": "custom",
            "task_options": {"policy_template": "Q: {X}\nA:{Z}", "reward_template": "{X} is{Z}, so {Y}.", "examples": [{"x": "one", "y": "two"}, {"x": "three", "y": "four"}]},
            "config": {"steps": steps, "batch_size": 4, "warmup_steps": 2, "checkpoint_every": 0},
            "eval_samples": 4,
        })
    };
    // Refused with the field named.
    for (change, want) in [
        (json!({"eval_every": 0}), "at least 1"),
        (json!({"eval_every": 5}), "more than the run's 4 steps"),
        (json!({"eval_every": 2, "eval_samples": 0}), "no evaluation to repeat"),
        (json!({"eval_every": 2, "method": "base"}), "base-model run"),
    ] {
        let mut req = custom("bad", 4);
        req.as_object_mut().unwrap().extend(change.as_object().unwrap().clone());
        let (s, e) = server.post("/api/runs", &req);
        assert!(s == 400 && e["field"] == "eval_every" && e["error"].as_str().unwrap().contains(want), "{change}: {s} {e}");
    }
    let done = |id: &str| server.wait_run(id, Duration::from_secs(180), finished);
    let mut req = custom("along", 4);
    req["eval_every"] = json!(2);
    let (s, run) = server.post("/api/runs", &req);
    assert_eq!((s, run["eval_every"].as_u64()), (201, Some(2)), "{run}");
    let id = run["id"].as_str().unwrap().to_string();
    let r = done(&id);
    assert_eq!(r["status"], "completed", "{r}");
    let (_, evals) = server.get(&format!("/api/runs/{id}/evals"));
    let evals = evals.as_array().unwrap().clone();
    assert_eq!(evals.iter().map(|e| e["step"].as_u64().unwrap()).collect::<Vec<_>>(), vec![2, 4], "{evals:?}");
    // The last is the final evaluation; the one at step 2 is the adapter's after
    // step 2 — a 2-step run's final evaluation (no schedule reads the number of steps).
    assert_eq!(evals[1]["metrics"], r["final_metrics"], "{evals:?}");
    assert_ne!(evals[0]["metrics"]["mean_loglik"], evals[1]["metrics"]["mean_loglik"], "{evals:?}");
    let (_, two) = server.post("/api/runs", &custom("two", 2));
    let two = done(two["id"].as_str().unwrap());
    assert_eq!(evals[0]["metrics"], two["final_metrics"], "{two}");
    let (_, none) = server.get(&format!("/api/runs/{}/evals", two["id"].as_str().unwrap()));
    assert_eq!(none, json!([]), "a run without eval_every keeps no series");
    // PPO evaluates along the way too (RNG: its final step is the config's).
    let mut req = rng_run("ppo-along", 3, 0, 10);
    req["method"] = json!("ppo");
    req["eval_every"] = json!(1);
    let (_, run) = server.post("/api/runs", &req);
    let id = run["id"].as_str().unwrap().to_string();
    assert_eq!(done(&id)["status"], "completed");
    let (_, evals) = server.get(&format!("/api/runs/{id}/evals"));
    let steps: Vec<u64> = evals.as_array().unwrap().iter().map(|e| e["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, vec![1, 2, 3], "{evals}");
    assert_eq!(server.get("/api/runs/run-nope/evals").0, 404);
}
