//! The run page's evaluations during training (a run with `eval_every`): a
//! chart per metric of the task (in its order) over the evaluated steps.
//! Reads the series the run page holds (fetched with the history, grown by
//! `eval` events); fetches nothing.

use amortize_shared::api::EvalPoint;
use leptos::prelude::*;

use crate::charts::LineChart;
use crate::components::Catalog;

/// The metrics to chart: the task's own (`order`, those present), else
/// every one of `evals` by name (counts like `samples` only then).
fn metric_names(evals: &[EvalPoint], order: &[String]) -> Vec<String> {
    let own: Vec<String> = order.iter().filter(|m| evals.iter().any(|e| e.metrics.contains_key(*m))).cloned().collect();
    if !own.is_empty() {
        return own;
    }
    let mut all: Vec<String> = evals.iter().flat_map(|e| e.metrics.keys()).cloned().collect();
    all.sort();
    all.dedup();
    all
}

#[component]
pub fn EvalCharts(evals: RwSignal<Vec<EvalPoint>>, task: String, every: Option<usize>) -> impl IntoView {
    let order = Catalog::get().task(&task).map(|t| t.metrics).unwrap_or_default();
    let names = Memo::new(move |_| evals.with(|e| metric_names(e, &order)));
    let charts = move || {
        names
            .get()
            .into_iter()
            .enumerate()
            .map(|(i, name)| {
                let key = name.clone();
                let points = Signal::derive(move || evals.with(|e| e.iter().filter_map(|p| p.metrics.get(&key).map(|v| (p.step as f64, *v))).collect::<Vec<_>>()));
                view! { <LineChart id=format!("eval-chart-{name}") title=name unit="" points=points color=i /> }
            })
            .collect_view()
    };
    every.map(|n| {
        view! {
            <section id="run-evals">
                <h2>"Evaluation during training " <span class="muted">{if n == 1 { "(after every step)".to_string() } else { format!("(every {n} steps and at the last)") }}</span></h2>
                {move || evals.with(Vec::is_empty).then(|| view! { <p class="empty" id="evals-empty">{format!("The first evaluation comes after step {n}.")}</p> })}
                <div class="charts" id="eval-charts">{charts}</div>
            </section>
        }
    })
}
