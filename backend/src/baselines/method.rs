//! The method names `amortize compare` understands, parsed from strings such
//! as `base`, `fewshot:k=5`, `gfn+sft`, `sft+ppo` or `base@dbeam+x5`:
//! `NAME[:k=N][@DECODING]`. Owns only the grammar and its error messages (each
//! names the bad part); what a method does lives in the compare command, the
//! baselines and the tasks.

use crate::tasks::Decoding;
use crate::{Error, Result};

/// What produces the samples of one row.
#[derive(Debug, Clone, PartialEq)]
pub enum MethodKind {
    /// The base model with the task's prompt.
    Base,
    /// The base model with the task's plain prompt (the paper's zero-shot row).
    ZeroShot,
    /// The base model with k demonstrations before each prompt (`None`: the
    /// `[fewshot]` table's k, else the task's default).
    FewShot { k: Option<usize> },
    /// GFlowNet fine-tuning.
    Gfn,
    Ppo,
    /// Supervised fine-tuning on the task's reference Z's.
    Sft,
    /// The EM step: SFT on Z's sampled from the GFlowNet adapter that the
    /// task's reward accepts.
    GfnSft,
    /// GFlowNet fine-tuning whose adapter starts from the SFT adapter (the
    /// order of the name is the order of the trainings, as in `gfn+sft`).
    SftGfn,
    /// PPO whose policy starts from the SFT adapter and is kept close to it
    /// (TRL's recipe).
    SftPpo,
    /// An adapter given with `--adapters NAME=DIR`.
    Adapter(String),
}

/// One row of a comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct Method {
    /// The spec as written (the row's name).
    pub label: String,
    pub kind: MethodKind,
    pub decoding: Option<Decoding>,
}

/// The built-in names, for messages.
pub const NAMES: &str = "base, zeroshot, fewshot[:k=N], gfn, ppo, sft, gfn+sft, sft+gfn, sft+ppo";

impl Method {
    /// Parses `NAME[:k=N][@DECODING]`; `adapters` are the names given with `--adapters`.
    pub fn parse(spec: &str, adapters: &[&str]) -> Result<Method> {
        let spec_t = spec.trim();
        let (head, decoding) = match spec_t.split_once('@') {
            Some((h, d)) => (h, Some(Decoding::parse(d).map_err(|e| Error::invalid(format!("method {spec_t}"), e.to_string()))?)),
            None => (spec_t, None),
        };
        let (name, opts) = match head.split_once(':') {
            Some((n, o)) => (n, Some(o)),
            None => (head, None),
        };
        let kind = match name {
            // A name given with --adapters wins (e.g. `--adapters ppo=DIR` evaluates DIR as `ppo`).
            n if adapters.contains(&n) => MethodKind::Adapter(n.to_string()),
            "base" => MethodKind::Base,
            "zeroshot" => MethodKind::ZeroShot,
            "fewshot" => MethodKind::FewShot { k: None },
            "gfn" => MethodKind::Gfn,
            "ppo" => MethodKind::Ppo,
            "sft" => MethodKind::Sft,
            "gfn+sft" => MethodKind::GfnSft,
            "sft+gfn" => MethodKind::SftGfn,
            "sft+ppo" => MethodKind::SftPpo,
            "" => return Err(Error::invalid("method", format!("`{spec_t}` has no method name (known: {NAMES}, or a name given with --adapters)"))),
            n => return Err(Error::invalid("method", format!("unknown method `{n}` (known: {NAMES}, or a name given with --adapters; add @greedy, @t=…, @beam, @x5, … for a decoding)"))),
        };
        let kind = match (kind, opts) {
            (k, None) => k,
            (MethodKind::FewShot { .. }, Some(o)) => match o.split_once('=') {
                Some(("k", v)) => match v.parse::<usize>() {
                    Ok(k) if k >= 1 => MethodKind::FewShot { k: Some(k) },
                    _ => return Err(Error::invalid(format!("method {spec_t}"), format!("`{o}`: k must be a whole number ≥ 1 (k = 0 is `zeroshot`)"))),
                },
                _ => return Err(Error::invalid(format!("method {spec_t}"), format!("`{o}`: fewshot takes k=N"))),
            },
            (_, Some(o)) => return Err(Error::invalid(format!("method {spec_t}"), format!("`:{o}`: only fewshot takes options (fewshot:k=N)"))),
        };
        Ok(Method { label: spec_t.to_string(), kind, decoding })
    }

    /// Whether the row is the base model (no adapter).
    pub fn is_base_model(&self) -> bool {
        matches!(self.kind, MethodKind::Base | MethodKind::ZeroShot | MethodKind::FewShot { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_options_and_decodings() {
        let m = Method::parse("fewshot:k=5", &[]).unwrap();
        assert_eq!((m.label.as_str(), &m.kind, m.decoding.is_none()), ("fewshot:k=5", &MethodKind::FewShot { k: Some(5) }, true));
        assert_eq!(Method::parse("fewshot", &[]).unwrap().kind, MethodKind::FewShot { k: None });
        assert_eq!(Method::parse("gfn+sft", &[]).unwrap().kind, MethodKind::GfnSft);
        assert_eq!(Method::parse("sft+gfn@greedy", &[]).unwrap().kind, MethodKind::SftGfn);
        assert_eq!(Method::parse("sft+ppo", &[]).unwrap().kind, MethodKind::SftPpo);
        let m = Method::parse("base@dbeam=8+x5", &[]).unwrap();
        assert_eq!(m.kind, MethodKind::Base);
        assert_eq!(m.decoding.as_ref().unwrap().compute, Some(5));
        assert!(m.decoding.unwrap().beam.unwrap().diverse);
        let m = Method::parse("fewshot:k=2@t=0.5", &[]).unwrap();
        assert_eq!((m.kind, m.decoding.unwrap().temperature), (MethodKind::FewShot { k: Some(2) }, Some(0.5)));
        assert_eq!(Method::parse("mine", &["mine"]).unwrap().kind, MethodKind::Adapter("mine".into()));
        assert_eq!(Method::parse("ppo@greedy", &["ppo"]).unwrap().kind, MethodKind::Adapter("ppo".into()));
        assert!(Method::parse("zeroshot", &[]).unwrap().is_base_model() && !Method::parse("sft", &[]).unwrap().is_base_model());
    }

    #[test]
    fn errors_name_the_bad_part() {
        for (bad, part) in [
            ("magic", "magic"),
            ("fewshot:k=0", "k=0"),
            ("fewshot:k=two", "k=two"),
            ("fewshot:n=3", "n=3"),
            ("gfn:k=3", ":k=3"),
            ("base@beam=x", "beam=x"),
            ("base@warp", "warp"),
            ("@greedy", "no method name"),
        ] {
            let e = Method::parse(bad, &[]).unwrap_err().to_string();
            assert!(e.contains(part), "{bad}: {e}");
        }
    }
}
