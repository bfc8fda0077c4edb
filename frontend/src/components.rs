//! Small pieces every page uses: loading / error / empty states, the run
//! status badge, the source picker (base model + runs, as checkboxes), the
//! app-wide catalog (model and task presets, fetched once), and formatting.

use std::time::Duration;

use amortize_shared::api::{EvalPoint, MetricPoint, ModelInfo, Run, RunStatus, TaskInfo};
use leptos::prelude::*;

use crate::api::{self, ApiErr, Loaded};

/// Fetched once at start and shared by the pages (`use_context`).
#[derive(Clone, Copy)]
pub struct Catalog {
    pub model: RwSignal<Loaded<ModelInfo>>,
    pub tasks: RwSignal<Loaded<Vec<TaskInfo>>>,
}

impl Catalog {
    pub fn provide() {
        let c = Catalog { model: RwSignal::new(None), tasks: RwSignal::new(None) };
        api::load(c.model, api::get("/api/model"));
        api::load(c.tasks, api::get("/api/tasks"));
        provide_context(c);
    }

    pub fn get() -> Self {
        expect_context()
    }

    /// The preset named `name`, once the tasks are loaded.
    pub fn task(&self, name: &str) -> Option<TaskInfo> {
        self.tasks.with(|t| t.as_ref().and_then(|r| r.as_ref().ok()).and_then(|ts| ts.iter().find(|t| t.name == name).cloned()))
    }

    /// The metric names of `tasks`, each task's in its own order, once each.
    pub fn metrics_of<'a>(&self, tasks: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for t in tasks {
            for m in self.task(t).map(|t| t.metrics).unwrap_or_default() {
                if !out.contains(&m) {
                    out.push(m);
                }
            }
        }
        out
    }
}

/// A list fetched now and every `every`; a failed poll keeps the last data and shows its error.
pub struct Polled<T: Send + Sync + 'static> {
    pub data: RwSignal<Option<T>>,
    pub error: RwSignal<Option<ApiErr>>,
    path: &'static str,
}

impl<T: Send + Sync + 'static> Clone for Polled<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T: Send + Sync + 'static> Copy for Polled<T> {}

impl<T: serde::de::DeserializeOwned + PartialEq + Send + Sync + 'static> Polled<T> {
    pub fn start(path: &'static str, every: Option<Duration>) -> Self {
        let p = Polled { data: RwSignal::new(None), error: RwSignal::new(None), path };
        p.refresh();
        if let Some(every) = every {
            if let Ok(h) = set_interval_with_handle(move || p.refresh(), every) {
                on_cleanup(move || h.clear());
            }
        }
        p
    }

    /// Fetches again now.
    pub fn refresh(self) {
        leptos::task::spawn_local(async move {
            match api::get::<T>(self.path).await {
                Ok(v) => {
                    // Unchanged data notifies nobody (no re-render, focus kept).
                    if self.data.with_untracked(|d| d.as_ref() != Some(&v)) {
                        self.data.set(Some(v));
                    }
                    if self.error.with_untracked(Option::is_some) {
                        self.error.set(None);
                    }
                }
                Err(e) => self.error.set(Some(e)),
            }
        })
    }
}

/// "Loading …" placeholder.
#[component]
pub fn Loading(#[prop(into)] what: String) -> impl IntoView {
    view! { <p class="loading" role="status">"Loading " {what} "…"</p> }
}

/// An error message, announced to screen readers.
#[component]
pub fn ErrorMsg(#[prop(into)] err: String, #[prop(optional, into)] id: String) -> impl IntoView {
    let id = (!id.is_empty()).then_some(id);
    view! { <p class="error" role="alert" id=id>{err}</p> }
}

/// Shows `err` when it is `Some` (next to the control it belongs to).
pub fn error_slot(id: &'static str, err: impl Fn() -> Option<String> + Send + Sync + 'static) -> impl IntoView {
    move || err().map(|e| view! { <ErrorMsg err=e id=id /> })
}

/// The state of a [`Loaded`] value: loading, an error, or `f` of the value.
pub fn loaded<T: Clone + Send + Sync + 'static, V: IntoView + 'static>(
    sig: RwSignal<Loaded<T>>,
    what: &'static str,
    f: impl Fn(T) -> V + Send + Sync + 'static,
) -> impl IntoView {
    move || match sig.get() {
        None => view! { <Loading what=what /> }.into_any(),
        Some(Err(e)) => view! { <ErrorMsg err=format!("Could not load {what}: {e}") /> }.into_any(),
        Some(Ok(v)) => f(v).into_any(),
    }
}

#[component]
pub fn StatusBadge(status: RunStatus) -> impl IntoView {
    view! { <span class=format!("badge status-{}", status.as_str()) data-test="status">{status.as_str()}</span> }
}

/// 135_000_000 → "135M".
pub fn fmt_count(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.1}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.0}M", n as f64 / 1e6),
        n if n >= 10_000 => format!("{:.0}k", n as f64 / 1e3),
        n => n.to_string(),
    }
}

/// 50_000_000 → "50,000,000".
pub fn fmt_int(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// "2026-11-27T10:14:03Z" → "2026-11-27 10:14".
pub fn fmt_time(s: &str) -> String {
    let s = s.replace('T', " ");
    s.get(..16).map(str::to_string).unwrap_or(s)
}

/// A run's key metric: the first of its task's metrics, from `final_metrics`.
pub fn key_metric(run: &Run, tasks: &[TaskInfo]) -> Option<(String, f64)> {
    let finals = run.final_metrics.as_ref()?;
    let name = tasks.iter().find(|t| t.name == run.task).and_then(|t| t.metrics.first().cloned());
    match name {
        Some(n) => finals.get(&n).map(|v| (n, *v)),
        None => finals.iter().next().map(|(k, v)| (k.clone(), *v)),
    }
}

/// Checkboxes for "base" and each run: the sources of a comparison or infilling.
#[component]
pub fn SourcePicker(
    /// Element id of the fieldset.
    id: &'static str,
    runs: Polled<Vec<Run>>,
    selected: RwSignal<Vec<String>>,
) -> impl IntoView {
    let checkbox = move |value: String, label: String, extra: Option<String>| {
        let v1 = value.clone();
        let v2 = value.clone();
        let input_id = format!("{id}-{value}");
        view! {
            <label class="check" for=input_id.clone()>
                <input type="checkbox" id=input_id.clone() value=value.clone() data-test=format!("source-{value}")
                    prop:checked=move || selected.with(|s| s.contains(&v1))
                    on:change=move |ev| {
                        let on = event_target_checked(&ev);
                        selected.update(|s| tick(s, &v2, on));
                    } />
                " " {label}
                {extra.map(|e| view! { <span class="muted">" " {e}</span> })}
            </label>
        }
    };
    // What the boxes show changes at checkpoints, not at every step.
    let items = Memo::new(move |_| {
        runs.data.get().map(|list| {
            list.into_iter()
                .map(|r| {
                    let at = match (r.status.is_active(), r.checkpoint_step) {
                        (true, Some(s)) => format!("checkpoint of step {s}"),
                        (true, None) => "no checkpoint yet".into(),
                        (false, _) => format!("step {}", r.step),
                    };
                    (r.id, r.name, format!("({}, {}, {at})", r.task, r.status.as_str()))
                })
                .collect::<Vec<_>>()
        })
    });
    view! {
        <fieldset id=id class="sources">
            <legend>"Sources"</legend>
            {checkbox("base".into(), "base model".into(), None)}
            {move || match items.get() {
                None => view! { <Loading what="runs" /> }.into_any(),
                Some(list) if list.is_empty() => view! { <p class="muted">"No runs yet: only the base model."</p> }.into_any(),
                Some(list) => list.into_iter().map(|(id, name, extra)| checkbox(id, name, Some(extra))).collect_view().into_any(),
            }}
            {move || runs.error.get().map(|e| view! { <ErrorMsg err=format!("Could not load runs: {e}") /> })}
        </fieldset>
    }
}

/// Ticks `id` in a list of picked ids (appended, so the list keeps the order
/// of ticking) or unticks it.
pub fn tick(picked: &mut Vec<String>, id: &str, on: bool) {
    picked.retain(|x| x != id);
    if on {
        picked.push(id.to_string());
    }
}

/// A point of a series over training steps.
pub trait Stepped {
    fn step(&self) -> usize;
}

impl Stepped for MetricPoint {
    fn step(&self) -> usize {
        self.step
    }
}

impl Stepped for EvalPoint {
    fn step(&self) -> usize {
        self.step
    }
}

/// Adds `new` to a step-ordered series: later steps are appended, a step
/// already held is replaced (a resumed run redoes steps; fetches may overlap).
pub fn merge_steps<T: Stepped>(into: &mut Vec<T>, new: Vec<T>) {
    for p in new {
        match into.last() {
            None => into.push(p),
            Some(l) if l.step() < p.step() => into.push(p),
            _ => match into.binary_search_by_key(&p.step(), Stepped::step) {
                Ok(i) => into[i] = p,
                Err(i) => into.insert(i, p),
            },
        }
    }
}
