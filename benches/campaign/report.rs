//! The table the bench prints at the end: throughput ratios against a reference, absolute
//! goals, plain figures, and notes.

use std::time::Duration;

struct Row {
    measurement: String,
    sunset: String,
    reference: String,
    ratio: String,
    goal: String,
    verdict: &'static str,
}

#[derive(Default)]
pub(super) struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Report {
    /// A throughput row from interleaved runs: each sunset run is paired with the mean of the
    /// reference runs just before and just after it; the row shows medians, and the ratio is
    /// the median of the paired ratios (robust to a busy machine's drift). `reference_first`:
    /// the runs went reference, sunset, reference, …; else sunset, reference, sunset, ….
    pub(super) fn ratio(
        &mut self,
        measurement: &str,
        (sunset, reference, reference_first): (&[f64], &[f64], bool),
        unit: &str,
        goal: f64,
    ) {
        let ratios: Vec<f64> = sunset
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let (from, count) = match (reference_first, i) {
                    (true, _) => (i, 2),
                    (false, 0) => (0, 1),
                    (false, _) => (i - 1, 2),
                };
                let around: Vec<f64> = reference.iter().skip(from).take(count).copied().collect();
                s / (around.iter().sum::<f64>() / around.len().max(1) as f64).max(1e-9)
            })
            .collect();
        let ratio = median(&ratios);
        let list = |v: &[f64]| {
            v.iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if ratios.len() > 1 {
            self.notes
                .push(format!("{measurement}: paired ratios {}", list(&ratios)));
        }
        self.rows.push(Row {
            measurement: measurement.into(),
            sunset: format!("{:.0} {unit}", median(sunset)),
            reference: format!("{:.0} {unit}", median(reference)),
            ratio: format!("{ratio:.2}"),
            goal: format!("≥ {goal:.2}"),
            verdict: if ratio >= goal { "ok" } else { "MISSED" },
        });
    }

    pub(super) fn info(&mut self, measurement: &str, sunset: String, reference: &str) {
        self.rows.push(Row {
            measurement: measurement.into(),
            sunset,
            reference: reference.into(),
            ratio: "-".into(),
            goal: "-".into(),
            verdict: "",
        });
    }

    pub(super) fn absolute(&mut self, measurement: &str, sunset: String, goal: String, met: bool) {
        self.rows.push(Row {
            measurement: measurement.into(),
            sunset,
            reference: "-".into(),
            ratio: "-".into(),
            goal,
            verdict: if met { "ok" } else { "MISSED" },
        });
    }

    pub(super) fn note(&mut self, note: String) {
        eprintln!("  {note}");
        self.notes.push(note);
    }

    pub(super) fn print(&self) {
        let header = Row {
            measurement: "measurement".into(),
            sunset: "sunset".into(),
            reference: "reference".into(),
            ratio: "ratio".into(),
            goal: "goal".into(),
            verdict: "",
        };
        let all: Vec<&Row> = std::iter::once(&header).chain(&self.rows).collect();
        let width =
            |f: fn(&Row) -> &str| all.iter().map(|r| f(r).chars().count()).max().unwrap_or(0);
        let w = [
            width(|r| &r.measurement),
            width(|r| &r.sunset),
            width(|r| &r.reference),
            width(|r| &r.ratio),
            width(|r| &r.goal),
        ];
        let pad =
            |s: &str, w: usize| format!("{s}{}", " ".repeat(w.saturating_sub(s.chars().count())));
        println!();
        for (i, r) in all.iter().enumerate() {
            println!(
                "| {} | {} | {} | {} | {} | {} |",
                pad(&r.measurement, w[0]),
                pad(&r.sunset, w[1]),
                pad(&r.reference, w[2]),
                pad(&r.ratio, w[3]),
                pad(&r.goal, w[4]),
                pad(r.verdict, 6)
            );
            if i == 0 {
                println!(
                    "|{}|{}|{}|{}|{}|{}|",
                    "-".repeat(w[0] + 2),
                    "-".repeat(w[1] + 2),
                    "-".repeat(w[2] + 2),
                    "-".repeat(w[3] + 2),
                    "-".repeat(w[4] + 2),
                    "-".repeat(8)
                );
            }
        }
        if !self.notes.is_empty() {
            println!();
            for note in &self.notes {
                println!("- {note}");
            }
        }
    }
}

pub(super) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

pub(super) fn rate(n: usize, span: Duration) -> f64 {
    n as f64 / span.as_secs_f64().max(1e-9)
}
