//! Property tests (proptest) of the answer-head parser every push reply goes through: it never
//! panics on any bytes, and a valid head cut short waits for more, whole gives its fields.

use proptest::prelude::*;

use super::parse_head;

/// Header lines that steer the parser: lengths, codings, `close`, `Retry-After`, and noise.
fn header_line() -> impl Strategy<Value = String> {
    let name = prop::sample::select(vec![
        "Content-Length",
        "content-length",
        "Transfer-Encoding",
        "Connection",
        "Retry-After",
        "X-Other",
        "Server",
    ]);
    let value = prop::sample::select(vec![
        "0",
        "2",
        "18446744073709551616",
        "-1",
        "chunked",
        "gzip, chunked",
        "gzip",
        "close",
        "keep-alive",
        "7",
        "Wed, 21 Oct 2015 07:28:00 GMT",
        "",
        " x ",
        "名",
    ]);
    (name, value).prop_map(|(name, value)| format!("{name}: {value}\r\n"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_the_head_parser(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(Some(head)) = parse_head(&bytes) {
            prop_assert!(head.size <= bytes.len());
        }
    }

    #[test]
    fn a_valid_head_waits_when_cut_short_and_gives_its_status_when_whole(
        status in 100u16..600,
        lines in prop::collection::vec(header_line(), 0..8),
    ) {
        let head = format!("HTTP/1.1 {status} Reason\r\n{}\r\n", lines.concat());
        let bytes = head.as_bytes();
        for cut in 0..bytes.len() {
            prop_assert!(parse_head(&bytes[..cut]).map_or(true, |partial| partial.is_none()));
        }
        if let Ok(Some(parsed)) = parse_head(bytes) {
            prop_assert_eq!(parsed.status.as_u16(), status);
            prop_assert_eq!(parsed.size, bytes.len());
        }
    }
}
