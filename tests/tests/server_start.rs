//! The real `amortize serve` on a tiny random model: GFlowNet and PPO runs
//! that start from another run's adapter (`init_from`) — refused with a 400
//! that names the field when they cannot, trained from that adapter when
//! they can (PPO keeping close to it: KL 0 before its first update), each
//! owning a copy of it, so deleting the other run changes nothing.

use std::time::Duration;

use amortize::model::tiny::write_tiny_model;
use amortize_tests::{adapter_distance as distance, finished, Server};
use serde_json::{json, Value};

#[test]
fn a_gfn_run_starts_from_another_runs_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_tiny_model(&dir.path().join("model"), 3).unwrap().gguf;
    let data = dir.path().join("data");
    let server = Server::start(&model, &data, &[]);
    let run = |name: &str, lr: f64, steps: usize, extra: Value| {
        let mut req = json!({"name": name, "task": "rng", "eval_samples": 0, "config": {"steps": steps, "batch_size": 4, "lr": lr, "warmup_steps": 1}});
        if let Value::Object(m) = extra {
            req.as_object_mut().unwrap().extend(m);
        }
        req
    };
    // The run to start from: trained far from zero.
    let (s, a) = server.post("/api/runs", &run("first", 0.05, 4, json!({})));
    assert_eq!(s, 201, "{a}");
    let a_id = a["id"].as_str().unwrap().to_string();
    let a = server.wait_run(&a_id, Duration::from_secs(120), finished);
    assert_eq!(a["status"], "completed", "{a}");

    // Refused, each naming init_from.
    let (_, base) = server.post("/api/runs", &json!({"task": "rng", "method": "base", "eval_samples": 4}));
    let base = server.wait_run(base["id"].as_str().unwrap(), Duration::from_secs(60), finished);
    for (req, want) in [
        (run("x", 1e-6, 1, json!({"method": "sft", "init_from": a_id})), "for GFlowNet and PPO runs"),
        (run("x", 1e-6, 1, json!({"init_from": "run-nope"})), "no run `run-nope`"),
        (run("x", 1e-6, 1, json!({"init_from": base["id"]})), "base-model run"),
        (run("x", 1e-6, 1, json!({"init_from": a_id, "config": {"steps": 1, "lora_r": 4}})), "lora_r = 4"),
    ] {
        let (s, e) = server.post("/api/runs", &req);
        assert!(s == 400 && e["field"] == "init_from" && e["error"].as_str().unwrap().contains(want), "{req}: {s} {e}");
    }

    // From its adapter, and from a fresh one: one tiny step each.
    let mut ids = Vec::new();
    for (name, method, from) in [("from-first", "gfn", json!(a_id)), ("fresh", "gfn", Value::Null), ("ppo-from-first", "ppo", json!(a_id))] {
        let (s, r) = server.post("/api/runs", &run(name, 1e-6, 1, json!({"init_from": from, "method": method})));
        assert_eq!((s, &r["init_from"]), (201, &from), "{r}");
        let r = server.wait_run(r["id"].as_str().unwrap(), Duration::from_secs(60), finished);
        assert_eq!(r["status"], "completed", "{r}");
        ids.push(r["id"].as_str().unwrap().to_string());
    }
    let adapter = |id: &str| data.join("runs").join(id).join("adapter");
    let (near, far) = (distance(&adapter(&ids[0]), &adapter(&a_id)), distance(&adapter(&ids[1]), &adapter(&a_id)));
    assert!(near < 0.01 * far, "from the first run's adapter: {near}; fresh: {far}");
    let ppo = distance(&adapter(&ids[2]), &adapter(&a_id));
    assert!(ppo < 0.2 * far, "PPO from the first run's adapter: {ppo}; a fresh GFlowNet: {far}");
    let first: Value = serde_json::from_str(std::fs::read_to_string(data.join("runs").join(&ids[2]).join("metrics.jsonl")).unwrap().lines().next().unwrap()).unwrap();
    assert!(first["kl"].as_f64().unwrap().abs() < 1e-4, "PPO's KL before its first update, to the adapter it started from: {first}");
    // The run owns its copy: deleting the first run leaves it.
    let (s, _) = server.delete(&format!("/api/runs/{a_id}"));
    assert_eq!(s, 204);
    assert!(data.join("runs").join(&ids[0]).join("init-adapter/adapter_model.safetensors").exists());
    let (_, r) = server.get(&format!("/api/runs/{}", ids[0]));
    assert_eq!(r["init_from"].as_str(), Some(a_id.as_str()), "{r}");
}
