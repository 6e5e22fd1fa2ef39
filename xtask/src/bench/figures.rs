//! Summaries of repeated measurements: the median and the spread (quartiles, extremes). A noisy
//! shared machine makes single runs meaningless; interleaved epochs and these make them fair.

/// The summary of one series of samples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub p25: f64,
    pub p75: f64,
    pub min: f64,
    pub max: f64,
    pub samples: usize,
}

impl Spread {
    /// `None` for no samples (or only NaNs).
    pub fn of(samples: &[f64]) -> Option<Self> {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| !v.is_nan()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        Some(Self {
            median: quantile(&sorted, 0.5),
            p25: quantile(&sorted, 0.25),
            p75: quantile(&sorted, 0.75),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
            samples: sorted.len(),
        })
    }

    /// `median (p25–p75)`, each with `format`.
    pub fn show(&self, format: impl Fn(f64) -> String) -> String {
        if self.samples == 1 {
            return format(self.median);
        }
        format!(
            "{} ({}–{})",
            format(self.median),
            format(self.p25),
            format(self.p75)
        )
    }
}

/// Linear interpolation between the closest ranks, on sorted samples.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = q * (sorted.len() - 1) as f64;
    let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[low] + (sorted[high] - sorted[low]) * (rank - low as f64)
}

/// A number with thousands separators: `12 345`.
pub fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push('\u{202f}');
        }
        out.push(c);
    }
    if value < 0.0 && digits != "0" {
        format!("-{out}")
    } else {
        out
    }
}

/// Bytes as B, KiB, MiB or GiB.
pub fn bytes(value: f64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = value;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_quartiles_of_an_odd_and_an_even_series() {
        let odd = Spread::of(&[5.0, 1.0, 3.0, 2.0, 4.0]).unwrap();
        assert_eq!(
            (odd.median, odd.p25, odd.p75, odd.min, odd.max),
            (3.0, 2.0, 4.0, 1.0, 5.0)
        );
        let even = Spread::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((even.median, even.p25, even.p75), (2.5, 1.75, 3.25));
        assert_eq!(Spread::of(&[]), None);
        assert_eq!(Spread::of(&[7.0]).unwrap().show(|v| format!("{v}")), "7");
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(1234567.4), "1\u{202f}234\u{202f}567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(12_583_984.0), "12.0 MiB");
    }
}
