//! Live progress for `send` and `status --watch`: one line per channel (done/total, rate, ETA,
//! and the deadline, flagged when the ETA passes it). On a terminal the lines are redrawn in
//! place at the bottom of stderr, and log lines are written above them.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, IsTerminal as _, Write};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset, Utc};

use crate::channel::Channel;

/// How far back the rate looks.
const WINDOW: Duration = Duration::from_secs(60);

/// Where one channel stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// The channel.
    pub channel: Channel,
    /// Recipients settled: delivered, dead-lettered, unknown or cancelled.
    pub done: u64,
    /// Recipients to reach on this channel.
    pub total: u64,
}

/// Turns successive samples into lines with a rate (over the last minute) and an ETA.
#[derive(Debug)]
pub struct Meter {
    deadline: Option<DateTime<FixedOffset>>,
    seen: VecDeque<(Instant, BTreeMap<Channel, u64>)>,
}

impl Meter {
    /// A meter for a campaign with `deadline`, if it has one.
    pub fn new(deadline: Option<DateTime<FixedOffset>>) -> Meter {
        Meter {
            deadline,
            seen: VecDeque::new(),
        }
    }

    /// One line per channel for `samples`, taken now.
    pub fn lines(&mut self, samples: &[Sample]) -> Vec<String> {
        self.lines_at(samples, Instant::now(), Utc::now())
    }

    fn lines_at(&mut self, samples: &[Sample], now: Instant, wall: DateTime<Utc>) -> Vec<String> {
        while self
            .seen
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > WINDOW)
        {
            self.seen.pop_front();
        }
        let oldest = self.seen.front().cloned();
        self.seen
            .push_back((now, samples.iter().map(|s| (s.channel, s.done)).collect()));
        samples
            .iter()
            .map(|sample| {
                let rate = oldest.as_ref().and_then(|(at, done)| {
                    let secs = now.duration_since(*at).as_secs_f64();
                    let before = done.get(&sample.channel).copied().unwrap_or(0);
                    (secs > 0.0).then(|| sample.done.saturating_sub(before) as f64 / secs)
                });
                self.line(sample, rate, wall)
            })
            .collect()
    }

    fn line(&self, sample: &Sample, rate: Option<f64>, wall: DateTime<Utc>) -> String {
        let left = sample.total.saturating_sub(sample.done);
        let percent = if sample.total == 0 {
            100.0
        } else {
            sample.done as f64 * 100.0 / sample.total as f64
        };
        let mut line = format!(
            "{:<5} {}/{} ({percent:.1}%)",
            sample.channel.as_str(),
            sample.done,
            sample.total
        );
        let eta = match rate {
            _ if left == 0 => {
                line.push_str(", done");
                return line;
            }
            Some(rate) if rate > 0.0 => {
                line.push_str(&format!(", {rate:.1}/s"));
                Some(Duration::from_secs_f64(left as f64 / rate))
            }
            Some(_) => {
                line.push_str(", 0/s, no ETA");
                None
            }
            None => {
                line.push_str(", measuring the rate");
                None
            }
        };
        if let Some(eta) = eta {
            line.push_str(&format!(", ETA {}", clock(eta)));
        }
        if let Some(deadline) = self.deadline {
            let finish = eta.and_then(|eta| chrono::Duration::from_std(eta).ok());
            line.push_str(&format!(", deadline {}", deadline.to_rfc3339()));
            if wall >= deadline {
                line.push_str(" (passed!)");
            } else if finish.is_some_and(|eta| wall + eta > deadline) {
                line.push_str(" (ETA passes it!)");
            }
        }
        line
    }
}

/// `h:mm:ss`.
fn clock(duration: Duration) -> String {
    let secs = duration.as_secs();
    format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

/// The lines drawn at the bottom of the terminal now. Locked before stderr, always.
static DRAWN: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Whether live lines can be drawn: stderr is a terminal.
pub fn on_terminal() -> bool {
    io::stderr().is_terminal()
}

/// Replaces the lines drawn before with `lines`.
pub fn draw(lines: Vec<String>) {
    let mut drawn = DRAWN.lock().unwrap_or_else(PoisonError::into_inner);
    let mut text = erase(drawn.len());
    for line in &lines {
        text.push_str(line);
        text.push('\n');
    }
    // A failed write to the terminal leaves nothing to repair: the next frame redraws.
    let _ = io::stderr().lock().write_all(text.as_bytes());
    *drawn = lines;
}

/// Leaves the lines drawn last where they are, so what follows is written below them.
pub fn keep() {
    DRAWN.lock().unwrap_or_else(PoisonError::into_inner).clear();
}

/// Erases the lines drawn last.
pub fn clear() {
    draw(Vec::new());
}

/// Writes `text` (whole lines) to stderr above the drawn lines, which stay at the bottom.
pub fn above(text: &[u8]) -> io::Result<()> {
    let drawn = DRAWN.lock().unwrap_or_else(PoisonError::into_inner);
    let mut stderr = io::stderr().lock();
    if drawn.is_empty() {
        return stderr.write_all(text);
    }
    let mut out = erase(drawn.len()).into_bytes();
    out.extend_from_slice(text);
    for line in drawn.iter() {
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    stderr.write_all(&out)
}

/// Moves up `lines` lines and clears from there down.
fn erase(lines: usize) -> String {
    if lines == 0 {
        String::new()
    } else {
        format!("\x1b[{lines}A\x1b[J")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(channel: Channel, done: u64, total: u64) -> Sample {
        Sample {
            channel,
            done,
            total,
        }
    }

    #[test]
    fn the_rate_and_eta_follow_the_samples_and_a_late_eta_is_flagged() {
        let wall = DateTime::parse_from_rfc3339("2026-12-05T12:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let deadline = DateTime::parse_from_rfc3339("2026-12-05T12:01:00Z").expect("time");
        let mut meter = Meter::new(Some(deadline));
        let start = Instant::now();
        let first = meter.lines_at(&[sample(Channel::Email, 0, 1000)], start, wall);
        assert!(first[0].contains("measuring the rate"), "{first:?}");
        let later = start + Duration::from_secs(10);
        let lines = meter.lines_at(
            &[
                sample(Channel::Email, 100, 1000),
                sample(Channel::Push, 5, 5),
            ],
            later,
            wall,
        );
        assert!(
            lines[0].starts_with("email 100/1000 (10.0%), 10.0/s, ETA 0:01:30"),
            "{lines:?}"
        );
        assert!(lines[0].ends_with("(ETA passes it!)"), "{lines:?}");
        assert_eq!(lines[1], "push  5/5 (100.0%), done");
    }

    #[test]
    fn an_eta_before_the_deadline_is_not_flagged() {
        let wall = Utc::now();
        let deadline = (wall + chrono::Duration::hours(1)).fixed_offset();
        let mut meter = Meter::new(Some(deadline));
        let start = Instant::now();
        meter.lines_at(&[sample(Channel::Push, 0, 100)], start, wall);
        let lines = meter.lines_at(
            &[sample(Channel::Push, 50, 100)],
            start + Duration::from_secs(5),
            wall,
        );
        assert!(lines[0].contains("ETA 0:00:05, deadline"), "{lines:?}");
        assert!(!lines[0].contains("passes"), "{lines:?}");
    }
}
