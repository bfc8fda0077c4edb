//! `compare`'s outputs: the JSON object (`{"task", "seeds", "rows": [{"method",
//! "metrics": {NAME: {"mean", "std"}}}]}`, metric names as `amortize eval`
//! prints them), the Markdown table and the plain one. Pure formatting.

use std::collections::BTreeMap;

use amortize_shared::metrics::mean_std;

/// results[method][metric] = one value per seed.
pub type Results = BTreeMap<String, BTreeMap<String, Vec<f64>>>;

/// The columns: the task's metric names (key metric first), then any other
/// metric a row reported, in the order first seen.
pub fn columns(task_metrics: &[&str], methods: &[String], r: &Results) -> Vec<String> {
    let mut key: Vec<String> = task_metrics.iter().map(|s| s.to_string()).collect();
    for m in methods {
        for k in r.get(m).into_iter().flat_map(|x| x.keys()) {
            if !key.contains(k) {
                key.push(k.clone());
            }
        }
    }
    key
}

pub fn json(task: &str, seeds: u64, methods: &[String], r: &Results) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = methods
        .iter()
        .map(|m| {
            let metrics: serde_json::Map<String, serde_json::Value> = r
                .get(m)
                .into_iter()
                .flatten()
                .map(|(k, v)| {
                    let (mean, std) = mean_std(v);
                    (k.clone(), serde_json::json!({"mean": mean, "std": std}))
                })
                .collect();
            serde_json::json!({"method": m, "metrics": metrics})
        })
        .collect();
    serde_json::json!({"task": task, "seeds": seeds, "rows": rows})
}

fn cell(v: Option<&Vec<f64>>) -> String {
    match v {
        Some(v) if v.len() > 1 => {
            let (m, s) = mean_std(v);
            format!("{m:.4} ± {s:.4}")
        }
        Some(v) if !v.is_empty() => format!("{:.4}", v[0]),
        _ => "–".into(),
    }
}

pub fn markdown(methods: &[String], names: &[String], r: &Results) -> String {
    let mut s = format!("| method | {} |\n|---|{}\n", names.join(" | "), "---|".repeat(names.len()));
    for m in methods {
        let cells: Vec<String> = names.iter().map(|n| cell(r.get(m).and_then(|x| x.get(n)))).collect();
        s.push_str(&format!("| {m} | {} |\n", cells.join(" | ")));
    }
    s
}

pub fn plain(methods: &[String], names: &[String], r: &Results) -> String {
    let w = methods.iter().map(|m| m.chars().count()).max().unwrap_or(0).max(6);
    let mut s = format!("{:>w$}", "method");
    for n in names {
        s.push_str(&format!(" {n:>20}"));
    }
    s.push('\n');
    for m in methods {
        s.push_str(&format!("{m:>w$}"));
        for n in names {
            s.push_str(&format!(" {:>20}", cell(r.get(m).and_then(|x| x.get(n)))));
        }
        s.push('\n');
    }
    s
}
