//! Infilling playground: a beginning and an end, sources (base and runs), k
//! and a temperature; k middles per source in columns, best first, with their
//! scores. Every input lives in the URL's query string
//! (`?beginning=…&end=…&runs=a,base&k=4&temperature=1&max_tokens=32`), so a
//! link reproduces the request; a page opened with one runs it at once.

use std::time::Duration;

use amortize_shared::api::{Decoding, InfillRequest, InfillResponse, Run};
use leptos::ev::SubmitEvent;
use leptos::prelude::*;
use leptos_router::hooks::use_query_map;

use crate::api::{self, ApiErr};
use crate::charts::fmt_num;
use crate::components::{error_slot, ErrorMsg, Loading, Polled, SourcePicker};

/// The playground's inputs, as they are written in the URL.
#[derive(Clone, Copy)]
struct Inputs {
    beginning: RwSignal<String>,
    end: RwSignal<String>,
    sources: RwSignal<Vec<String>>,
    k: RwSignal<String>,
    temperature: RwSignal<String>,
    max_tokens: RwSignal<String>,
}

impl Inputs {
    fn from_query(q: &leptos_router::params::ParamsMap) -> Self {
        let get = |k: &str, d: &str| RwSignal::new(q.get(k).unwrap_or_else(|| d.to_string()));
        let sources = q.get("runs").map(|r| r.split(',').filter(|s| !s.is_empty()).map(String::from).collect()).unwrap_or_else(|| vec!["base".to_string()]);
        Inputs {
            beginning: get("beginning", ""),
            end: get("end", ""),
            sources: RwSignal::new(sources),
            k: get("k", "4"),
            temperature: get("temperature", "1"),
            max_tokens: get("max_tokens", "32"),
        }
    }

    /// `/infill?…` for these inputs.
    fn url(&self) -> String {
        let e = |s: RwSignal<String>| api::encode(&s.get());
        format!(
            "/infill?beginning={}&end={}&runs={}&k={}&temperature={}&max_tokens={}",
            e(self.beginning),
            e(self.end),
            api::encode(&self.sources.get().join(",")),
            e(self.k),
            e(self.temperature),
            e(self.max_tokens)
        )
    }

    fn request(&self) -> Result<InfillRequest, String> {
        let (beginning, end) = (self.beginning.get(), self.end.get());
        if beginning.trim().is_empty() {
            return Err("Write a beginning.".into());
        }
        if end.trim().is_empty() {
            return Err("Write an end.".into());
        }
        if self.sources.with(Vec::is_empty) {
            return Err("Pick at least one source.".into());
        }
        let n = self.k.get().trim().parse::<usize>().ok().filter(|k| (1..=32).contains(k)).ok_or("k must be 1 to 32")?;
        let temperature = self.temperature.get().trim().parse::<f64>().ok().filter(|t| *t > 0.0 && t.is_finite()).ok_or("temperature must be > 0")?;
        let max_tokens = self.max_tokens.get().trim().parse::<usize>().ok().filter(|m| *m > 0).ok_or("max tokens must be at least 1")?;
        Ok(InfillRequest { beginning, end, runs: self.sources.get(), decoding: Decoding { n, temperature, max_tokens, ..Decoding::default() } })
    }
}

#[component]
pub fn InfillPage() -> impl IntoView {
    let query = use_query_map();
    let inputs = query.with_untracked(Inputs::from_query);
    let runs = Polled::<Vec<Run>>::start("/api/runs", Some(Duration::from_secs(10)));
    let result = RwSignal::new(None::<InfillResponse>);
    let err = RwSignal::new(None::<ApiErr>);
    let loading = RwSignal::new(false);

    let run = move || {
        let Ok(req) = inputs.request() else { return };
        loading.set(true);
        err.set(None);
        leptos::task::spawn_local(async move {
            match api::post::<_, InfillResponse>("/api/infill", &req).await {
                Ok(r) => result.set(Some(r)),
                Err(e) => err.set(Some(e)),
            }
            loading.set(false);
        });
    };
    // A shared link runs at once.
    if query.with_untracked(|q| q.get("beginning").is_some() && q.get("end").is_some()) {
        run();
    }
    let submit = move |ev: SubmitEvent| {
        ev.prevent_default();
        if loading.get_untracked() || inputs.request().is_err() {
            return;
        }
        api::replace_url(&inputs.url());
        run();
    };
    let invalid = move || inputs.request().err();

    let area = move |id: &'static str, label: &'static str, sig: RwSignal<String>| {
        view! {
            <div class="field wide">
                <label for=id>{label}</label>
                <textarea id=id rows="3" prop:value=move || sig.get() on:input=move |ev| sig.set(event_target_value(&ev))></textarea>
            </div>
        }
    };
    let num = move |id: &'static str, label: &'static str, sig: RwSignal<String>| {
        view! {
            <div class="field small">
                <label for=id>{label}</label>
                <input type="text" inputmode="decimal" id=id prop:value=move || sig.get() on:input=move |ev| sig.set(event_target_value(&ev)) />
            </div>
        }
    };

    // A server error goes next to the control it names (one at a time, one id).
    let server_err = move |slot: &'static str| {
        move || err.get().filter(|e| api::error_slot_of(e) == slot).map(|e| view! { <ErrorMsg err=e.message id="infill-error" /> })
    };
    view! {
        <section id="infill">
            <h1>"Infilling playground"</h1>
            <p class="muted">"Each source writes k middles between the beginning and the end; the score is "
                "log p_base(beginning middle end) − log p_base(beginning), how well the middle explains the end."</p>
            <form id="infill-form" on:submit=submit>
                {area("infill-beginning", "Beginning", inputs.beginning)}
                {area("infill-end", "End", inputs.end)}
                {server_err("text")}
                <SourcePicker id="infill-sources" runs=runs selected=inputs.sources />
                {server_err("sources")}
                <div class="inline-fields">
                    {num("infill-k", "k (middles per source)", inputs.k)}
                    {num("infill-temperature", "Temperature", inputs.temperature)}
                    {num("infill-max-tokens", "Max tokens", inputs.max_tokens)}
                </div>
                {server_err("decoding")}
                <div class="actions">
                    <button type="submit" id="infill-submit" class="primary" disabled=move || loading.get() || invalid().is_some()>
                        {move || if loading.get() { "Generating…" } else { "Fill in" }}
                    </button>
                    <a id="infill-share" href=move || inputs.url()>"Link to these inputs"</a>
                    {server_err("submit")}
                    {error_slot("infill-invalid", invalid)}
                </div>
            </form>
            {move || loading.get().then(|| view! { <Loading what="middles" /> })}
            {move || result.get().map(|r| view! { <InfillResults r=r /> })}
        </section>
    }
}

#[component]
fn InfillResults(r: InfillResponse) -> impl IntoView {
    if r.columns.is_empty() {
        return view! { <p class="empty" id="infill-results">"The server returned no columns."</p> }.into_any();
    }
    view! {
        <div id="infill-results" class="columns">
            {r.columns.into_iter().map(|c| view! {
                <section class="infill-column" data-source=c.source.clone()>
                    <h2>{c.label}</h2>
                    {if c.middles.is_empty() {
                        view! { <p class="empty">"No middles."</p> }.into_any()
                    } else {
                        view! {
                            <ol>
                                {c.middles.into_iter().map(|m| view! {
                                    <li class="middle">
                                        <span class="middle-text">{m.text}</span>
                                        <span class="sample-meta">"score " <strong class="score">{fmt_num(m.score)}</strong>
                                            {format!(" · {} per token", fmt_num(m.per_token))}</span>
                                    </li>
                                }).collect_view()}
                            </ol>
                        }.into_any()
                    }}
                </section>
            }).collect_view()}
        </div>
    }
    .into_any()
}
