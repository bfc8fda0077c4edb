//! The comparison's own evaluation (its samples, test items, batch and seed,
//! the plain decoding) of each adapter it trains — GFlowNet, PPO, SFT — at
//! the training's last step (the row's evaluation, and the run's final
//! metrics for `amortize import`) and, with `--eval-every N`, every N steps,
//! into the method's folder (`evals.jsonl`, each line with the evaluation's
//! settings, so a reused adapter's points count only when they were made the
//! same way); then the curves over seeds: at each step all the seeds have,
//! the mean ± std of each metric (`compare.json`'s `curves`, `curves.md`).
//! Trains nothing and decides nothing about the table.

use std::collections::BTreeMap;
use std::path::Path;

use amortize::model::{LanguageModel, LoraAdapter};
use amortize::tasks::{EvalOptions, EvalReport, Task};
use amortize_shared::groups::mean_curve;
use serde_json::{json, Value};

const FILE: &str = "evals.jsonl";

/// The methods whose trainings are evaluated along the way, by their folder's stem.
pub const TRAINED: [&str; 5] = ["gfn", "sft-gfn", "ppo", "sft-ppo", "sft"];

/// How the trainings of one seed are evaluated along the way.
pub struct Along<'a> {
    /// `--eval-every`; `None`: at the last step only.
    pub every: Option<usize>,
    /// The comparison's task (the GFlowNet may train against another reward).
    pub task: &'a dyn Task,
    pub opts: EvalOptions,
}

impl Along<'_> {
    /// Whether `step` is one of the evaluated (the training's last is evaluated too).
    pub fn due(&self, step: usize) -> bool {
        self.every.is_some_and(|n| step.is_multiple_of(n))
    }

    /// Evaluates `adapter` as trained to `step` and appends the point to
    /// `dir`'s file; the report (its examples too) is returned.
    pub fn record(&self, lm: &LanguageModel, adapter: &LoraAdapter, step: usize, dir: &Path) -> anyhow::Result<EvalReport> {
        // Folded into the weights: an evaluation decodes thousands of tokens.
        let view = lm.folded(adapter)?;
        let report = self.task.evaluate(lm, Some(&view), &self.opts)?;
        amortize::util::append_jsonl(&dir.join(FILE), &json!({"step": step, "metrics": report.metrics, "eval": self.opts}))?;
        Ok(report)
    }
}

/// A training about to start in `dir`: the points of an earlier one go.
pub fn clear(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(FILE));
}

/// One training's evaluations: (step, metrics) in step order.
pub type Points = Vec<(usize, BTreeMap<String, f64>)>;

/// The points in `dir` made with `opts`, and how many lines were made
/// otherwise (or unreadable).
pub fn read(dir: &Path, opts: &EvalOptions) -> (Points, usize) {
    let Ok(text) = std::fs::read_to_string(dir.join(FILE)) else { return (Vec::new(), 0) };
    let want = serde_json::to_value(opts).unwrap_or(Value::Null);
    let (mut points, mut other) = (Vec::new(), 0);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
        let step = v["step"].as_u64();
        let metrics: Option<BTreeMap<String, f64>> = serde_json::from_value(v["metrics"].clone()).ok();
        match (step, metrics) {
            (Some(s), Some(m)) if v["eval"] == want => points.push((s as usize, m)),
            _ => other += 1,
        }
    }
    points.sort_by_key(|p| p.0);
    (points, other)
}

/// curves[method][metric] = (step, mean, std, seeds) at each step every seed has.
pub type Curves = BTreeMap<String, BTreeMap<String, Vec<(usize, f64, f64, usize)>>>;

/// The curves of `method`'s seeds, each given as its points.
pub fn curves_of(seeds: &[Points]) -> BTreeMap<String, Vec<(usize, f64, f64, usize)>> {
    let names: std::collections::BTreeSet<&String> = seeds.iter().flatten().flat_map(|(_, m)| m.keys()).collect();
    names
        .into_iter()
        .map(|name| {
            let series: Vec<Vec<(f64, f64)>> = seeds.iter().map(|pts| pts.iter().filter_map(|(s, m)| m.get(name).map(|v| (*s as f64, *v))).collect()).collect();
            let curve = mean_curve(&series.iter().map(Vec::as_slice).collect::<Vec<_>>());
            (name.clone(), curve.into_iter().map(|(x, s)| (x as usize, s.mean, s.std, s.n)).collect())
        })
        .filter(|(_, c): &(String, Vec<_>)| !c.is_empty())
        .collect()
}

/// `{METHOD: {METRIC: [{"step", "mean", "std", "seeds"}]}}`.
pub fn json(c: &Curves) -> Value {
    let of = |pts: &Vec<(usize, f64, f64, usize)>| pts.iter().map(|(s, m, sd, n)| json!({"step": s, "mean": m, "std": sd, "seeds": n})).collect::<Vec<_>>();
    Value::Object(c.iter().map(|(method, m)| (method.clone(), Value::Object(m.iter().map(|(k, p)| (k.clone(), Value::Array(of(p)))).collect()))).collect())
}

/// A table per metric (`names` first, in order, then any other): a row per
/// step, a column per method, cells mean ± std over seeds (the value for one).
pub fn markdown(names: &[String], c: &Curves) -> String {
    let mut metrics: Vec<&String> = names.iter().filter(|n| c.values().any(|m| m.contains_key(*n))).collect();
    for m in c.values().flat_map(|m| m.keys()) {
        if !metrics.contains(&m) {
            metrics.push(m);
        }
    }
    let methods: Vec<&String> = c.keys().collect();
    let mut out = String::new();
    for metric in metrics {
        let mut steps: Vec<usize> = c.values().filter_map(|m| m.get(metric)).flatten().map(|p| p.0).collect();
        steps.sort_unstable();
        steps.dedup();
        out += &format!("## {metric}\n\n| step | {} |\n|---|{}\n", methods.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(" | "), "---|".repeat(methods.len()));
        for s in steps {
            let cells: Vec<String> = methods
                .iter()
                .map(|m| match c[*m].get(metric).and_then(|p| p.iter().find(|p| p.0 == s)) {
                    Some(&(_, mean, _, 1)) => format!("{mean:.4}"),
                    Some(&(_, mean, std, _)) => format!("{mean:.4} ± {std:.4}"),
                    None => "–".into(),
                })
                .collect();
            out += &format!("| {s} | {} |\n", cells.join(" | "));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pts(p: &[(usize, f64)]) -> Points {
        p.iter().map(|&(s, v)| (s, BTreeMap::from([("kl".to_string(), v)]))).collect()
    }

    #[test]
    fn curves_keep_the_steps_every_seed_has_and_tabulate_by_step() {
        // Seed 1 stopped before step 30: the curve ends at 20.
        let c = curves_of(&[pts(&[(10, 1.0), (20, 0.5), (30, 0.2)]), pts(&[(10, 3.0), (20, 0.5)])]);
        assert_eq!(c["kl"], vec![(10, 2.0, 2f64.sqrt(), 2), (20, 0.5, 0.0, 2)]);
        let all = Curves::from([("gfn".to_string(), c), ("ppo".to_string(), curves_of(&[pts(&[(20, 1.5)])]))]);
        assert_eq!(
            markdown(&["kl".to_string()], &all),
            "## kl\n\n| step | gfn | ppo |\n|---|---|---|\n| 10 | 2.0000 ± 1.4142 | – |\n| 20 | 0.5000 ± 0.0000 | 1.5000 |\n\n"
        );
        assert_eq!(json(&all)["ppo"]["kl"], json!([{"step": 20, "mean": 1.5, "std": 0.0, "seeds": 1}]));
    }

    #[test]
    fn only_points_made_with_the_same_evaluation_are_read() {
        let dir = std::env::temp_dir().join(format!("amortize-along-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let opts = EvalOptions { samples: Some(10), batch: 8, ..Default::default() };
        let other = EvalOptions { samples: Some(20), ..opts.clone() };
        for (step, o) in [(2, &opts), (1, &other), (1, &opts)] {
            amortize::util::append_jsonl(&dir.join(FILE), &json!({"step": step, "metrics": {"kl": step as f64}, "eval": o})).unwrap();
        }
        let (points, skipped) = read(&dir, &opts);
        assert_eq!((points.iter().map(|p| p.0).collect::<Vec<_>>(), skipped), (vec![1, 2], 1));
        clear(&dir);
        assert_eq!(read(&dir, &opts), (Vec::new(), 0));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
