use leptos::prelude::*;

/// Placeholder page until the server and the real UI (runs, charts,
/// comparisons, infilling playground) land.
#[component]
pub fn App() -> impl IntoView {
    view! {
        <main class="page">
            <h1>"Amortize"</h1>
            <p class="lede">
                "GFlowNet fine-tuning of language models: train a policy to sample "
                "sequences in proportion to a reward, then inspect what it learned."
            </p>
            <p class="note">
                "This is a placeholder. The server API and the UI for runs, charts, "
                "comparisons and an infilling playground come next."
            </p>
        </main>
    }
}
