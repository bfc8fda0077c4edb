//! The TrainConfig part of the new-run form: one text field per config key,
//! pre-filled from the task's `default_config`, grouped for reading, and
//! checked as the user types: each value is parsed by the type of its default,
//! then the whole config goes through `TrainConfig::validate()` from `shared`,
//! exactly what the server will run. Only the fields that differ from the
//! preset are sent (the `config` overrides of `CreateRun`).

use std::collections::BTreeMap;

use amortize_shared::config::{TrainConfig, LORA_TARGETS};
use leptos::prelude::*;
use serde_json::{Map, Value};

/// Groups and one-line help for the known keys; unknown keys go to "Other".
const GROUPS: &[(&str, &[(&str, &str)])] = &[
    ("Objective", &[
        ("objective", "subtb: subtrajectory balance; tb: trajectory balance; db: detailed balance"),
        ("subtb_lambda", "λ of SubTB: pair (i, j) weighs λ^(j−i−1)"),
    ]),
    ("Optimisation", &[
        ("steps", "optimiser steps"),
        ("lr", "learning rate of the adapter"),
        ("logz_lr", "learning rate of log Z (TB, or any objective with min_len > 0)"),
        ("warmup_steps", "linear warm-up, in steps"),
        ("weight_decay", "AdamW weight decay"),
        ("batch_size", "trajectories per micro-batch (one problem)"),
        ("grad_accum", "micro-batches per optimiser step"),
        ("max_grad_norm", "gradient-norm clip (0: none)"),
        ("checkpoint_every", "steps between checkpoints (0: only at the end)"),
        ("seed", "random seed"),
    ]),
    ("LoRA adapter", &[
        ("lora_r", "rank"),
        ("lora_alpha", "scale α"),
        ("lora_dropout", "dropout in [0, 1)"),
        ("lora_targets", "comma-separated: q, k, v, o, gate, up, down"),
    ]),
    ("Exploration", &[
        ("p_replay", "probability a micro-batch is replayed from the buffer"),
        ("p_tempered", "probability it is sampled from the tempered policy"),
        ("pf_temp_low", "lowest policy temperature when tempered"),
        ("pf_temp_high", "highest policy temperature when tempered"),
        ("buffer_capacity", "replay buffer size"),
        ("buffer_tolerance", "replay buffer de-duplication tolerance, in [0, 1)"),
    ]),
    ("Reward", &[
        ("reward_temp_start", "reward temperature at step 0"),
        ("reward_temp_end", "reward temperature after the horizon"),
        ("reward_temp_horizon", "steps of the linear anneal (0: constant end value)"),
    ]),
    ("Length", &[
        ("min_len", "stopping is masked below this many tokens"),
        ("max_len", "termination is forced at this many tokens"),
        ("min_len_penalty", "added to the stop logit below min_len (≤ 0)"),
    ]),
];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Int,
    Float,
    Text,
    List,
    Other,
}

/// One editable key of the config.
#[derive(Clone)]
pub struct CfgField {
    pub name: String,
    pub help: &'static str,
    kind: Kind,
    default: Value,
    pub text: ArcRwSignal<String>,
}

/// Fields grouped for display: (group, fields).
pub type CfgGroups = Vec<(&'static str, Vec<CfgField>)>;

/// A config value as the form shows it (lists joined by commas).
pub fn to_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(|x| x.as_str().map(str::to_string).unwrap_or_else(|| x.to_string())).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// The form fields of a task's default config.
pub fn fields_of(default: &TrainConfig) -> CfgGroups {
    let Ok(Value::Object(map)) = serde_json::to_value(default) else { return vec![] };
    let field = |name: &str, help: &'static str, v: &Value| {
        let kind = match v {
            Value::Number(n) if n.is_f64() => Kind::Float,
            Value::Number(_) => Kind::Int,
            Value::String(_) => Kind::Text,
            Value::Array(_) => Kind::List,
            _ => Kind::Other,
        };
        CfgField { name: name.to_string(), help, kind, default: v.clone(), text: ArcRwSignal::new(to_text(v)) }
    };
    let mut groups: CfgGroups = GROUPS
        .iter()
        .map(|(g, keys)| (*g, keys.iter().filter_map(|(k, help)| map.get(*k).map(|v| field(k, help, v))).collect::<Vec<_>>()))
        .collect();
    let known: Vec<&str> = GROUPS.iter().flat_map(|(_, ks)| ks.iter().map(|(k, _)| *k)).collect();
    let other: Vec<CfgField> = map.iter().filter(|(k, _)| !known.contains(&k.as_str())).map(|(k, v)| field(k, "", v)).collect();
    groups.push(("Other", other));
    groups.retain(|(_, f)| !f.is_empty());
    groups
}

/// Fills the fields with `values` (another run's config): the ones that
/// differ from the preset become its overrides.
pub fn set_values(groups: &CfgGroups, values: &TrainConfig) {
    let Ok(Value::Object(map)) = serde_json::to_value(values) else { return };
    for f in groups.iter().flat_map(|(_, fs)| fs) {
        if let Some(v) = map.get(&f.name) {
            f.text.set(to_text(v));
        }
    }
}

/// The form's verdict: errors by field, and the overrides to send.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Check {
    pub errors: BTreeMap<String, String>,
    pub overrides: Map<String, Value>,
    /// The config's seed, when the whole config parses.
    pub seed: Option<u64>,
    /// Every key with its value, when every field parses.
    pub full: Option<Map<String, Value>>,
}

fn parse(f: &CfgField, text: &str) -> Result<Value, String> {
    let t = text.trim();
    match f.kind {
        Kind::Int => t.parse::<u64>().map(Value::from).map_err(|_| "must be a whole number ≥ 0".into()),
        Kind::Float => match t.parse::<f64>() {
            Ok(x) => serde_json::Number::from_f64(x).map(Value::Number).ok_or_else(|| "must be a finite number".into()),
            Err(_) => Err("must be a number (e.g. 0.5 or 1e-4)".into()),
        },
        Kind::Text => Ok(Value::String(t.to_string())),
        Kind::List => Ok(Value::Array(t.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| Value::String(s.into())).collect())),
        Kind::Other => serde_json::from_str(t).map_err(|e| format!("must be JSON: {e}")),
    }
}

/// Parses every field, then runs `TrainConfig::validate()` on the result.
pub fn check(groups: &CfgGroups) -> Check {
    let mut out = Check::default();
    let mut full = Map::new();
    for f in groups.iter().flat_map(|(_, fs)| fs) {
        match parse(f, &f.text.get()) {
            Ok(v) => {
                if v != f.default {
                    out.overrides.insert(f.name.clone(), v.clone());
                }
                full.insert(f.name.clone(), v);
            }
            Err(e) => {
                out.errors.insert(f.name.clone(), e);
            }
        }
    }
    if !out.errors.is_empty() {
        return out;
    }
    out.full = Some(full.clone());
    match serde_json::from_value::<TrainConfig>(Value::Object(full)) {
        Ok(cfg) => {
            out.seed = Some(cfg.seed);
            if let Err(e) = cfg.validate() {
                out.errors.insert(e.field, e.message);
            }
        }
        Err(e) => {
            out.errors.insert("config".into(), e.to_string());
        }
    }
    out
}

/// The config fieldsets. `error_of(name)` is the message to show next to a field.
pub fn config_fields(groups: CfgGroups, error_of: impl Fn(&str) -> Option<String> + Clone + Send + Sync + 'static) -> impl IntoView {
    groups
        .into_iter()
        .map(|(group, fields)| {
            let error_of = error_of.clone();
            view! {
                <fieldset class="cfg-group">
                    <legend>{group}</legend>
                    <div class="cfg-grid">
                        {fields.into_iter().map(|f| field_view(f, error_of.clone())).collect_view()}
                    </div>
                </fieldset>
            }
        })
        .collect_view()
}

fn field_view(f: CfgField, error_of: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> impl IntoView {
    let id = format!("cfg-{}", f.name);
    let err_id = format!("err-{}", f.name);
    let name = f.name.clone();
    let err = {
        let name = name.clone();
        Memo::new(move |_| error_of(&name))
    };
    let (t_get, t_set) = (f.text.clone(), f.text.clone());
    let input = if f.kind == Kind::Text && f.name == "objective" {
        view! {
            <select id=id.clone() name=name.clone() data-test=id.clone() on:change=move |ev| t_set.set(event_target_value(&ev))>
                {["subtb", "tb", "db"].map(|o| {
                    let t = t_get.clone();
                    view! { <option value=o selected=move || t.with(|v| v == o)>{o}</option> }
                })}
            </select>
        }
        .into_any()
    } else {
        let mode = match f.kind {
            Kind::Int => "numeric",
            Kind::Float => "decimal",
            _ => "text",
        };
        let placeholder = if f.kind == Kind::List && f.name == "lora_targets" { LORA_TARGETS.join(",") } else { String::new() };
        view! {
            <input id=id.clone() name=name.clone() data-test=id.clone() type="text" inputmode=mode
                autocomplete="off" spellcheck="false" placeholder=placeholder
                aria-invalid=move || if err.get().is_some() { "true" } else { "false" }
                aria-describedby=err_id.clone()
                prop:value=move || t_get.get() on:input=move |ev| t_set.set(event_target_value(&ev)) />
        }
        .into_any()
    };
    let default = to_text(&f.default);
    let changed = {
        let t = f.text.clone();
        let d = default.clone();
        move || t.with(|v| v.trim() != d)
    };
    view! {
        <div class="field" class:changed=changed>
            <label for=id>{name} " " <span class="help">{f.help}</span></label>
            {input}
            <span class="field-error" id=err_id role="alert">{move || err.get()}</span>
        </div>
    }
}
