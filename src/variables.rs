//! Which variables a handlebars template reads: for `preview --check`, and to know which parts
//! render alike for every recipient of a batch.

use std::collections::{BTreeMap, BTreeSet};

use handlebars::template::{HelperTemplate, Parameter, TemplateElement};
use handlebars::{Path as VarPath, Template};

/// Names of the helpers sunset registers; `preview --check` does not take them for variables.
pub const HELPERS: [&str; 6] = ["align", "date", "datetime", "dir", "isolate", "lang"];

/// The helpers whose output depends on the recipient's `locale` as well as their arguments.
pub const RECIPIENT_LOCALE_HELPERS: [&str; 2] = ["date", "datetime"];

/// Variables a file uses, and those it tests with `#if`/`#unless`.
#[derive(Debug, Default)]
pub struct Usage {
    /// Top-level variables read anywhere (names inside `each`/`with` included, as if top-level).
    pub used: BTreeSet<String>,
    /// Top-level variables tested by `#if`/`#unless` outside `each`/`with`.
    pub tested: BTreeSet<String>,
    /// Top-level variables read outside `each`/`with`, each with the line and column of its
    /// first read.
    pub read_at: BTreeMap<String, (usize, usize)>,
    /// The file may read more than `used`: it includes a partial or a decorator, or has a path
    /// that leaves its block's context (`../x`, `@root.x`, a bare `this` at the top).
    pub open: bool,
}

/// What `template` reads.
pub fn usage_of(template: &Template) -> Usage {
    let mut usage = Usage::default();
    collect(template, false, &mut usage);
    usage
}

impl Usage {
    /// Notes a read of `var` at `at` (line, column), `scoped` inside `each`/`with`.
    fn read(&mut self, var: String, scoped: bool, at: (usize, usize)) {
        if !scoped {
            self.read_at.entry(var.clone()).or_insert(at);
        }
        self.used.insert(var);
    }
}

/// Walks the template; `scoped` is true inside blocks that change the context (`each`, `with`),
/// where names are relative to an item rather than campaign variables.
fn collect(template: &Template, scoped: bool, usage: &mut Usage) {
    for (index, element) in template.elements.iter().enumerate() {
        // Handlebars keeps each element's line and column beside it.
        let at = template.mapping.get(index).map_or((1, 1), |m| (m.0, m.1));
        match element {
            TemplateElement::Expression(helper) | TemplateElement::HtmlExpression(helper) => {
                if helper.params.is_empty() && helper.hash.is_empty() {
                    note_path(&helper.name, scoped, usage);
                    if let Some(var) = name_var(&helper.name) {
                        usage.read(var, scoped, at);
                    }
                } else {
                    params(helper, scoped, at, usage);
                    if helper
                        .name
                        .as_name()
                        .is_some_and(|name| RECIPIENT_LOCALE_HELPERS.contains(&name))
                    {
                        usage.used.insert("locale".to_string());
                    }
                }
            }
            TemplateElement::HelperBlock(helper) => {
                params(helper, scoped, at, usage);
                let block = helper.name.as_name().unwrap_or_default();
                if !scoped && matches!(block, "if" | "unless") {
                    usage
                        .tested
                        .extend(helper.params.iter().filter_map(param_var));
                }
                let inner_scoped = scoped || matches!(block, "each" | "with");
                for inner in [&helper.template, &helper.inverse].into_iter().flatten() {
                    collect(inner, inner_scoped, usage);
                }
            }
            TemplateElement::PartialExpression(partial)
            | TemplateElement::PartialBlock(partial) => {
                usage.open = true;
                for var in partial
                    .params
                    .iter()
                    .chain(partial.hash.values())
                    .filter_map(param_var)
                {
                    usage.read(var, scoped, at);
                }
                if let Some(inner) = &partial.template {
                    collect(inner, scoped, usage);
                }
            }
            TemplateElement::RawString(_) | TemplateElement::Comment(_) => {}
            // Decorators, and whatever later versions of handlebars add.
            _ => usage.open = true,
        }
    }
}

fn params(helper: &HelperTemplate, scoped: bool, at: (usize, usize), usage: &mut Usage) {
    for param in helper.params.iter().chain(helper.hash.values()) {
        match param {
            Parameter::Subexpression(sub) => match sub.as_element() {
                TemplateElement::Expression(inner) => params(inner, scoped, at, usage),
                _ => usage.open = true,
            },
            other => {
                note_path(other, scoped, usage);
                if let Some(var) = param_var(other) {
                    usage.read(var, scoped, at);
                }
            }
        }
    }
}

/// Marks the usage open for a path that reads beyond the variables `top_level` names.
fn note_path(param: &Parameter, scoped: bool, usage: &mut Usage) {
    let raw = match param {
        Parameter::Path(VarPath::Relative((_, raw))) | Parameter::Name(raw) => raw.as_str(),
        Parameter::Path(VarPath::Local(_))
        | Parameter::Literal(_)
        | Parameter::Subexpression(_) => {
            return;
        }
        _ => {
            usage.open = true;
            return;
        }
    };
    let whole_context = raw == "this" || raw == "." || raw == "./";
    if raw.starts_with("..") || raw.starts_with("@root") || (whole_context && !scoped) {
        usage.open = true;
    }
}

/// `{{name}}`: a variable unless it names one of sunset's helpers.
fn name_var(name: &Parameter) -> Option<String> {
    param_var(name).filter(|var| !HELPERS.contains(&var.as_str()))
}

fn param_var(param: &Parameter) -> Option<String> {
    match param {
        Parameter::Path(VarPath::Relative((_, raw))) => top_level(raw),
        Parameter::Name(n) => top_level(n),
        _ => None,
    }
}

/// The campaign or recipient variable a path starts from (`user.name` → `user`); none for
/// `this`, `../x` and `@` paths, which are not top-level variables.
fn top_level(raw: &str) -> Option<String> {
    let raw = raw.strip_prefix("this.").unwrap_or(raw);
    let raw = raw.strip_prefix("./").unwrap_or(raw);
    if raw.starts_with("..") || raw.starts_with('@') || raw == "this" || raw.is_empty() {
        return None;
    }
    raw.split(['.', '/', '['])
        .next()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(source: &str) -> Usage {
        usage_of(&Template::compile(source).expect("valid handlebars"))
    }

    #[test]
    fn variables_are_found_in_expressions_helpers_and_blocks() {
        let u = usage(
            "{{a}} {{{b}}} {{date c}} {{dir}} {{lang}} {{#if d}}{{e.f}}{{else}}{{g}}{{/if}}\
             {{#unless h}}x{{/unless}} {{#> layout title=i}}{{j}}{{/layout}}",
        );
        let used: Vec<&str> = u.used.iter().map(String::as_str).collect();
        // `date` formats for the recipient's locale, so the file reads it too.
        assert_eq!(
            used,
            ["a", "b", "c", "d", "e", "g", "h", "i", "j", "locale"]
        );
        let tested: Vec<&str> = u.tested.iter().map(String::as_str).collect();
        assert_eq!(tested, ["d", "h"]);
    }

    #[test]
    fn each_variable_read_outside_a_scope_has_the_place_of_its_first_read() {
        let u =
            usage("Hi\n  {{name}} {{#if a}}\n{{date b}}{{name}}{{/if}}{{#each c}}{{d}}{{/each}}");
        let read: Vec<(&str, (usize, usize))> =
            u.read_at.iter().map(|(v, at)| (v.as_str(), *at)).collect();
        assert_eq!(
            read,
            [
                ("a", (2, 12)),
                ("b", (3, 1)),
                ("c", (3, 26)),
                ("name", (2, 3))
            ]
        );
    }

    #[test]
    fn names_inside_each_are_not_taken_for_tested_campaign_variables() {
        let u = usage("{{#each songs}}{{#if explicit}}{{title}}{{/if}}{{/each}}");
        assert!(u.used.contains("songs"));
        assert!(u.tested.is_empty(), "{:?}", u.tested);
    }

    #[test]
    fn a_file_reading_only_named_variables_is_closed() {
        for source in [
            "Xiami closes on {{date shutdown_date}}",
            "{{#if name}}Hi {{name}}{{/if}} {{dir}} {{lang}}",
            "{{#each songs}}{{this}} {{title}} {{@index}}{{/each}}",
            "{{#with product}}{{this.title}}{{/with}} {{this.a}} {{lookup links (lookup b c)}}",
        ] {
            assert!(!usage(source).open, "{source}");
        }
    }

    #[test]
    fn partials_decorators_and_paths_out_of_their_block_make_a_file_open() {
        for source in [
            "{{> layout}}",
            "{{#> layout}}x{{/layout}}",
            "{{*inline \"x\"}}",
            "{{#each songs}}{{../name}}{{/each}}",
            "{{#each songs}}{{@root.name}}{{/each}}",
            "{{this}}",
            "{{lookup this \"name\"}}",
        ] {
            assert!(usage(source).open, "{source}");
        }
    }
}
