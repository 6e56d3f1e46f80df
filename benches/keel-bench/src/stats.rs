//! Median and spread of repeated measurements.

use serde_json::{json, Value};

/// The summary every measurement gets: count, median, quartiles, extremes, mean.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub p25: f64,
    pub p75: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
}

/// Linear interpolation between closest ranks (the usual definition of a percentile).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let pos = p * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

pub fn summary(samples: &[f64]) -> Option<Summary> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    Some(Summary {
        n: s.len(),
        median: percentile(&s, 0.5),
        p25: percentile(&s, 0.25),
        p75: percentile(&s, 0.75),
        min: s[0],
        max: s[s.len() - 1],
        mean: s.iter().sum::<f64>() / s.len() as f64,
    })
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl Summary {
    pub fn json(&self) -> Value {
        json!({
            "n": self.n, "median": round(self.median), "p25": round(self.p25),
            "p75": round(self.p75), "min": round(self.min), "max": round(self.max),
            "mean": round(self.mean),
        })
    }
}

/// The JSON summary of `samples`, or null when there are none.
pub fn json_of(samples: &[f64]) -> Value {
    summary(samples).map_or(Value::Null, |s| s.json())
}

/// Least-squares line through (x, y): (slope, intercept).
pub fn fit(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let (sx, sy) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let sxx: f64 = points.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
    if sxx == 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let slope = sxy / sxx;
    Some((slope, my - slope * mx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quartiles_interpolate() {
        let s = summary(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((s.median, s.p25, s.p75), (2.5, 1.75, 3.25));
        assert_eq!((s.min, s.max, s.mean, s.n), (1.0, 4.0, 2.5, 4));
        assert_eq!(summary(&[7.0]).unwrap().median, 7.0);
        assert!(summary(&[]).is_none());
    }

    #[test]
    fn line_fit() {
        let (a, b) = fit(&[(10.0, 110.0), (50.0, 150.0), (200.0, 300.0)]).unwrap();
        assert!((a - 1.0).abs() < 1e-9 && (b - 100.0).abs() < 1e-9);
        assert!(fit(&[(1.0, 1.0)]).is_none());
        assert!(fit(&[(1.0, 1.0), (1.0, 2.0)]).is_none());
    }
}
