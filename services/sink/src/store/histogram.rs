//! The duration histogram of the rollups: fixed log-spaced bounds, so that hours and days
//! merge by adding counts, and percentiles read from the merged counts.
//!
//! Bounds are `1 ms × 2^(k/4)`, k = 0..=64 (1 ms to 65.5 s); bin `b` (PostgreSQL's
//! `width_bucket(duration, bounds)`) holds durations in `[bounds[b-1], bounds[b])`, bin 0
//! those below 1 ms, bin 65 those from 65.5 s. A percentile is interpolated geometrically
//! inside its bin, so its relative error is below `2^(1/4) - 1` (19 %), and in practice a
//! few percent.

/// Number of bounds.
pub const BOUNDS: usize = 65;

/// The bounds, seconds, ascending (passed to SQL as `float8[]`).
#[must_use]
pub fn bounds() -> Vec<f64> {
    (0..BOUNDS).map(|k| 0.001 * 2f64.powf(k as f64 / 4.0)).collect()
}

/// Counts per bin, dense (`BOUNDS + 1` bins), merged from sparse `(bins, counts)` pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    counts: Vec<i64>,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BOUNDS + 1],
        }
    }
}

impl Histogram {
    /// Adds a sparse histogram: `counts[i]` probes in bin `bins[i]`; bins out of range are
    /// clamped.
    pub fn add(&mut self, bins: &[i32], counts: &[i32]) {
        for (b, c) in bins.iter().zip(counts) {
            let b = usize::try_from(*b).unwrap_or(0).min(BOUNDS);
            self.counts[b] += i64::from(*c);
        }
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }

    /// Probes counted.
    #[must_use]
    pub fn total(&self) -> i64 {
        self.counts.iter().sum()
    }

    /// The `q` quantile (0 < q ≤ 1), seconds; `None` when empty.
    #[must_use]
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let bounds = bounds();
        let rank = q * total as f64;
        let mut below = 0i64;
        for (b, &n) in self.counts.iter().enumerate() {
            if n == 0 {
                continue;
            }
            if (below + n) as f64 >= rank {
                let f = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
                return Some(match b {
                    0 => bounds[0] * f,
                    b if b == BOUNDS => bounds[BOUNDS - 1],
                    b => {
                        let (lo, hi) = (bounds[b - 1], bounds[b]);
                        lo * (hi / lo).powf(f)
                    }
                });
            }
            below += n;
        }
        Some(bounds[BOUNDS - 1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bin of `d` as PostgreSQL's `width_bucket(d, bounds)` numbers it.
    fn bin(d: f64) -> i32 {
        bounds().iter().take_while(|b| **b <= d).count() as i32
    }

    #[test]
    fn quantiles_are_within_a_bin_of_the_exact_ones() {
        let durations: Vec<f64> = (1..=1000).map(|i| 0.0005 * f64::from(i)).collect();
        let mut h = Histogram::default();
        for d in &durations {
            h.add(&[bin(*d)], &[1]);
        }
        assert_eq!(h.total(), 1000);
        for (q, exact) in [(0.5, durations[499]), (0.95, durations[949]), (0.01, durations[9])] {
            let got = h.quantile(q).unwrap();
            assert!((got / exact - 1.0).abs() < 0.19, "q{q}: {got} vs {exact}");
        }
        assert_eq!(Histogram::default().quantile(0.5), None);
    }

    #[test]
    fn merging_adds_counts_and_clamps_odd_bins() {
        let mut h = Histogram::default();
        h.add(&[3, 7], &[2, 5]);
        h.add(&[7, -1, 99], &[1, 1, 1]);
        assert_eq!(h.total(), 10);
        assert_eq!(h.counts[7], 6);
        assert_eq!(h.counts[0], 1);
        assert_eq!(h.counts[BOUNDS], 1);
        assert_eq!(h.quantile(1.0), Some(bounds()[BOUNDS - 1]));
    }
}
