//! The run page's name, experiment and notes: edited in place and saved with
//! `PATCH /api/runs/{id}` (whatever the run's status). The fields start from
//! the run as loaded and are not overwritten by the run's live updates while
//! the user edits them.

use amortize_shared::api::{valid_name, Experiment, Run, UpdateRun, NOTES_MAX};
use leptos::prelude::*;

use crate::api::{self, ApiErr};
use crate::components::{ErrorMsg, Polled};

#[component]
pub fn RunNotes(run: RwSignal<Option<Result<Run, ApiErr>>>) -> impl IntoView {
    let saved = move || run.with(|r| r.as_ref().and_then(|r| r.as_ref().ok()).map(|r| (r.id.clone(), r.name.clone(), r.notes.clone(), r.experiment.clone().unwrap_or_default())));
    let (name0, notes0, exp0) = saved().map(|(_, n, t, e)| (n, t, e)).unwrap_or_default();
    let name = RwSignal::new(name0);
    let notes = RwSignal::new(notes0);
    let experiment = RwSignal::new(exp0);
    let experiments = Polled::<Vec<Experiment>>::start("/api/experiments", None);
    let busy = RwSignal::new(false);
    let err = RwSignal::new(None::<String>);
    let done = RwSignal::new(false);
    let start_open = notes.with_untracked(|t| !t.is_empty());

    let changed = move || saved().is_some_and(|(_, n, t, e)| name.with(|x| *x != n) || notes.with(|x| *x != t) || experiment.with(|x| x.trim() != e));
    let invalid = move || {
        name.with(|n| valid_name(n).err().map(|e| format!("The name {e}")))
            .or_else(|| experiment.with(|x| (!x.trim().is_empty()).then(|| valid_name(x.trim()).err()).flatten().map(|e| format!("The experiment name {e}"))))
            .or_else(|| notes.with(|t| (t.chars().count() > NOTES_MAX).then(|| format!("Notes are at most {NOTES_MAX} characters."))))
    };
    let save = move |_| {
        let Some((id, n, t, e)) = saved() else { return };
        if invalid().is_some() {
            return;
        }
        let req = UpdateRun {
            name: name.with_untracked(|x| (*x != n).then(|| x.clone())),
            notes: notes.with_untracked(|x| (*x != t).then(|| x.clone())),
            experiment: experiment.with_untracked(|x| (x.trim() != e).then(|| x.trim().to_string())),
        };
        busy.set(true);
        err.set(None);
        leptos::task::spawn_local(async move {
            match api::patch::<_, Run>(&api::run_path(&id, ""), &req).await {
                Ok(r) => {
                    run.set(Some(Ok(r)));
                    done.set(true);
                }
                Err(e) => err.set(Some(format!("Could not save: {e}"))),
            }
            busy.set(false);
        });
    };

    view! {
        <details id="run-notes" open=start_open>
            <summary>"Name, experiment and notes"</summary>
            <div class="inline-fields">
                <div class="field">
                    <label for="run-name-input">"Name"</label>
                    <input id="run-name-input" type="text" prop:value=move || name.get()
                        on:input=move |ev| { done.set(false); name.set(event_target_value(&ev)) } />
                </div>
                <div class="field">
                    <label for="run-experiment-input">"Experiment " <span class="help">"empty: none"</span></label>
                    <input id="run-experiment-input" type="text" list="run-experiment-names" prop:value=move || experiment.get()
                        on:input=move |ev| { done.set(false); experiment.set(event_target_value(&ev)) } />
                    <datalist id="run-experiment-names">
                        {move || experiments.data.get().unwrap_or_default().into_iter().map(|e| view! { <option value=e.name></option> }).collect_view()}
                    </datalist>
                </div>
            </div>
            <div class="field wide">
                <label for="run-notes-input">"Notes " <span class="help">"why this run, what to look for"</span></label>
                <textarea id="run-notes-input" rows="4" prop:value=move || notes.get()
                    on:input=move |ev| { done.set(false); notes.set(event_target_value(&ev)) }></textarea>
            </div>
            <div class="actions">
                <button type="button" id="save-notes" on:click=save disabled=move || busy.get() || !changed() || invalid().is_some()>"Save"</button>
                {move || invalid().map(|e| view! { <span class="field-error" id="notes-invalid">{e}</span> })}
                {move || (done.get() && !changed()).then(|| view! { <span class="muted" id="notes-saved">"Saved."</span> })}
            </div>
            {move || err.get().map(|e| view! { <ErrorMsg err=e id="notes-error" /> })}
        </details>
    }
}
