//! The compare page's table of the picked runs: what differs between them
//! (task, method, dataset, evaluation samples and schedule, few-shot examples,
//! the run whose adapter it started from, each config key and task
//! option whose values are not all equal) and each run's own final
//! evaluation (its task's metrics first, in the task's order), a row per run
//! in the colour of its training curves; runs that differ only in their
//! seed shown together as one row of mean ± std ("Seeds together", on by
//! default); saved as CSV with every setting and metric, a row per run.
//! Read from the runs list the page polls; fetches nothing.

use std::collections::{BTreeMap, BTreeSet};

use amortize_shared::api::{Run, RunStatus};
use amortize_shared::groups::{group_all_but, group_name};
use amortize_shared::metrics::MeanStd;
use leptos::prelude::*;
use serde_json::Value;

use crate::api;
use crate::charts::{fmt_num, PALETTE};
use crate::components::{Catalog, Polled};
use crate::pages::config_form::to_text;

/// A run's settings as (name, shown value): the run's fields, its config
/// keys and its task options (`task.KEY`).
pub fn settings(r: &Run) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    out.insert("task".to_string(), r.task.clone());
    out.insert("method".to_string(), r.method.as_str().to_string());
    out.insert("dataset".to_string(), r.dataset.clone().unwrap_or_else(|| "–".into()));
    out.insert("eval_samples".to_string(), r.eval_samples.map_or("default".into(), |n| n.to_string()));
    out.insert("shots".to_string(), r.shots.map_or("–".into(), |k| k.to_string()));
    out.insert("eval_every".to_string(), r.eval_every.map_or("–".into(), |k| k.to_string()));
    // The run whose adapter it started from: runs from different ones are not seeds of one setup.
    out.insert("init_from".to_string(), r.init_from.clone().unwrap_or_else(|| "–".into()));
    if let Ok(Value::Object(cfg)) = serde_json::to_value(&r.config) {
        out.extend(cfg.iter().map(|(k, v)| (k.clone(), to_text(v))));
    }
    out.extend(r.task_options.iter().map(|(k, v)| (format!("task.{k}"), to_text(v))));
    out
}

/// The names whose values are not the same in every one of `rows` (a name
/// some rows lack counts as differing).
pub fn differing(rows: &[BTreeMap<String, String>]) -> Vec<String> {
    let names: BTreeSet<&String> = rows.iter().flat_map(|r| r.keys()).collect();
    names.into_iter().filter(|n| rows.iter().any(|r| r.get(*n) != rows[0].get(*n))).cloned().collect()
}

/// A CSV field, quoted when it holds a comma, quote or line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Every setting and final metric of `runs`, a row per run (for a notebook).
pub fn csv(runs: &[Run]) -> String {
    let rows: Vec<BTreeMap<String, String>> = runs.iter().map(settings).collect();
    let names: BTreeSet<&String> = rows.iter().flat_map(|r| r.keys()).collect();
    let metrics: BTreeSet<&String> = runs.iter().flat_map(|r| r.final_metrics.iter().flatten().map(|(k, _)| k)).collect();
    let mut head = vec!["id".to_string(), "name".into(), "status".into(), "step".into(), "experiment".into()];
    head.extend(names.iter().map(|n| n.to_string()));
    head.extend(metrics.iter().map(|m| format!("final.{m}")));
    let mut out = head.iter().map(|h| csv_field(h)).collect::<Vec<_>>().join(",") + "\n";
    for (r, set) in runs.iter().zip(&rows) {
        let mut cells = vec![r.id.clone(), r.name.clone(), r.status.as_str().to_string(), r.step.to_string(), r.experiment.clone().unwrap_or_default()];
        cells.extend(names.iter().map(|n| set.get(*n).cloned().unwrap_or_default()));
        cells.extend(metrics.iter().map(|m| r.final_metrics.as_ref().and_then(|f| f.get(*m)).map(|v| v.to_string()).unwrap_or_default()));
        out += &(cells.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(",") + "\n");
    }
    out
}

/// The picked runs' groups of those alike but for their seed (indices into
/// `picked`, in order); with `together` off, a group per run. The table's
/// rows and the curves' lines are these.
pub fn seed_groups(picked: &[Run], together: bool) -> Vec<Vec<usize>> {
    if !together {
        return (0..picked.len()).map(|i| vec![i]).collect();
    }
    group_all_but(&picked.iter().map(settings).collect::<Vec<_>>(), "seed")
}

/// The picked runs among `runs`, in the order of `selected`.
pub fn picked_runs(runs: Polled<Vec<Run>>, selected: RwSignal<Vec<String>>) -> Memo<Vec<Run>> {
    Memo::new(move |_| {
        let ids = selected.get();
        runs.data.with(|l| l.as_ref().map(|l| ids.iter().filter_map(|id| l.iter().find(|r| &r.id == id).cloned()).collect::<Vec<_>>()).unwrap_or_default())
    })
}

/// A row of the table: one run, or the runs that differ only in their seed.
struct Line {
    /// Indices into the picked runs (for their colours and names).
    members: Vec<usize>,
    label: String,
    /// e.g. "completed, step 200" or "3 runs, 2 completed".
    state: String,
    settings: BTreeMap<String, String>,
}

/// A metric over a line's runs: the value, or mean ± std with the count
/// when fewer of the runs have it.
fn metric_cell(runs: &[Run], members: &[usize], m: &str) -> String {
    let vals: Vec<f64> = members.iter().filter_map(|&i| runs[i].final_metrics.as_ref().and_then(|f| f.get(m)).copied()).collect();
    match vals.len() {
        0 => "–".into(),
        1 if members.len() == 1 => fmt_num(vals[0]),
        k => {
            let s = MeanStd::from_values(&vals);
            let of = if k < members.len() { format!(" ({k} of {})", members.len()) } else { String::new() };
            format!("{} ± {}{of}", fmt_num(s.mean), fmt_num(s.std))
        }
    }
}

/// The table's rows: a run each, or (`together`) a row per group of runs
/// that differ only in `seed`, whose `seed` lists theirs.
fn lines(picked: &[Run], rows: &[BTreeMap<String, String>], together: bool) -> Vec<Line> {
    if !together {
        return picked.iter().zip(rows).enumerate().map(|(i, (r, set))| Line {
            members: vec![i],
            label: r.name.clone(),
            state: format!("{}, step {}", r.status.as_str(), r.step),
            settings: set.clone(),
        }).collect();
    }
    group_all_but(rows, "seed").into_iter().map(|g| {
        let mut settings = rows[g[0]].clone();
        let seeds: Vec<&str> = g.iter().filter_map(|&i| rows[i].get("seed").map(String::as_str)).collect();
        settings.insert("seed".into(), seeds.join(", "));
        let names: Vec<&str> = g.iter().map(|&i| picked[i].name.as_str()).collect();
        let done = g.iter().filter(|&&i| picked[i].status == RunStatus::Completed).count();
        let state = if g.len() == 1 {
            format!("{}, step {}", picked[g[0]].status.as_str(), picked[g[0]].step)
        } else {
            format!("{} runs, {done} completed", g.len())
        };
        Line { label: group_name(&names), members: g, state, settings }
    }).collect()
}

#[component]
pub fn RunsTable(
    /// The picked runs, in order.
    picked: Memo<Vec<Run>>,
    /// Runs that differ only in their seed as one row of mean ± std (and one
    /// line in a band on the page's curves).
    together: RwSignal<bool>,
) -> impl IntoView {
    let cat = Catalog::get();
    let body = move || {
        let picked = picked.get();
        if picked.is_empty() {
            return None;
        }
        let rows: Vec<BTreeMap<String, String>> = picked.iter().map(settings).collect();
        let has_groups = group_all_but(&rows, "seed").iter().any(|g| g.len() > 1);
        let grouped = has_groups && together.get();
        let lines = lines(&picked, &rows, grouped);
        let mut diff = if lines.len() > 1 { differing(&lines.iter().map(|l| l.settings.clone()).collect::<Vec<_>>()) } else { Vec::new() };
        if grouped && !diff.iter().any(|k| k == "seed") {
            diff.insert(0, "seed".into());
        }
        // The tasks' own metrics first, in their order, then any other.
        let mut metrics = cat.metrics_of(picked.iter().map(|r| r.task.as_str()));
        let others: BTreeSet<String> = picked.iter().flat_map(|r| r.final_metrics.iter().flatten().map(|(k, _)| k.clone())).collect();
        metrics.extend(others.into_iter().filter(|k| !metrics.contains(k)).collect::<Vec<_>>());
        metrics.retain(|m| picked.iter().any(|r| r.final_metrics.as_ref().is_some_and(|f| f.contains_key(m))));
        let table = csv(&picked);
        let save = move |_| {
            if let Err(e) = api::save(table.as_bytes(), "runs.csv") {
                leptos::logging::warn!("{e}");
            }
        };
        let caption = match (picked.len() > 1, grouped) {
            (false, _) => "(its final evaluation)",
            (true, false) => "(settings that differ, and each run's final evaluation)",
            (true, true) => "(settings that differ; runs alike but for their seed as one row: mean ± std)",
        };
        Some(view! {
            <section id="runs-side-by-side">
                <div class="row-head">
                    <h2>"Picked runs " <span class="muted">{caption}</span></h2>
                    {has_groups.then(|| view! {
                        <label><input type="checkbox" id="group-seeds" prop:checked=move || together.get()
                            on:change=move |ev| together.set(event_target_checked(&ev)) />" Seeds together"</label>
                    })}
                    <button type="button" id="save-runs-csv" on:click=save title="Every setting and final metric of the picked runs, a row per run">"CSV"</button>
                </div>
                <div class="scroll">
                    <table class="data" id="runs-differences">
                        <thead><tr>
                            <th scope="col">"run"</th>
                            {diff.iter().map(|k| view! { <th scope="col" class="setting" data-key=k.clone()>{k.clone()}</th> }).collect_view()}
                            {metrics.iter().map(|m| view! { <th scope="col" class="metric" data-key=m.clone()>{m.clone()}</th> }).collect_view()}
                        </tr></thead>
                        <tbody>
                            {lines.iter().map(|l| {
                                let ids = l.members.iter().map(|&i| picked[i].id.clone()).collect::<Vec<_>>().join(",");
                                let names = l.members.iter().map(|&i| picked[i].name.clone()).collect::<Vec<_>>().join(", ");
                                view! {
                                    <tr data-run=ids title=names>
                                        <th scope="row">
                                            {l.members.iter().map(|&i| view! { <span class="swatch" style=format!("background:{}", PALETTE[i % PALETTE.len()])></span> }).collect_view()}
                                            {l.label.clone()}
                                            <span class="muted">{format!(" ({})", l.state)}</span></th>
                                        {diff.iter().map(|k| view! { <td class="mono">{l.settings.get(k).cloned().unwrap_or_else(|| "–".into())}</td> }).collect_view()}
                                        {metrics.iter().map(|m| view! { <td class="num">{metric_cell(&picked, &l.members, m)}</td> }).collect_view()}
                                    </tr>
                                }
                            }).collect_view()}
                        </tbody>
                    </table>
                </div>
                {(lines.len() > 1 && diff.is_empty()).then(|| view! { <p class="muted">"Their settings are the same."</p> })}
            </section>
        })
    };
    view! { {body} }
}
