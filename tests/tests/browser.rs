//! The browser app in headless Chromium (WebDriver) against the real
//! `amortize serve` on a tiny random model: create a run from the form and
//! watch its chart grow (and its curves on the compare page), smooth the
//! charts, cancel runs while training and while evaluating, pick runs in the
//! list and compare them (settings that differ, curves, samples, the table
//! saved as Markdown), get middles from the infilling playground, see a
//! server error next to its control, launch a copy of a run, edit a run's
//! name, experiment and notes, delete a run, sort and search the list, and
//! check the layout at 800 px. Screenshots of every page go to `target/screenshots/`
//! (and to `$AMORTIZE_SCREENSHOTS_DIR` when set, e.g. `docs/screenshots`).
//!
//! Needs `frontend/dist` (scripts/build-frontend.sh) and Debian's `chromium` +
//! `chromium-driver` (scripts/test.sh installs both). `AMORTIZE_SKIP_BROWSER=1`
//! skips it, loudly.

use std::path::PathBuf;
use std::time::Duration;

use amortize::model::tiny::write_tiny_model;
use amortize_tests::webdriver::Browser;
use amortize_tests::Server;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn shot(b: &Browser, name: &str) {
    let mut dirs = vec![root().join("target").join("screenshots")];
    if let Some(d) = std::env::var_os("AMORTIZE_SCREENSHOTS_DIR") {
        dirs.push(root().join(d));
    }
    for d in dirs {
        b.screenshot(&d.join(format!("{name}.png")));
    }
}

/// The text of the `i`-th file the page saved, once there (the page's
/// `URL.createObjectURL` replaced so that saved blobs land in `window.__saved`).
fn saved_file(b: &Browser, i: usize) -> String {
    eventually(|| b.execute("return window.__saved[arguments[0]]", json!([i])).as_str().map(String::from), || format!("file {i} was not saved"))
}

/// Polls `probe` every 100 ms until it gives a value; fails with `why()` after [`T`].
fn eventually<R>(mut probe: impl FnMut() -> Option<R>, why: impl Fn() -> String) -> R {
    let t0 = std::time::Instant::now();
    loop {
        if let Some(r) = probe() {
            return r;
        }
        assert!(t0.elapsed() < T, "{}", why());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls until `ok()` holds; fails with `why()` after [`T`].
fn until(mut ok: impl FnMut() -> bool, why: impl Fn() -> String) {
    eventually(|| ok().then_some(()), why)
}

/// The id of the run whose page a launch opened: waits until the browser is
/// on a run page other than those of `known` runs.
fn launched(b: &Browser, known: &[&str], what: &str) -> String {
    let new_run = |p: String| p.strip_prefix("/runs/").filter(|id| id.starts_with("run-") && !known.contains(id)).map(String::from);
    eventually(|| new_run(path(b)), || format!("launch did not open {what}'s page (at {})", path(b)))
}

/// Points drawn by the line chart `#id` (0 when it has none yet).
fn chart_points(b: &Browser, id: &str) -> usize {
    let js = "const f = document.getElementById(arguments[0]); if (!f) return 0; \
              let n = 0; for (const p of f.querySelectorAll('polyline')) { n = Math.max(n, (p.getAttribute('points') || '').trim().split(/\\s+/).filter(x => x).length); } \
              for (const p of f.querySelectorAll('path')) { const d = p.getAttribute('d') || ''; n = Math.max(n, (d.match(/[ML]/g) || []).length); } return n;";
    b.execute(js, json!([id])).as_u64().unwrap_or(0) as usize
}

fn path(b: &Browser) -> String {
    b.execute("return location.pathname + location.search", json!([])).as_str().unwrap_or_default().to_string()
}

#[test]
fn the_app_in_a_real_browser() {
    if std::env::var("AMORTIZE_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!("SKIPPED: browser test (AMORTIZE_SKIP_BROWSER=1)");
        return;
    }
    let dist = root().join("frontend").join("dist");
    assert!(dist.join("index.html").exists(), "{} is not built: run scripts/build-frontend.sh", dist.display());
    let dir = tempfile::tempdir().unwrap();
    let model = write_tiny_model(&dir.path().join("model"), 3).unwrap().gguf;
    let server = Server::start(&model, &dir.path().join("data"), &["--dist", dist.to_str().unwrap()]);
    let b = Browser::start(1280, 800);
    let base = server.base.clone();

    // Home: model, presets, no runs yet.
    b.goto(&format!("{base}/"));
    b.wait("#runs-empty", T);
    b.wait_text("#model-info", T, |t| t.contains("random") || t.contains("tiny") || t.contains(".gguf"));
    shot(&b, "home-empty");

    // New run from the form; a bad value is flagged next to its field first.
    b.goto(&format!("{base}/runs/new"));
    b.wait("#new-run-form", T);
    let rng = b.wait("#task option[value=\"rng\"]", T);
    b.click(&rng);
    let lr = b.wait("#cfg-lr", T);
    b.clear(&lr);
    b.type_text(&lr, "-1");
    b.wait_text("#err-lr", T, |t| !t.trim().is_empty());
    let launch = b.wait("#launch", T);
    assert_eq!(b.execute("return document.getElementById('launch').disabled", json!([])), json!(true), "launch must be disabled while a field is invalid");
    b.clear(&lr);
    b.type_text(&lr, "0.001");
    for (field, value) in [("steps", "100000"), ("batch_size", "4"), ("checkpoint_every", "5")] {
        let el = b.wait(&format!("#cfg-{field}"), T);
        b.clear(&el);
        b.type_text(&el, value);
    }
    shot(&b, "new-run");
    b.click(&launch);
    until(|| path(&b).starts_with("/runs/run-"), || format!("launch did not open the run page (at {}): {}", path(&b), b.page_text()));
    let run1 = path(&b).trim_start_matches("/runs/").to_string();

    // Run page: the loss chart grows as steps stream in over SSE.
    b.wait("#chart-loss", T);
    let first = eventually(|| Some(chart_points(&b, "chart-loss")).filter(|&n| n >= 2), || format!("the loss chart never drew: {}", b.page_text()));
    until(|| chart_points(&b, "chart-loss") > first, || format!("the loss chart did not grow beyond {first} points"));
    // The sampler's fit has its chart once a step drew from the untempered policy.
    b.wait("#chart-sampler_ess", T);
    b.wait("#samples", T);
    shot(&b, "run-live");

    // On the compare page the training run's curves grow with it (each poll
    // of the runs list fetches only the new steps).
    b.goto(&format!("{base}/compare?runs={run1}"));
    let steps_shown = || {
        let t = b.find_all("#curves-legend li").first().map(|li| b.text(li)).unwrap_or_default();
        t.rsplit(" · ").next().and_then(|s| s.trim_end_matches(" steps").parse::<usize>().ok()).unwrap_or(0)
    };
    let first = eventually(|| Some(steps_shown()).filter(|&n| n > 0), || format!("no curves for the training run: {}", b.page_text()));
    until(|| steps_shown() > first, || format!("the curves stayed at {first} steps"));
    let drawn = b.find_all("#curve-loss path.series");
    assert_eq!(drawn.len(), 1);
    let points = b.attr(&drawn[0], "d").unwrap_or_default().matches(['M', 'L']).count();
    assert!(points > first, "{points} points drawn for more than {first} steps");

    // A run posted while this one trains waits its turn, and its page says so.
    // (Its evaluation is far longer than the test waits.)
    let (s, q) = server.post("/api/runs", &json!({"name": "queued", "task": "rng", "config": {"steps": 2, "batch_size": 4}, "eval_samples": 50_000_000}));
    assert_eq!(s, 201, "{q}");
    let queued = q["id"].as_str().unwrap().to_string();
    b.goto(&format!("{base}/runs/{queued}"));
    b.wait_text("#metrics-empty", T, |t| t.contains("waits"));
    b.goto(&format!("{base}/runs/{run1}"));
    let cancel = b.wait("#cancel", T);
    b.click(&cancel);
    server.wait_run(&run1, T, |r| r["status"] == "cancelled");
    b.wait_text("#run", T, |t| t.to_lowercase().contains("cancelled"));
    // Smoothing redraws the lines; the captions keep the raw latest values.
    let caption = b.text(&b.wait("#chart-loss figcaption", T));
    let line = |b: &Browser| b.attr(&b.wait("#chart-loss path.series", T), "d");
    let raw = line(&b);
    b.execute("const s = document.getElementById('charts-smoothing'); s.value = '0.99'; s.dispatchEvent(new Event('change'));", json!([]));
    until(|| line(&b) != raw, || "smoothing did not change the loss line".into());
    assert_eq!(b.text(&b.wait("#chart-loss figcaption", T)), caption);

    // The queued run trains, then its evaluation streams its progress; Cancel stops it there.
    b.goto(&format!("{base}/runs/{queued}"));
    let progress = b.wait_text("#stage-progress", T, |t| t.contains("Evaluating: drawing samples") && t.contains("of 50,000,000"));
    shot(&b, "run-evaluating");
    // Two steps: step ticks are whole numbers, and no chart repeats a tick label.
    let ticks = b.execute(
        "return [...document.querySelectorAll('#charts figure')].flatMap(f => ['end', 'middle'].map(a => \
         [...f.querySelectorAll(`text.tick[text-anchor=${a}]`)].map(t => t.textContent)))",
        json!([]),
    );
    for labels in ticks.as_array().unwrap() {
        let labels: Vec<&str> = labels.as_array().unwrap().iter().filter_map(Value::as_str).collect();
        let mut unique = labels.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), labels.len(), "repeated tick labels: {labels:?}");
    }
    let steps = b.execute("return [...document.querySelectorAll('#chart-loss text.tick[text-anchor=middle]')].map(t => t.textContent)", json!([]));
    let steps: Vec<&str> = steps.as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(steps.contains(&"2") && steps.iter().all(|t| t.parse::<u64>().is_ok()), "step ticks {steps:?}");
    // The runs list shows the stage too.
    b.goto(&format!("{base}/"));
    b.wait_text(&format!("tr[data-run-id=\"{queued}\"] [data-test=\"run-stage\"]"), T, |t| t.contains("drawing samples") && t.contains("/50,000,000"));
    b.goto(&format!("{base}/runs/{queued}"));
    let cancel = b.wait("#cancel", T);
    b.click(&cancel);
    let r = server.wait_run(&queued, T, |r| r["status"] == "cancelled");
    assert_eq!(r["status"], "cancelled", "after {progress:?}: {r}");
    b.wait_text("#run", T, |t| t.to_lowercase().contains("cancelled"));
    assert!(b.find_all("#stage-progress").is_empty(), "the stage line goes with the run's activity");

    // A second run through the API; then both side by side.
    let (s, r2) = server.post("/api/runs", &json!({"name": "second", "task": "rng", "config": {"steps": 6, "batch_size": 4}, "eval_samples": 20}));
    assert_eq!(s, 201, "{r2}");
    let run2 = r2["id"].as_str().unwrap().to_string();
    server.wait_run(&run2, T, |r| r["status"] == "completed");
    // Picked in the runs list, they open together on the compare page.
    b.goto(&format!("{base}/"));
    for id in [&run1, &run2] {
        let tick = b.wait(&format!("tr[data-run-id=\"{id}\"] [data-test=\"pick-run\"]"), T);
        b.click(&tick);
    }
    let open = b.wait_text("#compare-picked", T, |t| t.contains("2 picked"));
    b.click(&b.wait("#compare-picked", T));
    until(
        || b.execute("return location.search", json!([])).as_str().is_some_and(|q| q.contains("runs=")),
        || format!("{open:?} did not open the compare page (at {})", path(&b)),
    );
    let query = b.execute("return decodeURIComponent(location.search)", json!([]));
    assert_eq!(query, json!(format!("?runs={run1},{run2},base")));
    b.wait("#compare-form", T);
    let prompts = b.wait("#compare-prompts", T);
    b.clear(&prompts);
    b.type_text(&prompts, "one two\nthree four");
    let submit = b.wait("#compare-submit", T);
    b.click(&submit);
    let cols = b.wait_n(".compare-column", 2, T);
    assert!(cols.len() >= 2);
    b.wait_n(".compare-sample", 2, T);
    b.wait("#compare-metrics", T);
    shot(&b, "compare");
    // The metrics table saves as Markdown: a row per source (files caught in the page).
    b.execute("window.__saved = []; URL.createObjectURL = (blob) => { blob.text().then(t => window.__saved.push(t)); return 'about:blank'; }; \
               HTMLAnchorElement.prototype.click = function () {};", json!([]));
    b.click(&b.wait("#save-markdown", T));
    let md = saved_file(&b, 0);
    let lines: Vec<&str> = md.lines().collect();
    assert!(lines.len() == 5 && lines[0].starts_with("| source | ") && lines[1].starts_with("|---|"), "{md}");
    assert!(lines[2..].iter().all(|l| l.matches('|').count() == lines[0].matches('|').count()), "{md}");
    assert!(lines[4].starts_with("| base "), "{md}");

    // The picked runs side by side: only the settings that differ, and their own evaluations.
    b.wait("#runs-differences th.setting[data-key=\"steps\"]", T);
    assert!(b.find_all("#runs-differences th.setting[data-key=\"batch_size\"]").is_empty(), "both ran batch 4");
    assert!(b.find_all("#runs-differences th.setting[data-key=\"task\"]").is_empty(), "both are rng");
    let row = b.text(&b.wait(&format!("#runs-differences tr[data-run=\"{run2}\"]"), T));
    assert!(row.contains("second") && row.split_whitespace().any(|w| w == "6") && row.contains("20"), "{row}");
    assert!(!b.find_all("#runs-differences th.metric").is_empty(), "the completed run's final metrics");
    // Saved as CSV: every setting and final metric, a row per picked run (caught as above).
    b.click(&b.wait("#save-runs-csv", T));
    let csv = saved_file(&b, 1);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    let head: Vec<&str> = lines[0].split(',').collect();
    assert!(head.starts_with(&["id", "name", "status", "step", "experiment"]) && head.contains(&"lr") && head.contains(&"final.valid_rate"), "{csv}");
    assert!(lines[1].starts_with(&format!("{run1},")) && lines[2].starts_with(&format!("{run2},second,completed,6,")), "{csv}");
    b.execute("document.getElementById('runs-side-by-side').scrollIntoView()", json!([]));
    shot(&b, "compare-runs");

    // The chosen runs' training curves, overlaid: a path per run, named as in the legend.
    let paths = b.wait_n("#curve-loss path.series", 2, T);
    let names: Vec<String> = [&run1, &run2].iter().map(|id| server.get(&format!("/api/runs/{id}")).1["name"].as_str().unwrap().to_string()).collect();
    let labels: Vec<Option<String>> = paths.iter().map(|p| b.attr(p, "data-label")).collect();
    assert_eq!(labels, [Some(names[0].clone()), Some(names[1].clone())], "curves in the order picked");
    let legend = b.wait_text("#curves-legend", T, |t| t.contains(&names[0]) && t.contains(&names[1]));
    assert!(legend.contains("6 steps"), "{legend}");
    // Smoothing redraws the curves from the same points.
    let d_of = |css: &str| b.attr(&b.wait(css, T), "d");
    let second = format!("#curve-loss path[data-label=\"{}\"]", names[1]);
    let raw = d_of(&second);
    b.execute("const s = document.getElementById('curves-smoothing'); s.value = '0.9'; s.dispatchEvent(new Event('change'));", json!([]));
    until(|| d_of(&second) != raw, || format!("smoothing did not change the curve {raw:?}"));
    b.execute("document.getElementById('training-curves').scrollIntoView()", json!([]));
    shot(&b, "compare-curves");
    // Without prompts: the task's problems drawn its way, each sample with its log-reward.
    let first = b.attr(&b.wait("#comparison", T), "data-comparison-id").expect("comparison id");
    b.execute("document.getElementById('compare-form').scrollIntoView()", json!([]));
    b.execute("const p = document.getElementById('compare-prompts'); p.value = ''; p.dispatchEvent(new Event('input'));", json!([]));
    b.click(&b.wait("#compare-submit", T));
    until(
        || b.find_all("#comparison").iter().any(|c| b.attr(c, "data-comparison-id").is_some_and(|id| id != first)),
        || "no second comparison".to_string(),
    );
    b.wait_text("#compare-drawn-as", T, |t| t.contains("rng task"));
    let meta = b.text(&b.wait(".compare-sample .sample-meta", T));
    assert!(meta.starts_with("log R "), "{meta}");
    b.wait_text("#comparison-list", T, |t| t.contains("rng problem(s), drawn its way") && t.contains("2 prompt(s)"));
    // A Z of one's own, rated by the task's reward under the problem.
    let input = b.wait(".rate-form[data-problem=\"0\"] .rate-text", T);
    b.type_text(&input, " 42");
    b.click(&b.wait(".rate-form[data-problem=\"0\"] .rate-submit", T));
    b.wait_text(".rate-form[data-problem=\"0\"] .rate-out", T, |t| t.starts_with("log R ") && t.contains("actions"));
    // A saved comparison is deleted from the list; the one shown closes with it.
    let shown = b.attr(&b.wait("#comparison", T), "data-comparison-id").expect("comparison id");
    b.click(&b.wait(&format!("#comparison-list li[data-comparison=\"{shown}\"] button"), T));
    until(
        || b.find_all("#comparison").is_empty() && b.find_all(&format!("#comparison-list li[data-comparison=\"{shown}\"]")).is_empty(),
        || format!("comparison {shown} still shown or listed"),
    );
    assert_eq!(server.get(&format!("/api/comparisons/{shown}")).0, 404);

    // A server error shows next to the control that caused it.
    b.goto(&format!("{base}/compare?runs=base"));
    b.wait("#compare-form", T);
    let prompts = b.wait("#compare-prompts", T);
    b.clear(&prompts);
    let submit = b.wait("#compare-submit", T);
    if b.execute("return document.getElementById('compare-submit').disabled", json!([])) == json!(false) {
        b.click(&submit);
        b.wait_text("#compare-error", T, |t| t.contains("prompt"));
    } else {
        // The form itself refuses: the message is on the page, the server was not asked.
        assert!(b.page_text().to_lowercase().contains("prompt"), "{}", b.page_text());
    }

    // Infilling playground: middles per source.
    b.goto(&format!("{base}/infill?runs={run2},base"));
    b.wait("#infill-form", T);
    for (id, text) in [("#infill-beginning", "The cat sat by the door."), ("#infill-end", "So it slept there all night.")] {
        let el = b.wait(id, T);
        b.clear(&el);
        b.type_text(&el, text);
    }
    let go = b.wait("#infill-submit", T);
    b.click(&go);
    b.wait_n(".middle", 2, T);
    let share = b.execute("return document.getElementById('infill-share').href", json!([]));
    assert!(share.as_str().unwrap_or_default().contains("beginning"), "the share link encodes the inputs: {share}");
    shot(&b, "infill");

    // "New run from this": the form holds the run's values; one changed, launched.
    b.goto(&format!("{base}/runs/{run2}"));
    b.click(&b.wait("#copy-run", T));
    b.wait_text("#copy-note", T, |t| t.contains("second"));
    let value = |b: &Browser, css: &str| b.execute("const e = document.querySelector(arguments[0]); return e ? e.value : null", json!([css]));
    until(|| value(&b, "#cfg-steps") == json!("6"), || format!("the copied steps never showed: {}", value(&b, "#cfg-steps")));
    for (css, want) in [("#task", "rng"), ("#method", "gfn"), ("#cfg-batch_size", "4"), ("#eval_samples", "20")] {
        assert_eq!(value(&b, css), json!(want), "{css}");
    }
    let steps = b.wait("#cfg-steps", T);
    b.clear(&steps);
    b.type_text(&steps, "3");
    // Evaluated after every step as well: charted on its page.
    b.type_text(&b.wait("#eval_every", T), "1");
    b.click(&b.wait("#launch", T));
    let copy = launched(&b, &[&run2], "the copy");
    let (_, c) = server.get(&format!("/api/runs/{copy}"));
    assert_eq!((c["task"].as_str(), c["config"]["steps"].as_u64(), c["config"]["batch_size"].as_u64(), c["eval_samples"].as_u64()), (Some("rng"), Some(3), Some(4), Some(20)), "{c}");
    b.wait("#run-evals", T);
    server.wait_run(&copy, Duration::from_secs(120), |r| r["status"] == "completed");
    let (_, evals) = server.get(&format!("/api/runs/{copy}/evals"));
    assert_eq!(evals.as_array().map(|e| e.iter().map(|p| p["step"].as_u64().unwrap()).collect::<Vec<_>>()), Some(vec![1, 2, 3]), "{evals}");
    b.wait("#eval-chart-valid_rate svg path.series", T);
    // Every step is charted, the first too: it may end before the page's stream opens.
    until(|| chart_points(&b, "chart-loss") == 3, || format!("the copy's loss chart has {} of 3 steps", chart_points(&b, "chart-loss")));
    b.execute("document.getElementById('run-evals').scrollIntoView()", json!([]));
    shot(&b, "run-evals");
    // On the compare page its evaluations overlay those of other such runs (here the only one).
    b.goto(&format!("{base}/compare?runs={run2},{copy}"));
    b.wait("#eval-curve-valid_rate svg path.series", T);
    assert_eq!(b.find_all("#eval-curves path.series").len(), 1, "run2 has no eval_every: one curve");

    // A GFlowNet from a finished run's adapter: the run page's link fills
    // "Start from"; a LoRA rank other than that run's is refused in the form.
    b.goto(&format!("{base}/runs/{run2}"));
    b.click(&b.wait("#train-from", T));
    until(|| value(&b, "#init_from") == json!(run2.as_str()), || format!("Start from is {}", value(&b, "#init_from")));
    let rank = b.wait("#cfg-lora_r", T);
    let r0 = value(&b, "#cfg-lora_r");
    b.type_text(&rank, "0");
    b.wait_text("#err-init_from", T, |t| t.contains("lora_r = ") && t.contains("set the config's to match"));
    b.type_text(&rank, "\u{E003}");
    assert_eq!(value(&b, "#cfg-lora_r"), r0);
    b.wait_text("#err-init_from", T, |t| t.trim().is_empty());
    let steps = b.wait("#cfg-steps", T);
    b.clear(&steps);
    b.type_text(&steps, "1");
    b.click(&b.wait("#launch", T));
    let started = launched(&b, &[&run2, &copy], "the new run");
    b.wait_text("#init-from", T, |t| t.contains(run2.as_str()));
    let (_, st) = server.get(&format!("/api/runs/{started}"));
    assert_eq!((st["init_from"].as_str(), st["method"].as_str()), (Some(run2.as_str()), Some("gfn")), "{st}");
    server.wait_run(&started, Duration::from_secs(120), |r| r["status"] == "completed");
    // Where a run started is one of the settings the compare page sets side by side.
    b.goto(&format!("{base}/compare?runs={run2},{started}"));
    b.wait_text("#runs-differences", T, |t| t.contains("init_from") && t.contains(run2.as_str()));

    // A base-model run from the form: no training, its evaluation only.
    b.goto(&format!("{base}/runs/new"));
    b.wait("#new-run-form", T);
    b.click(&b.wait("#task option[value=\"rng\"]", T));
    b.click(&b.wait("#method option[value=\"base\"]", T));
    b.wait_text("#new-run-form", T, |t| t.contains("No training: the run is the task's evaluation of the base model"));
    // Its few-shot field is checked as it is typed (RNG has no examples: left empty).
    let shots = b.wait("#shots", T);
    b.type_text(&shots, "0");
    b.wait_text("#err-shots", T, |t| t.contains("≥ 1"));
    b.type_text(&shots, "\u{E003}"); // Backspace: an input event, unlike WebDriver's clear.
    b.wait_text("#err-shots", T, |t| t.trim().is_empty());
    let samples = b.wait("#eval_samples", T);
    b.clear(&samples);
    b.type_text(&samples, "20");
    b.click(&b.wait("#launch", T));
    let untrained = launched(&b, &[&run2, &copy, &started], "the base run");
    b.wait_text("#metrics-empty", T, |t| t.contains("base-model run trains nothing"));
    b.wait_text("#download-adapter-none", T, |t| t.contains("base model"));
    b.wait("#final-metrics", Duration::from_secs(120));
    let (_, u) = server.get(&format!("/api/runs/{untrained}"));
    assert_eq!((u["method"].as_str(), u["steps"].as_u64(), u["status"].as_str()), (Some("base"), Some(0), Some("completed")), "{u}");

    // Base-model runs train nothing: no training curves on the compare page.
    b.goto(&format!("{base}/compare?runs={untrained}"));
    b.wait(&format!("#runs-differences tr[data-run=\"{untrained}\"]"), T);
    assert_eq!(b.execute("return document.getElementById('training-curves').hidden", json!([])), json!(true));

    // Seeds and a sweep: one launch makes the run for two learning rates, each
    // with seeds 7 and 8, and opens the four on the compare page, where each
    // learning rate is one row of mean ± std and one line in a band on the
    // training and evaluation curves.
    b.goto(&format!("{base}/runs/new"));
    b.wait("#new-run-form", T);
    b.click(&b.wait("#task option[value=\"rng\"]", T));
    b.click(&b.wait("#method option[value=\"gfn\"]", T));
    for (css, v) in [("#cfg-seed", "7"), ("#cfg-steps", "2"), ("#cfg-batch_size", "4")] {
        let el = b.wait(css, T);
        b.clear(&el);
        b.type_text(&el, v);
    }
    let seeds = b.wait("#seeds", T);
    b.type_text(&seeds, "17");
    b.wait_text("#err-seeds", T, |t| t.contains("1 to 16"));
    b.type_text(&seeds, "\u{E003}\u{E003}2");
    b.wait_text("#err-seeds", T, |t| t.trim().is_empty());
    let sweep = b.wait("#sweep", T);
    b.type_text(&sweep, "lr = 0.001, x");
    b.wait_text("#err-sweep", T, |t| t.contains("`x` is not a finite number"));
    // Evaluations along the way at most every `steps` (2 here), also for each swept value of steps.
    let every = b.wait("#eval_every", T);
    b.type_text(&every, "3");
    b.wait_text("#err-eval_every", T, |t| t.contains("more than the run's 2 steps"));
    b.type_text(&sweep, "\u{E009}a\u{E000}steps = 2, 3");
    b.wait_text("#err-sweep", T, |t| t.contains("steps = 2 is fewer than “Evaluate every” (3)"));
    b.wait_text("#err-eval_every", T, |t| t.trim().is_empty());
    b.type_text(&sweep, "\u{E009}a\u{E000}lr = 0.001, 0.01");
    b.type_text(&every, "\u{E003}1");
    b.wait_text("#err-sweep", T, |t| t.trim().is_empty());
    b.wait_text("#err-eval_every", T, |t| t.trim().is_empty());
    let samples = b.wait("#eval_samples", T);
    b.clear(&samples);
    b.type_text(&samples, "20");
    b.click(&b.wait("#launch", T));
    until(|| path(&b).starts_with("/compare?runs="), || format!("a sweep launch did not open the compare page (at {})", path(&b)));
    let query = b.execute("return decodeURIComponent(location.search)", json!([]));
    let ids: Vec<String> = query.as_str().and_then(|q| q.strip_prefix("?runs=")).map(|q| q.split(',').map(String::from).collect()).unwrap_or_default();
    assert_eq!(ids.len(), 4, "{query}");
    let launched = [("0.001", 7), ("0.001", 8), ("0.01", 7), ("0.01", 8)];
    for (id, (lr, seed)) in ids.iter().zip(launched) {
        let r = server.wait_run(id, Duration::from_secs(120), |r| r["status"] == "completed");
        let want = (Some(format!("rng-gfn-lr{lr}-seed{seed}")), Some("gfn"), Some(seed), r["config"]["lr"].as_f64().map(|x| x.to_string()));
        assert_eq!((r["name"].as_str().map(String::from), r["method"].as_str(), r["config"]["seed"].as_u64(), Some(lr.to_string())), want, "{r}");
    }
    for (pair, lr) in [(&ids[..2], "0.001"), (&ids[2..], "0.01")] {
        let together = format!("#runs-differences tr[data-run=\"{},{}\"]", pair[0], pair[1]);
        let row = b.wait_text(&together, Duration::from_secs(60), |t| t.contains("2 completed") && t.contains("±"));
        assert!(row.starts_with(&format!("rng-gfn-lr{lr} (2 runs")) && row.contains("7, 8"), "{row}");
    }
    // One line per learning rate on the curves: the mean over both seeds' 2 steps, in a band.
    for chart in ["#curve-loss", "#eval-curve-valid_rate"] {
        for lr in ["0.001", "0.01"] {
            let mean = b.wait(&format!("{chart} path.series.mean[data-label=\"rng-gfn-lr{lr}\"]"), T);
            assert_eq!(b.attr(&mean, "d").map(|d| d.matches('L').count()), Some(1), "{chart}: a mean at steps 1 and 2");
            b.wait(&format!("{chart} path.band[data-band=\"rng-gfn-lr{lr}\"]"), T);
        }
        assert_eq!(b.find_all(&format!("{chart} path.series")).len(), 2, "{chart}: four runs make two lines");
    }
    b.wait_text("#curves-legend", T, |t| t.contains("rng-gfn-lr0.01") && t.contains("mean ± std of 2 runs"));
    // The sweep's plot: each final metric against lr, a point per learning rate.
    b.wait("#sweep-plot[data-key=\"lr\"]", T);
    assert_eq!(b.find_all("#sweep-valid_rate circle").len(), 2, "a point per learning rate");
    b.execute("document.getElementById('sweep-plot').scrollIntoView()", json!([]));
    shot(&b, "compare-sweep");
    b.execute("document.getElementById('runs-side-by-side').scrollIntoView()", json!([]));
    shot(&b, "compare-seeds");
    // Unticked, a row and a line per run.
    b.click(&b.wait("#group-seeds", T));
    b.wait(&format!("#runs-differences tr[data-run=\"{}\"]", ids[1]), T);
    assert!(b.find_all(&format!("#runs-differences tr[data-run=\"{},{}\"]", ids[0], ids[1])).is_empty(), "unticked, the seeds are apart");
    b.wait_n("#curve-loss path.series", 4, T);
    b.wait_n("#sweep-valid_rate circle", 4, T);
    assert!(b.find_all("#training-curves path.band").is_empty() && b.find_all("#eval-curves path.band").is_empty(), "unticked, no bands");
    // A run's page links to its seeds (alike but for the seed), not to the other lr's.
    b.goto(&format!("{base}/runs/{}", ids[2]));
    let link = b.wait("#compare-seeds-link", T);
    assert_eq!(b.text(&link), "Compare its 2 seeds");
    let href = b.attr(&link, "href").unwrap_or_default();
    assert!(href.ends_with(&format!("/compare?runs={},{}", ids[2], ids[3])) || href.ends_with(&format!("/compare?runs={},{}", ids[3], ids[2])), "{href}");

    // Name and notes, saved in place; the runs list shows the notes.
    b.goto(&format!("{base}/runs/{run2}"));
    b.click(&b.wait("#run-notes summary", T));
    let name = b.wait("#run-name-input", T);
    b.clear(&name);
    b.type_text(&name, "second-b");
    b.type_text(&b.wait("#run-notes-input", T), "baseline of the sweep\nsee the KL");
    b.type_text(&b.wait("#run-experiment-input", T), "sweep");
    b.click(&b.wait("#save-notes:not([disabled])", T));
    b.wait("#notes-saved", T);
    b.wait_text("#run-name", T, |t| t == "second-b");
    let (_, r) = server.get(&format!("/api/runs/{run2}"));
    assert_eq!((r["name"].as_str(), r["notes"].as_str(), r["experiment"].as_str()), (Some("second-b"), Some("baseline of the sweep\nsee the KL"), Some("sweep")), "{r}");
    b.goto(&format!("{base}/"));
    b.wait_text(&format!("tr[data-run-id=\"{run2}\"] [data-test=\"run-notes\"]"), T, |t| t == "baseline of the sweep");

    // Delete asks first: declined, nothing happens; confirmed, the run is gone.
    b.goto(&format!("{base}/runs/{queued}"));
    let delete = b.wait("#delete-run:not([disabled])", T);
    b.execute("window.confirm = () => false", json!([]));
    b.click(&delete);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(server.get(&format!("/api/runs/{queued}")).0, 200, "declined: the run stays");
    b.execute("window.confirm = () => true", json!([]));
    b.click(&delete);
    until(|| path(&b) == "/", || format!("delete did not go back to the runs (at {})", path(&b)));
    assert_eq!(server.get(&format!("/api/runs/{queued}")).0, 404);
    b.wait_text("#runs-table", T, |t| t.contains("second") && !t.contains("queued"));

    // Home again: both runs listed; then the layout at 800 px wide.
    b.goto(&format!("{base}/"));
    b.wait("#runs-table", T);
    b.wait_text("#runs-table", T, |t| t.contains("second"));
    shot(&b, "home");
    // Sorted by a header, the other way on a second click; filtered by a search.
    let ids = |b: &Browser| b.find_all("#runs-table tbody tr").iter().filter_map(|r| b.attr(r, "data-run-id")).collect::<Vec<_>>();
    let wait_ids = |b: &Browser, what: &str, ok: &dyn Fn(&[String]) -> bool| until(|| ok(&ids(b)), || format!("{what}: rows {:?}", ids(b)));
    let sort_steps = b.wait("button.sort[data-sort=\"step\"]", T);
    b.click(&sort_steps);
    wait_ids(&b, "most steps first", &|v| v.len() >= 3 && v[0] == run1);
    b.click(&sort_steps);
    wait_ids(&b, "fewest steps first", &|v| v.len() >= 3 && v.last() == Some(&run1));
    b.type_text(&b.wait("#run-search", T), "SWEEP");
    wait_ids(&b, "the search finds the notes", &|v| v == [run2.clone()]);
    b.click(&b.wait("#pick-shown", T));
    b.wait_text("#compare-picked", T, |t| t.contains("1 picked"));
    b.clear(&b.wait("#run-search", T));
    b.resize(800, 900);
    for page in ["/", "/runs/new", &format!("/runs/{run2}"), "/infill"] {
        b.goto(&format!("{base}{page}"));
        b.wait("main, #main", T);
        std::thread::sleep(Duration::from_millis(300));
        let fits = b.execute("return document.documentElement.scrollWidth <= window.innerWidth + 1", json!([]));
        assert_eq!(fits, json!(true), "{page} scrolls sideways at 800 px");
    }
    shot(&b, "run-800px");
}
