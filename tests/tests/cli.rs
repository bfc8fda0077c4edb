//! The real `amortize` binary on a tiny random model written to disk: sample and
//! score print well-formed JSON, and every bad input exits non-zero with one
//! clear line (no panic, no backtrace); `compare` runs every kind of method
//! (trained, prompted, decoded, the EM step) and prints its table; Ctrl-C or
//! SIGTERM stops `train` with a checkpoint that `--resume` continues.

use amortize::model::tiny::write_tiny_model;
use amortize_tests::{adapter_distance, amortize_bin, run};

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

/// `sample --task`: the task's problems drawn its way, each Z with its
/// log-reward, one JSON object a line; a seed repeats them.
#[test]
fn sample_task_draws_problems_with_their_rewards() {
    let (dir, model) = tiny();
    let config = dir.path().join("arith.toml");
    std::fs::write(&config, "min_len = 2\nmax_len = 6\n[task]\ngenerated = 3\nk_shot = 1\n").unwrap();
    let args = ["sample", "--model", &model, "--task", "arithmetic", "--config", config.to_str().unwrap(), "--problems", "2", "-n", "3", "--temperature", "3", "--seed", "4", "--json"];
    let out = stdout(&run(&args));
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.iter().map(|l| l["problem"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 0, 0, 1, 1, 1]);
    for l in &lines {
        assert!(l["prompt"].as_str().unwrap().starts_with("Question: "), "{l}");
        assert!(l["log_r"].as_f64().is_some_and(|r| r.is_finite() && r < 0.0), "{l}");
        assert!(l["log_q"].as_f64().is_some_and(|q| q < 0.0), "{l}");
        let text = l["text"].as_str().unwrap();
        assert!(text.chars().all(|c| c.is_ascii_digit() || " +-=,".contains(c)), "the task's tokens: {text:?}");
        let n = l["tokens"].as_array().unwrap().len();
        assert!(n >= 2 && (l["stopped"] == true || n >= 6), "min_len 2, max_len 6 (tool tokens beside): {l}");
    }
    assert_eq!(stdout(&run(&args)), out, "a seed repeats the draws");
    let text = stdout(&run(&args[..args.len() - 1]));
    assert!(text.starts_with("# problem 0: Question: ") && text.contains("log R "), "{text}");
    // --from: the problems after the first; numbered as the task numbers them.
    let later = stdout(&run(&[&args[..], &["--from", "1"]].concat()));
    let later: Vec<serde_json::Value> = later.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(later.iter().map(|l| l["problem"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 1, 1, 2, 2, 2]);
    assert_eq!(later[0]["prompt"], lines[3]["prompt"]);
    // score --task: a text rated as a Z of one problem, the calculator's answer in it.
    let rated = stdout(&run(&["score", "--model", &model, "--task", "arithmetic", "--config", config.to_str().unwrap(), "--problem", "1", "--text", " 2 + 3 = 5, 5 - 1 = 4", "--json"]));
    let v: serde_json::Value = serde_json::from_str(rated.trim()).unwrap();
    assert_eq!((v["problem"].as_u64(), v["prompt"].clone()), (Some(1), lines[3]["prompt"].clone()), "{v}");
    assert!(v["log_r"].as_f64().is_some_and(|r| r.is_finite() && r < 0.0) && v["actions"].as_u64().unwrap() > 0, "{v}");
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

/// Ctrl-C (SIGINT) or SIGTERM stops `train` after the step in flight with a
/// checkpoint there: exit status 128 + the signal and a line naming the
/// step; `--resume` continues from it to the last step.
#[test]
fn a_signal_stops_train_with_a_checkpoint_that_resume_continues() {
    for (signal, code) in [(libc::SIGINT, 130), (libc::SIGTERM, 143)] {
        stop_train_with(signal, code);
    }
}

fn stop_train_with(signal: i32, code: i32) {
    use std::process::{Command, Stdio};
    let (dir, model) = tiny();
    let out = dir.path().join("run");
    let out_s = out.to_string_lossy().into_owned();
    let args = ["train", "--model", &model, "--task", "rng", "--out", &out_s, "--quiet"];
    let child = Command::new(amortize_bin()).args(args).args(["--steps", "1000000"]).env("AMORTIZE_LOG", "error").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let metrics = out.join("metrics.jsonl");
    let lines = |p: &std::path::Path| std::fs::read_to_string(p).map(|t| t.lines().count()).unwrap_or(0);
    let t0 = std::time::Instant::now();
    while lines(&metrics) < 3 {
        assert!(t0.elapsed() < std::time::Duration::from_secs(120), "no steps from train");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: kill(2) on our own child, which has not been waited for yet.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "signal {signal}: {err}");
    let step = lines(&metrics);
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with(&format!("interrupted at step {step}: checkpoint")) && last.contains("--resume"), "{err}");
    assert!(out.join("checkpoints").join(format!("step-{step:06}")).exists(), "{err}");
    // Resumed to two steps more: the series goes on from the checkpoint.
    let more = (step + 2).to_string();
    let o = run(&[&args[..], &["--steps", &more, "--resume"]].concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let steps: Vec<u64> = std::fs::read_to_string(&metrics).unwrap().lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (1..=step as u64 + 2).collect::<Vec<_>>());
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
        (vec!["sample", "--model", &model, "--task", "nope"], "unknown task"),
        (vec!["sample", "--model", &model, "--task", "rng", "--problems", "0"], "--problems"),
        (vec!["sample", "--model", &model, "--task", "rng", "--from", "99"], "--from"),
        (vec!["score", "--model", &model, "--task", "arithmetic", "--text", " 2 + 3 = 7"], "tool answers \" 2 + 3 =\" with \" 5\""),
        (vec!["score", "--model", &model, "--task", "rng", "--problem", "99", "--text", "7"], "--problem"),
        (vec!["score", "--model", &model, "--task", "rng", "--adapter", "x", "--text", "7"], "--adapter"),
        (vec!["train", "--model", &model, "--task", "rng", "--steps", "2", "--eval-every", "3"], "more than the run's 2 steps"),
        (vec!["train", "--model", &model, "--task", "rng", "--eval-samples", "3"], "--eval-every"),
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

/// The rows' method names, and each row's metric names.
fn rows(v: &serde_json::Value) -> Vec<(String, Vec<String>)> {
    v["rows"].as_array().unwrap().iter().map(|r| (r["method"].as_str().unwrap().to_string(), r["metrics"].as_object().unwrap().keys().cloned().collect())).collect()
}

fn examples(out: &std::path::Path, file: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("samples").join(file)).unwrap()).unwrap();
    v["examples"].as_array().unwrap().clone()
}

#[test]
fn compare_prompting_sft_and_gfn_on_arithmetic() {
    let (dir, model) = tiny();
    let out = dir.path().join("cmp");
    // The tiny model's context (256 tokens) holds one worked example (in the
    // prompt, and in the reward's prefix); SFT and the GFlowNet train for a
    // moment only (plumbing, not accuracy).
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[task]\nk_shot = 1\n[fewshot]\nk = 1\n[sft]\nepochs = 1\n").unwrap();
    let args = ["compare", "--task", "arithmetic", "--model", &model, "--config", config.to_str().unwrap(), "--methods", "zeroshot,fewshot,sft,gfn,fewshot:k=1@x2", "--steps", "1", "--samples", "2", "--limit", "3", "--json", "--out", out.to_str().unwrap()];
    let v: serde_json::Value = serde_json::from_str(stdout(&run(&args)).trim()).unwrap();
    assert_eq!(v["task"], "arithmetic");
    let names: Vec<&str> = amortize::tasks::metric_names("arithmetic").to_vec();
    let got = rows(&v);
    assert_eq!(got.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(), ["zeroshot", "fewshot", "sft", "gfn", "fewshot:k=1@x2"]);
    for (method, metrics) in &got {
        // The metric names of `amortize eval --task arithmetic --json`.
        for n in &names {
            assert!(metrics.contains(&n.to_string()), "{method}: {metrics:?}");
        }
    }
    for r in v["rows"].as_array().unwrap() {
        for n in &names {
            let acc = r["metrics"][n]["mean"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&acc) && r["metrics"][n]["std"].as_f64() == Some(0.0), "{r}");
        }
        assert_eq!(r["metrics"]["questions_id"]["mean"].as_f64(), Some(3.0), "{r}");
    }
    // The file holds what was printed.
    let file: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("compare.json")).unwrap()).unwrap();
    assert_eq!(file, v);
    assert!(std::fs::read_to_string(out.join("compare.md")).unwrap().lines().count() == 2 + 5);
    for f in ["sft-seed0/adapter/adapter_config.json", "gfn-seed0/adapter/adapter_config.json"] {
        assert!(out.join(f).exists(), "missing {f}");
    }
    // Only the prompt differs between zero- and one-shot (same questions and
    // seeds): the demonstration reaches the model, so the rationales differ.
    let (zero, one) = (examples(&out, "zeroshot-seed0.json"), examples(&out, "fewshot-seed0.json"));
    assert_eq!(zero.len(), one.len());
    assert!(zero.iter().zip(&one).all(|(a, b)| a["question"] == b["question"]));
    assert!(zero.iter().zip(&one).any(|(a, b)| a["rationale"] != b["rationale"]), "{zero:?}");

    // Refused before anything runs, with one line naming the problem.
    for (task, methods, want) in [
        ("arithmetic", "fewshot:k=0", "k=0"),
        ("arithmetic", "fewshot:k=51", "the task has 50"),
        ("arithmetic", "base@beam", "calculator"),
        ("arithmetic", "gfn:k=2", ":k=2"),
        ("arithmetic", "base,base", "twice"),
        ("rng", "fewshot", "no demonstrations"),
        ("rng", "base@dbeam+x5", "beam search does not apply to rng"),
    ] {
        let o = run(&["compare", "--task", task, "--methods", methods, "--model", &model, "--out", out.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want) && err.trim().lines().count() == 1, "{task} {methods}: {err}");
    }
}

#[test]
fn compare_uses_the_task_preset_without_methods() {
    let (dir, model) = tiny();
    let out = dir.path().join("cmp");
    let v: serde_json::Value = serde_json::from_str(stdout(&run(&["compare", "--task", "rng", "--model", &model, "--steps", "1", "--samples", "4", "--json", "--out", out.to_str().unwrap()])).trim()).unwrap();
    let methods: Vec<String> = rows(&v).into_iter().map(|r| r.0).collect();
    assert_eq!(methods, amortize::tasks::compare_methods("rng"));
}

#[test]
fn compare_beam_search_and_the_em_step() {
    let (dir, model) = tiny();
    let out = dir.path().join("cmp");
    // A custom task (every sampled Z acceptable) keeps the EM step cheap.
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[task]\nexamples = [{ x = \"the cat\" }, { x = \"the hat\" }]\npolicy_template = \"{X}{Z}\"\nreward_template = \"{X}{Z}\"\nstop = \".\"\nmax_len = 4\neval_samples = 3\n[em]\nsamples = 2\n[sft]\nepochs = 1\n").unwrap();
    let args = ["compare", "--task", "custom", "--model", &model, "--config", config.to_str().unwrap(), "--methods", "base@beam=2,base@dbeam=2+x2,base@x2,gfn+sft", "--steps", "1", "--json", "--out", out.to_str().unwrap()];
    let v: serde_json::Value = serde_json::from_str(stdout(&run(&args)).trim()).unwrap();
    let rows = v["rows"].as_array().unwrap();
    let per = |i: usize| rows[i]["metrics"]["samples_per_example"]["mean"].as_f64().unwrap();
    // beam=2: two hypotheses per prompt; x2 keeps as many outputs as without it.
    assert_eq!((per(0), per(1), per(2), per(3)), (2.0, 2.0, 3.0, 3.0));
    for r in rows {
        assert!(r["metrics"]["mean_loglik"]["mean"].as_f64().unwrap() < 0.0, "{r}");
    }
    // Two hypotheses of one beam search are two different sequences.
    let ex = examples(&out, "base_beam_2-seed0.json");
    assert_ne!(ex[0]["z"], ex[1]["z"], "{ex:?}");
    // The EM step sampled 2 Z's for each of the 2 training problems from the GFlowNet adapter.
    let em: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("gfn-sft-seed0/em.json")).unwrap()).unwrap();
    assert_eq!((em["problems"].as_u64(), em["sampled"].as_u64()), (Some(2), Some(4)));
    assert!(em["accepted"].as_u64().unwrap() >= 1);
    assert!(out.join("gfn-seed0/adapter/adapter_config.json").exists() && out.join("gfn-sft-seed0/adapter/adapter_config.json").exists());
}

/// `[task] reward_adapter = "sft"` on infilling: compare trains the SFT
/// adapter first and the GFlowNet's reward scores with it. The first step's
/// samples are the same with and without it (a function of seed and step), so
/// its mean log-reward differs only through the reward's adapter.
#[test]
fn compare_infill_rewards_the_gfn_with_its_sft_adapter() {
    let (dir, model) = tiny();
    let first_log_r = |out: &std::path::Path| -> f64 {
        let text = std::fs::read_to_string(out.join("gfn-seed0/metrics.jsonl")).unwrap();
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        first["mean_log_r"].as_f64().unwrap()
    };
    // Middles short enough for the preset's 25 tokens under the tiny byte-level tokenizer.
    let data = dir.path().join("stories.jsonl");
    let story = |b: &str, m: &str, e: &str| format!("{{\"beginning\": \"{b}\", \"middle\": \"{m}\", \"end\": \"{e}\"}}\n");
    std::fs::write(&data, [story("Ann had a ball.", "It fell.", "Ann was sad."), story("Tim was hungry.", "He ate.", "Tim felt full."), story("It rained.", "Joe read.", "Joe liked it.")].concat()).unwrap();
    let mut got = Vec::new();
    for (name, extra) in [("plain", ""), ("chained", "reward_adapter = \"sft\"\n")] {
        let config = dir.path().join(format!("{name}.toml"));
        std::fs::write(&config, format!("[task]\ndata_file = {:?}\ntest_fraction = 0.34\n{extra}[sft]\nepochs = 1\nlr = 0.01\n", data.to_str().unwrap())).unwrap();
        let out = dir.path().join(name);
        let args = ["compare", "--task", "infill", "--model", &model, "--config", config.to_str().unwrap(), "--methods", "gfn", "--steps", "1", "--samples", "1", "--limit", "1", "--json", "--out", out.to_str().unwrap()];
        let o = run(&args);
        stdout(&o);
        let err = String::from_utf8_lossy(&o.stderr);
        // Only the chained run trains (and names) an SFT adapter.
        assert_eq!(out.join("sft-seed0/adapter/adapter_config.json").exists(), name == "chained", "{name}: {err}");
        assert_eq!(err.contains("the reward scores with the SFT adapter"), name == "chained", "{name}: {err}");
        got.push(first_log_r(&out));
    }
    assert!(got.iter().all(|v| v.is_finite()) && (got[0] - got[1]).abs() > 1e-6, "{got:?}");
}

/// `bench decode` and `bench step` on random tiny weights: one JSON object per
/// batch size with every variant asked for (host draw, stepwise readback,
/// fixed-shape steps), and a step's phases with the policy pass inside the
/// backward phase.
#[test]
fn bench_prints_one_json_row_per_setting() {
    let out = stdout(&run(&["bench", "decode", "--random", "tiny", "--batch", "1,3", "--new-tokens", "6", "--prompt-len", "4", "--host-draw", "--stepwise", "--graph", "--json"]));
    let rows: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.iter().map(|r| r["batch"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 3]);
    for r in &rows {
        for key in ["tokens_per_s", "host_draw_tokens_per_s", "stepwise_tokens_per_s", "graph_tokens_per_s"] {
            assert!(r[key].as_f64().is_some_and(|x| x > 0.0), "{key} in {r}");
        }
        assert_eq!(r["graphs_recorded"], 0, "no CUDA graph on the CPU");
    }
    let out = stdout(&run(&["bench", "step", "--task", "rng", "--random", "tiny", "--batch", "2", "--steps", "1", "--lora-r", "2", "--phases", "true", "--json"]));
    let r: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert!(r["sec_per_step"].as_f64().unwrap() > 0.0);
    let phase = |k: &str| r["phase_sec_per_step"][k].as_f64().unwrap();
    assert!(phase("policy_pass") > 0.0 && phase("policy_pass") <= phase("backward"));
    assert!(!run(&["bench", "decode", "--random", "tiny", "--batch", "0"]).status.success());
}

/// A custom task of two examples with a learning rate that moves the tiny
/// model in a few steps, written to DIR/c.toml.
fn custom_task_config(dir: &std::path::Path) -> std::path::PathBuf {
    let config = dir.join("c.toml");
    std::fs::write(&config, "batch_size = 4\nlr = 0.05\n[task]\nexamples = [{ x = \"one\", y = \"two\" }, { x = \"three\", y = \"four\" }]\npolicy_template = \"Q: {X}\\nA:{Z}\"\nreward_template = \"{X} is{Z}, so {Y}.\"\n").unwrap();
    config
}

/// `train --eval-every`: the task's evaluation after chosen steps and the
/// last, into OUT/evals.jsonl; the last equals `eval` of the saved adapter.
#[test]
fn train_evaluates_along_the_way() {
    let (dir, model) = tiny();
    let config = custom_task_config(dir.path());
    let (config, out) = (config.to_str().unwrap(), dir.path().join("run"));
    let o = run(&["train", "--model", &model, "--task", "custom", "--config", config, "--steps", "3", "--eval-every", "2", "--eval-samples", "3", "--quiet", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join("evals.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.iter().map(|l| l["step"].as_u64().unwrap()).collect::<Vec<_>>(), vec![2, 3], "{lines:?}");
    let adapter = out.join("adapter");
    let e = run(&["eval", "--model", &model, "--task", "custom", "--config", config, "--adapter", adapter.to_str().unwrap(), "--samples", "3", "--json"]);
    let last: serde_json::Value = serde_json::from_str(stdout(&e).trim()).unwrap();
    assert_eq!(lines[1]["metrics"], last);
    // The one at step 2 is the adapter's then, not the base model's.
    let e = run(&["eval", "--model", &model, "--task", "custom", "--config", config, "--samples", "3", "--json"]);
    let base: serde_json::Value = serde_json::from_str(stdout(&e).trim()).unwrap();
    assert_ne!(lines[0]["metrics"], base, "{lines:?}");
}

/// `compare --eval-every`: each adapter trained here is evaluated along its
/// training, and the curves over seeds end where the table's row is — the
/// same evaluation of the same final adapters.
#[test]
fn compare_evaluates_the_trainings_along_the_way() {
    let (dir, model) = tiny();
    let config = custom_task_config(dir.path());
    let (config, out) = (config.to_str().unwrap(), dir.path().join("cmp"));
    let args = ["compare", "--task", "custom", "--model", &model, "--config", config, "--methods", "base,gfn,ppo", "--steps", "3", "--seeds", "2", "--samples", "3", "--eval-every", "2", "--json", "--out", out.to_str().unwrap()];
    let first = run(&args);
    let v: serde_json::Value = serde_json::from_str(stdout(&first).trim()).unwrap();
    let said = String::from_utf8_lossy(&first.stderr);
    assert!(said.contains("gfn (seed 1): the evaluation at its last training step") && !said.contains("evaluating gfn (seed"), "{said}");
    for method in ["gfn", "ppo"] {
        for seed in 0..2 {
            let lines = std::fs::read_to_string(out.join(format!("{method}-seed{seed}/evals.jsonl"))).unwrap();
            let steps: Vec<u64> = lines.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap()).collect();
            assert_eq!(steps, vec![2, 3], "{method} seed {seed}");
        }
        let row = v["rows"].as_array().unwrap().iter().find(|r| r["method"] == method).unwrap();
        let curves = v["curves"][method].as_object().unwrap_or_else(|| panic!("no curves for {method}: {v}"));
        assert!(!curves.is_empty());
        for (name, points) in curves {
            let p = points.as_array().unwrap();
            assert_eq!(p.iter().map(|p| (p["step"].as_u64(), p["seeds"].as_u64())).collect::<Vec<_>>(), vec![(Some(2), Some(2)), (Some(3), Some(2))], "{name}");
            assert_eq!(p[1]["mean"], row["metrics"][name]["mean"], "{method} {name}: the last point is the table's row");
            assert_eq!(p[1]["std"], row["metrics"][name]["std"], "{method} {name}");
        }
    }
    assert!(v["curves"].get("base").is_none(), "the base model trains nothing: {v}");
    let md = std::fs::read_to_string(out.join("curves.md")).unwrap();
    assert!(md.contains("| step | gfn | ppo |\n") && md.contains("\n| 3 | "), "{md}");
    // The rows of trained adapters were their last evaluations along training;
    // a second call reuses the adapters, evaluates them afresh and agrees,
    // examples too, and reads the evaluations along training back.
    let samples = std::fs::read_to_string(out.join("samples/gfn-seed1.json")).unwrap();
    let o = run(&args);
    let again: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("evaluating gfn (seed 1)"), "the second call evaluates: {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(again["rows"], v["rows"]);
    assert_eq!(std::fs::read_to_string(out.join("samples/gfn-seed1.json")).unwrap(), samples);
    assert_eq!(again["curves"], v["curves"]);
    // Without --eval-every, a training is evaluated at its last step only (its
    // row): reused by a call with --eval-every, its curve is that one point.
    let plain = dir.path().join("plain");
    let first = ["compare", "--task", "custom", "--model", &model, "--config", config, "--methods", "gfn", "--steps", "2", "--samples", "3", "--json", "--out", plain.to_str().unwrap()];
    let o = run(&first);
    let row: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("gfn (seed 0): the evaluation at its last training step"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&[&first[..], &["--eval-every", "1"]].concat());
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let curves = v["curves"]["gfn"].as_object().unwrap_or_else(|| panic!("{v}"));
    for (name, points) in curves {
        assert_eq!(points.as_array().map(|p| p.len()), Some(1), "{name}: {points}");
        assert_eq!((points[0]["step"].as_u64(), &points[0]["mean"]), (Some(2), &row["rows"][0]["metrics"][name]["mean"]), "{name}");
    }
    // Points made with other evaluation settings are left out, and it says so.
    let o = run(&[&first[..], &["--eval-every", "1", "--batch", "8"]].concat());
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["curves"], serde_json::json!({}), "{v}");
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(said.contains("gfn seed 0: 1 evaluations along training made otherwise"), "{said}");

    for (bad, says) in [
        (&["--methods", "gfn", "--eval-every", "0"][..], "invalid --eval-every: must be at least 1"),
        (&["--methods", "base,zeroshot", "--eval-every", "1"][..], "none of the methods trains"),
        (&["--methods", "ppo", "--steps", "3", "--eval-every", "4"][..], "4 is more than ppo's 3 training steps"),
    ] {
        let o = run(&[&["compare", "--task", "custom", "--model", &model, "--config", config, "--out", dir.path().join("bad").to_str().unwrap()], bad].concat());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(says) && !err.contains("panicked"), "{bad:?}: {err}");
    }
}

/// `compare --sweep`: the GFlowNet trains once per value, each value's rows
/// are what a comparison with that config gives, and its curves are its own.
#[test]
fn compare_sweeps_the_gfn_over_one_key() {
    let (dir, model) = tiny();
    let config = custom_task_config(dir.path());
    let (config, out) = (config.to_str().unwrap(), dir.path().join("sweep"));
    let common = ["compare", "--task", "custom", "--model", &model, "--config", config, "--seeds", "2", "--samples", "3", "--json"];
    let args = [&common[..], &["--methods", "base,gfn", "--sweep", "steps=2,3", "--eval-every", "2", "--out", out.to_str().unwrap()]].concat();
    let v: serde_json::Value = serde_json::from_str(stdout(&run(&args)).trim()).unwrap();
    let methods: Vec<&str> = v["rows"].as_array().unwrap().iter().map(|r| r["method"].as_str().unwrap()).collect();
    assert_eq!(methods, ["base", "gfn[steps=2]", "gfn[steps=3]"]);
    assert_eq!(v["sweep"], serde_json::json!({"key": "steps", "values": ["2", "3"]}));
    for (stem, steps) in [("gfn-steps2", 2), ("gfn-steps3", 3)] {
        for seed in 0..2 {
            let metrics = std::fs::read_to_string(out.join(format!("{stem}-seed{seed}/metrics.jsonl"))).unwrap();
            assert_eq!(metrics.lines().count(), steps, "{stem} seed {seed} trains its own steps");
        }
    }
    let curve_steps = |name: &str| -> Vec<u64> { v["curves"][name]["valid_rate"].as_array().unwrap_or_else(|| panic!("{name}: {v}")).iter().map(|p| p["step"].as_u64().unwrap()).collect() };
    assert_eq!((curve_steps("gfn[steps=2]"), curve_steps("gfn[steps=3]")), (vec![2], vec![2, 3]));
    // A value's row is the row of a comparison run with that config.
    let plain = dir.path().join("plain");
    let p: serde_json::Value = serde_json::from_str(stdout(&run(&[&common[..], &["--methods", "gfn", "--steps", "3", "--out", plain.to_str().unwrap()]].concat())).trim()).unwrap();
    assert_eq!(p["rows"][0]["metrics"], v["rows"][2]["metrics"]);

    let adapter = format!("gfn={}", plain.join("gfn-seed0/adapter").display());
    for (bad, says) in [
        (&["--methods", "gfn", "--sweep", "lr=1e-3"][..], "invalid --sweep: give two or more values"),
        (&["--methods", "gfn", "--sweep", "seed=1,2"][..], "--seeds"),
        (&["--methods", "gfn", "--sweep", "lr 1e-3"][..], "KEY = V1"),
        (&["--methods", "base,ppo", "--sweep", "lr=1e-3,1e-2"][..], "no method trains one"),
        (&["--methods", "gfn", "--adapters", &adapter, "--sweep", "lr=1e-3,1e-2"][..], "--adapters gfn=DIR"),
        (&["--methods", "gfn", "--sweep", "steps=2,3", "--eval-every", "3"][..], "3 is more than gfn[steps=2]'s 2 training steps"),
    ] {
        let o = run(&[&common[..], &["--out", dir.path().join("bad").to_str().unwrap()], bad].concat());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(says) && err.lines().count() == 1, "{bad:?}: {err}");
    }
}

/// A GFlowNet and PPO started from an SFT adapter: compare's `sft+gfn` and
/// `sft+ppo`, and `train --adapter`. Two small steps move an adapter little,
/// so one that started from SFT's stays near it while a fresh one (A random,
/// B = 0) is as far from it as SFT went; the run's `run.json` names where it
/// started. PPO's KL penalty then keeps to the SFT policy, not the base model:
/// before its first update the policy is its reference, KL 0.
#[test]
fn gfn_and_ppo_start_from_an_sft_adapter() {
    let (dir, model) = tiny();
    let out = dir.path().join("cmp");
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "lr = 1e-4\n[task]\nk_shot = 1\n[sft]\nepochs = 1\nlr = 0.01\n[ppo]\nsteps = 2\nbatch_size = 4\nlr = 1e-5\n").unwrap();
    let cfg = config.to_str().unwrap();
    let args = ["compare", "--task", "arithmetic", "--model", &model, "--config", cfg, "--methods", "sft,gfn,sft+gfn,sft+ppo", "--steps", "2", "--samples", "1", "--limit", "1", "--json", "--out", out.to_str().unwrap()];
    let v: serde_json::Value = serde_json::from_str(stdout(&run(&args)).trim()).unwrap();
    assert_eq!(rows(&v).iter().map(|r| r.0.as_str()).collect::<Vec<_>>(), ["sft", "gfn", "sft+gfn", "sft+ppo"]);
    let sft = out.join("sft-seed0/adapter");
    let (from_sft, fresh) = (adapter_distance(&out.join("sft-gfn-seed0/adapter"), &sft), adapter_distance(&out.join("gfn-seed0/adapter"), &sft));
    assert!(from_sft < 0.2 * fresh, "sft+gfn is {from_sft} from SFT's adapter, the fresh GFlowNet {fresh}");
    let ppo = adapter_distance(&out.join("sft-ppo-seed0/adapter"), &sft);
    assert!(ppo < 0.2 * fresh, "sft+ppo is {ppo} from SFT's adapter, the fresh GFlowNet {fresh}");
    for run in ["sft-gfn-seed0", "sft-ppo-seed0"] {
        let file: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join(run).join("run.json")).unwrap()).unwrap();
        assert_eq!(file["init_adapter"].as_str(), sft.to_str(), "{file}");
    }
    let first: serde_json::Value = serde_json::from_str(std::fs::read_to_string(out.join("sft-ppo-seed0/metrics.jsonl")).unwrap().lines().next().unwrap()).unwrap();
    assert!(first["kl"].as_f64().unwrap().abs() < 1e-4, "the first step's KL to the SFT policy: {first}");
    assert!(std::fs::read_to_string(out.join("gfn-seed0/run.json")).unwrap().find("init_adapter").is_none());

    // `train --adapter`: the same start from the command line.
    let run_dir = dir.path().join("run");
    let o = run(&["train", "--model", &model, "--task", "arithmetic", "--config", cfg, "--steps", "2", "--quiet", "--adapter", sft.to_str().unwrap(), "--out", run_dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(adapter_distance(&run_dir.join("adapter"), &sft) < 0.2 * fresh);
    let file: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run_dir.join("run.json")).unwrap()).unwrap();
    assert_eq!(file["init_adapter"].as_str(), sft.to_str(), "{file}");

    // Refused with one line: with --resume, another rank, no adapter there.
    let other = dir.path().join("r4.toml");
    std::fs::write(&other, "lora_r = 4\n[task]\nk_shot = 1\n").unwrap();
    let fresh_out = dir.path().join("again");
    for (extra, config, want) in [
        (&["--resume"][..], cfg, "a resumed run goes on from its checkpoint's adapter"),
        (&[][..], other.to_str().unwrap(), "the run's config has lora_r = 4"),
    ] {
        let out_dir = if extra.is_empty() { &fresh_out } else { &run_dir };
        let mut args = vec!["train", "--model", &model, "--task", "arithmetic", "--config", config, "--steps", "1", "--quiet", "--adapter", sft.to_str().unwrap(), "--out", out_dir.to_str().unwrap()];
        args.extend_from_slice(extra);
        let o = run(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want) && err.trim().lines().count() == 1, "{extra:?}: {err}");
    }
    let o = run(&["train", "--model", &model, "--task", "arithmetic", "--config", cfg, "--steps", "1", "--quiet", "--adapter", dir.path().join("nowhere").to_str().unwrap(), "--out", fresh_out.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("nowhere") && err.trim().lines().count() == 1, "{err}");
}
