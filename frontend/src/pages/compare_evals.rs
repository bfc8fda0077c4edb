//! The compare page's evaluations during training: for the picked runs
//! launched with `eval_every`, each metric of their tasks over steps,
//! overlaid, one colour per run (the colours of the table and the training
//! curves; runs alike but for their seed, when the page shows seeds together,
//! as their mean in a ± std band) — e.g. GFlowNet against PPO on the task's
//! own measure as they train. A run's series is fetched again when the runs list (polled by the
//! page) shows it at a new step or status. Owns nothing else on the page.

use std::collections::{BTreeMap, HashMap};

use amortize_shared::api::{EvalPoint, Run, RunStatus};
use amortize_shared::groups::group_name;
use leptos::prelude::*;

use crate::api;
use crate::charts::{Curve, MultiLineChart};
use crate::components::{Catalog, ErrorMsg};

/// A picked run as this section needs it; `color` is its place among the picked.
#[derive(Clone, PartialEq)]
struct Evaluated {
    id: String,
    name: String,
    color: usize,
    step: usize,
    status: RunStatus,
    task: String,
}

#[component]
pub fn EvalCurves(
    /// The picked runs, in order.
    picked: Memo<Vec<Run>>,
    /// The lines they are drawn as (indices into `picked`).
    lines: Memo<Vec<Vec<usize>>>,
) -> impl IntoView {
    let cat = Catalog::get();
    let series = RwSignal::new(BTreeMap::<String, Vec<EvalPoint>>::new());
    // (step, status) of each run when its series was last fetched.
    let fetched = StoredValue::new(HashMap::<String, (usize, RunStatus)>::new());
    let err = RwSignal::new(None::<String>);

    let chosen = Memo::new(move |_| {
        picked.with(|p| {
            p.iter()
                .enumerate()
                .filter(|(_, r)| r.eval_every.is_some())
                .map(|(color, r)| Evaluated { id: r.id.clone(), name: r.name.clone(), color, step: r.step, status: r.status, task: r.task.clone() })
                .collect::<Vec<_>>()
        })
    });
    // The lines: groups of chosen runs (their indices into `chosen`); runs
    // alike but for their seed share `eval_every`, so a group is all in or out.
    let drawn = Memo::new(move |_| {
        let groups = lines.get();
        chosen.with(|cs| groups.into_iter().map(|g| g.iter().filter_map(|&i| cs.iter().position(|c| c.color == i)).collect::<Vec<_>>()).filter(|g| !g.is_empty()).collect::<Vec<_>>())
    });

    Effect::new(move |_| {
        for c in chosen.get() {
            let now = (c.step, c.status);
            if fetched.with_value(|f| f.get(&c.id) == Some(&now)) {
                continue;
            }
            fetched.update_value(|f| {
                f.insert(c.id.clone(), now);
            });
            leptos::task::spawn_local(async move {
                match api::get::<Vec<EvalPoint>>(&api::run_path(&c.id, "/evals")).await {
                    Ok(points) => series.update(|m| {
                        m.insert(c.id.clone(), points);
                    }),
                    Err(e) => {
                        fetched.update_value(|f| {
                            f.remove(&c.id);
                        });
                        err.set(Some(format!("Could not load the evaluations of {}: {e}", c.name)));
                    }
                }
            });
        }
    });

    // The chosen runs' tasks' metrics, in the tasks' order, that some series has.
    let names = Memo::new(move |_| {
        let mut names = chosen.with(|cs| cat.metrics_of(cs.iter().map(|c| c.task.as_str())));
        series.with(|s| names.retain(|m| s.values().flatten().any(|p| p.metrics.contains_key(m))));
        names
    });
    let charts = move || {
        names
            .get()
            .into_iter()
            .map(|name| {
                let key = name.clone();
                let curves = Signal::derive(move || {
                    let chosen = chosen.get();
                    series.with(|m| {
                        let of = |c: &Evaluated| -> Vec<(f64, f64)> { m.get(&c.id).into_iter().flatten().filter_map(|p| p.metrics.get(&key).map(|v| (p.step as f64, *v))).collect() };
                        drawn.get().iter().map(|g| line(g, &chosen, of)).filter(|c| !c.points.is_empty()).collect::<Vec<_>>()
                    })
                });
                view! { <MultiLineChart id=format!("eval-curve-{name}") title=name unit="" curves=curves /> }
            })
            .collect_view()
    };

    view! {
        <section id="eval-curves" hidden=move || chosen.with(Vec::is_empty)>
            <h2>"Evaluation during training " <span class="muted">"(picked runs launched with “Evaluate every”)"</span></h2>
            <div class="charts">{charts}</div>
            {move || err.get().map(|e| view! { <ErrorMsg err=e id="eval-curves-error" /> })}
        </section>
    }
}

/// The curve of one line (indices `g` into `chosen`), in the colour of its
/// first run.
fn line(g: &[usize], chosen: &[Evaluated], of: impl Fn(&Evaluated) -> Vec<(f64, f64)>) -> Curve {
    let members: Vec<&Evaluated> = g.iter().map(|&i| &chosen[i]).collect();
    let label = group_name(&members.iter().map(|c| c.name.as_str()).collect::<Vec<_>>());
    Curve::line(label, members[0].color, &members.iter().map(|c| of(c)).collect::<Vec<_>>())
}
