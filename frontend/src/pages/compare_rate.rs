//! The compare page's "rate a Z": under each problem of a comparison drawn
//! the task's way, the task's log-reward of a Z the user writes
//! (`POST /api/rate`), to set beside the sources' own draws. Owns only its
//! input and answer; the comparison itself is the page's.

use amortize_shared::api::{RateRequest, RateResponse};
use leptos::ev::SubmitEvent;
use leptos::prelude::*;

use crate::api;
use crate::charts::fmt_num;

/// `run`: a run of the comparison's task; `problem`: the row's index.
#[component]
pub fn RateZ(run: String, problem: usize) -> impl IntoView {
    let text = RwSignal::new(String::new());
    let answer = RwSignal::new(None::<Result<RateResponse, String>>);
    let busy = RwSignal::new(false);
    let submit = move |ev: SubmitEvent| {
        ev.prevent_default();
        if busy.get_untracked() || text.with_untracked(String::is_empty) {
            return;
        }
        let req = RateRequest { run: run.clone(), problem, text: text.get_untracked() };
        busy.set(true);
        leptos::task::spawn_local(async move {
            answer.set(Some(api::post::<_, RateResponse>("/api/rate", &req).await.map_err(|e| e.message)));
            busy.set(false);
        });
    };
    view! {
        <form class="rate-form" data-problem=problem on:submit=submit>
            <label>"Rate a Z of your own "
                <input type="text" class="rate-text" spellcheck="false" prop:value=move || text.get()
                    on:input=move |ev| { text.set(event_target_value(&ev)); answer.set(None); } />
            </label>
            <button type="submit" class="rate-submit" disabled=move || busy.get() || text.with(String::is_empty)>"log R"</button>
            {move || match answer.get() {
                None => ().into_any(),
                Some(Ok(r)) => view! { <span class="rate-out">{format!("log R {} · {} actions", fmt_num(r.log_reward), r.actions)}</span> }.into_any(),
                Some(Err(e)) => view! { <span class="rate-out error" role="alert">{e}</span> }.into_any(),
            }}
        </form>
    }
}
