//! A template folder on disk: its locale folders, partials and `sample.json`, read and compiled.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::errors::TemplateError;
use crate::batch::Recipient;
use crate::names::{TemplateName, Vars};
use crate::syntax;

/// Folder of shared partials inside a template; every other folder is a locale.
pub const PARTIALS_DIR: &str = "partials";

/// Campaign and recipient variables used by `preview` and `preview --check`.
pub const SAMPLE_FILE: &str = "sample.json";

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
