//! Dates and deadlines as a recipient reads them: the template's language with the recipient's
//! region and numbering system (CLDR via ICU4X), with a small cache of formatters and results.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use icu::calendar::{Date, Gregorian};
use icu::datetime::fieldsets::{YMD, YMDT, zone};
use icu::datetime::options::TimePrecision;
use icu::datetime::{DateTimeFormatterLoadError, FixedCalendarDateTimeFormatter};
use icu::locale::{LanguageIdentifier, Locale};
use icu::time::zone::IanaParser;
use icu::time::{TimeZoneInfo, ZonedDateTime, zone::models::AtTime};

/// A value the `date` or `datetime` helper cannot format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DateError {
    /// CLDR has no date formats for the locale.
    #[error("locale `{locale}`: {reason}")]
    NoFormats {
        /// The locale asked for.
        locale: String,
        /// ICU's error.
        reason: String,
    },
    /// Neither `YYYY-MM-DD` nor an RFC 3339 timestamp.
    #[error("`{0}` is not a YYYY-MM-DD date or an RFC 3339 timestamp with an offset")]
    NotADate(String),
    /// Not an RFC 3339 timestamp with an offset.
    #[error("`{0}` is not an RFC 3339 timestamp with an offset (like 2021-02-05T00:00:00+08:00)")]
    NotATimestamp(String),
    /// The zone is not an IANA name, or its offset at that moment differs from the timestamp's.
    #[error("`{at}` is not a time in zone `{zone}` (unknown IANA zone, or a different UTC offset)")]
    NotInZone {
        /// The timestamp.
        at: String,
        /// The zone name.
        zone: String,
    },
}

/// Formatters of one locale (language from the template, region and numbering from the
/// recipient).
struct Formatters {
    date: FixedCalendarDateTimeFormatter<Gregorian, YMD>,
    named: FixedCalendarDateTimeFormatter<Gregorian, zone_combo::Named>,
    offset: FixedCalendarDateTimeFormatter<Gregorian, zone_combo::Offset>,
    zone_name: FixedCalendarDateTimeFormatter<Gregorian, zone::SpecificLong>,
    zone_offset: FixedCalendarDateTimeFormatter<Gregorian, zone::LocalizedOffsetLong>,
    offset_alone: FixedCalendarDateTimeFormatter<Gregorian, zone::LocalizedOffsetShort>,
    /// Languages that set a parenthesis in full width (`（GMT+8）`).
    wide_parens: bool,
    /// Results by (helper, raw value, zone): a campaign's few dates repeat in every notice, so a
    /// short list scanned in order beats hashing.
    formatted: RwLock<Vec<(String, Arc<str>)>>,
}

/// The combined date-time-zone field sets `datetime` uses.
mod zone_combo {
    use icu::datetime::fieldsets::{Combo, YMDT, zone};

    /// Date, time and the zone's specific name ("China Standard Time").
    pub type Named = Combo<YMDT, zone::SpecificLong>;
    /// Date, time and the localized offset ("GMT+8").
    pub type Offset = Combo<YMDT, zone::LocalizedOffsetShort>;
}

/// Distinct values remembered per locale before that cache starts over.
const VALUE_CACHE_MAX: usize = 16;
/// Distinct recipient locales remembered before the formatter cache starts over.
const LOCALE_CACHE_MAX: usize = 64;

impl Formatters {
    fn new(locale: &Locale) -> Result<Formatters, DateTimeFormatterLoadError> {
        let prefs = || locale.clone().into();
        let ymdt = || YMDT::long().with_time_precision(TimePrecision::Minute);
        Ok(Formatters {
            date: FixedCalendarDateTimeFormatter::try_new(prefs(), YMD::long())?,
            named: FixedCalendarDateTimeFormatter::try_new(
                prefs(),
                ymdt().with_zone(zone::SpecificLong),
            )?,
            offset: FixedCalendarDateTimeFormatter::try_new(
                prefs(),
                ymdt().with_zone(zone::LocalizedOffsetShort),
            )?,
            zone_name: FixedCalendarDateTimeFormatter::try_new(prefs(), zone::SpecificLong)?,
            zone_offset: FixedCalendarDateTimeFormatter::try_new(
                prefs(),
                zone::LocalizedOffsetLong,
            )?,
            offset_alone: FixedCalendarDateTimeFormatter::try_new(
                prefs(),
                zone::LocalizedOffsetShort,
            )?,
            wide_parens: matches!(locale.id.language.as_str(), "zh" | "ja" | "ko"),
            formatted: RwLock::default(),
        })
    }

    /// `raw` through `format`, remembered under `key`.
    fn cached(
        &self,
        key: String,
        format: impl FnOnce() -> Result<String, DateError>,
    ) -> Result<Arc<str>, DateError> {
        let cache = self
            .formatted
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((_, hit)) = cache.iter().find(|(k, _)| *k == key) {
            return Ok(Arc::clone(hit));
        }
        drop(cache);
        let text: Arc<str> = format()?.into();
        let mut cache = self
            .formatted
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= VALUE_CACHE_MAX {
            cache.clear();
        }
        cache.push((key, Arc::clone(&text)));
        Ok(text)
    }

    fn date(&self, raw: &str) -> Result<Arc<str>, DateError> {
        self.cached(format!("d {raw}"), || {
            let date = parse_date(raw)
                .or_else(|| parse_timestamp(raw).map(|at| at.date))
                .ok_or_else(|| DateError::NotADate(raw.to_string()))?;
            Ok(self.date.format(&date).to_string())
        })
    }

    fn datetime(&self, raw: &str, zone: Option<&str>) -> Result<Arc<str>, DateError> {
        self.cached(format!("t {raw} {}", zone.unwrap_or_default()), || {
            let offset =
                parse_timestamp(raw).ok_or_else(|| DateError::NotATimestamp(raw.to_string()))?;
            let with_offset = self.offset.format(&offset).to_string();
            let Some(zone) = zone else {
                return Ok(with_offset);
            };
            let named = ZonedDateTime::<Gregorian, TimeZoneInfo<AtTime>>::try_strict_from_str(
                &format!("{raw}[{zone}]"),
                Gregorian,
                IanaParser::new(),
            )
            .ok()
            // CLDR falls back to the offset when a zone is unknown or is not at that offset
            // then (a typo, or a summer-time mistake): the deadline would then name no zone.
            .filter(|named| {
                !named.zone.id().is_unknown()
                    && self.zone_name.format(&named.zone).to_string()
                        != self.zone_offset.format(&named.zone).to_string()
            })
            .ok_or_else(|| DateError::NotInZone {
                at: raw.to_string(),
                zone: zone.to_string(),
            })?;
            let name = self.named.format(&named).to_string();
            // The offset tells readers who do not know the zone's name where it is.
            let offset_only = self.offset_alone.format(&offset.zone).to_string();
            Ok(if self.wide_parens {
                format!("{name}（{offset_only}）")
            } else {
                format!("{name} ({offset_only})")
            })
        })
    }
}

/// Date and time formatting for every recipient locale a template meets.
#[derive(Default)]
pub struct Dates {
    by_locale: RwLock<HashMap<String, Arc<Formatters>>>,
}

impl std::fmt::Debug for Dates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dates").finish_non_exhaustive()
    }
}

impl Dates {
    /// Checks that CLDR has date formats for a template locale (and keeps them).
    pub fn check(&self, template: &LanguageIdentifier) -> Result<(), DateError> {
        self.formatters_or_template(template, None).map(drop)
    }

    /// `{{date value}}`: a `YYYY-MM-DD` date, or the date of an RFC 3339 timestamp as written.
    pub fn date(
        &self,
        template: &LanguageIdentifier,
        recipient: Option<&str>,
        raw: &str,
    ) -> Result<Arc<str>, DateError> {
        self.formatters_or_template(template, recipient)?.date(raw)
    }

    /// `{{datetime at zone}}`: an RFC 3339 timestamp with its date, time and zone; the zone is
    /// named when an IANA `zone` is given, else shown as an offset.
    pub fn datetime(
        &self,
        template: &LanguageIdentifier,
        recipient: Option<&str>,
        raw: &str,
        zone: Option<&str>,
    ) -> Result<Arc<str>, DateError> {
        self.formatters_or_template(template, recipient)?
            .datetime(raw, zone)
    }

    /// The recipient's formatters, or the template locale's when CLDR has nothing for the
    /// recipient's combination.
    fn formatters_or_template(
        &self,
        template: &LanguageIdentifier,
        recipient: Option<&str>,
    ) -> Result<Arc<Formatters>, DateError> {
        self.formatters(template, recipient)
            .or_else(|_| self.formatters(template, None))
            .map_err(|e| DateError::NoFormats {
                locale: template.to_string(),
                reason: e.to_string(),
            })
    }

    fn formatters(
        &self,
        template: &LanguageIdentifier,
        recipient: Option<&str>,
    ) -> Result<Arc<Formatters>, DateTimeFormatterLoadError> {
        let locale = format_locale(template, recipient);
        let key = locale.to_string();
        let cache = self
            .by_locale
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(hit) = cache.get(&key) {
            return Ok(Arc::clone(hit));
        }
        drop(cache);
        let formatters = Arc::new(Formatters::new(&locale)?);
        let mut cache = self
            .by_locale
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= LOCALE_CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, Arc::clone(&formatters));
        Ok(formatters)
    }
}

/// The locale dates are written in: the template's language and script, with the recipient's
/// region and Unicode extensions (`-u-nu-latn`) when the recipient speaks that language, so
/// `ar-EG` gets Arabic-Indic digits and `en-GB` day-month order; otherwise the template locale
/// as it is (an `en` notice for a `fr-FR` reader keeps English dates).
pub fn format_locale(template: &LanguageIdentifier, recipient: Option<&str>) -> Locale {
    let mut locale = Locale::from(template.clone());
    let Some(wanted) = recipient.and_then(|tag| Locale::try_from_str(tag.trim()).ok()) else {
        return locale;
    };
    if wanted.id.language != template.language {
        return locale;
    }
    if locale.id.script.is_none() {
        locale.id.script = wanted.id.script;
    }
    locale.id.region = wanted.id.region.or(template.region);
    locale.extensions.unicode = wanted.extensions.unicode;
    locale
}

/// Parses `YYYY-MM-DD` into a Gregorian date.
fn parse_date(raw: &str) -> Option<Date<Gregorian>> {
    let mut fields = raw.splitn(3, '-');
    let (year, month, day) = (fields.next()?, fields.next()?, fields.next()?);
    if year.len() != 4 || month.len() != 2 || day.len() != 2 {
        return None;
    }
    Date::try_new_gregorian(year.parse().ok()?, month.parse().ok()?, day.parse().ok()?).ok()
}

/// Parses an RFC 3339 timestamp that states its offset (`Z` or `±hh:mm`), in that offset.
fn parse_timestamp(raw: &str) -> Option<ZonedDateTime<Gregorian, icu::time::zone::UtcOffset>> {
    // RFC 9557 allows more (annotations, no offset); a deadline must say where it is.
    let has_offset = raw.len() > 19
        && raw
            .as_bytes()
            .get(10)
            .is_some_and(|b| matches!(b, b'T' | b't'))
        && (raw.ends_with(['Z', 'z']) || raw[19..].contains(['+', '-']));
    if !has_offset || raw.contains('[') {
        return None;
    }
    ZonedDateTime::try_offset_only_from_str(raw, Gregorian).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(tag: &str) -> LanguageIdentifier {
        LanguageIdentifier::try_from_str(tag).expect("tag")
    }

    #[test]
    fn dates_must_be_iso_calendar_dates_or_timestamps() {
        assert!(parse_date("2021-02-05").is_some());
        for bad in [
            "2021-2-5",
            "2021-02-30",
            "05/02/2021",
            "",
            "2021-02-05T00:00:00Z",
        ] {
            assert!(parse_date(bad).is_none(), "{bad}");
        }
        assert!(parse_timestamp("2021-02-05T00:00:00+08:00").is_some());
        assert!(parse_timestamp("2021-02-04T16:00:00Z").is_some());
        for bad in [
            "2021-02-05",
            "2021-02-05T00:00:00",
            "2021-02-05T00:00:00[Asia/Shanghai]",
        ] {
            assert!(parse_timestamp(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_recipient_gives_region_and_numbering_only_in_the_template_language() {
        let cases = [
            ("ar", Some("ar-EG"), "ar-EG"),
            ("ar", Some("ar-MA"), "ar-MA"),
            ("ar", Some("ar-EG-u-nu-latn"), "ar-EG-u-nu-latn"),
            ("en", Some("fr-FR"), "en"),
            ("en", None, "en"),
            ("zh-Hant", Some("zh-TW"), "zh-Hant-TW"),
            ("zh-Hant", Some("yue-HK"), "zh-Hant"),
            ("en", Some("not a tag"), "en"),
        ];
        for (template, recipient, expected) in cases {
            let got = format_locale(&id(template), recipient).to_string();
            assert_eq!(got, expected, "{template} for {recipient:?}");
        }
    }

    #[test]
    fn a_zone_that_does_not_match_the_offset_is_an_error() {
        let dates = Dates::default();
        let err = dates
            .datetime(
                &id("en"),
                None,
                "2021-02-05T00:00:00+08:00",
                Some("Europe/Paris"),
            )
            .expect_err("Paris is not at +08:00");
        assert!(matches!(err, DateError::NotInZone { .. }), "{err}");
        let err = dates
            .datetime(
                &id("en"),
                None,
                "2021-02-05T00:00:00+08:00",
                Some("Asia/Nowhere"),
            )
            .expect_err("no such zone");
        assert!(matches!(err, DateError::NotInZone { .. }), "{err}");
    }
}
