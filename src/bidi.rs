//! Bidirectional text: isolating recipient values from the text around them, and the marks that
//! keep right-to-left plain text in order in clients that guess direction.

/// FIRST STRONG ISOLATE: the value's own first strong letter sets its direction.
pub const FSI: char = '\u{2068}';
/// POP DIRECTIONAL ISOLATE: ends the isolate [`FSI`] opened.
pub const PDI: char = '\u{2069}';
/// RIGHT-TO-LEFT MARK.
pub const RLM: char = '\u{200F}';
/// LEFT-TO-RIGHT MARK.
pub const LRM: char = '\u{200E}';

/// Embeddings, overrides and isolates (U+202A–202E, U+2066–2069): in recipient data they reorder
/// the notice's own text after them, so recipients carrying them are refused.
pub fn is_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// `value` between FSI and PDI, so a Latin name in Arabic text (or the reverse) keeps its
/// own order and leaves the sentence's punctuation where it was.
pub fn isolate(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 6);
    out.push(FSI);
    out.push_str(value);
    out.push(PDI);
    out
}

/// Right-to-left plain text made safe for clients that lay each line out by its first strong
/// letter (or as left-to-right): every non-empty line starts with RLM, and every URL is followed
/// by LRM so a trailing `/` or `.` stays at its end.
pub fn mark_rtl_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        if !body.trim().is_empty() && !body.starts_with(RLM) {
            out.push(RLM);
        }
        let mut rest = body;
        while let Some(start) = rest.find("http://").or_else(|| rest.find("https://")) {
            let end = rest[start..]
                .find(|c: char| c.is_whitespace() || c == LRM)
                .map_or(rest.len(), |len| start + len);
            out.push_str(&rest[..end]);
            if !rest[end..].starts_with(LRM) {
                out.push(LRM);
            }
            rest = &rest[end..];
        }
        out.push_str(rest);
        out.push_str(&line[body.len()..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtl_lines_start_with_rlm_and_urls_end_with_lrm() {
        let text = "مرحبًا،\n\nالرابط:\nhttps://x.example/e\r\nانظر https://y.example/ الآن.\n";
        assert_eq!(
            mark_rtl_text(text),
            "\u{200F}مرحبًا،\n\n\u{200F}الرابط:\n\u{200F}https://x.example/e\u{200E}\r\n\
             \u{200F}انظر https://y.example/\u{200E} الآن.\n"
        );
        assert_eq!(mark_rtl_text(&mark_rtl_text(text)), mark_rtl_text(text));
    }

    #[test]
    fn only_embeddings_overrides_and_isolates_are_controls() {
        for c in ['\u{202A}', '\u{202E}', '\u{2066}', '\u{2069}'] {
            assert!(is_control(c), "{c:?}");
        }
        for c in ['\u{200E}', '\u{200F}', 'a', 'ب', '\u{2065}', '\u{202F}'] {
            assert!(!is_control(c), "{c:?}");
        }
        assert_eq!(isolate("DJ K."), "\u{2068}DJ K.\u{2069}");
    }
}
