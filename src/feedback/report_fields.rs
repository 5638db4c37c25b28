//! The header-field blocks of the machine-readable parts of a delivery status notification
//! (`message/delivery-status`, RFC 3464) and an abuse report (`message/feedback-report`,
//! RFC 5965), and the scrubbing of their free text before it is logged or kept.

use std::sync::LazyLock;

use regex::Regex;

use crate::batch::EmailAddress;

/// The longest detail kept from a diagnostic text.
const DETAIL_MAX: usize = 200;

/// One block of `Name: value` fields; names compared case-insensitively.
#[derive(Debug, Default)]
pub struct Fields(Vec<(String, String)>);

impl Fields {
    /// The first value of `name`, trimmed.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(field, _)| field.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// The blocks of `text`, separated by empty lines; continuation lines (starting with a space or
/// tab) are unfolded into the field before them, and lines that are not fields are skipped.
pub fn blocks(text: &str) -> Vec<Fields> {
    let mut blocks = Vec::new();
    let mut current = Fields::default();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            if !current.0.is_empty() {
                blocks.push(std::mem::take(&mut current));
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = current.0.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            current
                .0
                .push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    if !current.0.is_empty() {
        blocks.push(current);
    }
    blocks
}

/// The address of a typed address field (`rfc822; user@example.com`, `<user@example.com>`).
pub fn typed_address(value: &str) -> Option<EmailAddress> {
    let address = value.rsplit_once(';').map_or(value, |(_, address)| address);
    let address = address.trim().trim_start_matches('<').trim_end_matches('>');
    EmailAddress::parse(address).ok()
}

/// `text` with every address replaced by `…` and cut to a short single line, for a report's
/// detail: diagnostics quote the recipient, which logs and metrics must not.
pub fn without_addresses(text: &str) -> String {
    static ADDRESS: LazyLock<Option<Regex>> =
        LazyLock::new(|| Regex::new(r"[^\s<>()\[\]]+@[^\s<>()\[\]]+").ok());
    let single_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let scrubbed = match ADDRESS.as_ref() {
        Some(address) => address.replace_all(&single_line, "…").into_owned(),
        None => String::new(),
    };
    match scrubbed.char_indices().nth(DETAIL_MAX) {
        Some((end, _)) => format!("{}…", &scrubbed[..end]),
        None => scrubbed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_split_on_empty_lines_and_folded_fields_are_joined() {
        let text = "Reporting-MTA: dns; mx.example\r\n\r\nFinal-Recipient: rfc822; a@users.test\r\n\
                    Action: failed\r\nDiagnostic-Code: smtp; 550 5.1.1\r\n  user unknown\r\n\r\n\r\n";
        let blocks = blocks(text);
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].get("reporting-mta"), Some("dns; mx.example"));
        assert_eq!(blocks[1].get("ACTION"), Some("failed"));
        assert_eq!(
            blocks[1].get("Diagnostic-Code"),
            Some("smtp; 550 5.1.1 user unknown")
        );
        assert_eq!(
            typed_address(blocks[1].get("Final-Recipient").unwrap_or_default())
                .map(|a| a.as_str().to_string()),
            Some("a@users.test".to_string())
        );
    }

    #[test]
    fn details_show_no_address_and_stay_short() {
        let detail =
            without_addresses("550 5.1.1 <nobody@users.test>: Recipient address rejected\n (x@y)");
        assert_eq!(detail, "550 5.1.1 <…>: Recipient address rejected (…)");
        assert!(without_addresses(&"x".repeat(1000)).chars().count() <= DETAIL_MAX + 1);
    }
}
