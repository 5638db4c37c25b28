//! A template compiled into handlebars registries, every locale's parts registered once, and
//! the cache one batch's notices share.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use handlebars::{Context, Handlebars, no_escape};

use super::errors::TemplateError;
use super::files::{compile, partial_files, read_source};
use super::helpers::Helpers;
use super::part::Part;
use crate::locale::Locales;
use crate::variables::usage_of;

/// Every part of every locale of one template, compiled, and what each part reads.
pub(super) struct Registry {
    /// Registry keys per locale (in `Locales` order) and part (in `Part::ALL` order).
    names: Vec<[String; 6]>,
    /// Per locale and part (same order): the variables the part reads, when those are all it
    /// reads (see [`crate::variables::Usage::open`]). Such a part renders alike for every
    /// recipient of a batch that sets none of them, so a [`BatchCache`] renders it once.
    reads: Vec<[Option<BTreeSet<String>>; 6]>,
    /// For `email.html.hbs`: values HTML-escaped.
    html: Handlebars<'static>,
    /// For every other part: values as they are.
    text: Handlebars<'static>,
}

impl Registry {
    /// Compiles the partials and the `locales` folders of the template folder `root`.
    pub(super) fn compile(root: &Path, locales: &Locales) -> Result<Registry, TemplateError> {
        let helpers = Helpers::for_locales(root, locales)?;
        let mut html = handlebars(&helpers, true);
        let mut text = handlebars(&helpers, false);
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
        Ok(Registry {
            names,
            reads,
            html,
            text,
        })
    }

    /// The variables the part of the locale at `index` reads, when it names all it reads.
    pub(super) fn reads(&self, index: usize, part: Part) -> Option<&BTreeSet<String>> {
        self.reads
            .get(index)
            .and_then(|parts| parts[part_index(part)].as_ref())
    }

    /// Whether the locale at `index` has the part's file (an optional one may be absent).
    pub(super) fn has(&self, index: usize, part: Part) -> bool {
        self.text.has_template(self.registered_name(index, part))
    }

    /// Renders the part of the locale at `index` with `context`.
    pub(super) fn render(
        &self,
        index: usize,
        part: Part,
        context: &Context,
    ) -> Result<String, handlebars::RenderError> {
        let registry = if part == Part::Html {
            &self.html
        } else {
            &self.text
        };
        registry
            .render_with_context(self.registered_name(index, part), context)
            // handlebars renders into an 8 KiB buffer; a notice held in a batch needs its size.
            .map(|mut out| {
                out.shrink_to_fit();
                out
            })
    }

    /// The registry key of a locale's part, `<locale>/<file>`; helpers read the locale back from it.
    fn registered_name(&self, index: usize, part: Part) -> &str {
        self.names
            .get(index)
            .map_or("", |names| names[part_index(part)].as_str())
    }
}

/// A strict registry with every helper; only the `html` one escapes values.
fn handlebars(helpers: &Helpers, html: bool) -> Handlebars<'static> {
    let mut registry = Handlebars::new();
    registry.set_strict_mode(true);
    if !html {
        registry.register_escape_fn(no_escape);
    }
    helpers.register_on(&mut registry, html);
    registry
}

/// The position of `part` in [`Part::ALL`].
fn part_index(part: Part) -> usize {
    Part::ALL
        .iter()
        .position(|p| *p == part)
        .unwrap_or_default()
}

/// What a batch's notices share, worked out once: the locale negotiated for each requested tag,
/// and the parts that read no recipient variable but perhaps the recipient's locale tag (dates
/// do), by [`SharedPart`]. Used with one renderer and one batch's vars only.
#[derive(Debug, Default)]
pub struct BatchCache {
    /// Requested locale tag → index of the template locale negotiated for it.
    pub(super) negotiated: HashMap<String, usize>,
    /// Parts rendered once for the batch.
    pub(super) parts: HashMap<SharedPart, String>,
}

/// A part rendered alike for recipients: template locale (index in the renderer's locales),
/// part, and the recipient's locale tag when the part reads it.
pub(super) type SharedPart = (usize, Part, Option<String>);
