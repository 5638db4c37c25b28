//! Rendering a notice: one template's handlebars files per locale, CLDR dates, and the `Notice` they make.

mod errors;
mod files;
mod helpers;
mod part;
mod registry;

use std::fmt;
use std::path::Path;

use handlebars::Context;
use serde_json::Value;

use crate::batch::{EmailAddress, Recipient};
use crate::bidi;
use crate::locale::{Direction, Locales, TemplateLocale};
use crate::names::Channel;
pub use crate::names::{BadTemplateName, TemplateName, Vars};
use crate::template_options::TemplateOptions;
pub use errors::{RenderError, TemplateError};
pub use files::{
    PARTIALS_DIR, SAMPLE_FILE, Sample, compile, locale_folders, partial_files, read_source,
    template_dir, template_folders,
};
pub use part::{PUSH_BODY_MAX, PUSH_TITLE_MAX, Part, one_line};
pub use registry::BatchCache;
use registry::{Registry, SharedPart};

/// The rendered email parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailNotice {
    /// One line, no control characters.
    pub subject: String,
    /// Plain-text part.
    pub text: String,
    /// HTML part.
    pub html: String,
    /// The `From` display name of the locale's `from_name.hbs`, one line; `None` when the
    /// locale has none (or it renders empty): `email.from`'s name is used.
    pub from_name: Option<String>,
    /// `template.toml`'s `list_unsubscribe`: the email carries `List-Unsubscribe`.
    pub list_unsubscribe: bool,
}

/// The rendered push parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushNotice {
    /// One line.
    pub title: String,
    /// Trimmed.
    pub body: String,
}

/// What one recipient is told, in the locale negotiated for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Template locale tag (`zh-Hant`): HTML `lang` and `Content-Language`.
    pub locale: String,
    /// Text direction of that locale.
    pub dir: Direction,
    /// Present when the email channel was asked for.
    pub email: Option<EmailNotice>,
    /// Present when the push channel was asked for.
    pub push: Option<PushNotice>,
}

/// Names always present in a template's context besides the campaign and recipient `vars`
/// (null when the recipient lacks them), so `{{#if name}}` works and a typo like `{{nmae}}`
/// still fails in strict mode.
pub const RECIPIENT_FIELDS: [&str; 4] = ["user_id", "email", "locale", "name"];

/// Builds the context a notice is rendered with: campaign vars, overridden by the recipient's
/// vars, then the recipient fields. Recipient values are data only, never template source.
pub fn context(vars: &Vars, recipient: &Recipient) -> Context {
    let mut data = vars.clone();
    data.extend(recipient.vars.iter().map(|(k, v)| (k.clone(), v.clone())));
    let optional = |v: Option<&str>| v.map_or(Value::Null, |v| Value::String(v.to_string()));
    let email = recipient.email.as_ref().map(EmailAddress::as_str);
    data.insert("user_id".into(), recipient.user_id.as_str().into());
    data.insert("email".into(), optional(email));
    data.insert("locale".into(), optional(recipient.locale.as_deref()));
    data.insert("name".into(), optional(recipient.name.as_deref()));
    Context::from(Value::Object(data))
}

/// One template, compiled for every locale it is written in. Build once, share with `Arc`.
pub struct Renderer {
    name: TemplateName,
    locales: Locales,
    /// Every locale's parts, compiled.
    registry: Registry,
    /// `template.toml`.
    options: TemplateOptions,
}

impl fmt::Debug for Renderer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Renderer")
            .field("name", &self.name)
            .field("locales", &self.locales)
            .finish_non_exhaustive()
    }
}

impl Renderer {
    /// Loads template `name` from `dir`: every locale folder (each must hold the five required
    /// files), the partials, and a date formatter per locale.
    pub fn load(
        dir: &Path,
        name: &TemplateName,
        default_locale: &str,
    ) -> Result<Renderer, TemplateError> {
        let root = template_dir(dir, name)?;
        let tags = locale_folders(&root)?;
        if tags.is_empty() {
            return Err(TemplateError::NoLocales(root));
        }
        Renderer::compile_locales(&root, name, tags, default_locale)
    }

    /// Loads one locale of template `name` on its own, so that showing locales side by side
    /// can render every locale whose own files are fine when another one's are broken.
    pub fn load_locale(
        dir: &Path,
        name: &TemplateName,
        tag: &str,
    ) -> Result<Renderer, TemplateError> {
        let root = template_dir(dir, name)?;
        Renderer::compile_locales(&root, name, [tag], tag)
    }

    /// Compiles the partials and the given locale folders of the template folder `root`.
    fn compile_locales<I, S>(
        root: &Path,
        name: &TemplateName,
        tags: I,
        default_locale: &str,
    ) -> Result<Renderer, TemplateError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let locales =
            Locales::new(tags, default_locale).map_err(|source| TemplateError::Locale {
                path: root.to_owned(),
                source,
            })?;
        Ok(Renderer {
            name: name.clone(),
            registry: Registry::compile(root, &locales)?,
            locales,
            options: TemplateOptions::load(root)?,
        })
    }

    /// The template's `template.toml`.
    pub fn options(&self) -> &TemplateOptions {
        &self.options
    }

    /// The template's name.
    pub fn name(&self) -> &TemplateName {
        &self.name
    }

    /// The locales the template is written in.
    pub fn locales(&self) -> &Locales {
        &self.locales
    }

    /// Renders the parts `channels` need, in the locale negotiated for the recipient.
    pub fn render(
        &self,
        vars: &Vars,
        recipient: &Recipient,
        channels: &[Channel],
    ) -> Result<Notice, RenderError> {
        self.render_cached(vars, recipient, channels, &mut BatchCache::default())
    }

    /// The tag of the locale `recipient`'s notice is in, negotiated once per requested tag
    /// through `cache`: known before rendering, so a batch renders each notice only when it
    /// sends it.
    pub fn locale_of(&self, recipient: &Recipient, cache: &mut BatchCache) -> String {
        self.negotiated(recipient, cache).1.tag().to_string()
    }

    /// The index (in the renderer's locales) and locale of `recipient`'s notice.
    fn negotiated(
        &self,
        recipient: &Recipient,
        cache: &mut BatchCache,
    ) -> (usize, &TemplateLocale) {
        let index = match recipient.locale.as_deref() {
            Some(tag) => match cache.negotiated.get(tag) {
                Some(&index) => index,
                None => {
                    let index = self.index_of(self.locales.negotiate(Some(tag)));
                    cache.negotiated.insert(tag.to_string(), index);
                    index
                }
            },
            None => self.index_of(self.locales.negotiate(None)),
        };
        let locale = self
            .locales
            .iter()
            .nth(index)
            .unwrap_or_else(|| self.locales.negotiate(None));
        (index, locale)
    }

    /// [`Renderer::render`], taking the parts that render alike for every recipient from
    /// `cache` (and putting them there the first time). One cache per batch: its entries hold
    /// for these `vars` only.
    pub fn render_cached(
        &self,
        vars: &Vars,
        recipient: &Recipient,
        channels: &[Channel],
        cache: &mut BatchCache,
    ) -> Result<Notice, RenderError> {
        let (index, locale) = self.negotiated(recipient, cache);
        let mut context = None;
        let mut part = |part: Part| -> Result<String, RenderError> {
            let shared = self.shared_part(index, part, recipient);
            if let Some(text) = shared.as_ref().and_then(|key| cache.parts.get(key)) {
                return Ok(text.clone());
            }
            let context = context.get_or_insert_with(|| self::context(vars, recipient));
            let mut text = part.tidy(self.render_part(locale, part, context)?);
            if part == Part::Text && locale.dir() == Direction::Rtl {
                text = bidi::mark_rtl_text(&text);
            }
            if let Some(key) = shared {
                cache.parts.insert(key, text.clone());
            }
            Ok(text)
        };
        let email = if channels.contains(&Channel::Email) {
            Some(EmailNotice {
                subject: part(Part::Subject)?,
                text: part(Part::Text)?,
                html: part(Part::Html)?,
                from_name: if self.has_part(locale, Part::FromName) {
                    Some(part(Part::FromName)?).filter(|name| !name.is_empty())
                } else {
                    None
                },
                list_unsubscribe: self.options.list_unsubscribe,
            })
        } else {
            None
        };
        let push = if channels.contains(&Channel::Push) {
            Some(PushNotice {
                title: part(Part::PushTitle)?,
                body: part(Part::PushBody)?,
            })
        } else {
            None
        };
        Ok(Notice {
            locale: locale.tag().to_string(),
            dir: locale.dir(),
            email,
            push,
        })
    }

    /// The cache key of a part of the locale at `index` when it reads nothing `recipient` sets
    /// but the locale tag: no other recipient field, none of the recipient's own vars, nothing
    /// it cannot name.
    fn shared_part(&self, index: usize, part: Part, recipient: &Recipient) -> Option<SharedPart> {
        let reads = self.registry.reads(index, part)?;
        let personal = reads.iter().any(|var| {
            (var != "locale" && RECIPIENT_FIELDS.contains(&var.as_str()))
                || recipient.vars.contains_key(var)
        });
        let tag = reads
            .contains("locale")
            .then(|| recipient.locale.clone().unwrap_or_default());
        (!personal).then_some((index, part, tag))
    }

    /// The position of a negotiated locale in `locales`.
    fn index_of(&self, locale: &TemplateLocale) -> usize {
        self.locales
            .iter()
            .position(|l| l.tag() == locale.tag())
            .unwrap_or_default()
    }

    /// Whether the locale has the part's file (an optional one may be absent).
    fn has_part(&self, locale: &TemplateLocale, part: Part) -> bool {
        self.registry.has(self.index_of(locale), part)
    }

    /// Renders one part in a given locale with a context from [`context`].
    pub fn render_part(
        &self,
        locale: &TemplateLocale,
        part: Part,
        context: &Context,
    ) -> Result<String, RenderError> {
        self.registry
            .render(self.index_of(locale), part, context)
            .map_err(|e| RenderError::new(&self.name, locale, part, &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_that_read_only_campaign_variables_are_rendered_once_per_locale() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
        let name = TemplateName::parse("xiami-shutdown").expect("name");
        let renderer = Renderer::load(&dir, &name, "en").expect("shipped templates");
        let sample = Sample::load(&dir.join("xiami-shutdown")).expect("sample");
        let mut cache = BatchCache::default();
        for (user, locale) in [("a", "en"), ("b", "en-US"), ("c", "zh-TW")] {
            let recipient = Recipient {
                user_id: crate::batch::UserId::parse(user).expect("id"),
                email: None,
                locale: Some(locale.into()),
                name: Some(user.into()),
                vars: Vars::new(),
            };
            renderer
                .render_cached(&sample.vars, &recipient, &Channel::ALL, &mut cache)
                .expect("renders");
        }
        // The shipped push parts read only campaign dates (so the locale tag); the email text
        // greets by name.
        let mut cached: Vec<(usize, Part)> = cache
            .parts
            .keys()
            .map(|(index, part, _)| (*index, *part))
            .collect();
        cached.sort();
        let (en, zh_hant) = (
            renderer.index_of(renderer.locales.negotiate(Some("en"))),
            renderer.index_of(renderer.locales.negotiate(Some("zh-TW"))),
        );
        assert!(cached.contains(&(en, Part::PushTitle)), "{cached:?}");
        assert!(cached.contains(&(zh_hant, Part::PushBody)), "{cached:?}");
        assert!(
            !cached.iter().any(|(_, part)| *part == Part::Text),
            "{cached:?}"
        );
        assert_eq!(cache.negotiated.len(), 3);
    }
}
