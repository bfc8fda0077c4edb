//! `compare --sweep KEY=V1,V2,…`: the GFlowNet's training over the values of
//! one config key. Each value is a variant — its own config, read and
//! validated by `amortize_shared::sweep` exactly as the app's new-run form
//! reads a sweep, its own folders (`gfn-KEYV-seedS`) and its own rows
//! (`gfn[KEY=V]`, `gfn+sft[KEY=V]`, `sft+gfn[KEY=V]`, with any decoding). The other methods
//! keep the comparison's config. Knows nothing of training or evaluating.

use amortize::baselines::{Method, MethodKind};
use amortize::gfn::TrainConfig;
use amortize_shared::sweep::parse_sweep;
use anyhow::{anyhow, bail};
use serde_json::Value;

/// One GFlowNet training setting of the comparison.
#[derive(Clone, Debug)]
pub struct Variant {
    /// Added to its rows' names: `[lr=3e-4]`, or nothing without a sweep.
    pub suffix: String,
    /// Added to its folders' stems: `-lr3e-4`, or nothing without a sweep.
    pub stem: String,
    /// The swept key and this variant's value as written; none without a sweep.
    pub setting: Option<(String, String)>,
    pub cfg: TrainConfig,
}

/// The comparison's own config alone, or one variant per swept value.
pub fn variants(cfg: &TrainConfig, sweep: Option<&str>) -> anyhow::Result<Vec<Variant>> {
    let Some(text) = sweep else { return Ok(vec![Variant { suffix: String::new(), stem: String::new(), setting: None, cfg: cfg.clone() }]) };
    let Value::Object(base) = serde_json::to_value(cfg)? else { bail!("a config is not an object") };
    let sweep = parse_sweep(text, &base).map_err(|e| anyhow!("invalid --sweep: {e}"))?.ok_or_else(|| anyhow!("invalid --sweep: empty; write KEY=V1,V2,…"))?;
    let mut out = Vec::new();
    for (t, v) in sweep.values {
        let mut m = base.clone();
        m.insert(sweep.key.clone(), v);
        let cfg: TrainConfig = serde_json::from_value(Value::Object(m))?;
        let stem = format!("-{}{}", sweep.key, super::file_name(&t));
        out.push(Variant { suffix: format!("[{}={t}]", sweep.key), stem, setting: Some((sweep.key.clone(), t)), cfg });
    }
    Ok(out)
}

/// `compare.json`'s `"sweep"`: `{"key", "values"}` as written, or null.
pub fn json(variants: &[Variant]) -> Value {
    let settings: Vec<&(String, String)> = variants.iter().filter_map(|v| v.setting.as_ref()).collect();
    match settings.first() {
        Some((key, _)) => serde_json::json!({"key": key, "values": settings.iter().map(|(_, v)| v).collect::<Vec<_>>()}),
        None => Value::Null,
    }
}

/// Whether a method's rows depend on the GFlowNet's training.
pub fn swept(kind: &MethodKind) -> bool {
    matches!(kind, MethodKind::Gfn | MethodKind::GfnSft | MethodKind::SftGfn)
}

/// One row of the table: its name, its method, and for a GFlowNet method
/// its variant (the other methods keep the comparison's config).
pub type Row<'a> = (String, &'a Method, Option<&'a Variant>);

/// The table's rows in order: each method once, a GFlowNet method once per
/// variant (its label with the variant's suffix).
pub fn rows<'a>(methods: &'a [Method], variants: &'a [Variant]) -> Vec<Row<'a>> {
    let mut out = Vec::new();
    for m in methods {
        if swept(&m.kind) {
            out.extend(variants.iter().map(|v| (format!("{}{}", m.label, v.suffix), m, Some(v))));
        } else {
            out.push((m.label.clone(), m, None));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_splits_only_the_gfn_rows() {
        let cfg = TrainConfig::default();
        let vs = variants(&cfg, Some("lr = 3e-4, 1e-3")).unwrap();
        assert_eq!(vs.iter().map(|v| (v.suffix.as_str(), v.stem.as_str(), v.cfg.lr)).collect::<Vec<_>>(), [("[lr=3e-4]", "-lr3e-4", 3e-4), ("[lr=1e-3]", "-lr1e-3", 1e-3)]);
        assert_eq!(vs[1].cfg.steps, cfg.steps, "the rest of the config stays");
        assert_eq!(json(&vs), serde_json::json!({"key": "lr", "values": ["3e-4", "1e-3"]}));
        let methods: Vec<Method> = ["base", "gfn@greedy", "ppo", "gfn+sft"].iter().map(|l| Method::parse(l, &[]).unwrap()).collect();
        let labels: Vec<String> = rows(&methods, &vs).into_iter().map(|(l, _, _)| l).collect();
        assert_eq!(labels, ["base", "gfn@greedy[lr=3e-4]", "gfn@greedy[lr=1e-3]", "ppo", "gfn+sft[lr=3e-4]", "gfn+sft[lr=1e-3]"]);
        // Without a sweep: one variant, the labels as given.
        let one = variants(&cfg, None).unwrap();
        assert_eq!(json(&one), Value::Null);
        let stems = |m: &Method| swept(&m.kind).then(String::new);
        assert_eq!(rows(&methods, &one).into_iter().map(|(l, _, v)| (l, v.map(|v| v.stem.clone()))).collect::<Vec<_>>(), methods.iter().map(|m| (m.label.clone(), stems(m))).collect::<Vec<_>>());
        // The methods that train no GFlowNet have no variant, with a sweep too.
        assert!(rows(&methods, &vs).iter().all(|(_, m, v)| v.is_some() == swept(&m.kind)));
    }

    #[test]
    fn a_bad_sweep_says_why() {
        let cfg = TrainConfig::default();
        for (text, says) in [("lr", "KEY = V1"), ("nope=1,2", "`nope` is not a config key"), ("lr=1e-3", "two or more"), ("max_len=4,0", "max_len = 0"), ("", "empty")] {
            let e = variants(&cfg, Some(text)).unwrap_err().to_string();
            assert!(e.starts_with("invalid --sweep: ") && e.contains(says), "{text}: {e}");
        }
    }
}
