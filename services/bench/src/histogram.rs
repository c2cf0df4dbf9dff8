//! Quantiles of cumulative Prometheus histograms, as `(le, count)` bucket lists read by
//! `testkit::metrics::Scrape::buckets`: what the capacity scenario reports of the scheduling
//! lateness. Pure arithmetic; never scrapes.

/// Difference of two cumulative bucket lists of the same histogram (`later - earlier`).
pub fn bucket_delta(earlier: &[(f64, f64)], later: &[(f64, f64)]) -> Vec<(f64, f64)> {
    later
        .iter()
        .map(|(le, c)| {
            let before = earlier.iter().find(|(l, _)| l == le).map_or(0.0, |(_, c)| *c);
            (*le, c - before)
        })
        .collect()
}

/// The `q` quantile of a cumulative histogram, interpolated linearly within the bucket that
/// holds it (as PromQL's `histogram_quantile`). `None` when empty.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let span = count - prev.1;
            let frac = if span > 0.0 { (rank - prev.1) / span } else { 1.0 };
            return Some(prev.0 + (le - prev.0) * frac);
        }
        prev = (le, count);
    }
    Some(prev.0)
}

/// Fraction of a cumulative histogram's observations at or below `le` (which must be a bucket
/// bound).
pub fn fraction_at_most(le: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    let at = buckets.iter().find(|(l, _)| (*l - le).abs() < 1e-12)?.1;
    (total > 0.0).then(|| at / total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_a_histogram() {
        let b = [(0.01, 90.0), (0.1, 99.0), (f64::INFINITY, 100.0)];
        assert_eq!(fraction_at_most(0.01, &b), Some(0.9));
        let p50 = histogram_quantile(0.5, &b).unwrap();
        assert!((p50 - 0.01 * 50.0 / 90.0).abs() < 1e-9, "{p50}");
        assert!((histogram_quantile(0.99, &b).unwrap() - 0.1).abs() < 1e-9);
        assert_eq!(histogram_quantile(0.5, &[]), None);
        let earlier = [(0.01, 40.0), (0.1, 49.0), (f64::INFINITY, 50.0)];
        assert_eq!(
            bucket_delta(&earlier, &b),
            [(0.01, 50.0), (0.1, 50.0), (f64::INFINITY, 50.0)]
        );
    }
}
