//! New run: pick a task preset, edit any TrainConfig field (pre-filled with
//! the preset, checked live by `TrainConfig::validate()`), choose the method,
//! a dataset (upload one too) when the task takes one, and for the `custom`
//! task its prompt templates with a live preview. Launch posts `CreateRun`
//! with only the changed config fields and opens the run's page. Errors are
//! shown next to the field they name (the form's own or the server's
//! `ApiError.field`), otherwise at the top of the form. `?from=RUN` fills
//! the form with that run's task, method, config, dataset, experiment and
//! task options, to launch it again with a change. "Seeds" N > 1 launches
//! the run N times with consecutive seeds (named `NAME-seedS`), and "Sweep"
//! `KEY = V1, V2, …` once per value (`NAME-KEYV`, times the seeds); several
//! runs open together on the compare page. A GFlowNet or PPO run may start
//! from a finished run's adapter ("Start from", `?init=RUN`), an SFT run's say.

use amortize_shared::api::{valid_name, CreateRun, Dataset, Experiment, Method, Run, RunStatus, NOTES_MAX};
use amortize_shared::sweep::{parse_sweep, Sweep};
use leptos::ev::SubmitEvent;
use leptos::prelude::*;
use leptos_router::components::A;
use leptos_router::hooks::{use_navigate, use_query_map};
use serde_json::Value;

use super::config_form::{check, config_fields, fields_of, set_values, CfgGroups};
use super::custom_task::{examples_error, parse_examples, template_errors, CustomTemplates, Templates};
use crate::api::{self, ApiErr};
use crate::components::{loaded, Catalog, ErrorMsg, Polled};

/// One run of a launch: the config values it sets (a seed of several, a
/// swept key's value) and its name (`None`: the server's default).
struct Launch {
    set: Vec<(String, Value)>,
    name: Option<String>,
}

/// `message` unless `text` is empty or a whole number ≥ 1.
fn empty_or_positive(text: &str, message: &str) -> Option<String> {
    let t = text.trim();
    (!t.is_empty() && !t.parse::<usize>().is_ok_and(|k| k > 0)).then(|| message.to_string())
}

/// Most runs one launch makes ("Seeds", and seeds × values with "Sweep").
const SEEDS_MAX: u64 = 16;

/// Form fields outside the config that a server error may name.
const OWN_FIELDS: [&str; 15] = ["task", "name", "experiment", "method", "dataset", "eval_samples", "eval_every", "shots", "seeds", "sweep", "notes", "policy_template", "reward_template", "examples", "init_from"];

/// The LoRA settings an adapter a run starts from must share with its config.
const LORA_SHAPE: [&str; 3] = ["lora_r", "lora_alpha", "lora_targets"];

/// Whether "Start from" offers run `r` for a run of `task`: a finished
/// training of that task (its final adapter).
fn offered(r: &Run, task: &str) -> bool {
    r.task == task && r.method.trains() && r.status == RunStatus::Completed
}

/// Why `from`'s adapter cannot start a run of config `full`, if it cannot.
fn shape_mismatch(from: &Run, full: &serde_json::Map<String, Value>) -> Option<String> {
    let theirs = serde_json::to_value(&from.config).ok()?;
    let differ: Vec<String> = LORA_SHAPE.iter().filter(|k| full.get(**k) != theirs.get(**k)).map(|k| format!("{k} = {}", theirs[*k])).collect();
    (!differ.is_empty()).then(|| format!("run `{}` was trained with {}: set the config's to match", from.name, differ.join(", ")))
}

#[component]
pub fn NewRunPage() -> impl IntoView {
    let cat = Catalog::get();
    let query = use_query_map();
    let task = RwSignal::new(query.get_untracked().get("task").unwrap_or_default());
    let name = RwSignal::new(String::new());
    let experiment = RwSignal::new(String::new());
    let method = RwSignal::new("gfn".to_string());
    let dataset = RwSignal::new(String::new());
    let eval_samples = RwSignal::new(String::new());
    let shots = RwSignal::new(String::new());
    let seeds = RwSignal::new(String::new());
    let sweep = RwSignal::new(String::new());
    let eval_every = RwSignal::new(String::new());
    let notes = RwSignal::new(String::new());
    // The run whose adapter a GFlowNet run starts from (`?init=ID`); "" for a fresh one.
    let init_from = RwSignal::new(query.get_untracked().get("init").unwrap_or_default());
    let runs = Polled::<Vec<Run>>::start("/api/runs", None);
    let templates = Templates::new();
    let cfg = RwSignal::new(CfgGroups::new());
    let server_err = RwSignal::new(None::<ApiErr>);
    let busy = RwSignal::new(false);
    let datasets = Polled::<Vec<Dataset>>::start("/api/datasets", None);
    let experiments = Polled::<Vec<Experiment>>::start("/api/experiments", None);
    // The run this form copies (`?from=ID`).
    let source = RwSignal::new(None::<Run>);
    let source_err = RwSignal::new(None::<String>);
    if let Some(from) = query.get_untracked().get("from") {
        leptos::task::spawn_local(async move {
            match api::get::<Run>(&api::run_path(&from, "")).await {
                Ok(r) => {
                    task.set(r.task.clone());
                    method.set(r.method.as_str().to_string());
                    experiment.set(r.experiment.clone().unwrap_or_default());
                    eval_samples.set(r.eval_samples.map(|n| n.to_string()).unwrap_or_default());
                    shots.set(r.shots.map(|n| n.to_string()).unwrap_or_default());
                    eval_every.set(r.eval_every.map(|n| n.to_string()).unwrap_or_default());
                    init_from.set(r.init_from.clone().unwrap_or_default());
                    let text = |k: &str| r.task_options.get(k).and_then(Value::as_str).map(String::from);
                    if let Some(p) = text("policy_template") {
                        templates.policy.set(p);
                    }
                    if let Some(t) = text("reward_template") {
                        templates.reward.set(t);
                    }
                    if let Some(Value::Array(ex)) = r.task_options.get("examples") {
                        templates.examples.set(ex.iter().map(Value::to_string).collect::<Vec<_>>().join("\n"));
                    }
                    source.set(Some(r));
                }
                Err(e) => source_err.set(Some(format!("Could not load run `{from}` to copy: {e}"))),
            }
        });
    }
    // The copied run, while the form is on its task.
    let copying = move || source.get().filter(|r| task.with(|t| *t == r.task));

    // A task (the first preset when none is named) and its default config,
    // or the copied run's.
    Effect::new(move |_| {
        let Some(Ok(tasks)) = cat.tasks.get() else { return };
        let t = task.get();
        match tasks.iter().find(|x| x.name == t) {
            Some(info) => {
                cfg.set(fields_of(&info.default_config));
                dataset.set(String::new());
                if let Some(r) = copying() {
                    cfg.with_untracked(|g| set_values(g, &r.config));
                    dataset.set(r.dataset.unwrap_or_default());
                }
                server_err.set(None);
            }
            None => {
                if let Some(first) = tasks.first() {
                    task.set(first.name.clone());
                }
            }
        }
    });
    let info = Memo::new(move |_| cat.task(&task.get()));
    let is_custom = move || task.with(|t| t == "custom");

    let checked = Memo::new(move |_| cfg.with(check));
    // "Evaluate every" N where the server holds it to at most the run's
    // steps (GFlowNet and PPO; SFT's steps are its batches).
    let every_within_steps = move || eval_every.with(|t| t.trim().parse::<u64>().ok()).filter(|_| method.with(|m| m == "gfn" || m == "ppo"));
    // The sweep's key and values, read against the form's config.
    let swept = move || -> Result<Option<Sweep>, String> {
        // Without a valid config there is nothing to sweep from; its own errors say why.
        let Some(full) = checked.with(|c| c.full.clone()) else { return Ok(None) };
        let sw = sweep.with(|t| parse_sweep(t, &full))?;
        if let (Some(sw), Some(n)) = (&sw, every_within_steps()) {
            if let Some((t, _)) = sw.values.iter().find(|(_, v)| sw.key == "steps" && v.as_u64().is_some_and(|s| s < n)) {
                return Err(format!("steps = {t} is fewer than “Evaluate every” ({n})"));
            }
        }
        Ok(sw)
    };
    // The launch's runs: one with the form's name (or the server's default);
    // or N named `NAME-seedS` for consecutive seeds; or one per swept value
    // (`NAME-KEYV`), each over the seeds.
    let launches = move || -> Result<Vec<Launch>, String> {
        let text = seeds.get();
        let n = match text.trim() {
            "" => 1,
            t => t.parse::<u64>().ok().filter(|n| (1..=SEEDS_MAX).contains(n)).ok_or_else(|| format!("a whole number from 1 to {SEEDS_MAX}, or empty for one run"))?,
        };
        let own = name.with(|s| (!s.trim().is_empty()).then(|| s.trim().to_string()));
        let values = swept().ok().flatten();
        if n == 1 && values.is_none() {
            return Ok(vec![Launch { set: Vec::new(), name: own }]);
        }
        let Some(first) = checked.with(|c| c.seed) else { return Ok(Vec::new()) };
        let stem = own.unwrap_or_else(|| format!("{}-{}", task.get(), method.get()));
        let points: Vec<(String, Vec<(String, Value)>)> = match values {
            Some(sw) => sw.values.into_iter().map(|(t, v)| (format!("{stem}-{}{t}", sw.key), vec![(sw.key.clone(), v)])).collect(),
            None => vec![(stem, Vec::new())],
        };
        if points.len() as u64 * n > SEEDS_MAX {
            return Err(format!("{} values × {n} seeds is more than {SEEDS_MAX} runs", points.len()));
        }
        let mut out = Vec::new();
        for (stem, set) in points {
            for i in 0..n {
                let seed = first.checked_add(i).ok_or("the seeds would pass the largest seed: lower the config's seed")?;
                let name = if n > 1 { format!("{stem}-seed{seed}") } else { stem.clone() };
                valid_name(&name).map_err(|e| format!("run name `{name}` {e}: shorten the name"))?;
                let mut set = set.clone();
                if n > 1 {
                    set.push(("seed".into(), Value::from(seed)));
                }
                out.push(Launch { set, name: Some(name) });
            }
        }
        Ok(out)
    };
    let own_error = move |field: &str| -> Option<String> {
        let name_check = |s: &str| if s.is_empty() { None } else { valid_name(s).err() };
        match field {
            "name" => name.with(|s| name_check(s)),
            "experiment" => experiment.with(|s| name_check(s)),
            "eval_samples" => eval_samples.with(|s| (!s.trim().is_empty() && s.trim().parse::<usize>().is_err()).then(|| "must be a whole number ≥ 0".into())),
            "seeds" => launches().err(),
            "sweep" => swept().err(),
            "eval_every" if method.with(|m| m != "base") => eval_every.with(|s| empty_or_positive(s, "a whole number ≥ 1, or empty to evaluate at the end only")).or_else(|| {
                // A sweep of steps checks each of its values instead.
                let n = every_within_steps()?;
                let steps = checked.with(|c| c.full.as_ref()?.get("steps")?.as_u64())?;
                let sweeps_steps = sweep.with(|t| t.split_once('=').is_some_and(|(k, _)| k.trim() == "steps"));
                (!sweeps_steps && n > steps).then(|| format!("more than the run's {steps} steps"))
            }),
            "shots" if method.with(|m| m == "base") => shots.with(|s| empty_or_positive(s, "a whole number ≥ 1, or empty for zero-shot")),
            "notes" => notes.with(|t| (t.chars().count() > NOTES_MAX).then(|| format!("at most {NOTES_MAX} characters"))),
            "policy_template" | "reward_template" if is_custom() => {
                let (p, r) = templates.with_texts(template_errors);
                if field == "policy_template" { p } else { r }
            }
            "examples" if is_custom() => templates.examples.with(|t| examples_error(t)),
            "init_from" if method.with(|m| m == "gfn" || m == "ppo") => {
                let id = init_from.get();
                let from = runs.data.with(|rs| rs.as_ref().and_then(|rs| rs.iter().find(|r| r.id == id && task.with(|t| offered(r, t))).cloned()))?;
                checked.with(|c| c.full.as_ref().and_then(|full| shape_mismatch(&from, full)))
            }
            f => checked.with(|c| c.errors.get(f).cloned()),
        }
    };
    // The server's error belongs next to a field when it names one we show
    // (a 400 without a field for sft/ppo goes next to the method).
    let server_field = move || -> Option<String> {
        let e = server_err.get()?;
        let f = e.field_name().map(str::to_string);
        let shown = |f: &str| OWN_FIELDS.contains(&f) || cfg.with(|g| g.iter().any(|(_, fs)| fs.iter().any(|x| x.name == f)));
        match f {
            Some(f) if shown(&f) => Some(f),
            None if method.with(|m| m != "gfn") && e.status == 400 => Some("method".into()),
            _ => None,
        }
    };
    let error_of = move |field: &str| -> Option<String> {
        own_error(field).or_else(|| (server_field().as_deref() == Some(field)).then(|| server_err.get().map(|e| e.message)).flatten())
    };
    let invalid = Memo::new(move |_| {
        let mut n = checked.with(|c| c.errors.len());
        n += OWN_FIELDS.iter().filter(|f| own_error(f).is_some()).count();
        n
    });

    let navigate = use_navigate();
    let submit = move |ev: SubmitEvent| {
        ev.prevent_default();
        if invalid.get_untracked() > 0 || busy.get_untracked() {
            return;
        }
        let overrides = checked.get_untracked().overrides;
        let opt = |s: String| (!s.trim().is_empty()).then(|| s.trim().to_string());
        // The copied run's options carry over; the custom form's own replace theirs.
        let mut task_options = copying().map(|r| r.task_options).unwrap_or_default();
        if is_custom() {
            let (p, r) = templates.with_texts(|p, r| (p.to_string(), r.to_string()));
            task_options.insert("policy_template".into(), Value::String(p));
            task_options.insert("reward_template".into(), Value::String(r));
            let ex = parse_examples(&templates.examples.get_untracked()).unwrap_or_default();
            if !ex.is_empty() {
                task_options.insert("examples".into(), Value::Array(ex));
            }
        }
        let launch = match untrack(launches) {
            Ok(l) if !l.is_empty() => l,
            _ => return,
        };
        let req = CreateRun {
            name: None,
            experiment: opt(experiment.get_untracked()),
            task: task.get_untracked(),
            method: Method::ALL.into_iter().find(|m| method.with_untracked(|s| s == m.as_str())),
            config: (!overrides.is_empty()).then_some(overrides),
            task_options: (!task_options.is_empty()).then_some(task_options),
            dataset: opt(dataset.get_untracked()),
            eval_samples: eval_samples.get_untracked().trim().parse().ok(),
            // Evaluations along the way belong to training runs only.
            eval_every: method.with_untracked(|m| m != "base").then(|| eval_every.get_untracked().trim().parse().ok()).flatten(),
            // Few-shot examples belong to base-model runs only.
            shots: method.with_untracked(|m| m == "base").then(|| shots.get_untracked().trim().parse().ok()).flatten(),
            notes: opt(notes.get_untracked()),
            // A starting adapter belongs to GFlowNet and PPO runs only, and
            // only one the select offers for this task (it shows "a fresh
            // adapter" for any other id, e.g. `?init=` of another task's run).
            init_from: method
                .with_untracked(|m| m == "gfn" || m == "ppo")
                .then(|| opt(init_from.get_untracked()))
                .flatten()
                .filter(|id| runs.data.with_untracked(|rs| rs.as_ref().is_some_and(|rs| rs.iter().any(|r| r.id == *id && task.with_untracked(|t| offered(r, t)))))),
        };
        busy.set(true);
        server_err.set(None);
        let navigate = navigate.clone();
        leptos::task::spawn_local(async move {
            // One run at a time: a refusal stops the rest and says what exists.
            let mut ids: Vec<String> = Vec::new();
            for l in &launch {
                let mut one = req.clone();
                one.name = l.name.clone();
                for (k, v) in &l.set {
                    one.config.get_or_insert_with(Default::default).insert(k.clone(), v.clone());
                }
                match api::post::<_, Run>("/api/runs", &one).await {
                    Ok(run) => ids.push(run.id),
                    Err(mut e) => {
                        if !ids.is_empty() {
                            e.message = format!("Launched {} of {} runs ({}); the next was refused: {}", ids.len(), launch.len(), ids.join(", "), e.message);
                        }
                        server_err.set(Some(e));
                        busy.set(false);
                        return;
                    }
                }
            }
            let to = match ids.as_slice() {
                [one] => format!("/runs/{}", api::encode(one)),
                many => format!("/compare?runs={}", many.iter().map(|i| api::encode(i)).collect::<Vec<_>>().join(",")),
            };
            navigate(&to, Default::default());
            busy.set(false);
        });
    };

    let field_err = move |f: &'static str| {
        let id = format!("err-{f}");
        view! { <span class="field-error" id=id role="alert">{move || error_of(f)}</span> }
    };
    let text_input = move |f: &'static str, label: &'static str, help: &'static str, sig: RwSignal<String>, list: Option<&'static str>| {
        view! {
            <div class="field">
                <label for=f>{label} " " <span class="help">{help}</span></label>
                <input id=f name=f type="text" autocomplete="off" list=list
                    aria-invalid=move || if error_of(f).is_some() { "true" } else { "false" }
                    prop:value=move || sig.get() on:input=move |ev| sig.set(event_target_value(&ev)) />
                {field_err(f)}
            </div>
        }
    };

    let task_select = loaded(cat.tasks, "the task presets", move |ts| {
        view! {
            <select id="task" name="task" on:change=move |ev| task.set(event_target_value(&ev))>
                {ts.into_iter().map(|t| {
                    let n = t.name.clone();
                    view! { <option value=t.name.clone() selected=move || task.with(|x| *x == n)>{t.name.clone()}</option> }
                }).collect_view()}
            </select>
        }
    });
    let top_error = move || {
        let whole = checked.with(|c| c.errors.get("config").cloned()).map(|e| format!("The config is not valid: {e}"));
        let server = server_err.get().filter(|_| server_field().is_none()).map(|e| e.message);
        whole.or(server).map(|e| view! { <ErrorMsg err=e id="form-error" /> })
    };

    view! {
        <section id="new-run">
            <h1>"New run"</h1>
            {move || source_err.get().map(|e| view! { <ErrorMsg err=e id="copy-error" /> })}
            {move || source.get().map(|r| {
                let kept = copying().filter(|_| !is_custom()).map(|r| r.task_options).filter(|o| !o.is_empty());
                view! {
                    <p class="note" id="copy-note">"A copy of run "
                        <A href=format!("/runs/{}", api::encode(&r.id))>{r.name.clone()}</A>
                        ": its values fill the form; change what you want to try."
                        {kept.map(|o| view! { " Task options kept: " <code>{Value::Object(o).to_string()}</code> "." })}
                    </p>
                }
            })}
            <form id="new-run-form" on:submit=submit novalidate=true on:input=move |_| server_err.set(None) on:change=move |_| server_err.set(None)>
                {top_error}
                <fieldset class="cfg-group">
                    <legend>"Task and method"</legend>
                    <div class="cfg-grid">
                        <div class="field">
                            <label for="task">"Task preset"</label>
                            {task_select}
                            <span class="help" id="task-description">{move || info.get().map(|i| i.description)}</span>
                            {field_err("task")}
                        </div>
                        <div class="field">
                            <label for="method">"Method"</label>
                            <select id="method" name="method" on:change=move |ev| method.set(event_target_value(&ev))>
                                {[("gfn", "gfn — GFlowNet fine-tuning"), ("sft", "sft — supervised fine-tuning (baseline)"), ("ppo", "ppo — PPO against the reward (baseline)"), ("base", "base — the untrained model: its evaluation only")].map(|(v, label)| view! {
                                    <option value=v selected=move || method.with(|m| m == v)>{label}</option>
                                })}
                            </select>
                            {move || method.with(|m| match m.as_str() {
                                "gfn" => None,
                                "base" => Some(view! { <span class="help">"No training: the run is the task's evaluation of the base model (the seed and length fields apply), the row to compare trained runs against."</span> }),
                                _ => Some(view! { <span class="help">"A baseline: it uses steps, batch size, seed and the LoRA/length fields of the config."</span> }),
                            })}
                            {field_err("method")}
                        </div>
                        {text_input("name", "Run name", "optional; default TASK-METHOD", name, None)}
                        {text_input("experiment", "Experiment", "optional; created if new", experiment, Some("experiment-names"))}
                        {text_input("eval_samples", "Evaluation samples", "optional; 0 skips the final evaluation", eval_samples, None)}
                        {move || method.with(|m| m != "base").then(|| text_input("eval_every", "Evaluate every", "optional; steps between evaluations during training, charted on the run page; each costs what the final one does (same samples and seed: lower Evaluation samples to make them cheap)", eval_every, None))}
                        {text_input("seeds", "Seeds", "optional; N > 1 launches N runs with seeds s, s+1, … from the config's seed and opens them on the compare page", seeds, None)}
                        {text_input("sweep", "Sweep", "optional; KEY = V1, V2, … launches a run per value of a config key (each over the seeds), e.g. max_grad_norm = 1, 10", sweep, None)}
                        {move || method.with(|m| m == "gfn" || m == "ppo").then(|| start_select(task, init_from, runs, field_err("init_from")))}
                        {move || method.with(|m| m == "base").then(|| text_input("shots", "Few-shot examples", "optional; k worked examples from the task's training data before each prompt", shots, None))}
                        <div class="field wide">
                            <label for="notes">"Notes " <span class="help">"optional; why this run, what to look for"</span></label>
                            <textarea id="notes" name="notes" rows="2" aria-invalid=move || if error_of("notes").is_some() { "true" } else { "false" }
                                prop:value=move || notes.get() on:input=move |ev| notes.set(event_target_value(&ev))></textarea>
                            {field_err("notes")}
                        </div>
                    </div>
                    <datalist id="experiment-names">
                        {move || experiments.data.get().unwrap_or_default().into_iter().map(|e| view! { <option value=e.name></option> }).collect_view()}
                    </datalist>
                </fieldset>
                {move || info.get().and_then(|i| i.dataset_option.map(|opt| dataset_section(i.name, opt, i.dataset_format, datasets, dataset, field_err("dataset"))))}
                {move || is_custom().then(|| view! { <CustomTemplates t=templates error_of=error_of /> })}
                {move || config_fields(cfg.get(), error_of)}
                <div class="actions">
                    <button type="submit" id="launch" class="primary" disabled=move || { invalid.get() > 0 || busy.get() || info.get().is_none() }>
                        {move || if busy.get() { "Launching…" } else { "Launch run" }}
                    </button>
                    {move || (invalid.get() > 0).then(|| view! {
                        <span class="field-error" id="form-invalid">{format!("Fix {} field(s) marked above to launch.", invalid.get())}</span>
                    })}
                </div>
            </form>
        </section>
    }
}

/// "Start from": a fresh adapter, or a finished run's of this task (its
/// final adapter; an SFT run's is the usual choice).
fn start_select(task: RwSignal<String>, selected: RwSignal<String>, runs: Polled<Vec<Run>>, error: impl IntoView + 'static) -> impl IntoView {
    let options = move || {
        let mine: Vec<Run> = runs.data.get().unwrap_or_default().into_iter().filter(|r| task.with(|t| offered(r, t))).collect();
        mine.into_iter().map(|r| {
            let id = r.id.clone();
            view! { <option value=r.id.clone() selected=move || selected.with(|s| *s == id)>{format!("{} ({}, {} steps)", r.name, r.method.as_str(), r.step)}</option> }
        }).collect_view()
    };
    view! {
        <div class="field">
            <label for="init_from">"Start from " <span class="help">"optional; the adapter starts as a finished run's (an SFT run's, say) instead of a fresh one; PPO then keeps close to it instead of the base model"</span></label>
            <select id="init_from" name="init_from" on:change=move |ev| selected.set(event_target_value(&ev))>
                <option value="" selected=move || selected.with(String::is_empty)>"a fresh adapter"</option>
                {options}
            </select>
            {error}
        </div>
    }
}

/// The dataset picker and upload of a task that takes one (`dataset_option`).
fn dataset_section(
    task: String,
    option: String,
    format: Option<String>,
    datasets: Polled<Vec<Dataset>>,
    selected: RwSignal<String>,
    error: impl IntoView + 'static,
) -> impl IntoView {
    let file_ref = NodeRef::<leptos::html::Input>::new();
    let upload_name = RwSignal::new(String::new());
    let upload_err = RwSignal::new(None::<String>);
    let uploading = RwSignal::new(false);
    let task2 = task.clone();
    let options = move || {
        let list: Vec<Dataset> = datasets.data.get().unwrap_or_default().into_iter().filter(|d| d.task == task2).collect();
        list.into_iter().map(|d| {
            let n = d.name.clone();
            view! { <option value=d.name.clone() selected=move || selected.with(|s| *s == n)>{format!("{} ({} lines)", d.name, d.lines)}</option> }
        }).collect_view()
    };
    let on_file = move |_| {
        let file = file_ref.get().and_then(|i| i.files()).and_then(|f| f.get(0));
        if let Some(f) = file {
            let stem = f.name().rsplit_once('.').map(|(a, _)| a.to_string()).unwrap_or(f.name());
            let clean: String = stem.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '-' }).collect();
            upload_name.set(clean.trim_start_matches('.').chars().take(64).collect());
        }
    };
    let upload = move |_| {
        upload_err.set(None);
        let Some(file) = file_ref.get().and_then(|i| i.files()).and_then(|f| f.get(0)) else {
            upload_err.set(Some("Choose a file first.".into()));
            return;
        };
        let name = upload_name.get_untracked().trim().to_string();
        if let Err(e) = valid_name(&name) {
            upload_err.set(Some(format!("Dataset name {e}")));
            return;
        }
        uploading.set(true);
        let task = task.clone();
        leptos::task::spawn_local(async move {
            let text = wasm_bindgen_futures::JsFuture::from(file.text()).await.ok().and_then(|v| v.as_string());
            let res = match text {
                None => Err(ApiErr::new("Could not read the file.")),
                Some(t) => api::post_text::<Dataset>(&format!("/api/datasets/{}/{}", api::encode(&task), api::encode(&name)), t).await,
            };
            match res {
                Ok(d) => {
                    selected.set(d.name);
                    datasets.refresh();
                }
                Err(e) => upload_err.set(Some(e.message)),
            }
            uploading.set(false);
        });
    };
    view! {
        <fieldset class="cfg-group" id="dataset-section">
            <legend>"Dataset"</legend>
            <p class="help">"Fills the task option " <code>{option}</code> "."
                {format.map(|f| view! { " One line: " <code>{f}</code> })}</p>
            <div class="cfg-grid">
                <div class="field">
                    <label for="dataset">"Dataset"</label>
                    <select id="dataset" name="dataset" on:change=move |ev| selected.set(event_target_value(&ev))>
                        <option value="" selected=move || selected.with(String::is_empty)>"none (the preset's own data)"</option>
                        {options}
                    </select>
                    {error}
                    {move || datasets.error.get().map(|e| view! { <ErrorMsg err=format!("Could not load datasets: {e}") /> })}
                </div>
                <div class="field">
                    <label for="dataset-file">"Upload a file"</label>
                    <input type="file" id="dataset-file" node_ref=file_ref accept=".jsonl,.txt,.json,.csv,text/plain" on:change=on_file />
                    <label for="dataset-name">"as"</label>
                    <input type="text" id="dataset-name" prop:value=move || upload_name.get() on:input=move |ev| upload_name.set(event_target_value(&ev)) />
                    <button type="button" id="dataset-upload" on:click=upload disabled=move || uploading.get()>
                        {move || if uploading.get() { "Uploading…" } else { "Upload" }}
                    </button>
                    {move || upload_err.get().map(|e| view! { <ErrorMsg err=e id="dataset-error" /> })}
                </div>
            </div>
        </fieldset>
    }
}
