//! Why a template cannot be loaded, and why a notice cannot be rendered for a recipient.

use std::path::PathBuf;

use handlebars::RenderErrorReason;

use super::part::Part;
use crate::locale::{LocaleError, TemplateLocale};
use crate::names::{BadTemplateName, TemplateName};
use crate::syntax::Mistake;
use crate::template_options::OptionsError;

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

impl RenderError {
    /// handlebars' failure to render `part` of `locale`, phrased for a comms team.
    pub(super) fn new(
        template: &TemplateName,
        locale: &TemplateLocale,
        part: Part,
        error: &handlebars::RenderError,
    ) -> RenderError {
        RenderError {
            template: template.to_string(),
            locale: locale.tag().to_string(),
            file: part.file_name(),
            reason: describe(error),
        }
    }
}

/// handlebars' error, phrased for a comms team: the variable that is missing, or the reason.
fn describe(e: &handlebars::RenderError) -> String {
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
