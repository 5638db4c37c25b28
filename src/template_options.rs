//! A template's `template.toml`: how its mail is treated beside what it says.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The file in a template folder that holds its options; absent = the defaults.
pub const OPTIONS_FILE: &str = "template.toml";

/// `templates/<t>/template.toml`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TemplateOptions {
    /// Add `List-Unsubscribe` (an HTTPS one-click link, and a mailbox when a bounce domain is
    /// set) and `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058).
    pub list_unsubscribe: bool,
    /// A notice the law requires to reach everyone: unsubscribes do not stop it (hard bounces
    /// and complaints still do).
    pub legal_notice: bool,
}

/// `template.toml` could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    /// The file is there but unreadable.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, or an unknown key or wrong type; the message names line and key.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// toml's description, with line and column.
        message: String,
    },
}

impl TemplateOptions {
    /// Reads `<template_dir>/template.toml`; a missing file gives the defaults.
    pub fn load(template_dir: &Path) -> Result<TemplateOptions, OptionsError> {
        let path = template_dir.join(OPTIONS_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => TemplateOptions::parse(&path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TemplateOptions::default()),
            Err(source) => Err(OptionsError::Read { path, source }),
        }
    }

    /// Parses the text of the file at `path` (named in errors).
    pub fn parse(path: &Path, text: &str) -> Result<TemplateOptions, OptionsError> {
        toml::from_str(text).map_err(|e| OptionsError::Invalid {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_default_to_off_and_unknown_keys_are_refused_with_their_line() {
        let path = Path::new("t/template.toml");
        assert_eq!(
            TemplateOptions::parse(path, "").expect("empty"),
            TemplateOptions::default()
        );
        let options =
            TemplateOptions::parse(path, "list_unsubscribe = true\nlegal_notice = true\n")
                .expect("both");
        assert!(options.list_unsubscribe && options.legal_notice);
        let error = TemplateOptions::parse(path, "list_unsubscribe = true\nlist_unsubcribe = 1\n")
            .expect_err("typo")
            .to_string();
        assert!(error.contains("t/template.toml"), "{error}");
        assert!(error.contains("line 2"), "{error}");
        assert!(error.contains("list_unsubcribe"), "{error}");
    }

    #[test]
    fn a_missing_file_gives_the_defaults() {
        let dir = tempfile::tempdir().expect("dir");
        assert_eq!(
            TemplateOptions::load(dir.path()).expect("missing"),
            TemplateOptions::default()
        );
    }
}
