//! The app shell: header with navigation, the model line, and the client-side
//! routes (path routing; the server falls back to index.html for them).
//!
//! | path | page |
//! | --- | --- |
//! | `/` | runs, model and task presets |
//! | `/runs/new?task=T` | the new-run form |
//! | `/runs/:id` | one run: live charts, samples, actions |
//! | `/compare?runs=a,b&id=N` | side-by-side comparison |
//! | `/infill?beginning=…&end=…&runs=…&k=…&temperature=…` | infilling playground |

use leptos::prelude::*;
use leptos_router::components::{Route, Router, Routes, A};
use leptos_router::path;

use crate::components::{fmt_count, Catalog};
use crate::pages::{compare::ComparePage, home::HomePage, infill::InfillPage, new_run::NewRunPage, run::RunPage};

#[component]
pub fn App() -> impl IntoView {
    crate::api::init_token();
    Catalog::provide();
    view! {
        <Router>
            <Header />
            <main id="main" class="page">
                <Routes fallback=|| view! { <NotFound /> }>
                    <Route path=path!("/") view=HomePage />
                    <Route path=path!("/runs/new") view=NewRunPage />
                    <Route path=path!("/runs/:id") view=RunPage />
                    <Route path=path!("/compare") view=ComparePage />
                    <Route path=path!("/infill") view=InfillPage />
                </Routes>
            </main>
        </Router>
    }
}

#[component]
fn Header() -> impl IntoView {
    let cat = Catalog::get();
    let model = move || match cat.model.get() {
        None => "loading model…".to_string(),
        Some(Err(e)) => format!("model unavailable: {e}"),
        Some(Ok(m)) => format!("{} · {} params · {}", m.name, fmt_count(m.parameters), m.device),
    };
    view! {
        <header class="top">
            <a class="skip" href="#main">"Skip to content"</a>
            <A href="/" attr:class="brand">"Amortize"</A>
            <nav aria-label="main">
                <A href="/" exact=true attr:id="nav-runs">"Runs"</A>
                <A href="/runs/new" attr:id="nav-new-run">"New run"</A>
                <A href="/compare" attr:id="nav-compare">"Compare"</A>
                <A href="/infill" attr:id="nav-infill">"Infilling"</A>
            </nav>
            <span class="model-line" id="model-line">{model}</span>
        </header>
    }
}

#[component]
fn NotFound() -> impl IntoView {
    view! {
        <section id="not-found">
            <h1>"Page not found"</h1>
            <p>"Nothing lives at this address. " <A href="/">"Back to the runs"</A></p>
        </section>
    }
}
