//! Helpers for the end-to-end tests in `tests/tests/`: finding (or building) the
//! real `amortize` binary, running it, serving with it over HTTP ([`Server`]),
//! and driving a headless browser ([`webdriver`]).

pub mod webdriver;

use std::path::PathBuf;
use std::process::{Command, Output};

/// The `amortize` binary of this workspace's current profile, built if missing.
pub fn amortize_bin() -> PathBuf {
    // target/<profile>/deps/<test-binary> → target/<profile>/amortize
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir").to_path_buf();
    let bin = dir.join(format!("amortize{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        let release = dir.ends_with("release");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-p", "amortize", "--bin", "amortize"]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building the amortize binary failed");
    }
    // `cargo test` of the whole workspace rebuilds the binary (the backend's own
    // tests need it); `cargo test -p amortize-tests` alone does not.
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if let (Some(b), Some(t)) = (modified(&bin), modified(&exe)) {
        if b < t {
            eprintln!("warning: {} is older than this test; run `cargo build -p amortize` (or test the whole workspace)", bin.display());
        }
    }
    bin
}

/// ‖a − b‖ over the LoRA tensors of two PEFT adapter folders of the same shape.
pub fn adapter_distance(a: &std::path::Path, b: &std::path::Path) -> f64 {
    let load = |d: &std::path::Path| candle_core::safetensors::load(d.join("adapter_model.safetensors"), &candle_core::Device::Cpu).expect("adapter tensors");
    let (a, b) = (load(a), load(b));
    assert_eq!(a.len(), b.len(), "adapters of different shapes");
    let sq = |x: &candle_core::Tensor, y: &candle_core::Tensor| -> f64 { (x - y).and_then(|d| d.sqr()?.sum_all()?.to_scalar::<f32>()).expect("tensor arithmetic") as f64 };
    a.iter().map(|(k, t)| sq(t, &b[k])).sum::<f64>().sqrt()
}

/// Runs `amortize ARGS…` and returns its output.
pub fn run(args: &[&str]) -> Output {
    Command::new(amortize_bin()).args(args).env("AMORTIZE_LOG", "error").output().expect("spawn amortize")
}

/// A running `amortize serve` on a free loopback port; killed (SIGKILL) on drop.
pub struct Server {
    pub child: std::process::Child,
    pub base: String,
    agent: ureq::Agent,
    token: Option<String>,
}

impl Server {
    /// Starts the server and waits until it prints the address it bound.
    pub fn start(model: &std::path::Path, data_dir: &std::path::Path, extra: &[&str]) -> Server {
        use std::io::BufRead;
        let mut child = Command::new(amortize_bin())
            .args(["serve", "--addr", "127.0.0.1:0"])
            .args(if extra.contains(&"--dist") { &[][..] } else { &["--dist", "/nonexistent-dist"][..] })
            .arg("--model")
            .arg(model)
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env("AMORTIZE_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("spawn amortize serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let first = lines.next().and_then(|l| l.ok()).unwrap_or_default();
        let base = first.strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected first line: {first:?}")).trim().to_string();
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        Server { child, base, agent, token: None }
    }

    pub fn with_token(mut self, token: &str) -> Self {
        self.token = Some(token.to_string());
        self
    }

    fn auth<B>(&self, r: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(t) => r.header("Authorization", format!("Bearer {t}")),
            None => r,
        }
    }

    fn json_of(mut resp: ureq::http::Response<ureq::Body>) -> (u16, serde_json::Value) {
        let status = resp.status().as_u16();
        let text = resp.body_mut().with_config().limit(64 << 20).read_to_string().unwrap_or_default();
        let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (status, v)
    }

    /// GET → (status, JSON body, or the text as a JSON string when not JSON).
    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        Self::json_of(self.auth(self.agent.get(&format!("{}{path}", self.base))).call().expect("GET"))
    }

    pub fn get_bytes(&self, path: &str) -> (u16, Vec<u8>) {
        let mut r = self.auth(self.agent.get(&format!("{}{path}", self.base))).call().expect("GET");
        (r.status().as_u16(), r.body_mut().with_config().limit(256 << 20).read_to_vec().unwrap_or_default())
    }

    pub fn post(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        Self::json_of(self.auth(self.agent.post(&format!("{}{path}", self.base))).send_json(body).expect("POST"))
    }

    pub fn patch(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        Self::json_of(self.auth(self.agent.patch(&format!("{}{path}", self.base))).send_json(body).expect("PATCH"))
    }

    /// POST of raw bytes with a content type.
    pub fn post_raw(&self, path: &str, content_type: &str, body: &[u8]) -> (u16, serde_json::Value) {
        Self::json_of(self.auth(self.agent.post(&format!("{}{path}", self.base))).header("Content-Type", content_type).send(body).expect("POST"))
    }

    /// POST announcing its body (`Content-Length`, `Expect: 100-continue`) and
    /// sending it only when the server asks (a 100). A server that refuses the
    /// size up front answers before any upload, so the answer never races a
    /// half-sent body into a broken pipe.
    pub fn post_announced(&self, path: &str, content_type: &str, body: &[u8]) -> (u16, serde_json::Value) {
        use std::io::{BufRead, Read, Write};
        let addr = self.base.strip_prefix("http://").expect("an http:// base");
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(std::time::Duration::from_secs(60))).expect("timeout");
        let auth = self.token.as_ref().map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nExpect: 100-continue\r\n{auth}Connection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).expect("send head");
        let mut reader = std::io::BufReader::new(stream.try_clone().expect("clone stream"));
        loop {
            let mut status_line = String::new();
            reader.read_line(&mut status_line).expect("status line");
            let status: u16 = status_line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("bad status line {status_line:?}"));
            let mut length = None;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).expect("header");
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        length = v.trim().parse::<usize>().ok();
                    }
                }
            }
            if status == 100 {
                stream.write_all(body).expect("send body");
                continue;
            }
            let mut text = Vec::new();
            match length {
                Some(n) => {
                    text.resize(n, 0);
                    reader.read_exact(&mut text).expect("body");
                }
                None => {
                    reader.read_to_end(&mut text).expect("body");
                }
            }
            let text = String::from_utf8_lossy(&text).into_owned();
            let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
            return (status, v);
        }
    }

    pub fn delete(&self, path: &str) -> (u16, serde_json::Value) {
        Self::json_of(self.auth(self.agent.delete(&format!("{}{path}", self.base))).call().expect("DELETE"))
    }

    /// Reads `GET path` as server-sent events until the server ends the stream
    /// (or `timeout`): (event name, data) pairs.
    pub fn events(&self, path: &str, timeout: std::time::Duration) -> Vec<(String, serde_json::Value)> {
        use std::io::BufRead;
        let resp = self
            .auth(self.agent.get(&format!("{}{path}", self.base)))
            .config()
            .timeout_global(Some(timeout))
            .build()
            .call()
            .expect("GET events");
        assert_eq!(resp.status().as_u16(), 200);
        let reader = std::io::BufReader::new(resp.into_body().into_reader());
        let (mut out, mut name) = (Vec::new(), String::new());
        for line in reader.lines() {
            let Ok(line) = line else { break };
            if let Some(n) = line.strip_prefix("event:") {
                name = n.trim().to_string();
            } else if let Some(d) = line.strip_prefix("data:") {
                out.push((name.clone(), serde_json::from_str(d.trim()).expect("event data is JSON")));
            }
        }
        out
    }

    /// Polls `GET /api/runs/{id}` until `done(run)` or `timeout`; the last run seen.
    pub fn wait_run(&self, id: &str, timeout: std::time::Duration, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let t0 = std::time::Instant::now();
        loop {
            let (status, run) = self.get(&format!("/api/runs/{id}"));
            assert_eq!(status, 200, "{run}");
            if done(&run) || t0.elapsed() > timeout {
                return run;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// SIGKILL, no goodbye.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A run that is no longer queued, running or evaluating (what `Server::wait_run` waits for).
pub fn finished(r: &serde_json::Value) -> bool {
    !matches!(r["status"].as_str(), Some("queued" | "running" | "evaluating"))
}
