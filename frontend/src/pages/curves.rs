//! The compare page's training curves: the chosen runs' loss, log Z,
//! log-reward and length over steps, overlaid, one colour per run, with an
//! optional moving-average smoothing. Each run's series is fetched once and
//! then only its new steps (`/metrics?after=N`) as the runs list (polled by
//! the page) shows it growing; a run rewound by a resume drops its later
//! points. Hidden when no chosen run trains (base-model runs only). Owns
//! nothing the comparison itself uses.

use std::collections::{BTreeMap, HashSet};

use amortize_shared::api::{MetricPoint, Run};
use leptos::prelude::*;

use crate::api;
use crate::charts::{smooth, Curve, MultiLineChart, SmoothingSelect, PALETTE};
use crate::components::{merge_steps, ErrorMsg, Polled};
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
pub fn TrainingCurves(runs: Polled<Vec<Run>>, selected: RwSignal<Vec<String>>) -> impl IntoView {
    let series = RwSignal::new(BTreeMap::<String, Vec<MetricPoint>>::new());
    let in_flight = StoredValue::new(HashSet::<String>::new());
    let err = RwSignal::new(None::<String>);
    let weight = RwSignal::new(0.0f64);

    // The chosen runs in the order they were picked ("base" has no curves).
    let chosen = Memo::new(move |_| {
        let picked = selected.get();
        runs.data.with(|list| {
            let Some(list) = list else { return Vec::new() };
            picked.iter().filter_map(|id| list.iter().find(|r| &r.id == id)).map(|r| Chosen { id: r.id.clone(), name: r.name.clone(), step: r.step, trains: r.method.trains() }).collect::<Vec<_>>()
        })
    });

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
                    chosen
                        .iter()
                        .enumerate()
                        .filter_map(|(i, c)| {
                            let pts: Vec<(f64, f64)> = m.get(&c.id)?.iter().filter_map(|p| f(p).map(|y| (p.step as f64, y))).collect();
                            (!pts.is_empty()).then(|| Curve { label: c.name.clone(), color: i, points: smooth(&pts, w) })
                        })
                        .collect::<Vec<_>>()
                })
            });
            // log Z only where some run has one (GFlowNet objectives).
            let shown = move || key != "log_z" || curves.with(|c| !c.is_empty());
            move || shown().then(|| view! { <MultiLineChart id=format!("curve-{key}") title=title.to_string() unit=unit curves=curves /> })
        })
        .collect_view();

    let legend = move || {
        chosen
            .get()
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let steps = series.with(|m| m.get(&c.id).map_or(0, Vec::len));
                let what = if c.trains { format!(" · {steps} steps") } else { " · base model: no training".into() };
                view! {
                    <li data-run=c.id.clone()><span class="swatch" style=format!("background:{}", PALETTE[i % PALETTE.len()])></span>
                    {c.name}<span class="muted">{what}</span></li>
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
