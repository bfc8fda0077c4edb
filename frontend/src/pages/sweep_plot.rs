//! The compare page's sweep plot: when the picked runs' lines (runs alike but
//! for their seed taken together, as the table shows them) differ in exactly
//! one setting — a sweep — each task metric of their final evaluations
//! against that setting, mean ± std over each line's seeds, in the line's
//! colour. Numbers sit on a numeric axis (log when positive and spanning more
//! than a factor of 20: learning rates), words (an objective, a flag) a tick
//! each ([`amortize_shared::sweep::axis`]). Read from the runs list the page
//! polls; fetches nothing.

use amortize_shared::api::Run;
use amortize_shared::groups::group_name;
use amortize_shared::metrics::MeanStd;
use amortize_shared::sweep::axis;
use leptos::prelude::*;

use crate::charts::{Scatter, ScatterPoint};
use crate::components::Catalog;
use crate::pages::differences::{differing, settings};

/// The swept setting of `picked`'s lines (`groups`): its name and each
/// line's value, when the lines differ in that one setting.
fn swept(picked: &[Run], groups: &[Vec<usize>]) -> Option<(String, Vec<String>)> {
    if groups.len() < 2 {
        return None;
    }
    let rows: Vec<_> = groups.iter().map(|g| settings(&picked[g[0]])).collect();
    let keys: Vec<String> = differing(&rows).into_iter().filter(|k| k != "seed").collect();
    let [key] = keys.as_slice() else { return None };
    let values: Option<Vec<String>> = rows.iter().map(|r| r.get(key).cloned()).collect();
    Some((key.clone(), values?))
}

#[component]
pub fn SweepPlot(
    /// The picked runs, in order.
    picked: Memo<Vec<Run>>,
    /// The lines they are shown in (indices into `picked`).
    lines: Memo<Vec<Vec<usize>>>,
) -> impl IntoView {
    let cat = Catalog::get();
    let body = move || {
        let picked = picked.get();
        let groups = lines.get();
        let (key, values) = swept(&picked, &groups)?;
        let ax = axis(&values);
        let metrics = cat.metrics_of(picked.iter().map(|r| r.task.as_str()));
        let charts = metrics
            .into_iter()
            .filter_map(|m| {
                let points: Vec<ScatterPoint> = groups
                    .iter()
                    .zip(&ax.x)
                    .filter_map(|(g, &x)| {
                        let vals: Vec<f64> = g.iter().filter_map(|&i| picked[i].final_metrics.as_ref()?.get(&m).copied()).collect();
                        (!vals.is_empty()).then(|| {
                            let s = MeanStd::from_values(&vals);
                            let label = group_name(&g.iter().map(|&i| picked[i].name.as_str()).collect::<Vec<_>>());
                            ScatterPoint { label, color: g[0], x, y: s.mean, x_std: 0.0, y_std: s.std }
                        })
                    })
                    .collect();
                let xtitle = if ax.log { format!("{key} (log10)") } else { key.clone() };
                (points.len() >= 2).then(|| view! { <Scatter id=format!("sweep-{m}") xtitle=xtitle ytitle=m points=points xticks=ax.ticks.clone() /> })
            })
            .collect::<Vec<_>>();
        (!charts.is_empty()).then(|| {
            view! {
                <section id="sweep-plot" data-key=key.clone()>
                    <h2>"Sweep of " <code>{key.clone()}</code> " " <span class="muted">"(final evaluation against it; mean ± std over seeds)"</span></h2>
                    <div class="charts">{charts}</div>
                </section>
            }
        })
    };
    view! { {body} }
}
