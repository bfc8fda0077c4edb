//! A small W3C WebDriver client (over `ureq`) for the browser tests: starts
//! `chromedriver`, opens a headless Chromium session, and offers the handful of
//! commands the tests need (navigate, find, click, type, read text, screenshot).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The key W3C WebDriver uses for element references.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: Child,
    url: String,
    session: String,
    agent: ureq::Agent,
    /// Chromium's profile folder, unique to this browser: every process it
    /// starts names it, so they can be found and ended on drop.
    profile: std::path::PathBuf,
}

/// Where the driver and the browser are (Debian's `chromium-driver` and `chromium`).
pub fn driver_path() -> Option<std::path::PathBuf> {
    let from_env = std::env::var_os("CHROMEDRIVER").map(std::path::PathBuf::from);
    from_env.into_iter().chain(["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"].map(std::path::PathBuf::from)).find(|p| p.exists())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

impl Browser {
    /// Starts chromedriver and a headless Chromium window of `width`×`height`.
    pub fn start(width: u32, height: u32) -> Browser {
        let driver_bin = driver_path().expect("chromedriver not found: install Debian's chromium and chromium-driver (scripts/test.sh does)");
        let port = free_port();
        let mut cmd = Command::new(driver_bin);
        cmd.arg(format!("--port={port}")).stdout(Stdio::null()).stderr(Stdio::null());
        // WEBDRIVER_LOG=FILE: chromedriver's verbose log (what a failed command did).
        if let Some(log) = std::env::var_os("WEBDRIVER_LOG") {
            cmd.arg(format!("--log-path={}", std::path::Path::new(&log).display())).arg("--verbose");
        }
        let driver = cmd.spawn().expect("spawn chromedriver");
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(60))).build().into();
        let url = format!("http://127.0.0.1:{port}");
        let t0 = Instant::now();
        while agent.get(&format!("{url}/status")).call().is_err() {
            assert!(t0.elapsed() < Duration::from_secs(20), "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let binary = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let profile = std::env::temp_dir().join(format!("amortize-chromium-{}-{port}", std::process::id()));
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": binary,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", format!("--window-size={width},{height}"), format!("--user-data-dir={}", profile.display())]
        }}}});
        let mut b = Browser { driver, url, session: String::new(), agent, profile };
        let v = b.call("POST", "/session", Some(caps));
        b.session = v["sessionId"].as_str().unwrap_or_else(|| panic!("no WebDriver session: {v}")).to_string();
        b
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.url);
        let resp = match method {
            "GET" => self.agent.get(&url).call(),
            "DELETE" => self.agent.delete(&url).call(),
            _ => self.agent.post(&url).send_json(body.unwrap_or(json!({}))),
        };
        let mut resp = resp.unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let v: Value = resp.body_mut().with_config().limit(64 << 20).read_json().unwrap_or(Value::Null);
        v["value"].clone()
    }

    fn s(&self, path: &str) -> String {
        format!("/session/{}{path}", self.session)
    }

    pub fn goto(&self, url: &str) {
        self.call("POST", &self.s("/url"), Some(json!({"url": url})));
    }

    pub fn resize(&self, width: u32, height: u32) {
        self.call("POST", &self.s("/window/rect"), Some(json!({"width": width, "height": height})));
    }

    /// Elements matching a CSS selector (possibly none).
    pub fn find_all(&self, css: &str) -> Vec<String> {
        let v = self.call("POST", &self.s("/elements"), Some(json!({"using": "css selector", "value": css})));
        v.as_array().map(|a| a.iter().filter_map(|e| e[ELEMENT].as_str().map(String::from)).collect()).unwrap_or_default()
    }

    /// Waits until at least `n` elements match `css`; panics with the page text otherwise.
    pub fn wait_n(&self, css: &str, n: usize, timeout: Duration) -> Vec<String> {
        let t0 = Instant::now();
        loop {
            let found = self.find_all(css);
            if found.len() >= n {
                return found;
            }
            if t0.elapsed() > timeout {
                panic!("timed out waiting for {n} × `{css}` (found {}); page says: {}", found.len(), self.page_text().chars().take(2000).collect::<String>());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn wait(&self, css: &str, timeout: Duration) -> String {
        self.wait_n(css, 1, timeout).remove(0)
    }

    /// Waits until `pred(text of the first match)` holds; returns that text.
    pub fn wait_text(&self, css: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let t0 = Instant::now();
        loop {
            if let Some(e) = self.find_all(css).first() {
                let t = self.text(e);
                if pred(&t) {
                    return t;
                }
                if t0.elapsed() > timeout {
                    panic!("timed out on the text of `{css}`: {t:?}");
                }
            } else if t0.elapsed() > timeout {
                panic!("timed out: no `{css}`; page says: {}", self.page_text().chars().take(2000).collect::<String>());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn click(&self, el: &str) {
        self.call("POST", &self.s(&format!("/element/{el}/click")), None);
    }

    pub fn clear(&self, el: &str) {
        self.call("POST", &self.s(&format!("/element/{el}/clear")), None);
    }

    pub fn type_text(&self, el: &str, text: &str) {
        self.call("POST", &self.s(&format!("/element/{el}/value")), Some(json!({"text": text})));
    }

    pub fn text(&self, el: &str) -> String {
        self.call("GET", &self.s(&format!("/element/{el}/text")), None).as_str().unwrap_or_default().to_string()
    }

    /// An attribute of an element (None when it has none).
    pub fn attr(&self, el: &str, name: &str) -> Option<String> {
        self.call("GET", &self.s(&format!("/element/{el}/attribute/{name}")), None).as_str().map(String::from)
    }

    pub fn page_text(&self) -> String {
        self.execute("return document.body ? document.body.innerText : ''", json!([])).as_str().unwrap_or_default().to_string()
    }

    pub fn execute(&self, script: &str, args: Value) -> Value {
        self.call("POST", &self.s("/execute/sync"), Some(json!({"script": script, "args": args})))
    }

    /// Saves a PNG of the viewport.
    pub fn screenshot(&self, path: &std::path::Path) {
        let v = self.call("GET", &self.s("/screenshot"), None);
        let png = base64_decode(v.as_str().expect("screenshot data"));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        std::fs::write(path, png).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.agent.delete(&format!("{}/session/{}", self.url, self.session)).call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // A hung browser outlives its driver: end every process of this profile.
        kill_processes_naming(&self.profile.display().to_string());
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// SIGKILL to every process whose command line contains `needle` (Linux /proc).
fn kill_processes_naming(needle: &str) {
    let Ok(entries) = std::fs::read_dir("/proc") else { return };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            // SAFETY: kill(2) on a pid read just now; the worst case is a
            // signal to a process that has already exited.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Standard base64 (with padding) to bytes.
pub fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let (mut out, mut acc, mut bits) = (Vec::with_capacity(s.len() * 3 / 4), 0u32, 0);
    for v in s.bytes().filter_map(val) {
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_known_values() {
        assert_eq!(super::base64_decode("aGVsbG8="), b"hello");
        assert_eq!(super::base64_decode("aGk="), b"hi");
        assert_eq!(super::base64_decode(""), b"");
    }
}
