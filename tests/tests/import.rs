//! `amortize import`: runs trained by the CLI (`train --out`, a `compare`
//! folder's GFlowNet and PPO trainings) brought into a running server's data dir show
//! up over HTTP as completed runs with their series, evaluations and
//! adapter, which the server samples from; bad folders are refused with one
//! line and import nothing.

use amortize::model::tiny::write_tiny_model;
use amortize_tests::{run, Server};
use serde_json::{json, Value};

fn ok(o: &std::process::Output) -> String {
    assert!(o.status.success(), "failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn jsonl(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn cli_runs_enter_the_app_whole() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_tiny_model(&dir.path().join("model"), 3).unwrap().gguf;
    let model = model.to_str().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "batch_size = 4\nlr = 0.05\n").unwrap();
    let config = config.to_str().unwrap();
    let (train_dir, cmp) = (dir.path().join("rng-cli"), dir.path().join("cmp"));
    ok(&run(&["train", "--model", model, "--task", "rng", "--config", config, "--steps", "3", "--eval-every", "2", "--eval-samples", "4", "--quiet", "--out", train_dir.to_str().unwrap()]));
    // The comparison's GFlowNet trains 3 steps, its PPO 2.
    let cmp_config = dir.path().join("cmp.toml");
    std::fs::write(&cmp_config, "steps = 3\nbatch_size = 4\nlr = 0.05\n[ppo]\nsteps = 2\nbatch_size = 4\n").unwrap();
    ok(&run(&["compare", "--model", model, "--task", "rng", "--config", cmp_config.to_str().unwrap(), "--methods", "gfn,ppo", "--samples", "4", "--eval-every", "1", "--json", "--out", cmp.to_str().unwrap()]));

    let data = dir.path().join("data");
    let server = Server::start(std::path::Path::new(model), &data, &[]);
    // An imported run was created when its run.json was written.
    let touched = std::process::Command::new("touch").args(["-d", "2026-01-02T03:04:05Z"]).arg(train_dir.join("run.json")).status().unwrap();
    assert!(touched.success());
    // A run folder, and a comparison's folder (its trainings).
    let dirs = [train_dir.clone(), cmp.join("gfn-seed0"), cmp.join("ppo-seed0")];
    let printed = ok(&run(&["import", "--data-dir", data.to_str().unwrap(), "--experiment", "cli", train_dir.to_str().unwrap(), cmp.to_str().unwrap()]));
    assert_eq!(printed.lines().count(), 3, "{printed}");

    let (_, runs) = server.get("/api/runs");
    // In the order given (the list orders runs of the same second by id).
    let names = ["rng-cli", "gfn-seed0", "ppo-seed0"];
    let runs: Vec<Value> = names.iter().map(|n| runs.as_array().unwrap().iter().find(|r| r["name"] == *n).unwrap_or_else(|| panic!("no run {n}: {runs}")).clone()).collect();
    let summary: Vec<(&str, &str, &str, u64)> = runs.iter().map(|r| (r["name"].as_str().unwrap(), r["method"].as_str().unwrap(), r["status"].as_str().unwrap(), r["step"].as_u64().unwrap())).collect();
    assert_eq!(summary, [("rng-cli", "gfn", "completed", 3), ("gfn-seed0", "gfn", "completed", 3), ("ppo-seed0", "ppo", "completed", 2)]);
    for (r, d) in runs.iter().zip(&dirs) {
        let id = r["id"].as_str().unwrap();
        assert_eq!(r["experiment"], "cli");
        assert!(r["notes"].as_str().unwrap().starts_with("imported from "), "{r}");
        // The series is the folder's, step by step.
        let (_, points) = server.get(&format!("/api/runs/{id}/metrics"));
        let losses: Vec<f64> = points.as_array().unwrap().iter().map(|p| p["loss"].as_f64().unwrap()).collect();
        let key = if r["method"] == "ppo" { "pg_loss" } else { "loss" };
        let want: Vec<f64> = jsonl(&d.join("metrics.jsonl")).iter().map(|m| m[key].as_f64().unwrap()).collect();
        assert_eq!(losses, want, "{}", r["name"]);
        // The evaluations along training, the last one the final metrics.
        let (_, evals) = server.get(&format!("/api/runs/{id}/evals"));
        let want: Vec<Value> = jsonl(&d.join("evals.jsonl")).iter().map(|e| json!({"step": e["step"], "metrics": e["metrics"]})).collect();
        assert_eq!(evals.as_array().unwrap(), &want, "{}", r["name"]);
        assert_eq!(r["final_metrics"], want.last().unwrap()["metrics"], "{}", r["name"]);
        // The adapter is the folder's, and the server samples from it.
        let copied = std::fs::read(data.join("runs").join(id).join("adapter/adapter_model.safetensors")).unwrap();
        assert_eq!(copied, std::fs::read(d.join("adapter/adapter_model.safetensors")).unwrap());
    }
    assert_eq!(runs[0]["created_at"], "2026-01-02T03:04:05Z");
    // PPO's steps are its own, not the GFlowNet's.
    assert_eq!((runs[2]["steps"].as_u64(), runs[2]["config"]["steps"].as_u64()), (Some(2), Some(2)), "{}", runs[2]);
    let id = runs[0]["id"].as_str().unwrap();
    assert_eq!(runs[0]["config"]["steps"], 3);
    assert_eq!(runs[0]["eval_every"], 2);
    let (s, out) = server.post("/api/samples", &json!({"prompt": "a random integer", "run": id, "decoding": {"n": 3, "max_tokens": 5, "seed": 1}}));
    assert_eq!(s, 200, "{out}");
    let samples = out["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 3);
    assert!(samples.iter().any(|g| (g["logprob"].as_f64().unwrap() - g["base_logprob"].as_f64().unwrap()).abs() > 1e-6), "sampled from the base model: {out}");

    // Without --eval-every, each training's last step is still evaluated (the
    // row's evaluation): the imported run's final metrics are the table's.
    let plain = dir.path().join("plain");
    let table: Value = serde_json::from_str(&ok(&run(&["compare", "--model", model, "--task", "rng", "--config", cmp_config.to_str().unwrap(), "--methods", "gfn", "--samples", "4", "--json", "--out", plain.to_str().unwrap()]))).unwrap();
    let lines = jsonl(&plain.join("gfn-seed0/evals.jsonl"));
    assert_eq!((lines.len(), lines[0]["step"].as_u64()), (1, Some(3)), "{lines:?}");
    ok(&run(&["import", "--data-dir", data.to_str().unwrap(), "--name", "plain-gfn", plain.join("gfn-seed0").to_str().unwrap()]));
    let (_, all) = server.get("/api/runs");
    let imported = all.as_array().unwrap().iter().find(|r| r["name"] == "plain-gfn").unwrap_or_else(|| panic!("{all}"));
    let row = &table["rows"][0]["metrics"];
    let finals = imported["final_metrics"].as_object().unwrap_or_else(|| panic!("no final metrics: {imported}"));
    assert!(!finals.is_empty() && finals.iter().all(|(k, v)| row[k]["mean"] == *v), "{finals:?} vs {row}");
    assert_eq!((imported["eval_every"].as_u64(), imported["eval_samples"].as_u64()), (None, Some(4)), "{imported}");

    // A run that started from another's adapter (`train --adapter`) says so in its notes.
    let (started, from) = (dir.path().join("started"), train_dir.join("adapter"));
    ok(&run(&["train", "--model", model, "--task", "rng", "--config", config, "--steps", "1", "--quiet", "--adapter", from.to_str().unwrap(), "--out", started.to_str().unwrap()]));
    ok(&run(&["import", "--data-dir", data.to_str().unwrap(), started.to_str().unwrap()]));
    let (_, all) = server.get("/api/runs");
    let imported = all.as_array().unwrap().iter().find(|r| r["name"] == "started").unwrap_or_else(|| panic!("{all}"));
    assert!(imported["notes"].as_str().unwrap().ends_with(&format!("; its adapter started from {}", from.display())), "{imported}");

    // Bad folders: one line each, nothing imported (not even the good folder beside them).
    let unfinished = dir.path().join("unfinished");
    std::fs::create_dir_all(&unfinished).unwrap();
    for f in ["run.json", "metrics.jsonl"] {
        std::fs::copy(train_dir.join(f), unfinished.join(f)).unwrap();
    }
    let corrupt = dir.path().join("corrupt");
    std::fs::create_dir_all(corrupt.join("adapter")).unwrap();
    for f in ["run.json", "adapter/adapter_config.json", "adapter/adapter_model.safetensors"] {
        std::fs::copy(train_dir.join(f), corrupt.join(f)).unwrap();
    }
    std::fs::write(corrupt.join("metrics.jsonl"), "{\"step\": 1}\n").unwrap();
    let good = train_dir.to_str().unwrap();
    let data_dir = data.to_str().unwrap();
    for (bad, says) in [
        (vec![good, dir.path().join("model").to_str().unwrap()], "has no run.json"),
        (vec![good, "/nonexistent-run"], "/nonexistent-run: no such folder"),
        (vec![good, unfinished.to_str().unwrap()], "did not finish"),
        (vec![good, corrupt.to_str().unwrap()], "metrics.jsonl line 1"),
        (vec![good, good, "--name", "x"], "invalid --name"),
        (vec![cmp.to_str().unwrap(), "--name", "x"], "holds 2 runs"),
        (vec![good, "--name", "a b"], "run name `a b`"),
        (vec![good, "--experiment", "a/b"], "invalid --experiment"),
    ] {
        let o = run(&[&["import", "--data-dir", data_dir][..], &bad].concat());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(says) && err.lines().count() == 1, "{bad:?}: {err}");
    }
    let (_, after) = server.get("/api/runs");
    assert_eq!(after.as_array().unwrap().len(), 5, "{after}");
    server.kill();
}
