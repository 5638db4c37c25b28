//! Handlebars syntax errors in plain words, at the line and column where the mistake is rather
//! than where the parser gave up (an unclosed `{{#if}}` fails at the end of the file).

use handlebars::TemplateErrorReason;

/// What is wrong in a template's source, and where (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mistake {
    /// Line of the mistake.
    pub line: usize,
    /// Column of the mistake.
    pub column: usize,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// A `{{…}}` tag of the source: where it starts and what is between the braces.
struct Tag<'a> {
    line: usize,
    column: usize,
    /// Without braces, `~` and surrounding spaces.
    inside: &'a str,
    /// No `}}` follows the `{{`.
    unclosed: bool,
}

/// The tags of `source`, comments (`{{!-- … --}}`, `{{! … }}`) skipped.
fn tags(source: &str) -> Vec<Tag<'_>> {
    let mut tags = Vec::new();
    let mut rest = source;
    let mut offset = 0;
    while let Some(start) = rest.find("{{") {
        let at = offset + start;
        let body = &source[at + 2..];
        // (what is inside, or None for a comment; bytes to its end; whether it is closed)
        let (inside, end, closed) = if body.starts_with("!--") {
            match body.find("--}}") {
                Some(end) => (None, end + 4, true),
                None => (Some(body), body.len(), false),
            }
        } else {
            match body.find("}}") {
                Some(end) if body.starts_with('!') => (None, end + 2, true),
                Some(end) => (Some(&body[..end]), end + 2, true),
                None => (Some(body), body.len(), false),
            }
        };
        if let Some(inside) = inside {
            let before = &source[..at];
            tags.push(Tag {
                line: before.matches('\n').count() + 1,
                column: before.rfind('\n').map_or(before.chars().count(), |nl| {
                    before[nl + 1..].chars().count()
                }) + 1,
                inside: inside
                    .trim_matches(|c: char| c == '{' || c == '}' || c == '~')
                    .trim(),
                unclosed: !closed,
            });
        }
        offset = at + 2 + end;
        rest = &source[offset.min(source.len())..];
    }
    tags
}

/// The helper a block tag opens or closes (`#if x` → `if`, `#> layout` → `layout`).
fn block_name(rest: &str) -> &str {
    rest.trim_start_matches(['>', '*'])
        .split_whitespace()
        .next()
        .unwrap_or_default()
}

/// A block opened and never closed, or closed without being opened, if the source has one.
fn unbalanced(tags: &[Tag<'_>]) -> Option<Mistake> {
    let mut open: Vec<(&Tag<'_>, &str)> = Vec::new();
    for tag in tags {
        if let Some(rest) = tag
            .inside
            .strip_prefix(['#', '^'])
            .filter(|r| !r.is_empty())
        {
            open.push((tag, block_name(rest)));
        } else if let Some(rest) = tag.inside.strip_prefix('/') {
            let name = block_name(rest);
            match open.pop() {
                Some((_, opened)) if opened == name => {}
                Some((opener, opened)) => {
                    return Some(Mistake {
                        line: tag.line,
                        column: tag.column,
                        message: format!(
                            "`{{{{/{name}}}}}` closes the `{{{{#{opened}}}}}` opened at line {}, column {}; close that with `{{{{/{opened}}}}}` first",
                            opener.line, opener.column
                        ),
                    });
                }
                None => {
                    return Some(Mistake {
                        line: tag.line,
                        column: tag.column,
                        message: format!("`{{{{/{name}}}}}` closes a block that was never opened"),
                    });
                }
            }
        }
    }
    open.pop().map(|(tag, name)| Mistake {
        line: tag.line,
        column: tag.column,
        message: format!(
            "`{{{{{}}}}}` is never closed: add `{{{{/{name}}}}}` where it ends",
            tag.inside
        ),
    })
}

/// `error`, which handlebars raised compiling `source`, as a [`Mistake`].
pub fn explain(source: &str, error: &handlebars::TemplateError) -> Mistake {
    let tags = tags(source);
    if let Some(tag) = tags.iter().find(|t| t.unclosed) {
        return Mistake {
            line: tag.line,
            column: tag.column,
            message: "`{{` is never closed: add `}}`".into(),
        };
    }
    if let Some(mistake) = unbalanced(&tags) {
        return mistake;
    }
    let (line, column) = error.pos().unwrap_or((1, 1));
    let message = match error.reason() {
        TemplateErrorReason::InvalidSyntax(expected) => format!(
            "this is not handlebars syntax (the parser {})",
            expected.trim()
        ),
        other => other.to_string(),
    };
    Mistake {
        line,
        column,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mistake(source: &str) -> Mistake {
        let error = handlebars::Template::compile(source).expect_err("a syntax error");
        explain(source, &error)
    }

    #[test]
    fn an_unclosed_if_is_reported_where_it_opens() {
        let got = mistake("Hello\n  {{#if name}}Hi {{name}}\nBye\n");
        assert_eq!((got.line, got.column), (2, 3));
        assert_eq!(
            got.message,
            "`{{#if name}}` is never closed: add `{{/if}}` where it ends"
        );
    }

    #[test]
    fn a_block_closed_by_another_name_names_both() {
        let got = mistake("{{#if a}}\n{{#each b}}x{{/if}}{{/each}}");
        assert_eq!((got.line, got.column), (2, 13));
        assert!(
            got.message
                .contains("`{{/if}}` closes the `{{#each}}` opened at line 2, column 1"),
            "{}",
            got.message
        );
    }

    #[test]
    fn braces_left_open_are_reported_where_they_open() {
        let got = mistake("a {{#if x}}b{{/if}}\nc {{name");
        assert_eq!((got.line, got.column), (2, 3));
        assert!(
            got.message.contains("`{{` is never closed"),
            "{}",
            got.message
        );
    }

    #[test]
    fn comments_are_not_taken_for_blocks() {
        let got = mistake("{{!-- {{#if}} --}}{{! {{/each}} }}{{#with a}}");
        assert!(
            got.message.contains("`{{#with a}}` is never closed"),
            "{}",
            got.message
        );
    }
}
