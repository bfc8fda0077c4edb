//! A sweep over one training hyper-parameter, as the browser app's new-run
//! form and `amortize compare --sweep` take it: `KEY = V1, V2, …`, one run
//! per value (times the seeds).
//! Each value is read by the type of the key's value in the config (a whole
//! number, a number, a word) and the whole config with it must pass
//! [`TrainConfig::validate`], so every run of the sweep is one the server
//! accepts. [`axis`] places a sweep's values on a plot's x axis. Knows
//! nothing of how the runs are launched or named.

use serde_json::{Map, Value};

use crate::config::TrainConfig;

/// One key and its values, each as typed and as read.
#[derive(Clone, Debug, PartialEq)]
pub struct Sweep {
    pub key: String,
    pub values: Vec<(String, Value)>,
}

/// Reads `text` against `config` (every key of a [`TrainConfig`] with its
/// value): `None` when empty, else the sweep or why not.
pub fn parse_sweep(text: &str, config: &Map<String, Value>) -> Result<Option<Sweep>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let Some((key, list)) = text.split_once('=') else { return Err("write KEY = V1, V2, … (e.g. lr = 1e-3, 3e-4)".into()) };
    let key = key.trim();
    let Some(base) = config.get(key) else { return Err(format!("`{key}` is not a config key")) };
    if key == "seed" {
        return Err("the seeds have their own setting (Seeds; --seeds)".into());
    }
    if base.is_array() {
        return Err(format!("`{key}` takes a list: it cannot be swept here"));
    }
    let texts: Vec<&str> = list.split(',').map(str::trim).collect();
    if texts.iter().any(|t| t.is_empty()) {
        return Err("an empty value: separate the values with single commas".into());
    }
    if texts.len() < 2 {
        return Err("give two or more values".into());
    }
    let mut values: Vec<(String, Value)> = Vec::new();
    for t in texts {
        let v = read(t, base).map_err(|e| format!("`{t}` {e}"))?;
        if values.iter().any(|(_, w)| *w == v) {
            return Err(format!("`{t}` is given twice"));
        }
        let mut full = config.clone();
        full.insert(key.to_string(), v.clone());
        let cfg: TrainConfig = serde_json::from_value(Value::Object(full)).map_err(|e| format!("{key} = {t}: {e}"))?;
        cfg.validate().map_err(|e| format!("{key} = {t}: {} {}", e.field, e.message))?;
        values.push((t.to_string(), v));
    }
    Ok(Some(Sweep { key: key.to_string(), values }))
}

/// `t` read as a value of `base`'s type.
fn read(t: &str, base: &Value) -> Result<Value, String> {
    match base {
        Value::Number(n) if n.is_u64() => t.parse::<u64>().map(Value::from).map_err(|_| "is not a whole number ≥ 0".into()),
        Value::Number(_) => t.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map(Value::Number).ok_or_else(|| "is not a finite number".into()),
        Value::Bool(_) => t.parse::<bool>().map(Value::Bool).map_err(|_| "is not true or false".into()),
        _ => Ok(Value::String(t.to_string())),
    }
}

/// Where a sweep's lines sit on a plot's x axis, from each line's value of
/// the swept setting as the settings table shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Axis {
    /// Each line's position, in the order given.
    pub x: Vec<f64>,
    /// Positions are log10 of the values (positive numbers spanning more than
    /// a factor of 20, such as learning rates).
    pub log: bool,
    /// For values that are not all numbers (an objective, a flag): a tick per
    /// distinct value at 0, 1, 2, … in the order they first appear; `None`
    /// for numbers, which take the axis's own ticks.
    pub ticks: Option<Vec<(f64, String)>>,
}

/// The x axis of a sweep whose lines have `values` (one each).
pub fn axis(values: &[String]) -> Axis {
    let numbers: Option<Vec<f64>> = values.iter().map(|v| v.trim().parse::<f64>().ok().filter(|x| x.is_finite())).collect();
    match numbers {
        Some(xs) => {
            let (lo, hi) = xs.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(*v), b.max(*v)));
            let log = lo > 0.0 && hi / lo > 20.0;
            Axis { x: if log { xs.iter().map(|x| x.log10()).collect() } else { xs }, log, ticks: None }
        }
        None => {
            let mut seen: Vec<&str> = Vec::new();
            let x = values
                .iter()
                .map(|v| {
                    let i = seen.iter().position(|s| *s == v.as_str()).unwrap_or_else(|| {
                        seen.push(v);
                        seen.len() - 1
                    });
                    i as f64
                })
                .collect();
            Axis { x, log: false, ticks: Some(seen.iter().enumerate().map(|(i, s)| (i as f64, s.to_string())).collect()) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preset() -> Map<String, Value> {
        match serde_json::to_value(TrainConfig::default()).unwrap() {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn values_are_read_by_the_keys_type() {
        let c = preset();
        let s = parse_sweep(" max_grad_norm = 1, 10 ,0.5", &c).unwrap().unwrap();
        assert_eq!(s.key, "max_grad_norm");
        assert_eq!(s.values, vec![("1".into(), Value::from(1.0)), ("10".into(), Value::from(10.0)), ("0.5".into(), Value::from(0.5))]);
        let s = parse_sweep("steps=5,20", &c).unwrap().unwrap();
        assert_eq!(s.values, vec![("5".into(), Value::from(5u64)), ("20".into(), Value::from(20u64))]);
        let s = parse_sweep("objective = tb, db", &c).unwrap().unwrap();
        assert_eq!(s.values[1], ("db".into(), Value::from("db")));
        assert_eq!(parse_sweep("  ", &c), Ok(None));
    }

    #[test]
    fn each_refusal_says_why() {
        let c = preset();
        let err = |t: &str| parse_sweep(t, &c).unwrap_err();
        assert!(err("lr 1e-3").contains("KEY = V1"));
        assert_eq!(err("nope = 1, 2"), "`nope` is not a config key");
        assert_eq!(err("seed = 1, 2"), "the seeds have their own setting (Seeds; --seeds)");
        assert!(err("lora_targets = q, v").contains("takes a list"));
        assert_eq!(err("lr = 1e-3"), "give two or more values");
        assert!(err("lr = 1e-3,,2e-3").contains("empty value"));
        assert_eq!(err("steps = 5, x"), "`x` is not a whole number ≥ 0");
        assert_eq!(err("steps = 5, 2.5"), "`2.5` is not a whole number ≥ 0");
        assert_eq!(err("lr = 1e-3, 0.001"), "`0.001` is given twice");
        // Read, but the config with it fails TrainConfig::validate (T > 0).
        assert!(err("reward_temp_end = 1, 0").starts_with("reward_temp_end = 0: reward_temp_end"), "{}", err("reward_temp_end = 1, 0"));
        assert!(err("objective = tb, nope").starts_with("objective = nope:"), "{}", err("objective = tb, nope"));
    }

    #[test]
    fn axis_places_numbers_words_and_learning_rates() {
        let strs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let a = axis(&strs(&["1", "10", "0.5"]));
        assert_eq!((a.x, a.log, a.ticks), (vec![1.0, 10.0, 0.5], false, None));
        let a = axis(&strs(&["0.0003", "0.001", "0.01"]));
        assert!(a.log && a.ticks.is_none());
        for (x, want) in a.x.iter().zip([-3.5229, -3.0, -2.0]) {
            assert!((x - want).abs() < 1e-4, "{x} vs {want}");
        }
        // -1 to 100: not all positive, so linear.
        assert!(!axis(&strs(&["-1", "100"])).log);
        let a = axis(&strs(&["tb", "subtb", "tb", "db"]));
        assert_eq!(a.x, vec![0.0, 1.0, 0.0, 2.0]);
        assert_eq!(a.ticks, Some(vec![(0.0, "tb".to_string()), (1.0, "subtb".to_string()), (2.0, "db".to_string())]));
        // One word among numbers makes the whole axis categorical.
        assert_eq!(axis(&strs(&["1", "inf", "true"])).ticks.map(|t| t.len()), Some(3));
    }
}
