//! The HTML of a notice as webmail (Gmail, Outlook.com, Yahoo) leaves it: the attributes of
//! `<html>`, `<head>` and `<body>` dropped and `<style>` blocks removed, so authors see whether
//! direction, language and layout survive on the elements inside `<body>`.

/// `html` with the root elements' attributes and every `<style>…</style>` removed.
pub fn sanitise(html: &str) -> String {
    let mut out = without_styles(html);
    for tag in ["html", "head", "body"] {
        out = bare_tag(&out, tag);
    }
    out
}

/// Removes `<style …>…</style>` blocks (an unclosed one to the end).
fn without_styles(html: &str) -> String {
    let lower = html.to_ascii_lowercase();
    let mut out = String::with_capacity(html.len());
    let mut at = 0;
    while let Some(start) = find_tag(&lower, "style", at) {
        out.push_str(&html[at..start]);
        at = lower[start..]
            .find("</style")
            .and_then(|end| {
                lower[start + end..]
                    .find('>')
                    .map(|gt| start + end + gt + 1)
            })
            .unwrap_or(html.len());
    }
    out.push_str(&html[at..]);
    out
}

/// Rewrites every `<tag …>` opening tag as `<tag>`.
fn bare_tag(html: &str, tag: &str) -> String {
    let lower = html.to_ascii_lowercase();
    let mut out = String::with_capacity(html.len());
    let mut at = 0;
    while let Some(start) = find_tag(&lower, tag, at) {
        let Some(end) = lower[start..].find('>').map(|gt| start + gt + 1) else {
            break;
        };
        out.push_str(&html[at..start]);
        out.push('<');
        out.push_str(tag);
        out.push('>');
        at = end;
    }
    out.push_str(&html[at..]);
    out
}

/// The start of the next `<tag` opening tag at or after `from` (not `<tagname-longer`), in the
/// lower-cased `html`.
fn find_tag(lower: &str, tag: &str, from: usize) -> Option<usize> {
    let open = format!("<{tag}");
    let mut at = from;
    while let Some(found) = lower[at..].find(&open).map(|i| at + i) {
        let next = lower[found + open.len()..].chars().next();
        if next.is_none_or(|c| c == '>' || c == '/' || c.is_ascii_whitespace()) {
            return Some(found);
        }
        at = found + open.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_attributes_and_style_blocks_go_and_the_body_stays() {
        let html = "<!DOCTYPE html>\n<HTML lang=\"ar\" dir=\"rtl\"><head><STYLE>p{color:red}</style>\
                    <title>t</title></head><body style=\"margin:0\" dir=\"rtl\">\
                    <table dir=\"rtl\"><tr><td style=\"direction:rtl\"><p>نص</p></td></tr></table>\
                    <header>x</header><style media=\"x\">y</style></body></html>";
        assert_eq!(
            sanitise(html),
            "<!DOCTYPE html>\n<html><head><title>t</title></head><body>\
             <table dir=\"rtl\"><tr><td style=\"direction:rtl\"><p>نص</p></td></tr></table>\
             <header>x</header></body></html>"
        );
    }
}
