//! Which user ids an audience repeats, found in memory that does not grow with the file: a
//! Bloom filter sees every id once, and only the few ids it flags are then counted exactly.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};

/// The most bits the filter takes: 2^27, 16 MiB, reached by files of about 32 MiB (some
/// 700,000 rows); no audience makes it larger.
pub const FILTER_BITS_MAX: u64 = 1 << 27;
/// The fewest: 2^20, 128 KiB.
const FILTER_BITS_MIN: u64 = 1 << 20;
/// Filter bits per byte of the audience file: a row of 40 bytes or more gets 160 bits or more.
const BITS_PER_FILE_BYTE: u64 = 4;
/// Bits set per id. At the largest filter, a million distinct ids flag about one id wrongly,
/// ten million about 44,000 (0.4 %); a wrongly flagged id only costs its exact count in the
/// second pass.
const PROBES: u64 = 4;
/// Flagged ids kept (about 25 MB of them); the filter flags that many at about 17 million
/// distinct ids, and past it the check asks for the audience to be split.
pub const SUSPECTS_MAX: usize = 500_000;

/// User ids seen on an earlier valid row, approximately: never a miss, rarely a false hit.
struct SeenFilter {
    words: Vec<u64>,
}

impl SeenFilter {
    /// A filter of `bits` bits, a power of two.
    fn new(bits: u64) -> SeenFilter {
        SeenFilter {
            words: vec![0; (bits / 64) as usize],
        }
    }

    fn bits(&self) -> u64 {
        self.words.len() as u64 * 64
    }

    /// Adds `id`; true if it may have been added before (always, if it was).
    fn insert(&mut self, id: &str) -> bool {
        let (first, step) = (hash(id, 0), hash(id, 1) | 1);
        let mut seen = true;
        for probe in 0..PROBES {
            let bit = first.wrapping_add(probe.wrapping_mul(step)) & (self.bits() - 1);
            let (word, mask) = ((bit / 64) as usize, 1u64 << (bit % 64));
            if let Some(word) = self.words.get_mut(word) {
                seen &= *word & mask != 0;
                *word |= mask;
            }
        }
        seen
    }
}

fn hash(id: &str, seed: u8) -> u64 {
    let mut hasher = DefaultHasher::new();
    seed.hash(&mut hasher);
    id.hash(&mut hasher);
    hasher.finish()
}

/// The ids the filter flagged during a pass over the valid rows: every repeated id is among
/// them, with a few that only look repeated.
pub struct Suspects {
    filter: SeenFilter,
    ids: HashSet<String>,
}

/// An audience too large for the duplicate check to stay small.
#[derive(Debug, thiserror::Error)]
#[error(
    "more than {SUSPECTS_MAX} user ids look repeated: split the audience into several campaigns"
)]
pub struct TooManySuspects;

impl Suspects {
    /// An empty filter sized for an audience file of `file_bytes` bytes.
    pub fn for_file(file_bytes: u64) -> Suspects {
        let bits = file_bytes
            .saturating_mul(BITS_PER_FILE_BYTE)
            .clamp(FILTER_BITS_MIN, FILTER_BITS_MAX)
            .next_power_of_two();
        Suspects {
            filter: SeenFilter::new(bits),
            ids: HashSet::new(),
        }
    }

    /// Sees the id of one valid row.
    pub fn see(&mut self, id: &str) -> Result<(), TooManySuspects> {
        if self.filter.insert(id) && !self.ids.contains(id) {
            if self.ids.len() >= SUSPECTS_MAX {
                return Err(TooManySuspects);
            }
            self.ids.insert(id.to_string());
        }
        Ok(())
    }

    /// Counts the flagged ids exactly over the valid rows `(line, id)` of a second pass, in
    /// file order: the ids on more than one row, with the first row's line.
    pub fn confirm<I, S>(self, rows: I) -> Repeats
    where
        I: IntoIterator<Item = (u64, S)>,
        S: AsRef<str>,
    {
        if self.ids.is_empty() {
            return Repeats::default();
        }
        let mut first: HashMap<String, (u64, bool)> = HashMap::new();
        for (line, id) in rows {
            let id = id.as_ref();
            if let Some((_, repeated)) = first.get_mut(id) {
                *repeated = true;
            } else if self.ids.contains(id) {
                first.insert(id.to_string(), (line, false));
            }
        }
        Repeats(
            first
                .into_iter()
                .filter(|(_, (_, repeated))| *repeated)
                .map(|(id, (line, _))| (id, line))
                .collect(),
        )
    }

    /// Whether a second pass is needed at all.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// The user ids on more than one valid row of an audience, each with its first row's line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Repeats(HashMap<String, u64>);

impl Repeats {
    /// The line of the first valid row with `id`, if later rows repeat it.
    pub fn first_line(&self, id: &str) -> Option<u64> {
        self.0.get(id).copied()
    }

    /// No id repeats.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repeats(ids: &[&str]) -> Repeats {
        let mut suspects = Suspects::for_file(100);
        for id in ids {
            suspects.see(id).expect("few ids");
        }
        suspects.confirm(ids.iter().enumerate().map(|(i, id)| (i as u64 + 2, *id)))
    }

    #[test]
    fn repeated_ids_are_found_with_their_first_line_and_unique_ones_are_not() {
        let found = repeats(&["a", "b", "a", "c", "b", "a"]);
        assert_eq!(found.first_line("a"), Some(2));
        assert_eq!(found.first_line("b"), Some(3));
        assert_eq!(found.first_line("c"), None);
    }

    #[test]
    fn a_hundred_thousand_distinct_ids_repeat_nothing_and_the_filter_flags_almost_none() {
        let ids: Vec<String> = (0..100_000).map(|i| format!("user-{i}")).collect();
        let mut suspects = Suspects::for_file(100_000 * 40);
        for id in &ids {
            suspects.see(id).expect("few suspects");
        }
        assert!(suspects.ids.len() <= 2, "{} false hits", suspects.ids.len());
        assert!(
            suspects
                .confirm(ids.iter().enumerate().map(|(i, id)| (i as u64, id)))
                .is_empty()
        );
    }

    #[test]
    fn a_filter_too_full_to_help_asks_for_the_audience_to_be_split() {
        // The smallest filter (a tiny file) fed far more ids than it was sized for.
        let mut suspects = Suspects::for_file(0);
        let refused = (0..4 * SUSPECTS_MAX).find_map(|i| suspects.see(&i.to_string()).err());
        assert!(refused.is_some_and(|e| e.to_string().contains("split the audience")));
        assert_eq!(suspects.ids.len(), SUSPECTS_MAX);
    }
}
