//! The locale tags of an audience that match no template locale, counted for the summary.

use std::collections::HashMap;
use std::fmt;

/// Distinct tags counted one by one; rows with further tags are only counted together.
const DISTINCT_MAX: usize = 1024;
/// Tags listed in the summary, the most frequent first.
const SHOWN: usize = 10;

/// How many recipients asked for each tag that got the default locale instead.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fallbacks {
    /// Rows per tag, up to [`DISTINCT_MAX`] tags.
    counts: HashMap<String, u64>,
    /// Every row that fell back.
    total: u64,
}

impl Fallbacks {
    /// Counts one recipient whose tag `tag` fell back.
    pub fn add(&mut self, tag: &str) {
        self.total += 1;
        if let Some(n) = self.counts.get_mut(tag) {
            *n += 1;
        } else if self.counts.len() < DISTINCT_MAX {
            self.counts.insert(tag.to_string(), 1);
        }
    }

    /// Recipients whose tag fell back.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The most frequent tags with their counts (ties by tag), at most [`SHOWN`].
    pub fn top(&self) -> Vec<(&str, u64)> {
        let mut all: Vec<(&str, u64)> = self.counts.iter().map(|(t, n)| (t.as_str(), *n)).collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        all.truncate(SHOWN);
        all
    }
}

/// `` `fr-FR` ×3, `!!` ×2, … and 7 more ``: the top tags, and the rows of the rest.
impl fmt::Display for Fallbacks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let top = self.top();
        let listed: Vec<String> = top.iter().map(|(tag, n)| format!("`{tag}` ×{n}")).collect();
        f.write_str(&listed.join(", "))?;
        let rest = self.total - top.iter().map(|(_, n)| n).sum::<u64>();
        if rest > 0 {
            write!(f, ", … and {rest} more")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_frequent_tags_are_listed_and_the_rest_counted() {
        let mut fallbacks = Fallbacks::default();
        for _ in 0..3 {
            fallbacks.add("fr-FR");
        }
        fallbacks.add("!!");
        fallbacks.add("!!");
        for i in 0..SHOWN {
            fallbacks.add(&format!("x{i:02}"));
        }
        assert_eq!(fallbacks.total(), 15);
        let shown = fallbacks.to_string();
        assert!(
            shown.starts_with("`fr-FR` ×3, `!!` ×2, `x00` ×1"),
            "{shown}"
        );
        assert!(shown.ends_with(", … and 2 more"), "{shown}");
    }

    #[test]
    fn memory_is_bounded_by_distinct_tags_but_every_row_is_counted() {
        let mut fallbacks = Fallbacks::default();
        for i in 0..DISTINCT_MAX * 2 {
            fallbacks.add(&i.to_string());
        }
        assert_eq!(fallbacks.counts.len(), DISTINCT_MAX);
        assert_eq!(fallbacks.total(), DISTINCT_MAX as u64 * 2);
        assert!(
            fallbacks
                .to_string()
                .ends_with(&format!("… and {} more", DISTINCT_MAX * 2 - SHOWN))
        );
    }
}
