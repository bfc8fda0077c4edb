//! Runs that repeat one setup over seeds: which runs belong together, and
//! the name a group goes by, and a group's curve over steps (mean ± std at
//! each step all its runs have). The browser app's table of picked runs shows a
//! group as one row of mean ± std and its charts as one line in a band (the
//! numbers themselves come from [`crate::metrics::MeanStd`]). Works on each
//! run's settings as name → shown value and on (step, value) series; it knows
//! nothing of how a run is stored or trained.

use std::collections::BTreeMap;

use crate::metrics::MeanStd;

/// The indices of `rows`, grouped so that two rows share a group when every
/// setting but `vary` is the same in both (a setting one row lacks and the
/// other has counts as different). Groups are in the order of their first
/// row, and each lists its rows in order.
pub fn group_all_but(rows: &[BTreeMap<String, String>], vary: &str) -> Vec<Vec<usize>> {
    let same = |a: &BTreeMap<String, String>, b: &BTreeMap<String, String>| {
        let rest = |m: &BTreeMap<String, String>| m.iter().filter(|(k, _)| k.as_str() != vary).map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>();
        rest(a) == rest(b)
    };
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        match groups.iter_mut().find(|g| same(&rows[g[0]], row)) {
            Some(g) => g.push(i),
            None => groups.push(vec![i]),
        }
    }
    groups
}

/// The name a group of runs goes by: their shared name once a trailing
/// `-seedN` / `_seedN` / `-sN` is taken off each, else the first name with the
/// number of the others (`"a (+2)"`).
pub fn group_name(names: &[&str]) -> String {
    let Some(first) = names.first() else { return String::new() };
    if names.len() == 1 {
        return first.to_string();
    }
    let stem = |n: &str| -> String {
        let digits = n.trim_end_matches(|c: char| c.is_ascii_digit());
        if digits.len() == n.len() {
            return n.to_string();
        }
        for tag in ["-seed", "_seed", "-s", "_s"] {
            if let Some(s) = digits.strip_suffix(tag) {
                return s.to_string();
            }
        }
        n.to_string()
    };
    let s = stem(first);
    if s != *first && names.iter().all(|n| stem(n) == s) {
        s
    } else {
        format!("{first} (+{})", names.len() - 1)
    }
}

/// A group's curve: at each step that every one of `series` has (a finite
/// value at that x), the mean ± std of their values there, in step order.
/// Steps some series lack are left out rather than averaged over fewer runs,
/// so the line does not jump where a run stops (a run still training holds
/// the group's curve at its step).
pub fn mean_curve(series: &[&[(f64, f64)]]) -> Vec<(f64, MeanStd)> {
    let Some((first, rest)) = series.split_first() else { return Vec::new() };
    let mut out = Vec::new();
    for &(x, y) in first.iter().filter(|p| p.1.is_finite()) {
        let mut vals = vec![y];
        for s in rest {
            // Series are in step order: find x by binary search.
            match s.binary_search_by(|p| p.0.total_cmp(&x)) {
                Ok(i) if s[i].1.is_finite() => vals.push(s[i].1),
                _ => break,
            }
        }
        if vals.len() == series.len() {
            out.push((x, MeanStd::from_values(&vals)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn rows_that_differ_only_in_the_seed_share_a_group() {
        let rows = [
            row(&[("method", "gfn"), ("lr", "0.001"), ("seed", "0")]),
            row(&[("method", "sft"), ("lr", "0.001"), ("seed", "0")]),
            row(&[("method", "gfn"), ("lr", "0.001"), ("seed", "1")]),
            row(&[("method", "gfn"), ("lr", "0.01"), ("seed", "2")]),
            row(&[("method", "sft"), ("lr", "0.001"), ("seed", "5")]),
            row(&[("method", "gfn"), ("lr", "0.001"), ("seed", "1")]),
        ];
        assert_eq!(group_all_but(&rows, "seed"), vec![vec![0, 2, 5], vec![1, 4], vec![3]]);
        // Grouping by another setting reads the seed as one to match.
        assert_eq!(group_all_but(&rows, "lr"), vec![vec![0], vec![1], vec![2, 5], vec![3], vec![4]]);
    }

    #[test]
    fn a_setting_only_one_row_has_keeps_them_apart() {
        let rows = [row(&[("seed", "0"), ("task.k", "1")]), row(&[("seed", "1")]), row(&[("seed", "2"), ("task.k", "1")])];
        assert_eq!(group_all_but(&rows, "seed"), vec![vec![0, 2], vec![1]]);
        assert!(group_all_but(&[], "seed").is_empty());
    }

    #[test]
    fn a_group_is_named_by_its_shared_stem() {
        assert_eq!(group_name(&["rng-gfn-seed0", "rng-gfn-seed1", "rng-gfn-seed12"]), "rng-gfn");
        assert_eq!(group_name(&["a_s1", "a_s2"]), "a");
        assert_eq!(group_name(&["solo"]), "solo");
        // Stems that differ, or names without a seed tag, fall back to a count.
        assert_eq!(group_name(&["a-seed0", "b-seed1"]), "a-seed0 (+1)");
        assert_eq!(group_name(&["run7", "run8", "run9"]), "run7 (+2)");
        assert_eq!(group_name(&["x", "x"]), "x (+1)");
        assert_eq!(group_name(&[]), "");
    }

    #[test]
    fn a_groups_curve_is_the_mean_and_std_where_all_its_runs_have_a_step() {
        let a = [(1.0, 1.0), (2.0, 2.0), (3.0, 4.0), (4.0, 8.0)];
        let b = [(1.0, 3.0), (2.0, 2.0), (3.0, f64::NAN), (4.0, 0.0), (5.0, 1.0)];
        let c = [(1.0, 2.0), (2.0, 5.0), (4.0, 4.0)];
        let got: Vec<(f64, f64, f64, usize)> = mean_curve(&[&a, &b, &c]).into_iter().map(|(x, m)| (x, m.mean, m.std, m.n)).collect();
        // Step 3: b's NaN and c's gap leave it out; step 5: only b has it.
        // Step 1: 1, 3, 2 → mean 2, sample std 1. Step 2: 2, 2, 5 → 3, √3.
        // Step 4: 8, 0, 4 → 4, 4.
        assert_eq!(got, vec![(1.0, 2.0, 1.0, 3), (2.0, 3.0, 3f64.sqrt(), 3), (4.0, 4.0, 4.0, 3)]);
        // One series is its own curve with no spread; none, nothing.
        assert_eq!(mean_curve(&[&a[..2]]).iter().map(|(x, m)| (*x, m.mean, m.std)).collect::<Vec<_>>(), vec![(1.0, 1.0, 0.0), (2.0, 2.0, 0.0)]);
        assert!(mean_curve(&[]).is_empty());
    }
}
