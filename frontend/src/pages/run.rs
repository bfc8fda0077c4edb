//! One run: status and progress, cancel / resume, downloads, live charts of
//! the training metrics and a rolling panel of recent samples, fed by the
//! run's server-sent events while it is active (history fetched first, and
//! again after a reconnect, merged by step), the task's evaluations during
//! training (`run_evals`), and the final metrics and config.

use std::time::Duration;

use amortize_shared::api::{EvalPoint, MetricPoint, Progress, Run, RunEvent, RunStatus, StepSample};
use leptos::prelude::*;
use leptos_router::components::A;
use leptos_router::hooks::use_params_map;
use send_wrapper::SendWrapper;

use crate::api::{self, ApiErr, EventStream, Loaded, StreamState};
use crate::charts::{fmt_num, LineChart, SmoothingSelect};
use crate::pages::run_evals::EvalCharts;
use crate::pages::run_notes::RunNotes;
use crate::pages::run_seeds::SeedsLink;
use crate::components::{fmt_int, fmt_time, merge_steps, ErrorMsg, Loading, StatusBadge};

/// Recent samples kept in the panel.
const SAMPLES_KEPT: usize = 60;

/// A chart: id suffix, title, unit, value.
pub type Series = (&'static str, &'static str, &'static str, fn(&MetricPoint) -> Option<f64>);

/// The charts (the compare page overlays some of them).
pub const SERIES: [Series; 11] = [
    ("loss", "loss", "", |p| Some(p.loss)),
    ("log_z", "log Z", "nats", |p| p.log_z),
    ("mean_log_r", "mean log-reward", "nats", |p| Some(p.mean_log_r)),
    ("max_log_r", "max log-reward", "nats", |p| Some(p.max_log_r)),
    ("sampler_ess", "sampler ESS", "share of batch", |p| p.sampler_ess),
    ("log_w_std", "log-weight spread", "nats", |p| p.log_w_std),
    ("reward_temp", "reward temperature", "", |p| Some(p.reward_temp)),
    ("lr", "learning rate", "", |p| Some(p.lr)),
    ("mean_len", "mean length", "tokens", |p| Some(p.mean_len)),
    ("tokens_per_s", "throughput", "tokens/s", |p| Some(p.tokens_per_s)),
    ("grad_norm", "gradient norm", "", |p| Some(p.grad_norm)),
];

/// Series not every run or step has: their charts appear with their first value.
const OPTIONAL: [&str; 3] = ["log_z", "sampler_ess", "log_w_std"];

#[component]
pub fn RunPage() -> impl IntoView {
    let params = use_params_map();
    move || {
        let id = params.with(|p| p.get("id")).unwrap_or_default();
        view! { <RunView id=id /> }
    }
}

/// The last step of `series` reached from step 1 without a gap (None when
/// it does not start at step 1).
fn gapless_until(series: &[MetricPoint]) -> Option<usize> {
    let mut last = None;
    for (i, p) in series.iter().enumerate() {
        if p.step != i + 1 {
            break;
        }
        last = Some(p.step);
    }
    last
}

/// Newest first, without repeats, at most [`SAMPLES_KEPT`].
fn add_samples(list: &mut Vec<StepSample>, mut new: Vec<StepSample>) {
    new.retain(|s| !list.contains(s));
    new.sort_by_key(|s| std::cmp::Reverse(s.step));
    new.append(list);
    new.truncate(SAMPLES_KEPT);
    *list = new;
}

/// What stands in place of the charts before the first step: a run spends
/// its first seconds (tens of them for some presets on a CPU) building its
/// task and scoring the replay buffer's seeds.
fn no_steps_note(status: Option<RunStatus>, trains: bool) -> &'static str {
    if !trains {
        return "A base-model run trains nothing: its result is the final evaluation of the untrained model.";
    }
    match status {
        Some(RunStatus::Queued) => "No training steps yet: the run waits for the one before it to finish.",
        Some(RunStatus::Running) => "No training steps yet: the run is preparing its task (a GFlowNet run also scores its replay buffer's seed trajectories); the first step follows.",
        _ => "No training steps yet.",
    }
}

/// Streamed steps and samples not yet on the page.
#[derive(Default)]
struct Pending {
    points: Vec<MetricPoint>,
    samples: Vec<Vec<StepSample>>,
    scheduled: bool,
}

/// The most often a run page applies streamed steps.
const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// "Evaluating: drawing samples, 120 of 500".
fn stage_text(status: Option<RunStatus>, step: usize, p: &Progress) -> String {
    let phase = match status {
        Some(RunStatus::Evaluating) => "Evaluating".to_string(),
        // After a step, a running run's long stage is an evaluation along the way.
        Some(RunStatus::Running) if step > 0 => format!("Evaluating at step {step}"),
        _ => "Preparing".to_string(),
    };
    format!("{phase}: {}, {} of {}", p.stage, fmt_int(p.done), fmt_int(p.total))
}

#[component]
fn RunView(id: String) -> impl IntoView {
    let run = RwSignal::new(None::<Result<Run, ApiErr>>);
    let metrics = RwSignal::new(Vec::<MetricPoint>::new());
    let history: RwSignal<Loaded<()>> = RwSignal::new(None);
    let samples = RwSignal::new(Vec::<StepSample>::new());
    let evals = RwSignal::new(Vec::<EvalPoint>::new());
    let live = RwSignal::new(None::<StreamState>);
    let stage = RwSignal::new(None::<Progress>);
    let stream = StoredValue::new(None::<SendWrapper<EventStream>>);
    let id = StoredValue::new(id);

    // A failed refresh keeps the run already shown.
    let fetch_run = move || {
        leptos::task::spawn_local(async move {
            let got = api::get::<Run>(&api::run_path(&id.get_value(), "")).await;
            // A page opened in the middle of a stage shows it before the next event.
            if let Some(p) = got.as_ref().ok().and_then(|r| r.progress.clone()) {
                stage.set(Some(p));
            }
            if got.is_ok() || !run.with_untracked(|r| matches!(r, Some(Ok(_)))) {
                run.set(Some(got));
            }
        })
    };
    let fetch_history = move || {
        leptos::task::spawn_local(async move {
            let id = id.get_value();
            // After a reconnect only the steps past those held without a gap
            // from step 1 (steps streamed since the reconnect may already sit
            // past the gap; a resume redoes steps exactly, so held ones stay right).
            let path = match metrics.with_untracked(|v| gapless_until(v)) {
                Some(last) => api::run_path(&id, &format!("/metrics?after={last}")),
                None => api::run_path(&id, "/metrics"),
            };
            match api::get::<Vec<MetricPoint>>(&path).await {
                Ok(m) => {
                    metrics.update(|v| merge_steps(v, m));
                    history.set(Some(Ok(())));
                }
                Err(e) => history.set(Some(Err(e))),
            }
            if let Ok(s) = api::get::<Vec<StepSample>>(&api::run_path(&id, "/samples")).await {
                samples.update(|v| add_samples(v, s));
            }
            if let Ok(e) = api::get::<Vec<EvalPoint>>(&api::run_path(&id, "/evals")).await {
                evals.update(|v| merge_steps(v, e));
            }
        })
    };
    fetch_run();
    fetch_history();

    // Steps can stream in faster than a page should redraw (a tiny model
    // trains dozens a second): they are held and applied together, at most
    // once each FLUSH_EVERY.
    let pending = StoredValue::new(Pending::default());
    let flush = move || {
        let Pending { points, samples: batches, .. } = pending.try_update_value(std::mem::take).unwrap_or_default();
        if let Some(step) = points.iter().map(|p| p.step).max() {
            // The header's step follows the stream, not only status changes.
            run.update(|r| {
                if let Some(Ok(r)) = r {
                    r.step = r.step.max(step);
                    // The server checkpoints before it streams the step.
                    let every = r.config.checkpoint_every;
                    let saved = points.iter().map(|p| p.step).filter(|&s| (every > 0 && s % every == 0) || s == r.steps).max();
                    if saved > r.checkpoint_step {
                        r.checkpoint_step = saved;
                    }
                }
            });
            // A step means the stage before it (set-up, seeding) is over.
            stage.set(None);
            metrics.update(|m| merge_steps(m, points));
        }
        if !batches.is_empty() {
            samples.update(|v| batches.into_iter().for_each(|s| add_samples(v, s)));
        }
    };
    let hold = move |point: Option<MetricPoint>, batch: Option<Vec<StepSample>>| {
        let first = pending.try_update_value(|p| {
            p.points.extend(point);
            p.samples.extend(batch);
            !std::mem::replace(&mut p.scheduled, true)
        });
        if first == Some(true) {
            set_timeout(flush, FLUSH_EVERY);
        }
    };

    // Events while the run is active; closed when it ends (and on leaving the
    // page). An `EventSource` cannot send headers: a token goes in the query.
    let active = Memo::new(move |_| run.with(|r| r.as_ref().and_then(|r| r.as_ref().ok()).map(|r| r.status.is_active())));
    Effect::new(move |_| match active.get() {
        Some(true) if stream.with_value(Option::is_none) => {
            let on_event = move |ev| match ev {
                RunEvent::Status { run: r } => {
                    // Steps held back come first: a status follows the steps before it.
                    flush();
                    if !r.status.is_active() {
                        stage.set(None);
                    }
                    run.set(Some(Ok(r)))
                }
                RunEvent::Progress { stage: name, done, total } => stage.set(Some(Progress { stage: name, done, total })),
                RunEvent::Metrics { point } => hold(Some(point), None),
                RunEvent::Samples { samples: s } => hold(None, Some(s)),
                RunEvent::Eval { point } => {
                    stage.set(None);
                    evals.update(|v| merge_steps(v, vec![point]));
                }
            };
            let on_state = move |state: StreamState| {
                // Once open (the first time too: steps may end between the
                // history's fetch and the stream's start) and after a drop,
                // fetch what the stream did not bring.
                if state == StreamState::Open && live.get_untracked() != Some(StreamState::Open) {
                    fetch_run();
                    fetch_history();
                }
                live.set(Some(state));
            };
            match EventStream::open(&id.get_value(), on_event, on_state) {
                Ok(s) => stream.set_value(Some(SendWrapper::new(s))),
                Err(e) => leptos::logging::warn!("{e}"),
            }
        }
        Some(false) => {
            stream.set_value(None);
            live.set(None);
        }
        _ => {}
    });
    on_cleanup(move || {
        stream.try_update_value(|s| *s = None);
    });
    // While an active run has no open stream, poll, so the page never freezes.
    if let Ok(h) = set_interval_with_handle(
        move || {
            if active.get_untracked() == Some(true) && live.get_untracked() != Some(StreamState::Open) {
                fetch_run();
                fetch_history();
            }
        },
        Duration::from_secs(5),
    ) {
        on_cleanup(move || h.clear());
    }

    // Re-rendered only when the page's phase changes, not on each update of the run.
    let phase = Memo::new(move |_| run.with(|r| r.as_ref().map(|r| r.as_ref().map(|_| ()).map_err(Clone::clone))));
    move || match phase.get() {
        None => view! { <Loading what="the run" /> }.into_any(),
        Some(Err(e)) => view! {
            <section id="run">
                <h1>"Run " {id.get_value()}</h1>
                <ErrorMsg err=format!("Could not load this run: {e}") id="run-load-error" />
                <p><A href="/">"Back to the runs"</A></p>
            </section>
        }
        .into_any(),
        Some(Ok(_)) => view! { <RunBody run=run metrics=metrics history=history samples=samples evals=evals live=live stage=stage /> }.into_any(),
    }
}

#[component]
fn RunBody(
    run: RwSignal<Option<Result<Run, ApiErr>>>,
    metrics: RwSignal<Vec<MetricPoint>>,
    history: RwSignal<Loaded<()>>,
    samples: RwSignal<Vec<StepSample>>,
    evals: RwSignal<Vec<EvalPoint>>,
    live: RwSignal<Option<StreamState>>,
    stage: RwSignal<Option<Progress>>,
) -> impl IntoView {
    // The page shows only a loaded run, so `r` is always there.
    let r = Memo::new(move |_| run.with(|r| r.clone().and_then(Result::ok)));
    let field = move |f: fn(&Run) -> String| move || r.with(|r| r.as_ref().map(f).unwrap_or_default());
    let status = move || r.with(|r| r.as_ref().map(|r| r.status));
    let id = r.get_untracked().map(|r| r.id).unwrap_or_default();

    let acting = RwSignal::new(false);
    let action_err = RwSignal::new(None::<String>);
    let act = move |what: &'static str| {
        let id = r.get_untracked().map(|r| r.id).unwrap_or_default();
        acting.set(true);
        action_err.set(None);
        leptos::task::spawn_local(async move {
            match api::post_empty::<Run>(&api::run_path(&id, &format!("/{what}"))).await {
                Ok(new) => run.set(Some(Ok(new))),
                Err(e) => action_err.set(Some(format!("Could not {what}: {e}"))),
            }
            acting.set(false);
        });
    };
    // Delete, after the browser's own confirmation; then back to the runs.
    let navigate = leptos_router::hooks::use_navigate();
    let delete = move |_| {
        let Some(r) = r.get_untracked() else { return };
        let question = format!("Delete run {} with its checkpoints, adapter and metrics? This cannot be undone.", r.name);
        if !web_sys::window().and_then(|w| w.confirm_with_message(&question).ok()).unwrap_or(false) {
            return;
        }
        acting.set(true);
        action_err.set(None);
        let navigate = navigate.clone();
        leptos::task::spawn_local(async move {
            // On success the page goes away with its signals.
            match api::delete(&api::run_path(&r.id, "")).await {
                Ok(()) => navigate("/", Default::default()),
                Err(e) => {
                    action_err.set(Some(format!("Could not delete: {e}")));
                    acting.set(false);
                }
            }
        });
    };
    let can_cancel = move || status().is_some_and(RunStatus::is_active);
    let can_resume = move || matches!(status(), Some(RunStatus::Failed | RunStatus::Cancelled | RunStatus::Interrupted));
    let live_text = move || match (live.get(), status().is_some_and(RunStatus::is_active)) {
        (_, false) => "not streaming (run not active)",
        (Some(StreamState::Open), _) => "● live",
        (Some(StreamState::Reconnecting), _) => "reconnecting…",
        (None, _) => "connecting…",
        (Some(_), _) => "polling every 5 s",
    };
    // With a token, downloads go through a fetch that sends it.
    let download = move |rest: &'static str, file: &'static str| {
        move |ev: leptos::ev::MouseEvent| {
            if api::token().is_none() {
                return;
            }
            ev.prevent_default();
            let id = r.get_untracked().map(|r| r.id).unwrap_or_default();
            leptos::task::spawn_local(async move {
                if let Err(e) = api::download(&api::run_path(&id, rest), &format!("{id}-{file}")).await {
                    action_err.set(Some(format!("Could not download {file}: {e}")));
                }
            });
        }
    };
    let pct = move || r.with(|r| r.as_ref().map(|r| if r.steps > 0 { 100.0 * r.step as f64 / r.steps as f64 } else if r.status == RunStatus::Completed { 100.0 } else { 0.0 }).unwrap_or(0.0));
    let trains = Memo::new(move |_| r.with(|r| r.as_ref().is_none_or(|r| r.method.trains())));
    let has_adapter = Memo::new(move |_| trains.get() && r.with(|r| r.as_ref().is_some_and(|r| r.checkpoint_step.is_some() || r.status == RunStatus::Completed)));

    let smoothing = RwSignal::new(0.0f64);
    let charts = SERIES
        .iter()
        .enumerate()
        .map(|(i, &(key, title, unit, f))| {
            let points = Signal::derive(move || metrics.with(|m| m.iter().filter_map(|p| f(p).map(|y| (p.step as f64, y))).collect::<Vec<_>>()));
            let chart = move || view! { <LineChart id=format!("chart-{key}") title=title.to_string() unit=unit points=points color=i smoothing=smoothing /> };
            if OPTIONAL.contains(&key) {
                // Shown once a step has the value (log Z: TB or a minimum length; the sampler's fit: GFlowNet steps with untempered samples).
                let present = Memo::new(move |_| metrics.with(|m| m.iter().any(|p| f(p).is_some())));
                (move || present.get().then(chart)).into_any()
            } else {
                chart().into_any()
            }
        })
        .collect_view();

    view! {
        <section id="run" data-run-id=id.clone()>
            <div class="row-head">
                <h1 id="run-name">{field(|r| r.name.clone())}</h1>
                {move || status().map(|s| view! { <StatusBadge status=s /> })}
                <span class="live" id="live-state">{live_text}</span>
            </div>
            <p class="meta">
                <span>"task " <strong>{field(|r| r.task.clone())}</strong></span>
                <span>"method " <strong>{field(|r| match r.shots {
                    Some(k) => format!("{} ({k}-shot)", r.method.as_str()),
                    None => r.method.as_str().to_string(),
                })}</strong></span>
                <span id="run-step">"step " <strong>{field(|r| format!("{}/{}", r.step, r.steps))}</strong></span>
                <progress max="100" value=pct aria-label="training progress"></progress>
                <span>"checkpoint " {field(|r| r.checkpoint_step.map_or("none".into(), |s| format!("step {s}")))}</span>
                <span>{field(|r| r.experiment.clone().map(|e| format!("experiment {e}")).unwrap_or_default())}</span>
                {move || r.with(|r| r.as_ref().and_then(|r| r.init_from.clone())).map(|from| view! {
                    <span id="init-from">"started from " <A href=format!("/runs/{}", api::encode(&from))>{from.clone()}</A></span>
                })}
                <span class="muted">"created " {field(|r| fmt_time(&r.created_at))}</span>
            </p>
            {move || stage.get().filter(|_| status().is_some_and(RunStatus::is_active)).map(|st| view! {
                <p class="meta" id="stage-progress" aria-live="polite">
                    <span>{stage_text(status(), r.with(|r| r.as_ref().map_or(0, |r| r.step)), &st)}</span>
                    <progress max=st.total.max(1) value=st.done aria-label=st.stage.clone()></progress>
                </p>
            })}
            {move || r.with(|r| r.as_ref().and_then(|r| r.error.clone())).map(|e| view! { <ErrorMsg err=format!("Run failed: {e}") id="run-error" /> })}
            <div class="actions">
                <button type="button" id="cancel" on:click=move |_| act("cancel") disabled=move || acting.get() || !can_cancel()>"Cancel"</button>
                <button type="button" id="resume" on:click=move |_| act("resume") disabled=move || acting.get() || !can_resume()>"Resume"</button>
                {move || if has_adapter.get() {
                    view! { <a class="button" id="download-adapter" href=api::run_path(&r.get_untracked().map(|r| r.id).unwrap_or_default(), "/adapter.zip")
                        download="" rel="external" on:click=download("/adapter.zip", "adapter.zip")>"Download adapter"</a> }.into_any()
                } else if trains.get() {
                    view! { <span class="button disabled" id="download-adapter-none" title="The adapter exists after the first checkpoint">"No adapter yet"</span> }.into_any()
                } else {
                    view! { <span class="button disabled" id="download-adapter-none" title="A base-model run trains no adapter">"No adapter (base model)"</span> }.into_any()
                }}
                <a class="button" id="download-metrics" href=api::run_path(&id, "/metrics.csv") download="" rel="external" on:click=download("/metrics.csv", "metrics.csv")>"Metrics CSV"</a>
                <A href=format!("/compare?runs={},base", api::encode(&id)) attr:class="button" attr:id="compare-link">"Compare with base"</A>
                <SeedsLink run=run />
                <A href=format!("/runs/new?from={}", api::encode(&id)) attr:class="button" attr:id="copy-run">"New run from this"</A>
                {move || r.with(|r| r.as_ref().filter(|r| r.status == RunStatus::Completed && r.method.trains()).map(|r| {
                    let href = format!("/runs/new?task={}&init={}", api::encode(&r.task), api::encode(&r.id));
                    view! { <A href=href attr:class="button" attr:id="train-from" attr:title="A GFlowNet run whose adapter starts as this run's">"GFlowNet from its adapter"</A> }
                }))}
                <button type="button" id="delete-run" class="danger" on:click=delete disabled=move || acting.get() || status().is_none_or(RunStatus::is_active)
                    title="Only a run that is not queued or running can be deleted">"Delete"</button>
                <A href=format!("/infill?runs={},base", api::encode(&id)) attr:class="button" attr:id="infill-link">"Infilling"</A>
            </div>
            {move || action_err.get().map(|e| view! { <ErrorMsg err=e id="action-error" /> })}
            <RunNotes run=run />
            {move || r.with(|r| r.as_ref().and_then(|r| r.final_metrics.clone())).map(|m| view! {
                <h2>"Final metrics"</h2>
                <table class="data compact" id="final-metrics">
                    <tbody>
                        {m.into_iter().map(|(k, v)| view! { <tr><th scope="row">{k}</th><td class="num">{fmt_num(v)}</td></tr> }).collect_view()}
                    </tbody>
                </table>
            })}
            <div class="row-head">
                <h2>"Training"</h2>
                <SmoothingSelect id="charts-smoothing" weight=smoothing />
            </div>
            {move || match history.get() {
                None => Some(view! { <Loading what="metrics" /> }.into_any()),
                Some(Err(e)) => Some(view! { <ErrorMsg err=format!("Could not load the metrics: {e}") id="metrics-error" /> }.into_any()),
                Some(Ok(())) if metrics.with(Vec::is_empty) => Some(view! { <p class="empty" id="metrics-empty">{move || no_steps_note(status(), trains.get())}</p> }.into_any()),
                Some(Ok(())) => None,
            }}
            <div class="charts" id="charts">{charts}</div>
            {r.get_untracked().map(|run| view! { <EvalCharts evals=evals task=run.task every=run.eval_every /> })}
            <h2>"Recent samples"</h2>
            <SamplePanel samples=samples />
            <details id="run-config">
                <summary>"Config and task options"</summary>
                <pre class="mono">{move || r.with(|r| r.as_ref().map(|r| {
                    let cfg = serde_json::to_string_pretty(&r.config).unwrap_or_default();
                    let opts = serde_json::to_string_pretty(&r.task_options).unwrap_or_default();
                    let ds = r.dataset.clone().map(|d| format!("\ndataset: {d}")).unwrap_or_default();
                    let ev = r.eval_samples.map_or("server default".into(), |n| n.to_string());
                    let every = r.eval_every.map_or("at the end only".into(), |n| format!("every {n} steps and at the end"));
                    format!("config: {cfg}\ntask options: {opts}{ds}\neval samples: {ev}\nevaluated: {every}")
                }))}</pre>
            </details>
        </section>
    }
}

#[component]
fn SamplePanel(samples: RwSignal<Vec<StepSample>>) -> impl IntoView {
    view! {
        <div id="samples" class="samples" aria-live="polite">
            {move || {
                let list = samples.get();
                if list.is_empty() {
                    return view! { <p class="empty">"No samples yet."</p> }.into_any();
                }
                view! {
                    <ol>
                        {list.into_iter().map(|s| view! {
                            <li class="sample" data-step=s.step>
                                <span class="sample-meta">"step " {s.step} " · log R " <strong>{fmt_num(s.log_reward)}</strong></span>
                                <span class="sample-prompt" title=s.prompt.clone()>{s.prompt.clone()}</span>
                                <span class="sample-text">{s.text}</span>
                            </li>
                        }).collect_view()}
                    </ol>
                }
                .into_any()
            }}
        </div>
    }
}
