//! The preview pages as HTML: the template list and the locale grid. Every value from a template,
//! the sample or an error goes through [`escape`]; the email HTML goes into a sandboxed iframe.

use std::fmt::Write as _;

use crate::lint::Problem;
use crate::render::{Notice, TemplateName};

use super::grid::{Column, Grid};
use super::webmail;

/// The page script: re-render on sample edits and on template changes.
pub const SCRIPT: &str = include_str!("page.js");
/// The page style.
pub const STYLE: &str = include_str!("page.css");

/// One template on the index page.
#[derive(Debug)]
pub struct Listing {
    /// The folder name.
    pub name: String,
    /// Its locale folders, or why they cannot be read.
    pub locales: Vec<String>,
    /// What `preview --check` says about it.
    pub problems: Vec<Problem>,
}

/// Text for an HTML element or a quoted attribute.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `/`: every template with its locales and its check result, or why there are none.
pub fn index(templates_dir: &str, listings: Result<Vec<Listing>, String>) -> String {
    let mut body = format!(
        "<h1>Templates in <code>{}</code></h1>\n",
        escape(templates_dir)
    );
    let listings = listings.unwrap_or_else(|reason| {
        let _ = writeln!(
            body,
            "<p class=\"error\" role=\"alert\">{}</p>",
            escape(&reason)
        );
        Vec::new()
    });
    if listings.is_empty() {
        body.push_str("<p class=\"error\" role=\"alert\">No templates found.</p>\n");
    }
    body.push_str("<ul class=\"templates\">\n");
    for listing in &listings {
        let name = escape(&listing.name);
        let _ = write!(
            body,
            "<li data-template=\"{name}\"><a href=\"/t/{name}\">{name}</a> <span class=\"locales\">{}</span> ",
            listing
                .locales
                .iter()
                .map(|tag| format!("<span class=\"locale\">{}</span>", escape(tag)))
                .collect::<String>(),
        );
        if listing.problems.is_empty() {
            body.push_str("<span class=\"ok\">check: ok</span>");
        } else {
            let _ = write!(
                body,
                "<span class=\"failed\">check: {} problem(s)</span>{}",
                listing.problems.len(),
                problems(&listing.problems)
            );
        }
        body.push_str("</li>\n");
    }
    body.push_str("</ul>\n");
    document("sunset preview", &body)
}

/// `/t/<template>`: the sample editor above the grid.
pub fn grid_page(name: &TemplateName, sample_json: &str, grid: &str) -> String {
    let title = format!("{name} — sunset preview");
    let name = escape(name.as_str());
    let body = format!(
        "<header><a href=\"/\">templates</a> / <h1>{name}</h1></header>\n\
         <details class=\"sample\"><summary>Sample data (<code>sample.json</code>; edits re-render, nothing is saved)</summary>\n\
         <textarea id=\"sample\" spellcheck=\"false\" rows=\"14\">{}</textarea>\n\
         </details>\n\
         <p id=\"sample-error\" class=\"error\" role=\"alert\" hidden></p>\n\
         <main id=\"grid\" data-render=\"/t/{name}/grid\" data-sample=\"/t/{name}/sample\">{grid}</main>\n",
        escape(sample_json)
    );
    document(&title, &body)
}

/// The grid itself: template-wide problems, then one column per locale.
pub fn grid(grid: &Grid) -> String {
    let mut html = problems(&grid.problems);
    html.push_str("<div class=\"columns\">\n");
    for column in &grid.columns {
        html.push_str(&self::column(&grid.template, column));
    }
    html.push_str("</div>\n");
    html
}

fn column(template: &TemplateName, column: &Column) -> String {
    let tag = escape(&column.tag);
    let mut html = format!(
        "<section class=\"column\" data-locale=\"{tag}\" lang=\"{tag}\" dir=\"{}\">\n\
         <h2><bdi>{tag}</bdi> <small>{}</small></h2>\n{}",
        column.dir,
        column.dir,
        problems(&column.problems)
    );
    match &column.notice {
        Ok(notice) => html.push_str(&self::notice(template, &column.tag, notice)),
        Err(reason) => {
            let _ = writeln!(
                html,
                "<div class=\"error render-error\" role=\"alert\" dir=\"ltr\" lang=\"en\">\
                 <strong>Not rendered</strong><p>{}</p></div>",
                escape(reason)
            );
        }
    }
    html.push_str("</section>\n");
    html
}

fn notice(template: &TemplateName, tag: &str, notice: &Notice) -> String {
    let mut html = String::new();
    if let Some(email) = &notice.email {
        let _ = write!(
            html,
            "<div class=\"part\"><span class=\"label\">Subject</span>\
             <p class=\"subject\">{}</p></div>\n\
             <div class=\"part\"><span class=\"label\">Email</span>\
             <iframe class=\"email\" sandbox=\"\" title=\"{} email, {}\" srcdoc=\"{}\"></iframe></div>\n\
             <div class=\"part\"><span class=\"label\">Webmail (as Gmail shows it)</span>\
             <iframe class=\"webmail\" sandbox=\"\" title=\"{} email in webmail, {}\" srcdoc=\"{}\"></iframe></div>\n\
             <details class=\"part\"><summary class=\"label\">Plain text</summary>\
             <pre class=\"text\">{}</pre></details>\n",
            escape(&email.subject),
            escape(template.as_str()),
            escape(tag),
            escape(&email.html),
            escape(template.as_str()),
            escape(tag),
            escape(&webmail::sanitise(&email.html)),
            escape(&email.text),
        );
    }
    if let Some(push) = &notice.push {
        let _ = writeln!(
            html,
            "<div class=\"part\"><span class=\"label\">Push</span>\
             <div class=\"phone\"><div class=\"card\">\
             <p class=\"push-title\">{}</p><p class=\"push-body\">{}</p>\
             </div></div></div>",
            escape(&push.title),
            escape(&push.body),
        );
    }
    html
}

fn problems(problems: &[Problem]) -> String {
    if problems.is_empty() {
        return String::new();
    }
    let items: String = problems
        .iter()
        .map(|p| {
            format!(
                "<li><code>{}</code>: {}</li>",
                escape(&p.at),
                escape(&p.message)
            )
        })
        .collect();
    format!("<ul class=\"error problems\" role=\"alert\" dir=\"ltr\" lang=\"en\">{items}</ul>\n")
}

fn document(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><link rel=\"stylesheet\" href=\"/assets/page.css\">\
         <script src=\"/assets/page.js\" defer></script></head>\n<body>\n{body}</body>\n</html>\n",
        escape(title)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_leaves_no_markup_and_no_way_out_of_a_quoted_attribute() {
        assert_eq!(
            escape(r#"<b onclick='x'>"Tom" & {{name}}</b>"#),
            "&lt;b onclick=&#39;x&#39;&gt;&quot;Tom&quot; &amp; {{name}}&lt;/b&gt;"
        );
    }
}
