//! Rendering a notice: one template's handlebars files per locale, CLDR dates, and the `Notice` they make.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use handlebars::{
    Context, Handlebars, Helper, HelperDef, HelperResult, Output, RenderContext, RenderErrorReason,
    no_escape,
};
use icu::locale::LanguageIdentifier;
use serde::Deserialize;
use serde_json::Value;

use crate::batch::{EmailAddress, Recipient};
use crate::bidi;
use crate::dates::Dates;
use crate::locale::{Direction, LocaleError, Locales, TemplateLocale};
use crate::names::Channel;
pub use crate::names::{BadTemplateName, TemplateName, Vars};
use crate::syntax::{self, Mistake};
use crate::template_options::{OptionsError, TemplateOptions};
use crate::variables::usage_of;

/// Folder of shared partials inside a template; every other folder is a locale.
pub const PARTIALS_DIR: &str = "partials";

/// Campaign and recipient variables used by `preview` and `preview --check`.
pub const SAMPLE_FILE: &str = "sample.json";

/// The longest push title and body, in characters, that gateways display whole.
pub const PUSH_TITLE_MAX: usize = 50;
/// See [`PUSH_TITLE_MAX`].
pub const PUSH_BODY_MAX: usize = 150;

/// One of the files a locale of a template consists of: five it must have, and
/// `from_name.hbs` it may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Part {
    /// `subject.hbs`: the email subject, one line.
    Subject,
    /// `email.txt.hbs`: the plain-text part.
    Text,
    /// `email.html.hbs`: the HTML part, the only one with HTML-escaped values.
    Html,
    /// `push_title.hbs`.
    PushTitle,
    /// `push_body.hbs`.
    PushBody,
    /// `from_name.hbs` (optional): the email's `From` display name, one line.
    FromName,
}

impl Part {
    /// Every part, in the order a notice is shown.
    pub const ALL: [Part; 6] = [
        Part::Subject,
        Part::Text,
        Part::Html,
        Part::PushTitle,
        Part::PushBody,
        Part::FromName,
    ];

    /// Whether a locale may lack the file: without `from_name.hbs` the email is from
    /// `email.from`'s name.
    pub fn is_optional(self) -> bool {
        self == Part::FromName
    }

    /// A rendered part as a notice holds it: titles on one line, the push body trimmed.
    fn tidy(self, rendered: String) -> String {
        match self {
            Part::Subject | Part::PushTitle | Part::FromName => one_line(&rendered),
            Part::PushBody if rendered.trim().len() != rendered.len() => {
                rendered.trim().to_string()
            }
            Part::Text | Part::Html | Part::PushBody => rendered,
        }
    }

    /// The file name inside a locale folder.
    pub fn file_name(self) -> &'static str {
        match self {
            Part::Subject => "subject.hbs",
            Part::Text => "email.txt.hbs",
            Part::Html => "email.html.hbs",
            Part::PushTitle => "push_title.hbs",
            Part::PushBody => "push_body.hbs",
            Part::FromName => "from_name.hbs",
        }
    }

    /// The channel the part is sent by.
    pub fn channel(self) -> Channel {
        match self {
            Part::Subject | Part::Text | Part::Html | Part::FromName => Channel::Email,
            Part::PushTitle | Part::PushBody => Channel::Push,
        }
    }
}

/// A template cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The name is not a plain folder name.
    #[error(transparent)]
    BadName(#[from] BadTemplateName),
    /// No folder of that name.
    #[error("unknown template `{name}`: no folder {path} (templates found: {available})")]
    Unknown {
        /// The name asked for.
        name: String,
        /// Where it was looked for.
        path: PathBuf,
        /// What is there, comma-separated.
        available: String,
    },
    /// The folder holds no locale folders.
    #[error("template {0} has no locale folders")]
    NoLocales(PathBuf),
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file is not valid handlebars.
    #[error("{}:{}:{}: {}", path.display(), mistake.line, mistake.column, mistake.message)]
    Syntax {
        /// The file.
        path: PathBuf,
        /// What is wrong, where, in plain words.
        mistake: Mistake,
    },
    /// A locale folder name or the default locale is wrong.
    #[error("template {path}: {source}")]
    Locale {
        /// The template folder.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: LocaleError,
    },
    /// ICU has no date format for a locale folder.
    #[error("{path}: no CLDR date format for this locale: {reason}")]
    DateFormat {
        /// The locale folder.
        path: PathBuf,
        /// ICU's error.
        reason: String,
    },
    /// `template.toml` is unreadable or not valid.
    #[error(transparent)]
    Options(#[from] OptionsError),
    /// `sample.json` is missing or not the expected JSON.
    #[error("{path}: {reason}")]
    Sample {
        /// The sample file.
        path: PathBuf,
        /// What is wrong, with line and column when JSON is malformed.
        reason: String,
    },
}

/// A notice could not be rendered for a recipient: a permanent failure for that recipient.
#[derive(Debug, thiserror::Error)]
#[error("{template}/{locale}/{file}: {reason}")]
pub struct RenderError {
    /// Template name.
    pub template: String,
    /// Template locale tag.
    pub locale: String,
    /// The file that failed.
    pub file: &'static str,
    /// What failed, naming the variable when one is missing.
    pub reason: String,
}

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

/// A template's `sample.json`: the campaign variables and one recipient, for preview and checks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    /// Campaign variables.
    pub vars: Vars,
    /// One recipient.
    pub recipient: Recipient,
}

impl Sample {
    /// Reads `<template dir>/sample.json`.
    pub fn load(template_dir: &Path) -> Result<Sample, TemplateError> {
        let path = template_dir.join(SAMPLE_FILE);
        Sample::parse(&path, &read_source(&path)?)
    }

    /// Parses the text of the sample file at `path` (named in the error).
    pub fn parse(path: &Path, text: &str) -> Result<Sample, TemplateError> {
        serde_json::from_str(text).map_err(|e| TemplateError::Sample {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }
}

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

/// One template, compiled for every locale it is written in. Build once, share with `Arc`.
pub struct Renderer {
    name: TemplateName,
    locales: Locales,
    /// Registry keys per locale (in `locales` order) and part (in `Part::ALL` order).
    names: Vec<[String; 6]>,
    /// Per locale and part (same order): the variables the part reads, when those are all it
    /// reads (see [`crate::variables::Usage::open`]). Such a part renders alike for every
    /// recipient of a batch that sets none of them, so a [`BatchCache`] renders it once.
    reads: Vec<[Option<BTreeSet<String>>; 6]>,
    /// For `email.html.hbs`: values HTML-escaped.
    html: Handlebars<'static>,
    /// For every other part: values as they are.
    text: Handlebars<'static>,
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

/// What a batch's notices share, worked out once: the locale negotiated for each requested tag,
/// and the parts that read no recipient variable but perhaps the recipient's locale tag (dates
/// do), by [`SharedPart`]. Used with one renderer and one batch's vars only.
#[derive(Debug, Default)]
pub struct BatchCache {
    negotiated: HashMap<String, usize>,
    parts: HashMap<SharedPart, String>,
}

/// A part rendered alike for recipients: template locale (index in the renderer's locales),
/// part, and the recipient's locale tag when the part reads it.
type SharedPart = (usize, Part, Option<String>);

/// The position of `part` in [`Part::ALL`].
fn part_index(part: Part) -> usize {
    Part::ALL
        .iter()
        .position(|p| *p == part)
        .unwrap_or_default()
}

/// The template folder's locale folder names, sorted.
pub fn locale_folders(template_dir: &Path) -> Result<Vec<String>, TemplateError> {
    let read_err = |source| TemplateError::Read {
        path: template_dir.to_owned(),
        source,
    };
    let mut tags = Vec::new();
    for entry in fs::read_dir(template_dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_dir() && name != PARTIALS_DIR && !name.starts_with('.') {
            tags.push(name);
        }
    }
    tags.sort();
    Ok(tags)
}

/// The folder names under the templates folder `dir` (each one a template), sorted.
pub fn template_folders(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// The folder of template `name` under `dir`, or an error listing the templates there.
pub fn template_dir(dir: &Path, name: &TemplateName) -> Result<PathBuf, TemplateError> {
    let path = dir.join(name.as_str());
    if path.is_dir() {
        return Ok(path);
    }
    let available = template_folders(dir)
        .map(|names| names.join(", "))
        .unwrap_or_default();
    Err(TemplateError::Unknown {
        name: name.to_string(),
        path,
        available: if available.is_empty() {
            format!("none in {}", dir.display())
        } else {
            available
        },
    })
}

/// The shared partials of a template: (name, path), sorted by name.
pub fn partial_files(template_dir: &Path) -> Result<Vec<(String, PathBuf)>, TemplateError> {
    let dir = template_dir.join(PARTIALS_DIR);
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let read_err = |source| TemplateError::Read {
        path: dir.clone(),
        source,
    };
    let mut partials = Vec::new();
    for entry in fs::read_dir(&dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        if let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".hbs"))
        {
            partials.push((stem.to_string(), path));
        }
    }
    partials.sort();
    Ok(partials)
}

/// Reads a template file.
pub fn read_source(path: &Path) -> Result<String, TemplateError> {
    fs::read_to_string(path).map_err(|source| TemplateError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Compiles one handlebars source, naming the file in the error.
pub fn compile(path: &Path, source: &str) -> Result<handlebars::Template, TemplateError> {
    handlebars::Template::compile(source).map_err(|e| TemplateError::Syntax {
        path: path.to_owned(),
        mistake: syntax::explain(source, &e),
    })
}

impl Renderer {
    /// Loads template `name` from `dir`: every locale folder (each must hold the five required
    /// files),
    /// the partials, and a date formatter per locale.
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
        let dates = Dates::default();
        let facts: SharedFacts = Arc::new(Facts {
            by_locale: locales
                .iter()
                .map(|locale| locale_facts(root, locale, &dates))
                .collect::<Result<_, TemplateError>>()?,
            dates,
        });
        let mut html = registry(&facts, true);
        let mut text = registry(&facts, false);
        for (partial, path) in partial_files(root)? {
            let template = compile(&path, &read_source(&path)?)?;
            html.register_template(&partial, template.clone());
            text.register_template(&partial, template);
        }
        let names: Vec<[String; 6]> = locales
            .iter()
            .map(|locale| Part::ALL.map(|part| format!("{}/{}", locale.tag(), part.file_name())))
            .collect();
        let mut reads = Vec::with_capacity(names.len());
        for (locale, names) in locales.iter().zip(&names) {
            let mut locale_reads: [Option<BTreeSet<String>>; 6] = Default::default();
            for ((part, registered), part_reads) in
                Part::ALL.into_iter().zip(names).zip(&mut locale_reads)
            {
                let path = root.join(locale.tag()).join(part.file_name());
                if part.is_optional() && !path.is_file() {
                    continue;
                }
                let mut template = compile(&path, &read_source(&path)?)?;
                let usage = usage_of(&template);
                *part_reads = (!usage.open).then_some(usage.used);
                // Helpers find the locale from the root template's name.
                template.name = Some(registered.clone());
                let registry = if part == Part::Html {
                    &mut html
                } else {
                    &mut text
                };
                registry.register_template(registered, template);
            }
            reads.push(locale_reads);
        }
        Ok(Renderer {
            name: name.clone(),
            locales,
            names,
            reads,
            html,
            text,
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
        let reads = self
            .reads
            .get(index)
            .and_then(|parts| parts[part_index(part)].as_ref())?;
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
        self.text.has_template(self.registered_name(locale, part))
    }

    /// The registry key of a locale's part, `<locale>/<file>`; helpers read the locale back from it.
    fn registered_name(&self, locale: &TemplateLocale, part: Part) -> &str {
        self.names
            .get(self.index_of(locale))
            .map_or("", |names| names[part_index(part)].as_str())
    }

    /// Renders one part in a given locale with a context from [`context`].
    pub fn render_part(
        &self,
        locale: &TemplateLocale,
        part: Part,
        context: &Context,
    ) -> Result<String, RenderError> {
        let registry = if part == Part::Html {
            &self.html
        } else {
            &self.text
        };
        registry
            .render_with_context(self.registered_name(locale, part), context)
            // handlebars renders into an 8 KiB buffer; a notice held in a batch needs its size.
            .map(|mut out| {
                out.shrink_to_fit();
                out
            })
            .map_err(|e| RenderError {
                template: self.name.to_string(),
                locale: locale.tag().to_string(),
                file: part.file_name(),
                reason: describe_render_error(&e),
            })
    }
}

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

fn registry(facts: &SharedFacts, html: bool) -> Handlebars<'static> {
    let mut registry = Handlebars::new();
    registry.set_strict_mode(true);
    if !html {
        registry.register_escape_fn(no_escape);
    }
    registry.register_helper("isolate", Box::new(IsolateHelper { html }));
    registry.register_helper("align", Box::new(LocaleHelper::Align(facts.clone())));
    registry.register_helper("date", Box::new(DateHelper::Date(facts.clone())));
    registry.register_helper("datetime", Box::new(DateHelper::DateTime(facts.clone())));
    registry.register_helper("dir", Box::new(LocaleHelper::Dir(facts.clone())));
    registry.register_helper("lang", Box::new(LocaleHelper::Lang(facts.clone())));
    registry
}

/// handlebars' error, phrased for a comms team: the variable that is missing, or the reason.
fn describe_render_error(e: &handlebars::RenderError) -> String {
    let at = e
        .line_no
        .map(|line| format!(" (line {line})"))
        .unwrap_or_default();
    match e.reason() {
        RenderErrorReason::MissingVariable(Some(var)) => {
            format!("variable `{var}` is not defined{at}")
        }
        reason => format!("{reason}{at}"),
    }
}

/// A header-safe single line: control characters (CR, LF, tab, …) become spaces, ends trimmed.
pub fn one_line(value: &str) -> String {
    value
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
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

    #[test]
    fn template_names_are_folder_names_only() {
        for good in ["xiami-shutdown", "a_b.c", "X1"] {
            assert!(TemplateName::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "../etc", "a/b", ".hidden", "a b", "名"] {
            assert!(TemplateName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn one_line_removes_line_breaks_and_control_characters() {
        assert_eq!(one_line(" Hi\r\nBcc: x@y\t!\n"), "Hi  Bcc: x@y !");
    }
}
