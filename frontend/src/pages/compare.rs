//! Compare: pick sources (base model and runs), enter prompts, and see the
//! samples side by side (one column per source, rows aligned by prompt), the
//! metrics table (mean ± std) and the task picture: for RNG runs the
//! distribution of sampled integers against the uniform target (log scale),
//! otherwise mean base log-likelihood against distinct-2 diversity. Saved
//! comparisons are listed and open at `/compare?id=N`. The chosen runs'
//! differing settings and final evaluations (`differences`), a sweep's
//! metrics against its setting (`sweep_plot`), training
//! curves (`curves`) and evaluations during training (`compare_evals`) show
//! as soon as they are picked.

use std::collections::BTreeMap;
use std::time::Duration;

use amortize_shared::api::{Comparison, ComparisonColumn, CreateComparison, Decoding, MetricSummary, Run};
use leptos::ev::SubmitEvent;
use leptos::prelude::*;
use leptos_router::components::A;
use leptos_router::hooks::use_query_map;

use crate::api::{self, ApiErr};
use crate::charts::{fmt_num, Distribution, DistributionChart, Scatter, ScatterPoint};
use crate::components::{error_slot, fmt_time, ErrorMsg, Loading, Polled, SourcePicker};
use crate::pages::curves::TrainingCurves;
use crate::pages::compare_evals::EvalCurves;
use crate::pages::compare_rate::RateZ;
use crate::pages::differences::{picked_runs, seed_groups, RunsTable};
use crate::pages::sweep_plot::SweepPlot;

/// Integers the RNG task draws from: 0..SUPPORT.
const SUPPORT: usize = 101;

/// The RNG task's reading of a sample: the text before its first stop
/// (newline, full stop or comma; comparisons sample past them), then the
/// server's `parse_number`: 1 to 3 digits, below 101.
pub fn parse_number(text: &str) -> Option<usize> {
    let t = text.split(['\n', '.', ',']).next().unwrap_or("").trim();
    if t.is_empty() || t.len() > 3 || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse::<usize>().ok().filter(|&v| v < SUPPORT)
}

fn distribution(c: &ComparisonColumn) -> Distribution {
    let mut counts = vec![0usize; SUPPORT];
    let mut total = 0;
    for g in c.samples.iter().flatten() {
        total += 1;
        if let Some(n) = parse_number(&g.text) {
            counts[n] += 1;
        }
    }
    let valid: usize = counts.iter().sum();
    let probs = counts.iter().map(|&k| if valid > 0 { k as f64 / valid as f64 } else { 0.0 }).collect();
    Distribution { label: c.label.clone(), probs, valid, total }
}

/// The first metric key among `names`, else the first containing every one of `parts`.
fn find_key<'a>(m: &'a BTreeMap<String, MetricSummary>, names: &[&str], parts: &[&str]) -> Option<(&'a String, &'a MetricSummary)> {
    names.iter().find_map(|n| m.get_key_value(*n)).or_else(|| m.iter().find(|(k, _)| parts.iter().all(|p| k.contains(p))))
}

fn parse_num<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, String> {
    s.trim().parse::<T>().map_err(|_| format!("{what} must be a number"))
}

#[component]
pub fn ComparePage() -> impl IntoView {
    let query = use_query_map();
    let runs = Polled::<Vec<Run>>::start("/api/runs", Some(Duration::from_secs(10)));
    let past = Polled::<Vec<Comparison>>::start("/api/comparisons", None);
    let initial = query.get_untracked().get("runs").map(|r| r.split(',').filter(|s| !s.is_empty()).map(String::from).collect());
    let selected = RwSignal::new(initial.unwrap_or_else(|| vec!["base".to_string()]));
    // The picked runs, and the lines the table and the curves show them in:
    // runs alike but for their seed together ("Seeds together", in the table).
    let together = RwSignal::new(true);
    let picked = picked_runs(runs, selected);
    let lines = Memo::new(move |_| picked.with(|p| seed_groups(p, together.get())));
    let prompts = RwSignal::new(query.get_untracked().get("prompts").unwrap_or_default());
    let n = RwSignal::new("4".to_string());
    let max_tokens = RwSignal::new("32".to_string());
    let temperature = RwSignal::new("1.0".to_string());
    let result = RwSignal::new(None::<Comparison>);
    let loading = RwSignal::new(false);
    let err = RwSignal::new(None::<ApiErr>);

    // `?id=N`: a saved comparison.
    Effect::new(move |_| {
        let Some(id) = query.with(|q| q.get("id")) else { return };
        if result.with_untracked(|r| r.as_ref().is_some_and(|c| c.id.to_string() == id)) {
            return;
        }
        loading.set(true);
        leptos::task::spawn_local(async move {
            match api::get::<Comparison>(&format!("/api/comparisons/{}", api::encode(&id))).await {
                Ok(c) => {
                    selected.set(c.columns.iter().map(|k| k.source.clone()).collect());
                    result.set(Some(c));
                }
                Err(e) => err.set(Some(e)),
            }
            loading.set(false);
        });
    });

    let decoding = move || -> Result<Decoding, String> {
        let n: usize = parse_num(&n.get(), "samples per prompt")?;
        let max_tokens: usize = parse_num(&max_tokens.get(), "max tokens")?;
        let temperature: f64 = parse_num(&temperature.get(), "temperature")?;
        if n == 0 || n > 64 {
            return Err("samples per prompt must be 1 to 64".into());
        }
        // NaN is refused too.
        if temperature.is_nan() || temperature <= 0.0 {
            return Err("temperature must be > 0".into());
        }
        Ok(Decoding { n, max_tokens, temperature, ..Decoding::default() })
    };
    let form_error = move || {
        if selected.with(Vec::is_empty) {
            return Some("Pick at least one source.".to_string());
        }
        decoding().err()
    };

    let submit = move |ev: SubmitEvent| {
        ev.prevent_default();
        let Ok(decoding) = decoding() else { return };
        if selected.with_untracked(Vec::is_empty) || loading.get_untracked() {
            return;
        }
        let req = CreateComparison {
            runs: selected.get_untracked(),
            prompts: prompts.get_untracked().lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect(),
            decoding,
        };
        loading.set(true);
        err.set(None);
        leptos::task::spawn_local(async move {
            match api::post::<_, Comparison>("/api/comparisons", &req).await {
                Ok(c) => {
                    let id = c.id;
                    result.set(Some(c));
                    past.refresh();
                    api::replace_url(&format!("/compare?id={id}"));
                }
                Err(e) => err.set(Some(e)),
            }
            loading.set(false);
        });
    };

    // Deletes a saved comparison (and closes it when it is the one shown).
    let forget = move |id: i64| {
        leptos::task::spawn_local(async move {
            match api::delete(&format!("/api/comparisons/{id}")).await {
                Ok(()) => {
                    if result.with_untracked(|r| r.as_ref().is_some_and(|c| c.id == id)) {
                        result.set(None);
                        api::replace_url("/compare");
                    }
                    past.refresh();
                }
                Err(e) => err.set(Some(e)),
            }
        });
    };

    let num_field = move |id: &'static str, label: &'static str, sig: RwSignal<String>| {
        view! {
            <div class="field small">
                <label for=id>{label}</label>
                <input type="text" inputmode="decimal" id=id prop:value=move || sig.get() on:input=move |ev| sig.set(event_target_value(&ev)) />
            </div>
        }
    };

    // A server error goes next to the control it names (one at a time, one id).
    let server_err = move |slot: &'static str| {
        move || err.get().filter(|e| api::error_slot_of(e) == slot).map(|e| view! { <ErrorMsg err=e.message id="compare-error" /> })
    };
    view! {
        <section id="compare">
            <h1>"Compare"</h1>
            <form id="compare-form" on:submit=submit>
                <SourcePicker id="compare-sources" runs=runs selected=selected />
                {server_err("sources")}
                <div class="field wide">
                    <label for="compare-prompts">"Prompts " <span class="help">"one per line, sampled freely; empty: the first problems of the runs' task, drawn as its training draws them (its tokens, stop, tool and each run's lengths; max tokens does not apply), each sample with its log-reward"</span></label>
                    <textarea id="compare-prompts" rows="4" prop:value=move || prompts.get() on:input=move |ev| prompts.set(event_target_value(&ev))></textarea>
                </div>
                {server_err("text")}
                <div class="inline-fields">
                    {num_field("compare-n", "Samples per prompt", n)}
                    {num_field("compare-max-tokens", "Max tokens", max_tokens)}
                    {num_field("compare-temperature", "Temperature", temperature)}
                </div>
                {server_err("decoding")}
                <div class="actions">
                    <button type="submit" id="compare-submit" class="primary" disabled=move || loading.get() || form_error().is_some()>
                        {move || if loading.get() { "Sampling…" } else { "Compare" }}
                    </button>
                    {server_err("submit")}
                    {error_slot("compare-invalid", form_error)}
                </div>
            </form>
            {move || loading.get().then(|| view! { <Loading what="samples from every source (this can take a while)" /> })}
            {move || result.get().map(|c| view! { <ComparisonView c=c /> })}
            <RunsTable picked=picked together=together />
            <SweepPlot picked=picked lines=lines />
            <TrainingCurves picked=picked lines=lines />
            <EvalCurves picked=picked lines=lines />
            <h2>"Saved comparisons"</h2>
            {move || match past.data.get() {
                None => view! { <Loading what="saved comparisons" /> }.into_any(),
                Some(list) if list.is_empty() => view! { <p class="empty">"None yet."</p> }.into_any(),
                Some(mut list) => {
                    list.sort_by_key(|c| std::cmp::Reverse(c.id));
                    view! {
                        <ul id="comparison-list">
                            {list.into_iter().map(|c| view! {
                                <li data-comparison=c.id><A href=format!("/compare?id={}", c.id)>{format!("#{} · {}", c.id, fmt_time(&c.created_at))}</A>
                                <span class="muted">" " {c.columns.iter().map(|k| k.label.clone()).collect::<Vec<_>>().join(" vs ")}
                                {match &c.task {
                                    Some(t) => format!(" · {} {t} problem(s), drawn its way", c.prompts.len()),
                                    None => format!(" · {} prompt(s)", c.prompts.len()),
                                }}</span>
                                " " <button type="button" class="link danger" title="Delete this saved comparison" on:click=move |_| forget(c.id)>"delete"</button></li>
                            }).collect_view()}
                        </ul>
                    }
                    .into_any()
                }
            }}
            {move || past.error.get().map(|e| view! { <ErrorMsg err=format!("Could not load saved comparisons: {e}") /> })}
        </section>
    }
}

/// The metrics table as Markdown: a row per source, a column per metric
/// (`mean ± std` over prompts, `–` where a source lacks it).
pub fn markdown(c: &Comparison, names: &[String]) -> String {
    let mut s = format!("| source | {} |\n|---|{}\n", names.join(" | "), "---|".repeat(names.len()));
    for col in &c.columns {
        let cells: Vec<String> = names.iter().map(|n| col.metrics.get(n).map_or("–".into(), |m| format!("{} ± {}", fmt_num(m.mean), fmt_num(m.std)))).collect();
        s.push_str(&format!("| {} | {} |\n", col.label.replace('|', "\\|"), cells.join(" | ")));
    }
    s
}

#[component]
fn ComparisonView(c: Comparison) -> impl IntoView {
    let names: Vec<String> = {
        let mut v: Vec<String> = c.columns.iter().flat_map(|col| col.metrics.keys().cloned()).collect();
        v.sort();
        v.dedup();
        v
    };
    let is_rng = c.columns.iter().any(|k| k.task.as_deref() == Some("rng")) && c.columns.iter().all(|k| k.task.is_none() || k.task.as_deref() == Some("rng"));
    let picture = if is_rng {
        let series: Vec<Distribution> = c.columns.iter().map(distribution).collect();
        view! {
            <h2>"Distribution of sampled integers"</h2>
            <DistributionChart series=series />
        }
        .into_any()
    } else {
        let mut missing = Vec::new();
        // Drawn the task's way, the samples carry the task's reward: the
        // paper's axis (for continuation, log p(Z "." | X) itself).
        let drawn = c.task.is_some();
        let points: Vec<ScatterPoint> = c.columns.iter().enumerate().filter_map(|(i, col)| {
            let x = if drawn {
                col.metrics.get_key_value("log_reward")
            } else {
                find_key(&col.metrics, &["base_loglik", "mean_base_loglik", "base_logprob", "mean_base_logprob"], &["base", "log"])
            };
            let y = find_key(&col.metrics, &["distinct_2", "distinct-2", "distinct2"], &["distinct"]);
            match (x, y) {
                (Some((_, x)), Some((_, y))) => Some(ScatterPoint { label: col.label.clone(), color: i, x: x.mean, y: y.mean, x_std: x.std, y_std: y.std }),
                _ => {
                    missing.push(col.label.clone());
                    None
                }
            }
        }).collect();
        let xtitle = if drawn { "mean log R, the task's reward (nats)" } else { "mean base log-likelihood (nats)" }.to_string();
        view! {
            <h2>{if drawn { "Reward against diversity" } else { "Likelihood against diversity" }}</h2>
            <Scatter id="chart-scatter".into() xtitle=xtitle ytitle="distinct-2".into() points=points />
            {(!missing.is_empty()).then(|| view! { <p class="muted">{if drawn { "No log-reward or distinct-2 metric for: " } else { "No log-likelihood or distinct-2 metric for: " }} {missing.join(", ")}</p> })}
        }
        .into_any()
    };
    let columns = c.columns.clone();
    // A comparison drawn the task's way rates hand-written Z's with its first run's task.
    let rater = c.task.as_ref().and_then(|_| columns.iter().find(|k| k.source != "base").map(|k| k.source.clone()));
    let save_err = RwSignal::new(None::<String>);
    let (md, json) = (markdown(&c, &names), serde_json::to_string_pretty(&c).unwrap_or_default());
    let id = c.id;
    let save = move |text: String, file: String| {
        move |_| {
            if let Err(e) = api::save(text.as_bytes(), &file) {
                save_err.set(Some(e.message));
            }
        }
    };
    view! {
        <section id="comparison" data-comparison-id=c.id>
            <div class="row-head">
                <h2>"Metrics " <span class="muted">"(mean ± std over prompts)"</span></h2>
                <button type="button" id="save-markdown" on:click=save(md, format!("comparison-{id}.md"))>"Table (Markdown)"</button>
                <button type="button" id="save-json" on:click=save(json, format!("comparison-{id}.json"))>"All (JSON)"</button>
            </div>
            {move || save_err.get().map(|e| view! { <ErrorMsg err=e id="save-error" /> })}
            <div class="scroll">
                <table class="data" id="compare-metrics">
                    <thead><tr><th scope="col">"metric"</th>
                        {c.columns.iter().map(|k| view! { <th scope="col">{k.label.clone()}</th> }).collect_view()}
                    </tr></thead>
                    <tbody>
                        {names.into_iter().map(|name| view! {
                            <tr><th scope="row">{name.clone()}</th>
                                {c.columns.iter().map(|k| view! {
                                    <td class="num">{k.metrics.get(&name).map(|m| format!("{} ± {}", fmt_num(m.mean), fmt_num(m.std))).unwrap_or_else(|| "—".into())}</td>
                                }).collect_view()}
                            </tr>
                        }).collect_view()}
                    </tbody>
                </table>
            </div>
            {picture}
            <h2>"Samples"</h2>
            {c.task.clone().map(|t| view! {
                <p class="muted" id="compare-drawn-as">{format!("The {t} task's problems, drawn as its training draws them: its allowed tokens, stop token and tool, each run's lengths. log R: the task's reward at temperature 1.")}</p>
            })}
            <div class="scroll">
                <table class="data samples-grid" id="compare-samples">
                    <thead><tr>
                        {columns.iter().map(|k| view! {
                            <th scope="col" class="compare-column" data-source=k.source.clone()>{k.label.clone()}
                                {k.task.clone().map(|t| view! { <span class="muted">" (" {t} ")"</span> })}</th>
                        }).collect_view()}
                    </tr></thead>
                    <tbody>
                        {c.prompts.iter().enumerate().map(|(i, p)| view! {
                            <tr class="prompt-row"><th colspan=columns.len() class="compare-prompt" scope="colgroup">{p.clone()}</th></tr>
                            <tr>
                                {columns.iter().map(|k| view! {
                                    <td class="compare-cell" data-source=k.source.clone()>
                                        <ol>
                                            {k.samples.get(i).cloned().unwrap_or_default().into_iter().map(|g| view! {
                                                <li class="compare-sample">
                                                    <span class="sample-text">{g.text}</span>
                                                    <span class="sample-meta">{g.log_reward.map(|r| format!("log R {} · ", fmt_num(r))).unwrap_or_default()}{format!("log q {} · log p_base {} · {} tok", fmt_num(g.logprob), fmt_num(g.base_logprob), g.tokens)}</span>
                                                </li>
                                            }).collect_view()}
                                        </ol>
                                    </td>
                                }).collect_view()}
                            </tr>
                            {rater.clone().map(|run| view! {
                                <tr class="rate-row"><td colspan=columns.len()><RateZ run=run problem=i /></td></tr>
                            })}
                        }).collect_view()}
                    </tbody>
                </table>
            </div>
        </section>
    }
}
