//! The parts of a notice: the files a locale folder holds, the channel each is sent by, and
//! how a rendered part is tidied.

use crate::names::Channel;

/// The longest push title and body, in characters, that gateways display whole.
pub const PUSH_TITLE_MAX: usize = 50;
/// See [`PUSH_TITLE_MAX`].
pub const PUSH_BODY_MAX: usize = 150;

/// One of the files a locale of a template consists of: five it must have, and
/// `from_name.hbs` it may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Part {
    /// `subject.hbs`: the email subject, one line.
    Subject,
    /// `email.txt.hbs`: the plain-text part.
    Text,
    /// `email.html.hbs`: the HTML part, the only one with HTML-escaped values.
    Html,
    /// `push_title.hbs`.
    PushTitle,
    /// `push_body.hbs`.
    PushBody,
    /// `from_name.hbs` (optional): the email's `From` display name, one line.
    FromName,
}

impl Part {
    /// Every part, in the order a notice is shown.
    pub const ALL: [Part; 6] = [
        Part::Subject,
        Part::Text,
        Part::Html,
        Part::PushTitle,
        Part::PushBody,
        Part::FromName,
    ];

    /// Whether a locale may lack the file: without `from_name.hbs` the email is from
    /// `email.from`'s name.
    pub fn is_optional(self) -> bool {
        self == Part::FromName
    }

    /// A rendered part as a notice holds it: titles on one line, the push body trimmed.
    pub(super) fn tidy(self, rendered: String) -> String {
        match self {
            Part::Subject | Part::PushTitle | Part::FromName => one_line(&rendered),
            Part::PushBody if rendered.trim().len() != rendered.len() => {
                rendered.trim().to_string()
            }
            Part::Text | Part::Html | Part::PushBody => rendered,
        }
    }

    /// The file name inside a locale folder.
    pub fn file_name(self) -> &'static str {
        match self {
            Part::Subject => "subject.hbs",
            Part::Text => "email.txt.hbs",
            Part::Html => "email.html.hbs",
            Part::PushTitle => "push_title.hbs",
            Part::PushBody => "push_body.hbs",
            Part::FromName => "from_name.hbs",
        }
    }

    /// The channel the part is sent by.
    pub fn channel(self) -> Channel {
        match self {
            Part::Subject | Part::Text | Part::Html | Part::FromName => Channel::Email,
            Part::PushTitle | Part::PushBody => Channel::Push,
        }
    }
}

/// A header-safe single line: control characters (CR, LF, tab, …) become spaces, ends trimmed.
pub fn one_line(value: &str) -> String {
    value
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_removes_line_breaks_and_control_characters() {
        assert_eq!(one_line(" Hi\r\nBcc: x@y\t!\n"), "Hi  Bcc: x@y !");
    }
}
