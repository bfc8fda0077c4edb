//! The `custom` task's part of the new-run form: the policy and reward
//! templates over `{X}`, `{Z}`, `{Y}` (checked with the server's rules), a
//! live preview of both prompts for an example X / Y, and optional inline
//! examples (JSONL `{"x": …, "y": …}`), all sent in `task_options`.

use leptos::prelude::*;
use serde_json::Value;

/// The inputs of the custom-task section.
#[derive(Clone, Copy)]
pub struct Templates {
    pub policy: RwSignal<String>,
    pub reward: RwSignal<String>,
    pub x: RwSignal<String>,
    pub y: RwSignal<String>,
    pub examples: RwSignal<String>,
}

impl Templates {
    pub fn new() -> Self {
        Templates {
            policy: RwSignal::new("Question: {X}\nAnswer:{Z}".into()),
            reward: RwSignal::new("Question: {X}\nAnswer:{Z}\nSo the answer is {Y}.".into()),
            x: RwSignal::new("What is the capital of France?".into()),
            y: RwSignal::new("Paris".into()),
            examples: RwSignal::new(String::new()),
        }
    }

    /// `f(policy, reward)`, tracked.
    pub fn with_texts<R>(&self, f: impl FnOnce(&str, &str) -> R) -> R {
        self.policy.with(|p| self.reward.with(|r| f(p, r)))
    }
}

/// The server's template rules: (policy error, reward error).
pub fn template_errors(policy: &str, reward: &str) -> (Option<String>, Option<String>) {
    let z = |t: &str| match t.matches("{Z}").count() {
        1 => Ok(t.split_once("{Z}").map(|(a, b)| (a.to_string(), b.to_string())).unwrap_or_default()),
        n => Err(format!("must contain {{Z}} exactly once (found {n})")),
    };
    let p = match z(policy) {
        Err(e) => Some(e),
        Ok((_, after)) if !after.trim().is_empty() => Some("{Z} must come last (the policy writes Z at the end of its prompt)".into()),
        Ok(_) => None,
    };
    let r = match z(reward) {
        Err(e) => Some(e),
        Ok((before, after)) => {
            if before.matches("{X}").count() != 1 || after.contains("{X}") {
                Some("needs {X} exactly once, before {Z}".into())
            } else if before.contains("{Y}") || after.matches("{Y}").count() > 1 {
                Some("{Y} may appear at most once, after {Z}".into())
            } else {
                None
            }
        }
    };
    (p, r)
}

/// Inline examples: one JSON object `{"x": …, "y": …}` per line (blank lines skipped).
pub fn parse_examples(text: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| format!("line {}: {e}", i + 1))?;
        if !v.get("x").is_some_and(Value::is_string) {
            return Err(format!("line {}: needs a string \"x\"", i + 1));
        }
        if v.get("y").is_some_and(|y| !y.is_string()) {
            return Err(format!("line {}: \"y\" must be a string", i + 1));
        }
        out.push(v);
    }
    Ok(out)
}

pub fn examples_error(text: &str) -> Option<String> {
    parse_examples(text).err()
}

/// `{X}` and `{Y}` filled in one pass, as the server does.
fn render(template: &str, x: &str, y: &str) -> String {
    template.split("{X}").map(|part| part.replace("{Y}", y)).collect::<Vec<_>>().join(x)
}

/// A template rendered with Z marked where the policy's text goes.
fn preview(template: &str, x: &str, y: &str) -> impl IntoView {
    let (before, after) = template.split_once("{Z}").unwrap_or((template, ""));
    view! {
        <pre class="preview">{render(before, x, y)}<mark class="z">"⟨Z⟩"</mark>{render(after, x, y)}</pre>
    }
}

/// The custom task's fieldset. `error_of(field)` is the message for a field.
#[component]
pub fn CustomTemplates<F>(t: Templates, error_of: F) -> impl IntoView
where
    F: Fn(&str) -> Option<String> + Copy + Send + Sync + 'static,
{
    let area = move |id: &'static str, label: &'static str, help: &'static str, sig: RwSignal<String>, rows: u32| {
        view! {
            <div class="field wide">
                <label for=id>{label} " " <span class="help">{help}</span></label>
                <textarea id=id name=id rows=rows spellcheck="false"
                    aria-invalid=move || if error_of(id).is_some() { "true" } else { "false" }
                    prop:value=move || sig.get() on:input=move |ev| sig.set(event_target_value(&ev))></textarea>
                <span class="field-error" id=format!("err-{id}") role="alert">{move || error_of(id)}</span>
            </div>
        }
    };
    let line = move |id: &'static str, label: &'static str, sig: RwSignal<String>| {
        view! {
            <div class="field">
                <label for=id>{label}</label>
                <input type="text" id=id prop:value=move || sig.get() on:input=move |ev| sig.set(event_target_value(&ev)) />
            </div>
        }
    };
    view! {
        <fieldset class="cfg-group" id="custom-task">
            <legend>"Custom task"</legend>
            <p class="help">"The policy reads its template with " <code>"{X}"</code> " filled in and writes "
                <code>"{Z}"</code> "; the reward is the base model's log-likelihood of " <code>"{Z}"</code>
                " and what follows it in the reward template (" <code>"{Y}"</code> ": the example's answer)."</p>
            <div class="cfg-grid">
                {area("policy_template", "Policy template", "{X} … {Z} (Z last)", t.policy, 3)}
                {area("reward_template", "Reward template", "{X} … {Z} … optional {Y}", t.reward, 3)}
                {line("example-x", "Example X (preview)", t.x)}
                {line("example-y", "Example Y (preview)", t.y)}
            </div>
            <div class="previews">
                <div>
                    <h3>"Policy prompt"</h3>
                    <div id="policy-preview">{move || t.x.with(|x| t.y.with(|y| t.policy.with(|p| preview(p, x, y))))}</div>
                </div>
                <div>
                    <h3>"Reward prompt"</h3>
                    <div id="reward-preview">{move || t.x.with(|x| t.y.with(|y| t.reward.with(|r| preview(r, x, y))))}</div>
                </div>
            </div>
            {area("examples", "Examples (optional)", "JSONL, one {\"x\": …, \"y\": …} per line; or upload a dataset", t.examples, 4)}
        </fieldset>
    }
}
