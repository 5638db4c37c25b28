//! Locale negotiation: a recipient's requested tag → one of a template's locales, and its text direction.

use std::fmt;

use icu::locale::subtags::{Language, language, script};
use icu::locale::{LanguageIdentifier, Locale, LocaleDirectionality, LocaleExpander};

/// Longest tag read, in bytes: RFC 5646 §4.4.1 finds 35 characters enough for any practical
/// tag; a longer value is not one, and is not worth parsing.
pub const TAG_MAX: usize = 64;

/// A tag as data carries it — `zh_TW`, `en_US.UTF-8`, `sr@latin`, any case, spaces around —
/// as a BCP 47 locale (`zh-TW`, `en-US`, `sr-Latn`), or `None` when it is not one even then
/// (or names no language: `und`).
pub fn normalise(raw: &str) -> Option<Locale> {
    let raw = raw.trim();
    if raw.len() > TAG_MAX {
        return None;
    }
    // POSIX form: language[_territory][.codeset][@modifier].
    let (tag, modifier) = raw.split_once('@').unwrap_or((raw, ""));
    let tag = tag.split_once('.').map_or(tag, |(tag, _charset)| tag);
    let mut locale = Locale::try_from_str(&tag.replace('_', "-")).ok()?;
    if locale.id.language.is_unknown() {
        return None;
    }
    // The only glibc modifiers that say something BCP 47 can: the script.
    if locale.id.script.is_none() {
        locale.id.script = match modifier.to_ascii_lowercase().as_str() {
            "latin" => Some(script!("Latn")),
            "cyrillic" => Some(script!("Cyrl")),
            _ => None,
        };
    }
    Some(locale)
}

/// Cantonese and Mandarin tags as the Chinese templates are named. Cantonese is written in
/// Chinese characters, Traditional in Hong Kong and Macau and Simplified in Guangdong: without
/// a script its region's likely script decides (`yue` and `yue-HK` → Traditional, `yue-CN` →
/// Simplified). `cmn` is `zh`, its region or script deciding as for `zh` (`cmn-TW` →
/// Traditional, `cmn-CN` → Simplified).
fn as_chinese(mut id: LanguageIdentifier) -> LanguageIdentifier {
    const YUE: Language = language!("yue");
    const CMN: Language = language!("cmn");
    if id.language == YUE {
        if id.script.is_none() {
            let mut likely = id.clone();
            LocaleExpander::new_extended().maximize(&mut likely);
            id.script = likely.script;
        }
        id.language = language!("zh");
    } else if id.language == CMN {
        id.language = language!("zh");
    }
    id
}

/// Writing direction of a locale, as HTML's `dir` attribute spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Left to right (Latin, Han, …).
    Ltr,
    /// Right to left (Arabic, Hebrew, …).
    Rtl,
}

impl Direction {
    /// `"ltr"` or `"rtl"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ltr => "ltr",
            Direction::Rtl => "rtl",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A locale folder name is not a BCP 47 tag, or the default locale has no folder.
#[derive(Debug, thiserror::Error)]
pub enum LocaleError {
    /// A folder under the template is not named by a language tag.
    #[error("`{0}` is not a BCP 47 language tag")]
    BadTag(String),
    /// `templates.default_locale` is none of the template's locales.
    #[error("default locale `{default}` is not one of the template's locales ({available})")]
    NoDefault {
        /// The configured default.
        default: String,
        /// The locales found, comma-separated.
        available: String,
    },
}

/// One locale a template is written in (one folder), e.g. `zh-Hant`.
#[derive(Debug, Clone)]
pub struct TemplateLocale {
    /// The tag as the folder spells it.
    tag: String,
    /// The tag parsed.
    id: LanguageIdentifier,
    /// The tag with likely subtags added (`zh-Hant` → `zh-Hant-TW`), for matching.
    likely: LanguageIdentifier,
    /// Text direction of the locale's script.
    dir: Direction,
}

impl TemplateLocale {
    /// The folder name, e.g. `zh-Hant`; also the HTML `lang` and `Content-Language` value.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The parsed identifier.
    pub fn id(&self) -> &LanguageIdentifier {
        &self.id
    }

    /// Text direction.
    pub fn dir(&self) -> Direction {
        self.dir
    }
}

/// The locales one template is written in, and the rule choosing one for a recipient.
#[derive(Debug, Clone)]
pub struct Locales {
    /// Sorted by tag, so negotiation ties break the same way on every host.
    all: Vec<TemplateLocale>,
    /// Index into `all` of `templates.default_locale`.
    default: usize,
}

impl Locales {
    /// Builds the set from folder names; `default` must be one of them.
    pub fn new<I, S>(tags: I, default: &str) -> Result<Locales, LocaleError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let expander = LocaleExpander::new_extended();
        let directionality = LocaleDirectionality::new_extended();
        let mut all = tags
            .into_iter()
            .map(|tag| {
                let tag = tag.into();
                let id = LanguageIdentifier::try_from_str(&tag)
                    .map_err(|_| LocaleError::BadTag(tag.clone()))?;
                let mut likely = id.clone();
                expander.maximize(&mut likely);
                let dir = if directionality.is_right_to_left(&id) {
                    Direction::Rtl
                } else {
                    Direction::Ltr
                };
                Ok(TemplateLocale {
                    tag,
                    id,
                    likely,
                    dir,
                })
            })
            .collect::<Result<Vec<_>, LocaleError>>()?;
        all.sort_by(|a, b| a.tag.cmp(&b.tag));
        let default = LanguageIdentifier::try_from_str(default)
            .ok()
            .and_then(|wanted| all.iter().position(|l| l.id == wanted))
            .ok_or_else(|| LocaleError::NoDefault {
                default: default.to_string(),
                available: all
                    .iter()
                    .map(|l| l.tag.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        Ok(Locales { all, default })
    }

    /// Every locale, sorted by tag.
    pub fn iter(&self) -> impl Iterator<Item = &TemplateLocale> {
        self.all.iter()
    }

    /// The locale used when negotiation finds nothing better.
    pub fn default_locale(&self) -> &TemplateLocale {
        &self.all[self.default]
    }

    /// The locale whose folder is named `tag` (case-insensitive, BCP 47 normalised).
    pub fn get(&self, tag: &str) -> Option<&TemplateLocale> {
        let id = LanguageIdentifier::try_from_str(tag).ok()?;
        self.all.iter().find(|l| l.id == id)
    }

    /// Picks the template locale for a recipient's requested tag: [`Locales::matched`], or the
    /// default when nothing matches or no tag is given.
    pub fn negotiate(&self, requested: Option<&str>) -> &TemplateLocale {
        requested
            .and_then(|tag| self.matched(tag))
            .unwrap_or_else(|| self.default_locale())
    }

    /// The template locale for a tag as data carries it ([`normalise`]d, `yue`/`cmn` read as
    /// Chinese): the exact tag, then the same language and script (after adding likely
    /// subtags, so `zh-TW` is `zh-Hant` and `zh-SG` is `zh-Hans`), then the same language.
    /// `None` when the tag is unreadable or no locale shares its language.
    pub fn matched(&self, requested: &str) -> Option<&TemplateLocale> {
        let wanted = as_chinese(normalise(requested)?.id);
        if let Some(exact) = self.all.iter().find(|l| l.id == wanted) {
            return Some(exact);
        }
        let mut likely = wanted.clone();
        LocaleExpander::new_extended().maximize(&mut likely);
        let same_script = |l: &&TemplateLocale| {
            l.likely.language == likely.language && l.likely.script == likely.script
        };
        let same_language = |l: &&TemplateLocale| l.likely.language == likely.language;
        // Among several candidates the least specific folder wins (`zh` before `zh-SG`).
        let least_specific = |l: &&TemplateLocale| (l.id.script.is_some(), l.id.region.is_some());
        self.all
            .iter()
            .filter(same_script)
            .min_by_key(least_specific)
            .or_else(|| {
                self.all
                    .iter()
                    .filter(same_language)
                    .min_by_key(least_specific)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Locales {
        Locales::new(["en", "ar", "zh", "zh-Hant"], "en").expect("shipped locales parse")
    }

    #[test]
    fn negotiation_follows_the_design_table() {
        let locales = shipped();
        let cases = [
            ("en", "en"),
            ("en-GB", "en"),
            ("en-US", "en"),
            ("ar", "ar"),
            ("ar-EG", "ar"),
            ("ar-SA", "ar"),
            ("ar-MA", "ar"),
            ("zh", "zh"),
            ("zh-CN", "zh"),
            ("zh-SG", "zh"),
            ("zh-Hans", "zh"),
            ("zh-Hans-CN", "zh"),
            ("zh-TW", "zh-Hant"),
            ("zh-HK", "zh-Hant"),
            ("zh-MO", "zh-Hant"),
            ("zh-Hant", "zh-Hant"),
            ("zh-hant-tw", "zh-Hant"),
            ("ZH-tw", "zh-Hant"),
            ("zh-Latn", "zh"),
            ("zh-TW-u-ca-roc", "zh-Hant"),
            ("yue", "zh-Hant"),
            ("yue-HK", "zh-Hant"),
            ("yue-Hant", "zh-Hant"),
            ("yue-CN", "zh"),
            (" ar-EG ", "ar"),
            ("fr-FR", "en"),
            ("ja", "en"),
            ("und", "en"),
            ("zh_TW", "zh-Hant"),
            ("zh_CN.GB18030", "zh"),
            ("en_US.UTF-8", "en"),
            ("AR_eg.utf8@euro", "ar"),
            ("sr@latin", "en"),
            ("yue", "zh-Hant"),
            ("yue-HK", "zh-Hant"),
            ("yue-Hant-HK", "zh-Hant"),
            ("yue-Hans", "zh"),
            ("yue-Hans-CN", "zh"),
            ("cmn", "zh"),
            ("cmn-CN", "zh"),
            ("cmn-Hans-CN", "zh"),
            ("cmn-TW", "zh-Hant"),
            ("cmn-Hant", "zh-Hant"),
        ];
        for (requested, expected) in cases {
            assert_eq!(
                locales.negotiate(Some(requested)).tag(),
                expected,
                "negotiating {requested:?}"
            );
        }
    }

    #[test]
    fn garbage_empty_and_absent_tags_get_the_default_locale() {
        let locales = shipped();
        for garbage in [
            "",
            "   ",
            "!!",
            "zh_",
            "english please",
            "x",
            "12345",
            "zh--TW",
            "ar-EG\n",
        ] {
            let got = locales.negotiate(Some(garbage)).tag();
            // A tag that parses after trimming (like "ar-EG\n") is fine; everything else → en.
            let expected = if garbage.trim() == "ar-EG" {
                "ar"
            } else {
                "en"
            };
            assert_eq!(got, expected, "negotiating {garbage:?}");
        }
        assert_eq!(locales.negotiate(None).tag(), "en");
    }

    #[test]
    fn tags_as_systems_export_them_normalise_to_bcp_47() {
        for (raw, expected) in [
            ("zh_TW", Some("zh-TW")),
            ("en_US.UTF-8", Some("en-US")),
            (" EN_gb ", Some("en-GB")),
            ("sr@latin", Some("sr-Latn")),
            ("sr_RS@cyrillic", Some("sr-Cyrl-RS")),
            ("de_DE.ISO-8859-1@euro", Some("de-DE")),
            ("yue-Hant-HK", Some("yue-Hant-HK")),
            ("und", None),
            ("!!", None),
            ("en\r\nX: y", None),
            ("", None),
        ] {
            let got = normalise(raw).map(|l| l.to_string());
            assert_eq!(got.as_deref(), expected, "normalising {raw:?}");
        }
        assert_eq!(normalise(&"x".repeat(TAG_MAX + 1)), None);
    }

    #[test]
    fn only_tags_that_match_no_locale_fall_back() {
        let locales = shipped();
        assert_eq!(
            locales.matched("en_GB").map(TemplateLocale::tag),
            Some("en")
        );
        for unmatched in ["fr-FR", "ja", "garbage tag", "und", "sr@latin"] {
            assert!(
                locales.matched(unmatched).is_none(),
                "{unmatched:?} matched"
            );
        }
    }

    #[test]
    fn the_default_locale_is_configurable_and_must_exist() {
        let zh_default = Locales::new(["en", "zh"], "zh").expect("zh is present");
        assert_eq!(zh_default.negotiate(Some("fr")).tag(), "zh");
        let err = Locales::new(["en", "zh"], "ar").expect_err("ar has no folder");
        assert!(err.to_string().contains("`ar`"), "{err}");
        assert!(err.to_string().contains("en, zh"), "{err}");
    }

    #[test]
    fn folders_that_are_not_tags_are_rejected() {
        let err = Locales::new(["en", "partial stuff"], "en").expect_err("not a tag");
        assert!(err.to_string().contains("partial stuff"), "{err}");
    }

    #[test]
    fn arabic_is_right_to_left_and_the_others_left_to_right() {
        let locales = shipped();
        let dirs: Vec<_> = locales.iter().map(|l| (l.tag(), l.dir())).collect();
        assert_eq!(
            dirs,
            [
                ("ar", Direction::Rtl),
                ("en", Direction::Ltr),
                ("zh", Direction::Ltr),
                ("zh-Hant", Direction::Ltr)
            ]
        );
    }

    #[test]
    fn a_more_specific_folder_wins_over_the_language_folder_only_on_an_exact_match() {
        let locales = Locales::new(["en", "en-GB"], "en").expect("tags parse");
        assert_eq!(locales.negotiate(Some("en-gb")).tag(), "en-GB");
        assert_eq!(locales.negotiate(Some("en-AU")).tag(), "en");
    }
}
