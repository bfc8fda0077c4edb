#!/usr/bin/env python3
"""How busy the run page keeps the browser's main thread while a fast run
streams its steps. For each built app (a frontend/dist folder): serve the tiny
random model (`amortize serve`), start an RNG run of many steps, let it train
WAIT seconds, open its page in headless Chromium (chromedriver), and sum the
page's long tasks (PerformanceObserver 'longtask', > 50 ms each) over WINDOW
seconds. Prints one JSON line per (dist, round).

Usage: page_busy.py AMORTIZE_BIN TINY_GGUF DIST [DIST ...]
Env: WAIT (default 40), WINDOW (default 20), ROUNDS (default 2)."""
import json, os, subprocess, sys, tempfile, time, urllib.request, socket

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def call(method, url, body=None, timeout=120):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"null")

PROBE = """
const done = arguments[arguments.length - 1];
let busy = 0, n = 0;
const obs = new PerformanceObserver(list => { for (const e of list.getEntries()) { busy += e.duration; n += 1; } });
obs.observe({entryTypes: ['longtask']});
const t0 = performance.now();
setTimeout(() => { obs.disconnect(); done({busy_ms: busy, long_tasks: n, window_ms: performance.now() - t0}); }, arguments[0]);
"""

def measure(bin_, model, dist, wait, window):
    port, dport = free_port(), free_port()
    data = tempfile.mkdtemp()
    server = subprocess.Popen([bin_, "serve", "--model", model, "--dist", dist, "--data-dir", data, "--addr", f"127.0.0.1:{port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    driver = subprocess.Popen(["/usr/bin/chromedriver", f"--port={dport}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base, wd = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{dport}"
    try:
        for _ in range(200):
            try:
                call("GET", f"{base}/api/health"); call("GET", f"{wd}/status"); break
            except Exception:
                time.sleep(0.1)
        run = call("POST", f"{base}/api/runs", {"name": "fast", "task": "rng", "config": {"steps": 1000000, "batch_size": 4, "checkpoint_every": 0}, "eval_samples": 0})
        time.sleep(wait)
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": "/usr/bin/chromium", "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,800"]}}}}
        sid = call("POST", f"{wd}/session", caps)["value"]["sessionId"]
        s = f"{wd}/session/{sid}"
        call("POST", f"{s}/timeouts", {"script": (window + 60) * 1000})
        call("POST", f"{s}/url", {"url": f"{base}/runs/{run['id']}"})
        time.sleep(3)  # history fetched and drawn
        t0 = time.time()
        out = call("POST", f"{s}/execute/async", {"script": PROBE, "args": [window * 1000]}, timeout=window + 120)["value"]
        out["probe_wall_s"] = round(time.time() - t0, 2)
        out["step_at_end"] = call("GET", f"{base}/api/runs/{run['id']}")["step"]
        call("DELETE", s)
        return out
    finally:
        driver.kill(); server.kill(); driver.wait(); server.wait()

def main():
    bin_, model, dists = sys.argv[1], sys.argv[2], sys.argv[3:]
    wait, window, rounds = int(os.environ.get("WAIT", 40)), int(os.environ.get("WINDOW", 20)), int(os.environ.get("ROUNDS", 2))
    for r in range(1, rounds + 1):
        for d in dists:
            out = measure(bin_, model, d, wait, window)
            out.update({"dist": d, "round": r, "wait_s": wait, "busy_share": round(out["busy_ms"] / out["window_ms"], 3)})
            print(json.dumps(out), flush=True)

if __name__ == "__main__":
    main()
