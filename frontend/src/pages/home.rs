//! Home: the loaded model, the task presets (each with a "new run" link) and
//! the table of runs, polled every 2 s so statuses and steps stay live;
//! filterable by experiment and by a search over name, task, method, status
//! and notes, sorted by any column; runs ticked in it open together on the
//! compare page (with the base model).

use std::time::Duration;

use amortize_shared::api::{Experiment, Job, Run, RunStatus, TaskInfo};
use leptos::prelude::*;
use leptos_router::components::A;

use crate::api;
use crate::charts::fmt_num;
use crate::components::{fmt_count, fmt_int, fmt_time, key_metric, loaded, tick, Catalog, ErrorMsg, Loading, Polled, StatusBadge};

#[component]
pub fn HomePage() -> impl IntoView {
    let cat = Catalog::get();
    let runs = Polled::<Vec<Run>>::start("/api/runs", Some(Duration::from_secs(2)));
    let experiments = Polled::<Vec<Experiment>>::start("/api/experiments", Some(Duration::from_secs(10)));
    let jobs = Polled::<Vec<Job>>::start("/api/jobs", Some(Duration::from_secs(2)));
    let filter = RwSignal::new(String::new());
    let search = RwSignal::new(String::new());
    let picked = RwSignal::new(Vec::<String>::new());
    // (column, descending); newest first until a header is clicked.
    let sort = RwSignal::new((Col::Created, true));

    let model = loaded(cat.model, "the model", |m| {
        view! {
            <dl class="facts" id="model-info">
                <dt>"Name"</dt><dd data-test="model-name">{m.name}</dd>
                <dt>"Parameters"</dt><dd>{fmt_count(m.parameters)}</dd>
                <dt>"Context"</dt><dd>{m.context_length} " tokens"</dd>
                <dt>"Vocabulary"</dt><dd>{m.vocab_size}</dd>
                <dt>"Device"</dt><dd>{m.device} " · " {m.dtype}</dd>
                <dt>"Path"</dt><dd class="mono">{m.path}</dd>
            </dl>
        }
    });
    let tasks = loaded(cat.tasks, "the task presets", |ts: Vec<TaskInfo>| {
        if ts.is_empty() {
            return view! { <p class="muted">"The server offers no task presets."</p> }.into_any();
        }
        view! {
            <ul class="tasks" id="task-list">
                {ts.into_iter().map(|t| view! {
                    <li data-test=format!("task-{}", t.name)>
                        <strong>{t.name.clone()}</strong>
                        <span class="muted">" — " {t.description}</span>
                        " " <A href=format!("/runs/new?task={}", api::encode(&t.name))>"New run"</A>
                    </li>
                }).collect_view()}
            </ul>
        }
        .into_any()
    });

    // Rows as data, keyed by their content: a poll re-renders only the rows
    // that changed, so keyboard focus on a link survives it.
    let rows = Memo::new(move |_| -> Option<Vec<Row>> {
        let mut list = runs.data.get()?;
        filter.with(|f| if !f.is_empty() { list.retain(|r| r.experiment.as_deref() == Some(f.as_str())) });
        search.with(|q| {
            let q = q.trim().to_lowercase();
            if !q.is_empty() {
                list.retain(|r| [&r.name, &r.task, r.method.as_str(), r.status.as_str(), &r.notes].iter().any(|f| f.to_lowercase().contains(&q)));
            }
        });
        let tasks = cat.tasks.with(|t| t.as_ref().and_then(|r| r.as_ref().ok()).cloned().unwrap_or_default());
        let queue = jobs.data.get().unwrap_or_default();
        let mut rows: Vec<Row> = list.into_iter().map(|run| {
            let queued = queue.iter().find(|j| j.run == run.id && j.position > 0).map(|j| j.position);
            let key_value = key_metric(&run, &tasks);
            let metric = key_value.as_ref().map(|(k, v)| format!("{k} = {}", fmt_num(*v))).unwrap_or_else(|| "—".into());
            Row { key: format!("{run:?}{queued:?}{metric}"), run, queued, metric, value: key_value.map(|(_, v)| v) }
        }).collect();
        let (col, desc) = sort.get();
        // Newest first among equals.
        rows.sort_by(|a, b| col.order(a, b, desc).then_with(|| b.run.created_at.cmp(&a.run.created_at)));
        Some(rows)
    });
    let header = move |col: Col, label: &'static str| {
        let state = move || sort.with(|(c, d)| (*c == col).then_some(*d));
        view! {
            <th scope="col" aria-sort=move || match state() { Some(true) => "descending", Some(false) => "ascending", None => "none" }>
                <button type="button" class="sort" data-sort=col.name()
                    on:click=move |_| sort.update(|(c, d)| if *c == col { *d = !*d } else { *c = col; *d = col.starts_descending() })>
                    {label}<span class="arrow" aria-hidden="true">{move || match state() { Some(true) => " ▼", Some(false) => " ▲", None => "" }}</span>
                </button>
            </th>
        }
    };
    let shape = Memo::new(move |_| rows.with(|r| r.as_ref().map(Vec::is_empty)));
    let table = move || match shape.get() {
        None => view! { <Loading what="runs" /> }.into_any(),
        Some(true) => view! {
            <p class="empty" id="runs-empty">
                {move || if filter.with(String::is_empty) && search.with(String::is_empty) { "No runs yet. " } else { "No runs match. " }}
                <A href="/runs/new">"Start one"</A>
                {move || (filter.with(String::is_empty) && search.with(String::is_empty)).then(|| view! {
                    ", or bring in runs trained from the command line: "<code>"amortize import DIR…"</code>"."
                })}
            </p>
        }
        .into_any(),
        Some(false) => view! {
            <div class="scroll">
                <table id="runs-table" class="data">
                    <thead><tr>
                        <th scope="col"><span class="visually-hidden">"Pick"</span></th>
                        {header(Col::Name, "Run")}{header(Col::Status, "Status")}{header(Col::Task, "Task")}
                        {header(Col::Method, "Method")}{header(Col::Step, "Step")}{header(Col::Metric, "Key metric")}
                        {header(Col::Experiment, "Experiment")}{header(Col::Created, "Created")}
                    </tr></thead>
                    <tbody>
                        <For each=move || rows.get().unwrap_or_default() key=|row| row.key.clone() children=move |row| run_row(row, picked) />
                    </tbody>
                </table>
            </div>
        }
        .into_any(),
    };

    let experiment_filter = move || {
        let list = experiments.data.get().unwrap_or_default();
        (!list.is_empty()).then(|| view! {
            <label for="experiment-filter">"Experiment "</label>
            <select id="experiment-filter" on:change=move |ev| filter.set(event_target_value(&ev))>
                <option value="" selected=move || filter.with(String::is_empty)>"all"</option>
                {list.into_iter().map(|e| {
                    let n = e.name.clone();
                    view! {
                        <option value=e.name.clone() selected=move || filter.with(|f| *f == n)>{format!("{} ({} runs)", e.name, e.runs)}</option>
                    }
                }).collect_view()}
            </select>
        })
    };

    view! {
        <section id="home">
            <div class="row-head">
                <h1>"Runs"</h1>
                <A href="/runs/new" attr:class="button primary" attr:id="new-run-link">"New run"</A>
            </div>
            <div class="toolbar">
                <label for="run-search" class="visually-hidden">"Search runs"</label>
                <input type="search" id="run-search" placeholder="Search name, task, method, status, notes"
                    prop:value=move || search.get() on:input=move |ev| search.set(event_target_value(&ev)) />
                {experiment_filter}
                {move || (shape.get() == Some(false)).then(|| view! {
                    <button type="button" id="pick-shown" title="Tick every run the list shows (after the filters)"
                        on:click=move |_| {
                            let shown: Vec<String> = rows.get_untracked().unwrap_or_default().into_iter().map(|r| r.run.id).collect();
                            // Runs already picked keep their place.
                            picked.update(|p| p.extend(shown.into_iter().filter(|id| !p.contains(id)).collect::<Vec<_>>()));
                        }>"Pick all shown"</button>
                })}
                {move || {
                    let ids = picked.get();
                    (!ids.is_empty()).then(|| {
                        let href = format!("/compare?runs={},base", ids.iter().map(|i| api::encode(i)).collect::<Vec<_>>().join(","));
                        view! {
                            <A href=href attr:class="button" attr:id="compare-picked">{format!("Compare {} picked", ids.len())}</A>
                            <button type="button" id="unpick" on:click=move |_| picked.set(Vec::new())>"Clear"</button>
                        }
                    })
                }}
            </div>
            {move || runs.error.get().map(|e| view! { <ErrorMsg err=format!("Could not refresh the runs: {e}") id="runs-error" /> })}
            {table}
        </section>
        <div class="two-col">
            <section id="model">
                <h2>"Model"</h2>
                {model}
            </section>
            <section id="tasks">
                <h2>"Task presets"</h2>
                {tasks}
            </section>
        </div>
    }
}

/// One row of the runs table.
#[derive(Clone, PartialEq)]
struct Row {
    key: String,
    run: Run,
    /// Place in the job queue while it waits.
    queued: Option<usize>,
    metric: String,
    /// The key metric's value, for sorting.
    value: Option<f64>,
}

/// A sortable column of the runs table.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Col {
    Name,
    Status,
    Task,
    Method,
    Step,
    Metric,
    Experiment,
    Created,
}

impl Col {
    fn name(self) -> &'static str {
        match self {
            Col::Name => "name",
            Col::Status => "status",
            Col::Task => "task",
            Col::Method => "method",
            Col::Step => "step",
            Col::Metric => "metric",
            Col::Experiment => "experiment",
            Col::Created => "created",
        }
    }

    /// Numbers and dates start from the largest, words from A.
    fn starts_descending(self) -> bool {
        matches!(self, Col::Step | Col::Metric | Col::Created)
    }

    /// The order by this column, `desc`ending or not; runs without a key
    /// metric come last either way.
    fn order(self, a: &Row, b: &Row, desc: bool) -> std::cmp::Ordering {
        use std::cmp::Ordering::{Equal, Greater, Less};
        let dir = |o: std::cmp::Ordering| if desc { o.reverse() } else { o };
        dir(match self {
            Col::Name => a.run.name.to_lowercase().cmp(&b.run.name.to_lowercase()),
            Col::Status => a.run.status.as_str().cmp(b.run.status.as_str()),
            Col::Task => a.run.task.cmp(&b.run.task),
            Col::Method => a.run.method.as_str().cmp(b.run.method.as_str()),
            Col::Step => a.run.step.cmp(&b.run.step),
            Col::Metric => match (a.value, b.value) {
                (Some(x), Some(y)) => x.total_cmp(&y),
                (Some(_), None) => return Less,
                (None, Some(_)) => return Greater,
                (None, None) => Equal,
            },
            Col::Experiment => a.run.experiment.cmp(&b.run.experiment),
            Col::Created => a.run.created_at.cmp(&b.run.created_at),
        })
    }
}

/// A row; its box adds the run to `picked` (in the order ticked) or takes it out.
fn run_row(Row { run: r, queued, metric, .. }: Row, picked: RwSignal<Vec<String>>) -> impl IntoView {
    let pct = if r.steps > 0 { 100.0 * r.step as f64 / r.steps as f64 } else if r.status == RunStatus::Completed { 100.0 } else { 0.0 };
    let href = format!("/runs/{}", api::encode(&r.id));
    let (id1, id2) = (r.id.clone(), r.id.clone());
    view! {
        <tr data-test="run-row" data-run-id=r.id.clone()>
            <td><input type="checkbox" data-test="pick-run" aria-label=format!("pick {}", r.name)
                prop:checked=move || picked.with(|p| p.contains(&id1))
                on:change=move |ev| {
                    let on = event_target_checked(&ev);
                    picked.update(|p| tick(p, &id2, on));
                } /></td>
            <td><A href=href>{r.name.clone()}</A>
                {(!r.notes.trim().is_empty()).then(|| view! {
                    <div class="muted run-notes" data-test="run-notes" title=r.notes.clone()>{truncate(r.notes.lines().find(|l| !l.trim().is_empty()).unwrap_or(""), 60)}</div>
                })}</td>
            <td>
                <StatusBadge status=r.status />
                {queued.map(|p| view! { <span class="muted" data-test="queue-position">" #" {p} " in queue"</span> })}
                {r.error.clone().map(|e| view! { <span class="error-inline" title=e.clone()>" " {truncate(&e, 60)}</span> })}
                {r.progress.clone().map(|p| view! { <span class="muted" data-test="run-stage">" " {p.stage} " " {fmt_int(p.done)} "/" {fmt_int(p.total)}</span> })}
            </td>
            <td>{r.task.clone()}</td>
            <td>{r.method.as_str()}</td>
            <td class="num">
                {format!("{}/{}", r.step, r.steps)}
                <progress max="100" value=pct aria-label="progress"></progress>
            </td>
            <td class="num" data-test="key-metric">{metric}</td>
            <td>{r.experiment.clone().unwrap_or_default()}</td>
            <td class="muted">{fmt_time(&r.created_at)}</td>
        </tr>
    }
}

/// At most `n` characters, with an ellipsis when cut.
pub fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}
