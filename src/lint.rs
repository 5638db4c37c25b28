//! `preview --check`: every way a template can be wrong, found before a campaign starts.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use crate::batch::Recipient;
use crate::channel::Channel;
use crate::config::FeedbackConfig;
use crate::locale::Direction;
use crate::render::{
    self, PUSH_BODY_MAX, PUSH_TITLE_MAX, Part, RECIPIENT_FIELDS, Renderer, Sample, TemplateName,
};
use crate::template_options::{OPTIONS_FILE, TemplateOptions};
use crate::variables::{Usage, usage_of};

/// One thing wrong, at one place (`xiami-shutdown/ar/email.html.hbs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Template, template/locale or template/locale/file.
    pub at: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// `preview --check` found problems; the lines were printed, this carries the count.
#[derive(Debug, thiserror::Error)]
#[error("{count} problem(s) found in the templates")]
pub struct CheckFailed {
    /// How many.
    pub count: usize,
}

/// Every template folder under `dir`, checked; an unreadable `dir` is itself a problem.
pub fn check_all(dir: &Path, default_locale: &str) -> Vec<Problem> {
    let names = match render::template_folders(dir) {
        Ok(names) => names,
        Err(e) => {
            return vec![Problem {
                at: dir.display().to_string(),
                message: format!("cannot read the templates folder: {e}"),
            }];
        }
    };
    if names.is_empty() {
        return vec![Problem {
            at: dir.display().to_string(),
            message: "no templates".into(),
        }];
    }
    names
        .iter()
        .flat_map(|name| match TemplateName::parse(name) {
            Ok(name) => check(dir, &name, default_locale),
            Err(e) => vec![Problem {
                at: name.clone(),
                message: e.to_string(),
            }],
        })
        .collect()
}

/// What a template's `template.toml` asks of the `[feedback]` config: `list_unsubscribe`
/// needs `feedback.secret_file` (the link's token is made with its key). An unreadable
/// `template.toml` is reported by [`check`].
pub fn feedback_problems(
    dir: &Path,
    name: &TemplateName,
    feedback: &FeedbackConfig,
) -> Vec<Problem> {
    let Ok(root) = render::template_dir(dir, name) else {
        return Vec::new();
    };
    let Ok(options) = TemplateOptions::load(&root) else {
        return Vec::new();
    };
    if options.list_unsubscribe && feedback.secret_file.as_os_str().is_empty() {
        vec![Problem {
            at: format!("{name}/{OPTIONS_FILE}"),
            message: "list_unsubscribe = true needs the config key `feedback.secret_file` \
                      (the unsubscribe link's token is made with its key), which is not set"
                .into(),
        }]
    } else {
        Vec::new()
    }
}

/// Checks one template: files present and valid, locales in step, `#if` on defined variables,
/// and every locale renders in strict mode with `sample.json` within the push limits.
pub fn check(dir: &Path, name: &TemplateName, default_locale: &str) -> Vec<Problem> {
    let mut problems = Vec::new();
    let problem = |at: String, message: String| Problem { at, message };
    let root = match render::template_dir(dir, name) {
        Ok(root) => root,
        Err(e) => return vec![problem(name.to_string(), e.to_string())],
    };
    let sample = Sample::load(&root)
        .map_err(|e| problems.push(problem(name.to_string(), e.to_string())))
        .ok();
    let tags = match render::locale_folders(&root) {
        Ok(tags) if tags.is_empty() => {
            problems.push(problem(name.to_string(), "no locale folders".into()));
            return problems;
        }
        Ok(tags) => tags,
        Err(e) => {
            problems.push(problem(name.to_string(), e.to_string()));
            return problems;
        }
    };

    // Per file: which locales use which variables.
    let mut usage: BTreeMap<Part, BTreeMap<String, Usage>> = BTreeMap::new();
    for tag in &tags {
        for part in Part::ALL {
            let at = format!("{name}/{tag}/{}", part.file_name());
            let path = root.join(tag).join(part.file_name());
            if !path.is_file() {
                if !part.is_optional() {
                    problems.push(problem(at, "missing".into()));
                }
                continue;
            }
            match render::read_source(&path).and_then(|source| render::compile(&path, &source)) {
                Ok(template) => {
                    usage
                        .entry(part)
                        .or_default()
                        .insert(tag.clone(), usage_of(&template));
                }
                Err(e) => problems.push(load_problem(at, &e)),
            }
        }
    }
    let mut partial_usage = Vec::new();
    match render::partial_files(&root) {
        Ok(partials) => {
            for (partial, path) in partials {
                let at = format!("{name}/{}/{partial}.hbs", render::PARTIALS_DIR);
                match render::read_source(&path).and_then(|source| render::compile(&path, &source))
                {
                    Ok(template) => partial_usage.push((at, usage_of(&template))),
                    Err(e) => problems.push(load_problem(at, &e)),
                }
            }
        }
        Err(e) => problems.push(problem(name.to_string(), e.to_string())),
    }

    // What sample.json and the recipient fields define; without a sample, every name counts
    // as defined (the sample's own problem is reported).
    let defined: Option<BTreeSet<&str>> = sample.as_ref().map(|sample| {
        sample
            .vars
            .keys()
            .chain(sample.recipient.vars.keys())
            .map(String::as_str)
            .chain(RECIPIENT_FIELDS)
            .collect()
    });
    let is_defined = |var: &str| defined.as_ref().is_none_or(|d| d.contains(var));
    let files = usage.iter().flat_map(|(part, by_locale)| {
        by_locale
            .iter()
            .map(move |(tag, u)| (format!("{name}/{tag}/{}", part.file_name()), u, false))
    });
    // A partial reads the parameters its caller passes, so only what it tests is checked.
    let partials = partial_usage.iter().map(|(at, u)| (at.clone(), u, true));
    for (at, u, partial) in files.chain(partials) {
        let checked = u
            .read_at
            .iter()
            .filter(|(v, _)| !is_defined(v) && (!partial || u.tested.contains(*v)));
        for (var, (line, column)) in checked {
            let message = if u.tested.contains(var) {
                format!(
                    "`{{{{#if {var}}}}}` tests `{var}`, which {} does not define",
                    render::SAMPLE_FILE
                )
            } else {
                let near = defined
                    .iter()
                    .flatten()
                    .copied()
                    .find(|d| near_miss(var, d));
                format!(
                    "`{var}` is not a variable ({} and the recipient fields define no such name){}",
                    render::SAMPLE_FILE,
                    near.map(|d| format!("; did you mean `{d}`?"))
                        .unwrap_or_default()
                )
            };
            problems.push(problem(format!("{at}:{line}:{column}"), message));
        }
    }

    // A file reading an undefined name is reported above, once; the locales are out of step
    // only in the defined variables some use and others do not.
    for (part, by_locale) in &usage {
        for (tag, file) in by_locale {
            if file.read_at.keys().any(|v| !is_defined(v)) {
                continue;
            }
            let vars = by_locale.values().flat_map(|u| &u.used);
            for var in vars.filter(|v| is_defined(v)) {
                if file.used.contains(var) {
                    continue;
                }
                let others: Vec<&str> = by_locale
                    .iter()
                    .filter(|(_, u)| u.used.contains(var))
                    .map(|(t, _)| t.as_str())
                    .collect();
                let at = format!("{name}/{tag}/{}", part.file_name());
                let message = format!(
                    "does not use `{var}`, which {} use(s): locales out of step",
                    others.join(", ")
                );
                if !problems.contains(&Problem {
                    at: at.clone(),
                    message: message.clone(),
                }) {
                    problems.push(problem(at, message));
                }
            }
        }
    }

    // Rendering needs every file present and valid; only then is a strict-mode render meaningful.
    if problems.is_empty()
        && let Some(sample) = sample
    {
        problems.extend(render_every_locale(dir, name, default_locale, &sample));
    }
    problems
}

/// Renders each locale with the sample recipient and checks the push lengths.
fn render_every_locale(
    dir: &Path,
    name: &TemplateName,
    default_locale: &str,
    sample: &Sample,
) -> Vec<Problem> {
    let renderer = match Renderer::load(dir, name, default_locale) {
        Ok(renderer) => renderer,
        Err(e) => return vec![load_problem(name.to_string(), &e)],
    };
    let mut problems = Vec::new();
    for locale in renderer.locales().iter() {
        let recipient = Recipient {
            locale: Some(locale.tag().to_string()),
            ..sample.recipient.clone()
        };
        match renderer.render(&sample.vars, &recipient, &Channel::ALL) {
            Ok(notice) => {
                if let Some(message) = notice
                    .email
                    .as_ref()
                    .and_then(|email| direction_problem(&email.html, notice.dir))
                {
                    problems.push(Problem {
                        at: format!("{name}/{}/{}", locale.tag(), Part::Html.file_name()),
                        message,
                    });
                }
                let push = notice.push.as_ref();
                let lengths = [
                    (Part::PushTitle, push.map(|p| &p.title), PUSH_TITLE_MAX),
                    (Part::PushBody, push.map(|p| &p.body), PUSH_BODY_MAX),
                ];
                for (part, text, max) in lengths {
                    let chars = text.map_or(0, |t| t.chars().count());
                    if chars > max {
                        problems.push(Problem {
                            at: format!("{name}/{}/{}", locale.tag(), part.file_name()),
                            message: format!(
                                "{chars} characters with {}; at most {max}",
                                render::SAMPLE_FILE
                            ),
                        });
                    }
                }
            }
            Err(e) => problems.push(Problem {
                at: format!("{}/{}/{}", e.template, e.locale, e.file),
                message: e.reason,
            }),
        }
    }
    problems
}

/// Webmail (Gmail, Outlook.com, Yahoo) drops the attributes of `<html>` and `<body>`, so the
/// direction must also be set on an element inside `<body>` that holds the text: the first `dir`
/// there is on or before the first paragraph, heading or link, and is the locale's.
fn direction_problem(html: &str, dir: Direction) -> Option<String> {
    let lower = html.to_ascii_lowercase();
    let inside = lower
        .find("<body")
        .and_then(|at| lower[at..].find('>').map(|end| &lower[at + end..]))
        .unwrap_or(&lower);
    let first_dir = inside.match_indices("dir=").find(|(at, _)| {
        inside[..*at].ends_with(|c: char| c.is_ascii_whitespace())
            && inside[..*at].rfind('<') > inside[..*at].rfind('>')
    });
    // The end of the first text element's opening tag: a `dir` on that element counts.
    let first_text = ["<p", "<h1", "<h2", "<h3", "<a ", "<li"]
        .iter()
        .filter_map(|tag| inside.find(tag))
        .min()
        .and_then(|at| inside[at..].find('>').map(|end| at + end))
        .unwrap_or(inside.len());
    match first_dir {
        Some((at, _)) if at < first_text => {
            let value = inside[at + 4..].trim_start_matches(['"', '\'']);
            (!value.starts_with(dir.as_str())).then(|| {
                format!("the first `dir` inside <body> is not `{dir}`, this locale's direction")
            })
        }
        _ => Some(
            "no `dir` attribute inside <body> around the text: webmail drops it from <html> \
             and <body>, so put dir=\"{{dir}}\" lang=\"{{lang}}\" on the wrapper table or div"
                .to_string(),
        ),
    }
}

/// A load error at `at` (a file, or the template): a syntax error at its line and column.
fn load_problem(at: String, e: &render::TemplateError) -> Problem {
    match e {
        render::TemplateError::Syntax { mistake, .. } => Problem {
            at: format!("{at}:{}:{}", mistake.line, mistake.column),
            message: mistake.message.clone(),
        },
        other => Problem {
            at,
            message: other.to_string(),
        },
    }
}

/// Whether `typed` is one slip from `name`: a character added, dropped, changed, or two
/// neighbours swapped.
fn near_miss(typed: &str, name: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (typed.chars().collect(), name.chars().collect());
    if a == b || a.len().abs_diff(b.len()) > 1 {
        return false;
    }
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let (a, b) = (&a[prefix..], &b[prefix..]);
    let swapped =
        a.len() == b.len() && a.len() >= 2 && a[0] == b[1] && a[1] == b[0] && a[2..] == b[2..];
    swapped || a.get(1..) == b.get(1..) || a.get(1..) == Some(b) || Some(a) == b.get(1..)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direction_must_wrap_the_text_inside_the_body_and_match_the_locale() {
        let ok = r#"<html dir="rtl"><body dir="rtl"><table dir="rtl"><tr><td><p>نص</p>"#;
        assert_eq!(direction_problem(ok, Direction::Rtl), None);
        let only_root = r#"<html dir="rtl"><body dir="rtl"><p>نص <a dir="ltr" href="x">x</a>"#;
        let problem = direction_problem(only_root, Direction::Rtl).expect("no wrapper dir");
        assert!(
            problem.contains("no `dir` attribute inside <body>"),
            "{problem}"
        );
        let on_the_paragraph = r#"<body><p dir="rtl">نص</p>"#;
        assert_eq!(direction_problem(on_the_paragraph, Direction::Rtl), None);
        let wrong = r#"<body><div dir="ltr"><p>نص</p></div>"#;
        let problem = direction_problem(wrong, Direction::Rtl).expect("wrong direction");
        assert!(problem.contains("not `rtl`"), "{problem}");
    }
}
