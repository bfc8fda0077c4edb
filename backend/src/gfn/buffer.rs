//! The replay buffer of high-reward sequences, one bounded queue per (X, Y) key.
//!
//! Owns: de-duplication (identical text, token-level edit-distance near
//! duplicates), capacity eviction, reward-proportional sampling and the buffer's
//! JSON file. Rewards are stored *untempered*; [`ReplayBuffer::sample`] applies
//! the caller's current temperature. It must not touch models, tokenizers or
//! reward computation: callers hand in finished [`BufferEntry`] values (seeded
//! rationales included) with their per-prefix log-rewards already computed.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};

use crate::{Error, Result};

/// One stored trajectory with its per-prefix untempered log-rewards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BufferEntry {
    /// Generated ids (policy tokens and tool tokens; no stop token).
    pub tokens: Vec<u32>,
    /// tool[i]: token i was appended by a tool, not chosen by the policy.
    pub tool: Vec<bool>,
    /// Decoded text (duplicate detection uses it).
    pub text: String,
    /// Untempered log-reward of terminating after each policy action: index 0 =
    /// empty prefix, last = the whole sequence. Non-finite values are written to
    /// JSON as `null` and read back as `-inf`.
    #[serde(deserialize_with = "null_as_neg_inf")]
    pub log_rewards: Vec<f32>,
    /// The first state whose log-reward was computed (the trainer scores only
    /// the states its objective uses; earlier entries hold 0.0). Files written
    /// before this field had every state scored.
    #[serde(default)]
    pub scored_from: usize,
}

impl BufferEntry {
    /// Log-reward of the whole sequence: the last of `log_rewards`, or `-inf`
    /// if there are none.
    pub fn log_reward(&self) -> f32 {
        self.log_rewards.last().copied().unwrap_or(f32::NEG_INFINITY)
    }
}

/// serde_json writes non-finite floats as `null`; read those back as `-inf`.
fn null_as_neg_inf<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<f32>, D::Error> {
    let raw: Vec<Option<f32>> = Vec::deserialize(d)?;
    Ok(raw.into_iter().map(|v| v.unwrap_or(f32::NEG_INFINITY)).collect())
}

/// Per-key bounded priority queues of [`BufferEntry`], ordered by final
/// log-reward (best first).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplayBuffer {
    /// Maximum number of entries kept per key.
    capacity: usize,
    /// Near-duplicate threshold: distance < tolerance × (len_a + len_b).
    tolerance: f64,
    /// Entries per key, sorted by `log_reward()` descending.
    entries: BTreeMap<String, Vec<BufferEntry>>,
}

impl ReplayBuffer {
    /// An empty buffer holding at most `capacity` (≥ 1) entries per key, with
    /// near-duplicate `tolerance` in [0, 1) (0.25 in the paper's code; 0 turns
    /// near-duplicate detection off).
    pub fn new(capacity: usize, tolerance: f64) -> Result<Self> {
        check_params(capacity, tolerance)?;
        Ok(Self { capacity, tolerance, entries: BTreeMap::new() })
    }

    /// Adds one entry under `key`; returns true if it was stored.
    ///
    /// Rules in order: an entry whose final log-reward is not finite is
    /// rejected; an entry with identical `text` to a stored one is skipped; the
    /// stored entries whose token-level Levenshtein distance to the new one is
    /// `< tolerance × (len_a + len_b)` are near duplicates: if the new entry is
    /// strictly better than all of them they are removed and it is inserted,
    /// otherwise it is skipped; finally, if the key holds more than `capacity`
    /// entries the lowest-reward one is evicted (which may be the new one, in
    /// which case this returns false). Among equal rewards, older entries rank
    /// first.
    pub fn add(&mut self, key: &str, entry: BufferEntry) -> bool {
        let reward = entry.log_reward();
        if !reward.is_finite() {
            return false;
        }
        let tolerance = self.tolerance;
        let Some(list) = self.entries.get_mut(key) else {
            self.entries.insert(key.to_string(), vec![entry]);
            return true;
        };
        if list.iter().any(|e| e.text == entry.text) {
            return false;
        }
        let near: Vec<usize> =
            (0..list.len()).filter(|&i| is_near(&list[i].tokens, &entry.tokens, tolerance)).collect();
        if near.iter().any(|&i| list[i].log_reward() >= reward) {
            return false;
        }
        for &i in near.iter().rev() {
            list.remove(i);
        }
        // Insert after every entry at least as good (stable for ties).
        let pos = list.partition_point(|e| e.log_reward() >= reward);
        list.insert(pos, entry);
        if list.len() > self.capacity {
            list.truncate(self.capacity);
            return pos < self.capacity;
        }
        true
    }

    /// `n` entries for `key`: all of them (cloned, any order) when it holds at
    /// most `n`; otherwise `n` draws *with replacement* with probability
    /// ∝ exp(log_reward / temperature) (a numerically stable softmax in f64).
    /// An unknown key gives an empty vec.
    ///
    /// Limits: `temperature <= 0` always draws the best entry, `+∞` draws
    /// uniformly; a NaN temperature is a caller bug (debug panic, else greedy).
    pub fn sample(&self, key: &str, n: usize, temperature: f64, rng: &mut impl rand::Rng) -> Vec<BufferEntry> {
        let list = self.entries(key);
        if list.len() <= n {
            return list.to_vec();
        }
        debug_assert!(!temperature.is_nan(), "replay temperature is NaN");
        if temperature.is_nan() || temperature <= 0.0 {
            return vec![list[0].clone(); n];
        }
        // Sorted best first, so list[0] holds the maximum; (r - max) is finite
        // and <= 0, so every weight is in [0, 1] and the best one is exactly 1.
        let max = f64::from(list[0].log_reward());
        let mut total = 0.0f64;
        let cumulative: Vec<f64> = list
            .iter()
            .map(|e| {
                total += ((f64::from(e.log_reward()) - max) / temperature).exp();
                total
            })
            .collect();
        (0..n)
            .map(|_| {
                let u = rng.random::<f64>() * total;
                let i = cumulative.partition_point(|&c| c <= u).min(list.len() - 1);
                list[i].clone()
            })
            .collect()
    }

    /// Number of entries stored under `key` (0 for an unknown key).
    pub fn len(&self, key: &str) -> usize {
        self.entries.get(key).map_or(0, Vec::len)
    }

    /// Number of entries over all keys.
    pub fn total_len(&self) -> usize {
        self.entries.values().map(Vec::len).sum()
    }

    /// True if no key holds any entry.
    pub fn is_empty(&self) -> bool {
        self.total_len() == 0
    }

    /// The keys that hold entries, in sorted order.
    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.entries.iter().filter(|(_, v)| !v.is_empty()).map(|(k, _)| k.as_str())
    }

    /// Best entries for `key`, best first (empty for an unknown key).
    pub fn entries(&self, key: &str) -> &[BufferEntry] {
        self.entries.get(key).map_or(&[], Vec::as_slice)
    }

    /// Maximum number of entries per key.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Near-duplicate tolerance.
    pub fn tolerance(&self) -> f64 {
        self.tolerance
    }

    /// Writes the buffer as JSON, atomically (a crash leaves the old file).
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = serde_json::to_vec(self)?;
        crate::util::write_atomic(path, &bytes)
            .map_err(|e| Error::file(path, format!("cannot write replay buffer: {e}")))
    }

    /// Reads a buffer written by [`ReplayBuffer::save`]; a missing, unreadable
    /// or inconsistent file gives [`Error::File`].
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::file(path, format!("cannot read replay buffer: {e}")))?;
        let buf: Self =
            serde_json::from_slice(&bytes).map_err(|e| Error::file(path, format!("not a replay buffer file: {e}")))?;
        check_params(buf.capacity, buf.tolerance).map_err(|e| Error::file(path, e))?;
        for (key, list) in &buf.entries {
            let problem = if list.len() > buf.capacity {
                "more entries than the capacity"
            } else if list.iter().any(|e| !e.log_reward().is_finite()) {
                "an entry has a non-finite log-reward"
            } else if list.windows(2).any(|w| w[0].log_reward() < w[1].log_reward()) {
                "entries are not sorted by log-reward"
            } else {
                continue;
            };
            return Err(Error::file(path, format!("replay buffer key {key:?}: {problem}")));
        }
        Ok(buf)
    }
}

fn check_params(capacity: usize, tolerance: f64) -> Result<()> {
    if capacity == 0 {
        return Err(Error::invalid("replay buffer capacity", "must be at least 1"));
    }
    if !(0.0..1.0).contains(&tolerance) {
        return Err(Error::invalid("replay buffer tolerance", format!("{tolerance} is not in [0, 1)")));
    }
    Ok(())
}

/// True if `a` and `b` are near duplicates: distance < tolerance × (len_a + len_b).
fn is_near(a: &[u32], b: &[u32], tolerance: f64) -> bool {
    let bound = tolerance * (a.len() + b.len()) as f64;
    // The distance is at least the length difference; skip the DP when that
    // alone already rules it out.
    if (a.len().abs_diff(b.len()) as f64) >= bound {
        return false;
    }
    (edit_distance(a, b) as f64) < bound
}

/// Levenshtein distance between two token sequences (insertions, deletions and
/// substitutions cost 1); O(len_a × len_b) time, O(min(len_a, len_b)) memory.
pub fn edit_distance(a: &[u32], b: &[u32]) -> usize {
    let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    // row[j] = distance between long[..i] and short[..j] for the current i.
    let mut row: Vec<usize> = (0..=short.len()).collect();
    for (i, &x) in long.iter().enumerate() {
        let mut diag = row[0]; // distance(long[..i], short[..0])
        row[0] = i + 1;
        for (j, &y) in short.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = (diag + usize::from(x != y)).min(up + 1).min(row[j] + 1);
            diag = up;
        }
    }
    row[short.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn entry(tokens: &[u32], text: &str, log_r: f32) -> BufferEntry {
        let (tokens, tool, text) = (tokens.to_vec(), vec![false; tokens.len()], text.to_string());
        BufferEntry { tokens, tool, text, log_rewards: vec![-5.0, log_r], scored_from: 0 }
    }

    fn texts(buf: &ReplayBuffer, key: &str) -> Vec<String> {
        buf.entries(key).iter().map(|e| e.text.clone()).collect()
    }

    #[test]
    fn edit_distance_hand_worked() {
        let ids = |s: &str| s.bytes().map(u32::from).collect::<Vec<_>>();
        assert_eq!(edit_distance(&ids("kitten"), &ids("sitting")), 3);
        assert_eq!(edit_distance(&ids("sitting"), &ids("kitten")), 3);
        assert_eq!(edit_distance(&ids("flaw"), &ids("lawn")), 2);
        assert_eq!((edit_distance(&[], &[]), edit_distance(&[], &[1, 2, 3]), edit_distance(&[4, 5], &[])), (0, 3, 2));
        assert_eq!((edit_distance(&[1, 2, 3], &[1, 2, 3]), edit_distance(&[1, 2, 3], &[3, 2, 1])), (0, 2));
    }

    #[test]
    fn identical_text_is_skipped() {
        let mut buf = ReplayBuffer::new(10, 0.25).unwrap();
        assert!(buf.add("k", entry(&[1, 2, 3], "same", -1.0)));
        // Different tokens, same text, even a better reward: skipped.
        assert!(!buf.add("k", entry(&[9, 9, 9, 9, 9, 9], "same", 5.0)));
        assert_eq!((buf.len("k"), buf.entries("k")[0].log_reward()), (1, -1.0));
        // The same text under another key is fine.
        assert!(buf.add("other", entry(&[1, 2, 3], "same", -1.0)));
        assert_eq!(buf.total_len(), 2);
    }

    #[test]
    fn near_duplicate_keeps_the_better_one_in_both_orders() {
        // Distance 1 < 0.25 * (8 + 8) = 4.
        let (a, b) = ([1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6, 7, 9]);
        let mut buf = ReplayBuffer::new(10, 0.25).unwrap();
        assert!(buf.add("k", entry(&a, "a", -3.0)));
        assert!(buf.add("k", entry(&b, "b", -1.0)));
        assert_eq!(texts(&buf, "k"), ["b"]);
        let mut buf = ReplayBuffer::new(10, 0.25).unwrap();
        assert!(buf.add("k", entry(&b, "b", -1.0)));
        assert!(!buf.add("k", entry(&a, "a", -3.0)));
        assert!(!buf.add("k", entry(&a, "a2", -1.0)), "a tie does not replace");
        assert_eq!(texts(&buf, "k"), ["b"]);
    }

    #[test]
    fn better_entry_replaces_all_near_duplicates() {
        let mut buf = ReplayBuffer::new(10, 0.25).unwrap();
        // a and b are 4 apart (not < 0.25 * 16); c is 2 from each.
        assert!(buf.add("k", entry(&[1, 2, 3, 4, 5, 6, 7, 8], "a", -3.0)));
        assert!(buf.add("k", entry(&[1, 2, 3, 4, 90, 91, 92, 93], "b", -4.0)));
        assert!(buf.add("k", entry(&[50, 51, 52, 53], "far", -9.0)));
        assert_eq!(buf.len("k"), 3);
        assert!(buf.add("k", entry(&[1, 2, 3, 4, 5, 6, 92, 93], "c", 0.0)));
        assert_eq!(texts(&buf, "k"), ["c", "far"]);
    }

    #[test]
    fn far_sequences_coexist_and_zero_tolerance_disables_near_check() {
        let mut buf = ReplayBuffer::new(10, 0.25).unwrap();
        assert!(buf.add("k", entry(&[1, 2, 3, 4], "a", -1.0)));
        assert!(buf.add("k", entry(&[5, 6, 7, 8], "b", -2.0)));
        assert!(buf.add("k", entry(&[1, 2, 9, 9], "c", -3.0))); // distance 2, bound 2
        assert_eq!(texts(&buf, "k"), ["a", "b", "c"]);
        let mut strict = ReplayBuffer::new(10, 0.0).unwrap();
        assert!(strict.add("k", entry(&[1, 2, 3, 4], "a", -1.0)));
        assert!(strict.add("k", entry(&[1, 2, 3, 4], "a ", -2.0)));
        assert_eq!(strict.len("k"), 2);
    }

    #[test]
    fn capacity_evicts_the_lowest_reward() {
        let mut buf = ReplayBuffer::new(3, 0.25).unwrap();
        for (i, r) in [-2.0, -5.0, -1.0].into_iter().enumerate() {
            let t = 10 * i as u32;
            assert!(buf.add("k", entry(&[t, t + 1, t + 2], &format!("e{i}"), r)));
        }
        assert!(buf.add("k", entry(&[100, 101, 102], "new", -3.0)));
        assert_eq!(texts(&buf, "k"), ["e2", "e0", "new"]);
        // A new entry worse than all (or tied with the worst) is evicted itself.
        assert!(!buf.add("k", entry(&[200, 201, 202], "worst", -9.0)));
        assert!(!buf.add("k", entry(&[300, 301, 302], "tie", -3.0)));
        assert_eq!(texts(&buf, "k"), ["e2", "e0", "new"]);
    }

    #[test]
    fn non_finite_rewards_are_rejected() {
        let mut buf = ReplayBuffer::new(3, 0.25).unwrap();
        for (i, r) in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY].into_iter().enumerate() {
            assert!(!buf.add("k", entry(&[i as u32], &format!("e{i}"), r)));
        }
        let mut empty = entry(&[4], "empty", 0.0);
        empty.log_rewards.clear();
        assert_eq!(empty.log_reward(), f32::NEG_INFINITY);
        assert!(!buf.add("k", empty));
        assert!(buf.is_empty() && buf.keys().count() == 0);
    }

    #[test]
    fn sample_returns_all_when_small_and_nothing_for_unknown_keys() {
        let mut buf = ReplayBuffer::new(10, 0.25).unwrap();
        buf.add("k", entry(&[1, 2], "a", -1.0));
        buf.add("k", entry(&[7, 8], "b", -2.0));
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut got: Vec<_> = buf.sample("k", 5, 1.0, &mut rng).into_iter().map(|e| e.text).collect();
        got.sort();
        assert_eq!(got, ["a", "b"]);
        assert_eq!((buf.sample("k", 2, 1.0, &mut rng).len(), buf.sample("k", 1, 1.0, &mut rng).len()), (2, 1));
        assert!(buf.sample("missing", 3, 1.0, &mut rng).is_empty());
        assert_eq!(buf.keys().collect::<Vec<_>>(), ["k"]);
    }

    /// Fraction of `draws` single samples that return the entry named "hi".
    fn frequency_of_hi(buf: &ReplayBuffer, temperature: f64, draws: usize) -> f64 {
        let mut rng = ChaCha8Rng::seed_from_u64(42);
        let hits = (0..draws).filter(|_| buf.sample("k", 1, temperature, &mut rng)[0].text == "hi").count();
        hits as f64 / draws as f64
    }

    #[test]
    fn sample_frequencies_follow_tempered_softmax() {
        // Two entries with log-rewards `base` and `base + ln 3`.
        let pair = |base: f32| {
            let mut buf = ReplayBuffer::new(10, 0.25).unwrap();
            buf.add("k", entry(&[1, 2, 3], "lo", base));
            buf.add("k", entry(&[7, 8, 9], "hi", base + 3f32.ln()));
            buf
        };
        let (buf, big, sqrt3) = (pair(0.0), pair(1000.0), 3f64.sqrt());
        // T = 1: weights 1 : 3; T = 2: 1 : sqrt 3; no overflow; T = inf is uniform.
        let cases =
            [(&buf, 1.0, 0.75), (&buf, 2.0, sqrt3 / (1.0 + sqrt3)), (&big, 1.0, 0.75), (&buf, f64::INFINITY, 0.5)];
        for (b, t, want) in cases {
            let p = frequency_of_hi(b, t, 20_000);
            assert!((p - want).abs() < 0.015, "T = {t}: p(hi) = {p}, want {want}");
        }
        assert_eq!(frequency_of_hi(&buf, 0.0, 100), 1.0, "T = 0 is greedy");
    }

    #[test]
    fn save_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("buffer.json");
        let mut buf = ReplayBuffer::new(4, 0.25).unwrap();
        let mut e = entry(&[1, 2, 3], "a\"b\n", -1.5);
        (e.tool, e.log_rewards, e.scored_from) = (vec![false, true, false], vec![f32::NEG_INFINITY, -2.0, -1.5], 1);
        buf.add("x1|y1", e);
        buf.add("x1|y1", entry(&[40, 41, 42], "c", -0.5));
        buf.add("x2|y2", entry(&[7], "d", 2.0));
        buf.save(&path).unwrap();
        let back = ReplayBuffer::load(&path).unwrap();
        assert_eq!((back.capacity(), back.tolerance(), back.total_len()), (4, 0.25, 3));
        assert_eq!(back.keys().collect::<Vec<_>>(), ["x1|y1", "x2|y2"]);
        for k in buf.keys() {
            assert_eq!(back.entries(k), buf.entries(k));
        }
        // A file from before `scored_from` had every state scored.
        let old = r#"{"capacity":2,"tolerance":0.0,"entries":{"k":[{"tokens":[5],"tool":[false],"text":"e","log_rewards":[-1.0,-0.5]}]}}"#;
        std::fs::write(&path, old).unwrap();
        let back = ReplayBuffer::load(&path).unwrap();
        assert_eq!((back.entries("k")[0].scored_from, back.entries("k")[0].log_reward()), (0, -0.5));
    }

    #[test]
    fn load_reports_missing_and_corrupt_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(ReplayBuffer::load(&dir.path().join("nope.json")), Err(Error::File { .. })));
        let corrupt = dir.path().join("bad.json");
        for text in ["{not json", r#"{"capacity":0,"tolerance":0.25,"entries":{}}"#] {
            std::fs::write(&corrupt, text).unwrap();
            assert!(matches!(ReplayBuffer::load(&corrupt), Err(Error::File { .. })), "{text}");
        }
    }

    #[test]
    fn invalid_constructor_args_are_rejected() {
        for (capacity, tolerance) in [(0, 0.25), (5, 1.0), (5, -0.1), (5, f64::NAN)] {
            assert!(matches!(ReplayBuffer::new(capacity, tolerance), Err(Error::Invalid { .. })));
        }
        assert!(ReplayBuffer::new(1, 0.0).is_ok());
    }
}
