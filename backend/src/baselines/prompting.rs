//! The prompting baselines: zero-shot (the base model with the task's own
//! prompt) and k-shot (the base model with k worked examples in front of each
//! test prompt). Builds the prompts only — a [`FewShot`] is a
//! [`PromptTransform`] that a task's `evaluate` applies through
//! [`EvalOptions::prompt`](crate::tasks::EvalOptions); the demonstrations come
//! from [`Task::demonstrations`](crate::tasks::Task::demonstrations), i.e. the
//! task's training data in its own format. Trains nothing and touches no
//! weights, no sampling and no metrics.
//!
//! Per test prompt, k demonstrations are drawn without replacement from those
//! whose prompt differs from the query, in a shuffled order; the draw is a
//! function of (seed, query text) alone, so it does not depend on batching or
//! on the order of the test set, and another seed shows other examples (the
//! paper's "randomly shuffle few-shot demonstrations", Table 3). With
//! `fixed`, one shuffled draw per seed serves every query (a query found among
//! its first k is passed over for the next), so all prompts start with the
//! same demonstrations and the decoder and scorer compute that prefix once
//! for many queries (`decode::prefix`) — an evaluation many times cheaper,
//! at the price of a single set of examples per seed.

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::tasks::{Demonstration, PromptTransform};
use crate::{Error, Result};

/// The `[fewshot]` table of a compare config file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FewShotConfig {
    /// Demonstrations per prompt; the task's default (`Task::default_shots`) when absent.
    pub k: Option<usize>,
    /// The same demonstrations, in the same order, before every query (one
    /// draw per seed) instead of a draw per query.
    pub fixed: bool,
}

/// k-shot prompts over a fixed pool of demonstrations.
#[derive(Debug, Clone)]
pub struct FewShot {
    demos: Vec<Demonstration>,
    k: usize,
    seed: u64,
    fixed: bool,
}

impl FewShot {
    /// `k` demonstrations per prompt from `demos`; errors when the task has
    /// none or fewer than `k` (the field is named).
    pub fn new(demos: Vec<Demonstration>, k: usize, seed: u64) -> Result<FewShot> {
        if demos.is_empty() {
            return Err(Error::invalid("fewshot", "this task has no demonstrations (worked training examples) to prompt with"));
        }
        if k == 0 {
            return Err(Error::invalid("fewshot.k", "must be at least 1 (k = 0 is `zeroshot`)"));
        }
        if k > demos.len() {
            return Err(Error::invalid("fewshot.k", format!("{k} demonstrations asked for; the task has {}", demos.len())));
        }
        Ok(FewShot { demos, k, seed, fixed: false })
    }

    /// One draw per seed for every query (see the module docs).
    pub fn fixed(self, fixed: bool) -> FewShot {
        FewShot { fixed, ..self }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// The demonstrations shown before `query`, in the order shown: k of them
    /// (fewer only when k of the pool equal the query), none equal to it.
    pub fn pick(&self, query: &str) -> Vec<&Demonstration> {
        if self.fixed {
            // The whole pool in the seed's order; the query's own example passed over.
            let mut pool: Vec<&Demonstration> = self.demos.iter().collect();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed);
            for i in 0..pool.len() {
                let j = rng.random_range(i..pool.len());
                pool.swap(i, j);
            }
            return pool.into_iter().filter(|d| d.prompt != query).take(self.k).collect();
        }
        let mut pool: Vec<&Demonstration> = self.demos.iter().filter(|d| d.prompt != query).collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed ^ fnv1a(query.as_bytes()));
        // Partial Fisher–Yates: the first k places get a uniform random ordered sample.
        let k = self.k.min(pool.len());
        for i in 0..k {
            let j = rng.random_range(i..pool.len());
            pool.swap(i, j);
        }
        pool.truncate(k);
        pool
    }

    /// The k-shot prompt: the demonstrations' texts, then the query.
    pub fn prompt(&self, query: &str) -> String {
        let mut s: String = self.pick(query).iter().map(|d| d.text.as_str()).collect();
        s.push_str(query);
        s
    }
}

impl PromptTransform for FewShot {
    fn apply(&self, prompt: &str) -> String {
        self.prompt(prompt)
    }
}

/// 64-bit FNV-1a: a hash that is stable across runs and platforms.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demos(n: usize) -> Vec<Demonstration> {
        (0..n).map(|i| Demonstration { prompt: format!("Q{i}:"), text: format!("Q{i}: A{i}\n") }).collect()
    }

    #[test]
    fn k_demonstrations_then_the_query() {
        let f = FewShot::new(demos(10), 3, 0).unwrap();
        let picked = f.pick("Q99:");
        assert_eq!(picked.len(), 3);
        let mut texts: Vec<&str> = picked.iter().map(|d| d.text.as_str()).collect();
        let p = f.prompt("Q99:");
        assert_eq!(p, format!("{}Q99:", texts.concat()));
        assert!(p.ends_with("Q99:") && p.matches("Q99").count() == 1);
        // Distinct demonstrations (without replacement).
        texts.sort();
        texts.dedup();
        assert_eq!(texts.len(), 3);
    }

    #[test]
    fn never_shows_the_query_itself() {
        let f = FewShot::new(demos(4), 4, 1).unwrap();
        for q in 0..4 {
            let query = format!("Q{q}:");
            let picked = f.pick(&query);
            // All the others, but not the query's own worked example.
            assert_eq!(picked.len(), 3, "{query}");
            assert!(picked.iter().all(|d| d.prompt != query), "{query}");
            assert!(!f.prompt(&query).contains(&format!("A{q}")), "{query}");
        }
    }

    #[test]
    fn seeded_and_shuffled() {
        let order = |seed: u64, q: &str| FewShot::new(demos(20), 5, seed).unwrap().pick(q).iter().map(|d| d.prompt.clone()).collect::<Vec<_>>();
        // A function of (seed, query): repeatable.
        assert_eq!(order(3, "Q99:"), order(3, "Q99:"));
        // Other seeds and other queries see other draws; over a handful of seeds
        // the demonstrations are not always the first five in file order.
        let seeds: Vec<Vec<String>> = (0..8).map(|s| order(s, "Q99:")).collect();
        assert!(seeds.iter().any(|o| o != &seeds[0]), "{seeds:?}");
        assert_ne!(order(3, "Q98:"), order(3, "Q99:"));
        let first_five: Vec<String> = (0..5).map(|i| format!("Q{i}:")).collect();
        assert!(seeds.iter().all(|o| o != &first_five), "{seeds:?}");
        // Every demonstration turns up across queries (a uniform draw, not a fixed prefix).
        let mut seen = std::collections::HashSet::new();
        for q in 0..200 {
            seen.extend(order(0, &format!("query {q}")));
        }
        assert_eq!(seen.len(), 20);
        // The order is shuffled too: the same set is not always shown sorted.
        let sorted = (0..200).filter(|q| {
            let o = order(0, &format!("query {q}"));
            o.windows(2).all(|w| w[0].trim_start_matches('Q').trim_end_matches(':').parse::<u32>().unwrap() < w[1].trim_start_matches('Q').trim_end_matches(':').parse::<u32>().unwrap())
        });
        assert!(sorted.count() < 20);
    }

    #[test]
    fn fixed_draws_once_per_seed() {
        let f = |seed: u64| FewShot::new(demos(20), 5, seed).unwrap().fixed(true);
        let order = |f: &FewShot, q: &str| f.pick(q).iter().map(|d| d.prompt.clone()).collect::<Vec<_>>();
        let a = f(3);
        // Every query outside the pool sees the same five, in the same order.
        let first = order(&a, "query 0");
        assert_eq!(first.len(), 5);
        assert!((1..50).all(|q| order(&a, &format!("query {q}")) == first));
        let first_five: Vec<String> = (0..5).map(|i| format!("Q{i}:")).collect();
        assert_ne!(first, first_five, "not shuffled");
        // A query among them is passed over for the sixth of the draw, the others keep their places.
        let own = order(&a, &first[1]);
        assert_eq!(own.len(), 5);
        assert!(!own.contains(&first[1]));
        assert_eq!((&own[..1], &own[1..4]), (&first[..1], &first[2..]));
        // Another seed, another draw.
        assert!((0..8).any(|s| order(&f(s), "query 0") != first));
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(FewShot::new(vec![], 1, 0).unwrap_err().to_string().contains("no demonstrations"));
        assert!(FewShot::new(demos(3), 0, 0).unwrap_err().to_string().contains("zeroshot"));
        assert!(FewShot::new(demos(3), 4, 0).unwrap_err().to_string().contains("the task has 3"));
    }
}
