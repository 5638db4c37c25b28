//! `email.url`: `smtp://[user@]host[:port][?tls=required]` or `smtps://…`, parsed once, with any
//! password put in the URL by mistake refused and never quoted.

use super::PASSWORD_ENV;
use crate::secret::redact;

/// How the session is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Security {
    /// `smtp://`: plain text; no opportunistic STARTTLS.
    Plain,
    /// `smtp://…?tls=required`: STARTTLS, or no session at all.
    StartTls,
    /// `smtps://`: TLS from the first byte.
    Implicit,
}

/// `email.url`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SmtpUrl {
    /// Host name or IP address (IPv6 without brackets); also the TLS server name.
    pub(super) host: String,
    /// Port; 25 for `smtp://` and 465 for `smtps://` when not given.
    pub(super) port: u16,
    /// Plain text, STARTTLS or TLS from the first byte.
    pub(super) security: Security,
    /// The URL's user part, percent-decoded.
    pub(super) username: Option<String>,
}

impl SmtpUrl {
    /// Accepts `smtp://[user@]host[:port][/][?tls=required]` and `smtps://[user@]host[:port][/]`.
    /// Errors quote the URL with any password masked: a password put in the URL by mistake
    /// must not reach a terminal or a log.
    pub(super) fn parse(url: &str) -> Result<SmtpUrl, String> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            "the URL is not like smtp://host:port or smtps://host:port".to_string()
        })?;
        let url = redact(url);
        let (mut security, default_port) = match scheme.to_ascii_lowercase().as_str() {
            "smtp" => (Security::Plain, 25),
            "smtps" => (Security::Implicit, 465),
            other => return Err(format!("unknown scheme `{other}` (expected smtp or smtps)")),
        };
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair {
                "tls=required" if security == Security::Plain => security = Security::StartTls,
                "tls=required" => {}
                other => return Err(format!("unknown parameter `{other}` (only tls=required)")),
            }
        }
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') {
            return Err(format!("`{url}` has a path; expected only host and port"));
        }
        let (username, host_port) = match rest.rsplit_once('@') {
            Some((user, _)) if user.contains(':') => {
                return Err(format!(
                    "put the password in the environment variable {PASSWORD_ENV}, not in the URL"
                ));
            }
            Some((user, host_port)) => (Some(percent_decode(user)?), host_port),
            None => (None, rest),
        };
        let (host, port) = split_host_port(host_port)?;
        if host.is_empty() {
            return Err(format!("`{url}` names no host"));
        }
        Ok(SmtpUrl {
            host: host.to_string(),
            port: port.unwrap_or(default_port),
            security,
            username: username.filter(|u| !u.is_empty()),
        })
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(host_port: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| format!("`{host_port}`: unclosed `[`"))?;
        (host, after.strip_prefix(':'))
    } else {
        match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    let port = port
        .map(|p| {
            p.parse::<u16>()
                .map_err(|_| format!("`{p}` is not a port number"))
        })
        .transpose()?;
    Ok((host, port))
}

fn percent_decode(raw: &str) -> Result<String, String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = raw
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape in `{raw}`"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("`{raw}` does not decode to UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smtp_urls_pick_host_port_security_and_user() {
        let url = SmtpUrl::parse("smtp://127.0.0.1:1025").expect("valid");
        assert_eq!(
            (url.host.as_str(), url.port, url.security, url.username),
            ("127.0.0.1", 1025, Security::Plain, None)
        );
        let url = SmtpUrl::parse("smtp://relay.example:587/?tls=required").expect("valid");
        assert_eq!((url.port, url.security), (587, Security::StartTls));
        let url = SmtpUrl::parse("smtps://mailer%40xiami@smtp.example").expect("valid");
        assert_eq!(url.port, 465);
        assert_eq!(url.security, Security::Implicit);
        assert_eq!(url.username.as_deref(), Some("mailer@xiami"));
        let url = SmtpUrl::parse("smtp://[::1]:2525").expect("valid");
        assert_eq!((url.host.as_str(), url.port), ("::1", 2525));
        for bad in [
            "127.0.0.1:25",
            "http://127.0.0.1",
            "smtp://user:secret@host",
            "smtp://host:port",
            "smtp://host?tls=maybe",
            "smtp://host/path",
            "smtp://",
        ] {
            assert!(SmtpUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn url_errors_never_quote_a_password() {
        for bad in [
            "smtp://user:hunter2@host/path",
            "smtp://user:hunter2@",
            "user:hunter2@host",
            "smtp://user:hunter2@host?x=1",
            "smtp://user:hunter2@host:99999",
        ] {
            let error = SmtpUrl::parse(bad).expect_err(bad);
            assert!(!error.contains("hunter2"), "{bad}: {error}");
        }
    }
}
