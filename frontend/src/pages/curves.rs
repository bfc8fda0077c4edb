//! The compare page's training curves: the chosen runs' loss, log Z,
//! log-reward and length over steps, overlaid, one colour per run (runs alike
//! but for their seed, when the page shows seeds together, as one line: their
//! mean in a ± std band), with an optional moving-average smoothing (of each
//! run, before the mean). Each run's series is fetched once and
//! then only its new steps (`/metrics?after=N`) as the runs list (polled by
//! the page) shows it growing; a run rewound by a resume drops its later
//! points. Hidden when no chosen run trains (base-model runs only). Owns
//! nothing the comparison itself uses.

use std::collections::{BTreeMap, HashSet};

use amortize_shared::api::{MetricPoint, Run};
use amortize_shared::groups::group_name;
use leptos::prelude::*;

use crate::api;
use crate::charts::{smooth, Curve, MultiLineChart, SmoothingSelect, PALETTE};
use crate::components::{merge_steps, ErrorMsg};
use crate::pages::run::SERIES;

/// The run page's charts overlaid here.
const OVERLAID: [&str; 6] = ["loss", "log_z", "mean_log_r", "max_log_r", "sampler_ess", "mean_len"];

/// A chosen run as the curves need it.
#[derive(Clone, PartialEq)]
struct Chosen {
    id: String,
    name: String,
    step: usize,
    /// False for a base-model run (no steps, ever).
    trains: bool,
}

#[component]
pub fn TrainingCurves(
    /// The picked runs, in order.
    picked: Memo<Vec<Run>>,
    /// The lines they are drawn as (indices into `picked`).
    lines: Memo<Vec<Vec<usize>>>,
) -> impl IntoView {
    let series = RwSignal::new(BTreeMap::<String, Vec<MetricPoint>>::new());
    let in_flight = StoredValue::new(HashSet::<String>::new());
    let err = RwSignal::new(None::<String>);
    let weight = RwSignal::new(0.0f64);

    // The chosen runs in the order they were picked ("base" has no curves).
    let chosen = Memo::new(move |_| picked.with(|p| p.iter().map(|r| Chosen { id: r.id.clone(), name: r.name.clone(), step: r.step, trains: r.method.trains() }).collect::<Vec<_>>()));

    // Fetch what each chosen run has beyond what is held.
    Effect::new(move |_| {
        for c in chosen.get() {
            let held = series.with_untracked(|m| m.get(&c.id).map(|v| v.last().map_or(0, |p| p.step)));
            if let Some(h) = held {
                if h > c.step {
                    // Resumed from an earlier checkpoint: its later steps are gone.
                    series.update(|m| m.entry(c.id.clone()).or_default().retain(|p| p.step <= c.step));
                }
                if h >= c.step {
                    continue;
                }
            }
            if !in_flight.try_update_value(|s| s.insert(c.id.clone())).unwrap_or(false) {
                continue;
            }
            leptos::task::spawn_local(async move {
                let path = match held {
                    Some(h) => api::run_path(&c.id, &format!("/metrics?after={h}")),
                    None => api::run_path(&c.id, "/metrics"),
                };
                match api::get::<Vec<MetricPoint>>(&path).await {
                    Ok(points) => series.update(|m| merge_steps(m.entry(c.id.clone()).or_default(), points)),
                    Err(e) => err.set(Some(format!("Could not load the metrics of {}: {e}", c.name))),
                }
                in_flight.update_value(|s| {
                    s.remove(&c.id);
                });
            });
        }
    });

    let charts = SERIES
        .iter()
        .filter(|s| OVERLAID.contains(&s.0))
        .map(|&(key, title, unit, f)| {
            let curves = Signal::derive(move || {
                let w = weight.get();
                let chosen = chosen.get();
                series.with(|m| {
                    let of = |c: &Chosen| -> Vec<(f64, f64)> { smooth(&m.get(&c.id).into_iter().flatten().filter_map(|p| f(p).map(|y| (p.step as f64, y))).collect::<Vec<_>>(), w) };
                    lines.get().iter().map(|g| line(g, &chosen, of)).filter(|c| !c.points.is_empty()).collect::<Vec<_>>()
                })
            });
            // log Z only where some run has one (GFlowNet objectives).
            let shown = move || key != "log_z" || curves.with(|c| !c.is_empty());
            move || shown().then(|| view! { <MultiLineChart id=format!("curve-{key}") title=title.to_string() unit=unit curves=curves /> })
        })
        .collect_view();

    let legend = move || {
        let chosen = chosen.get();
        lines
            .get()
            .into_iter()
            .map(|g| {
                let members: Vec<&Chosen> = g.iter().map(|&i| &chosen[i]).collect();
                let steps = |c: &Chosen| series.with(|m| m.get(&c.id).map_or(0, Vec::len));
                let what = match members.as_slice() {
                    [c] if c.trains => format!(" · {} steps", steps(c)),
                    [_] => " · base model: no training".into(),
                    _ if !members[0].trains => format!(" · {} base-model runs: no training", members.len()),
                    _ => format!(" · mean ± std of {} runs · {} steps", members.len(), members.iter().map(|c| steps(c)).min().unwrap_or(0)),
                };
                let ids = members.iter().map(|c| c.id.as_str()).collect::<Vec<_>>().join(",");
                view! {
                    <li data-run=ids><span class="swatch" style=format!("background:{}", PALETTE[g[0] % PALETTE.len()])></span>
                    {label(&members)}<span class="muted">{what}</span></li>
                }
            })
            .collect_view()
    };

    view! {
        <section id="training-curves" hidden=move || chosen.with(|c| !c.iter().any(|c| c.trains))>
            <div class="row-head">
                <h2>"Training curves"</h2>
                <SmoothingSelect id="curves-smoothing" weight=weight />
            </div>
            <ul class="legend" id="curves-legend">{legend}</ul>
            <div class="charts">{charts}</div>
            {move || err.get().map(|e| view! { <ErrorMsg err=e id="curves-error" /> })}
        </section>
    }
}

/// What the legend and the curve call a line: the run's name, or its group's.
fn label(members: &[&Chosen]) -> String {
    group_name(&members.iter().map(|c| c.name.as_str()).collect::<Vec<_>>())
}

/// The curve of one line of runs (indices `g` into `chosen`), in the colour
/// of its first.
fn line(g: &[usize], chosen: &[Chosen], of: impl Fn(&Chosen) -> Vec<(f64, f64)>) -> Curve {
    let members: Vec<&Chosen> = g.iter().map(|&i| &chosen[i]).collect();
    Curve::line(label(&members), g[0], &members.iter().map(|c| of(c)).collect::<Vec<_>>())
}
