//! Figures (median, min and max over repeats, checked against the goals), the table
//! printed at the end and BENCHMARKS.md.

use std::fmt::Write as _;
use std::path::Path;

/// A goal on a figure's median.
#[derive(Debug, Clone, Copy)]
pub enum Goal {
    /// `median <= x`.
    AtMost(f64),
    /// `median >= x`.
    AtLeast(f64),
    /// `median < x`.
    Below(f64),
}

impl Goal {
    fn met(self, v: f64) -> bool {
        match self {
            Goal::AtMost(x) => v <= x,
            Goal::AtLeast(x) => v >= x,
            Goal::Below(x) => v < x,
        }
    }

    fn text(self) -> String {
        match self {
            Goal::AtMost(x) => format!("≤ {}", num(x)),
            Goal::AtLeast(x) => format!("≥ {}", num(x)),
            Goal::Below(x) => format!("< {}", num(x)),
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Figure {
    /// Issue item, e.g. `1`.
    pub item: &'static str,
    /// What it is.
    pub what: String,
    /// Unit.
    pub unit: &'static str,
    /// One value per repeat (NaN: the repeat failed).
    pub samples: Vec<f64>,
    /// The goal, if the issue sets one.
    pub goal: Option<Goal>,
}

impl Figure {
    /// A figure with a goal.
    pub fn new(
        item: &'static str,
        what: impl Into<String>,
        unit: &'static str,
        samples: Vec<f64>,
        goal: Option<Goal>,
    ) -> Self {
        Self {
            item,
            what: what.into(),
            unit,
            samples,
            goal,
        }
    }

    /// Median, min and max of the finite samples.
    pub fn stats(&self) -> Option<(f64, f64, f64)> {
        stats(&self.samples)
    }
}

/// Median, min and max of the finite values.
pub fn stats(v: &[f64]) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some((median, v[0], v[n - 1]))
}

/// A number with a precision that suits its size, thousands separated.
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    let a = x.abs();
    if a >= 1_000.0 {
        let s = format!("{:.0}", x.abs());
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if x < 0.0 {
            out.insert(0, '-');
        }
        out
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else if a >= 0.01 {
        format!("{x:.3}")
    } else if a == 0.0 {
        "0".into()
    } else {
        format!("{x:.4}")
    }
}

/// Everything the run found.
#[derive(Default)]
pub struct Report {
    /// Table lines.
    pub figures: Vec<Figure>,
    /// `(title, markdown)` detail sections, in scenario order.
    pub details: Vec<(String, String)>,
    /// `(title, markdown)` profile sections.
    pub profiles: Vec<(String, String)>,
    /// Scenarios that failed, with the error.
    pub failures: Vec<(String, String)>,
}

impl Report {
    /// The results table, in Markdown.
    pub fn table(&self) -> String {
        let mut s = String::from(
            "| # | figure | median | min | max | unit | goal | met? |\n|---|---|---:|---:|---:|---|---|---|\n",
        );
        for f in &self.figures {
            let (med, min, max) = f.stats().unwrap_or((f64::NAN, f64::NAN, f64::NAN));
            let (goal, met) = match f.goal {
                Some(g) if med.is_finite() => (g.text(), if g.met(med) { "yes" } else { "**no**" }),
                Some(g) => (g.text(), "not measured"),
                None => (String::new(), ""),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                f.item,
                f.what,
                num(med),
                num(min),
                num(max),
                f.unit,
                goal,
                met
            );
        }
        s
    }

    /// Writes the Markdown report to `path`, keeping the hand-written notes between
    /// `<!-- notes:begin -->` and `<!-- notes:end -->` of the file being replaced.
    pub fn write(&self, path: &Path, header: &str, method: &str, footer: &str) -> anyhow::Result<()> {
        const BEGIN: &str = "<!-- notes:begin -->";
        const END: &str = "<!-- notes:end -->";
        let old = std::fs::read_to_string(path).unwrap_or_default();
        let notes = match (old.find(BEGIN), old.find(END)) {
            (Some(a), Some(b)) if b > a => old[a + BEGIN.len()..b].trim().to_string(),
            _ => "_No analysis written yet: read the profiles below._".to_string(),
        };
        let mut s = String::new();
        s.push_str(header);
        s.push_str("\n## Results\n\n");
        s.push_str(&self.table());
        if !self.failures.is_empty() {
            s.push_str("\nScenarios that failed in this run:\n\n");
            for (n, e) in &self.failures {
                let _ = writeln!(s, "- {n}: `{}`", e.replace('\n', " "));
            }
        }
        s.push_str("\n## Method\n\n");
        s.push_str(method);
        s.push_str("\n## Where the time goes\n\n");
        s.push_str(BEGIN);
        s.push('\n');
        s.push_str(&notes);
        s.push('\n');
        s.push_str(END);
        s.push('\n');
        for (title, body) in &self.profiles {
            let _ = write!(s, "\n### {title}\n\n{body}\n");
        }
        s.push_str("\n## Details of this run\n");
        for (title, body) in &self.details {
            let _ = write!(s, "\n### {title}\n\n{body}\n");
        }
        s.push_str(footer);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, s)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_and_numbers() {
        assert_eq!(stats(&[3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(stats(&[4.0, 1.0, f64::NAN]), Some((2.5, 1.0, 4.0)));
        assert_eq!(stats(&[f64::NAN]), None);
        assert_eq!(num(1_234_567.0), "1,234,567");
        assert_eq!(num(0.4712), "0.471");
        assert_eq!(num(12.34), "12.3");
    }
}
