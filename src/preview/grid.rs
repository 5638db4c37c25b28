//! What the preview grid shows: one column per locale of a template, each rendered on its own
//! (a broken locale must not hide the others), with the problems `preview --check` finds.

use std::path::Path;

use crate::batch::Recipient;
use crate::channel::Channel;
use crate::lint::{self, Problem};
use crate::locale::{Direction, Locales};
use crate::render::{self, Notice, Renderer, Sample, TemplateError, TemplateName};

/// Locales shown first, in this order; any other locale follows, sorted by tag.
const FIRST: [&str; 4] = ["ar", "zh", "zh-Hant", "en"];

/// One template's locales side by side.
#[derive(Debug)]
pub struct Grid {
    /// The template shown.
    pub template: TemplateName,
    /// One per locale folder.
    pub columns: Vec<Column>,
    /// Problems of the whole template (sample, partials), not of one locale.
    pub problems: Vec<Problem>,
}

/// One locale of the grid.
#[derive(Debug)]
pub struct Column {
    /// The locale folder's tag: the column's `lang`.
    pub tag: String,
    /// The column's `dir`.
    pub dir: Direction,
    /// The notice, or why it could not be rendered (`template/locale/file: reason`).
    pub notice: Result<Notice, String>,
    /// What `preview --check` finds in this locale's files.
    pub problems: Vec<Problem>,
}

/// Renders every locale of template `name` with `sample` (the recipient's locale is set per
/// column). Fails only when the template folder itself cannot be read.
pub fn build(
    dir: &Path,
    name: &TemplateName,
    default_locale: &str,
    sample: &Sample,
) -> Result<Grid, TemplateError> {
    let root = render::template_dir(dir, name)?;
    let tags = ordered(render::locale_folders(&root)?);
    let mut problems = lint::check(dir, name, default_locale);
    let columns = tags
        .into_iter()
        .map(|tag| {
            let prefix = format!("{name}/{tag}");
            let (own, rest) = problems
                .drain(..)
                .partition(|p| p.at == prefix || p.at.starts_with(&format!("{prefix}/")));
            problems = rest;
            column(dir, name, tag, sample, own)
        })
        .collect();
    Ok(Grid {
        template: name.clone(),
        columns,
        problems,
    })
}

fn column(
    dir: &Path,
    name: &TemplateName,
    tag: String,
    sample: &Sample,
    problems: Vec<Problem>,
) -> Column {
    let recipient = Recipient {
        locale: Some(tag.clone()),
        ..sample.recipient.clone()
    };
    let notice = Renderer::load_locale(dir, name, &tag)
        .map_err(|e| e.to_string())
        .and_then(|renderer| {
            renderer
                .render(&sample.vars, &recipient, &Channel::ALL)
                .map_err(|e| e.to_string())
        });
    let dir = Locales::new([tag.as_str()], &tag)
        .map_or(Direction::Ltr, |locales| locales.default_locale().dir());
    Column {
        tag,
        dir,
        notice,
        problems,
    }
}

/// `FIRST` in its order, then the rest sorted.
fn ordered(mut tags: Vec<String>) -> Vec<String> {
    tags.sort_by_key(|tag| {
        (
            FIRST
                .iter()
                .position(|first| first == tag)
                .unwrap_or(FIRST.len()),
            tag.clone(),
        )
    });
    tags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arabic_chinese_and_english_come_first_then_the_rest_sorted() {
        let tags = ["de", "en", "zh-Hant", "ar", "fr", "zh"]
            .map(String::from)
            .to_vec();
        assert_eq!(ordered(tags), ["ar", "zh", "zh-Hant", "en", "de", "fr"]);
    }
}
