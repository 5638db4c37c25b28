//! The handlebars helpers a template may call (`date`, `datetime`, `dir`, `lang`, `align`,
//! `isolate`), sharing one table of locale facts and one date formatter cache.

use std::path::Path;
use std::sync::Arc;

use handlebars::{
    Context, Handlebars, Helper, HelperDef, HelperResult, Output, RenderContext, RenderErrorReason,
};
use icu::locale::LanguageIdentifier;
use serde_json::Value;

use super::errors::TemplateError;
use crate::bidi;
use crate::dates::Dates;
use crate::locale::{Direction, Locales, TemplateLocale};

/// Everything a helper needs to know about a locale, found from the root template's name.
struct LocaleFacts {
    tag: String,
    id: LanguageIdentifier,
    dir: Direction,
}

/// Facts per template locale and the date formatters, shared by the helpers of both registries.
struct Facts {
    by_locale: Vec<LocaleFacts>,
    dates: Dates,
}

/// See [`Facts`].
type SharedFacts = Arc<Facts>;

/// The helpers of one template, for its HTML registry and its text registry alike.
pub(super) struct Helpers {
    facts: SharedFacts,
}

impl Helpers {
    /// Learns what the helpers need of each locale of the template folder `root`, and checks
    /// that ICU can write its dates.
    pub(super) fn for_locales(root: &Path, locales: &Locales) -> Result<Helpers, TemplateError> {
        let dates = Dates::default();
        let by_locale = locales
            .iter()
            .map(|locale| locale_facts(root, locale, &dates))
            .collect::<Result<_, TemplateError>>()?;
        Ok(Helpers {
            facts: Arc::new(Facts { by_locale, dates }),
        })
    }

    /// Registers every helper on `registry`; in `html` one, `isolate` also wraps in `<bdi>`.
    pub(super) fn register_on(&self, registry: &mut Handlebars<'static>, html: bool) {
        let facts = &self.facts;
        registry.register_helper("isolate", Box::new(IsolateHelper { html }));
        registry.register_helper("align", Box::new(LocaleHelper::Align(facts.clone())));
        registry.register_helper("date", Box::new(DateHelper::Date(facts.clone())));
        registry.register_helper("datetime", Box::new(DateHelper::DateTime(facts.clone())));
        registry.register_helper("dir", Box::new(LocaleHelper::Dir(facts.clone())));
        registry.register_helper("lang", Box::new(LocaleHelper::Lang(facts.clone())));
    }
}

/// The locale of the template being rendered: registered names are `<locale>/<file>`.
fn facts<'a>(
    shared: &'a SharedFacts,
    rc: &RenderContext<'_, '_>,
) -> Result<&'a LocaleFacts, RenderErrorReason> {
    rc.get_root_template_name()
        .and_then(|name| name.split('/').next())
        .and_then(|tag| shared.by_locale.iter().find(|facts| facts.tag == tag))
        .ok_or_else(|| RenderErrorReason::Other("no locale for this template".into()))
}

/// `{{date value}}` and `{{datetime at zone}}`: a date, or a deadline with time and zone, in the
/// template's language written as the recipient's region writes it.
enum DateHelper {
    Date(SharedFacts),
    DateTime(SharedFacts),
}

impl HelperDef for DateHelper {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        rc: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        let name = h.name();
        let string_param = |index: usize| -> Result<Option<&str>, RenderErrorReason> {
            let Some(param) = h.param(index) else {
                return Ok(None);
            };
            if param.is_value_missing() {
                return Err(RenderErrorReason::MissingVariable(
                    param.relative_path().cloned(),
                ));
            }
            param.value().as_str().map(Some).ok_or_else(|| {
                RenderErrorReason::Other(format!("{name}: `{}` is not a string", param.value()))
            })
        };
        let raw = string_param(0)?.ok_or(RenderErrorReason::ParamNotFoundForIndex("date", 0))?;
        // The recipient's own tag (`ar-EG`) picks region and digits; see `dates::format_locale`.
        let recipient = ctx.data().get("locale").and_then(Value::as_str);
        let text = match self {
            DateHelper::Date(shared) => shared.dates.date(&facts(shared, rc)?.id, recipient, raw),
            DateHelper::DateTime(shared) => {
                shared
                    .dates
                    .datetime(&facts(shared, rc)?.id, recipient, raw, string_param(1)?)
            }
        }
        .map_err(|e| RenderErrorReason::Other(format!("{name}: {e}")))?;
        out.write(&text)?;
        Ok(())
    }
}

/// `{{dir}}` → `rtl`/`ltr`, `{{lang}}` → the locale tag, and `{{align}}` → `right`/`left` (the
/// start side, for `text-align` and `align` in clients that know no `start`, like Outlook).
enum LocaleHelper {
    Dir(SharedFacts),
    Lang(SharedFacts),
    Align(SharedFacts),
}

impl HelperDef for LocaleHelper {
    fn call<'reg: 'rc, 'rc>(
        &self,
        _: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        rc: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        match self {
            LocaleHelper::Dir(shared) => out.write(facts(shared, rc)?.dir.as_str())?,
            LocaleHelper::Lang(shared) => out.write(&facts(shared, rc)?.tag)?,
            LocaleHelper::Align(shared) => out.write(match facts(shared, rc)?.dir {
                Direction::Ltr => "left",
                Direction::Rtl => "right",
            })?,
        }
        Ok(())
    }
}

/// `{{isolate name}}`: a recipient value isolated from the text around it, so a Latin name in
/// Arabic (or the reverse) keeps its order and the sentence's punctuation stays put: FSI…PDI,
/// and in HTML also `<bdi>` (the marks still isolate where a sanitiser drops the element).
struct IsolateHelper {
    html: bool,
}

impl HelperDef for IsolateHelper {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        let param = h
            .param(0)
            .ok_or(RenderErrorReason::ParamNotFoundForIndex("isolate", 0))?;
        if param.is_value_missing() {
            return Err(RenderErrorReason::MissingVariable(param.relative_path().cloned()).into());
        }
        let value = match param.value() {
            Value::String(text) => text.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        if self.html {
            out.write("<bdi>")?;
            out.write(&r.get_escape_fn()(&bidi::isolate(&value)))?;
            out.write("</bdi>")?;
        } else {
            out.write(&bidi::isolate(&value))?;
        }
        Ok(())
    }
}

/// What the helpers need of `locale`, once ICU is known to write its dates.
fn locale_facts(
    root: &Path,
    locale: &TemplateLocale,
    dates: &Dates,
) -> Result<LocaleFacts, TemplateError> {
    dates
        .check(locale.id())
        .map_err(|e| TemplateError::DateFormat {
            path: root.join(locale.tag()),
            reason: e.to_string(),
        })?;
    Ok(LocaleFacts {
        tag: locale.tag().to_string(),
        id: locale.id().clone(),
        dir: locale.dir(),
    })
}
