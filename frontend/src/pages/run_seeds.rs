//! The run page's link to the runs that repeat this one's setup over other
//! seeds (alike in every setting but `seed`, as the compare page groups
//! them with `shared::groups`): "Compare its N seeds" opens them together, shown as one line in a
//! band. Reads the runs list once; shows nothing when the run stands alone.

use amortize_shared::api::Run;
use leptos::prelude::*;
use leptos_router::components::A;

use crate::api::{self, ApiErr};
use crate::components::Polled;
use crate::pages::differences::settings;

/// The ids of the runs in `all` alike but for their seed to `run` (itself
/// included, in the list's order), when there are others.
fn seeds_of(run: &Run, all: &[Run]) -> Option<Vec<String>> {
    let but_seed = |r: &Run| {
        let mut s = settings(r);
        s.remove("seed");
        s
    };
    let key = but_seed(run);
    let mut ids: Vec<String> = all.iter().filter(|r| r.id == run.id || but_seed(r) == key).map(|r| r.id.clone()).collect();
    if !ids.contains(&run.id) {
        ids.insert(0, run.id.clone());
    }
    (ids.len() > 1).then_some(ids)
}

#[component]
pub fn SeedsLink(run: RwSignal<Option<Result<Run, ApiErr>>>) -> impl IntoView {
    let runs = Polled::<Vec<Run>>::start("/api/runs", None);
    let ids = Memo::new(move |_| {
        let run = run.with(|r| r.as_ref().and_then(|r| r.as_ref().ok()).cloned())?;
        runs.data.with(|all| seeds_of(&run, all.as_deref()?))
    });
    move || {
        ids.get().map(|ids| {
            let href = format!("/compare?runs={}", ids.iter().map(|i| api::encode(i)).collect::<Vec<_>>().join(","));
            view! { <A href=href attr:class="button" attr:id="compare-seeds-link" attr:title="The runs alike but for their seed, as one line of mean ± std">{format!("Compare its {} seeds", ids.len())}</A> }
        })
    }
}
