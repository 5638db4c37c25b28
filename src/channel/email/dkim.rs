//! DKIM signatures (RFC 6376; Ed25519-SHA256 per RFC 8463): the keys of `email.dkim.key_file`
//! parsed once at start, every email signed relaxed/relaxed, and the DNS TXT records that
//! publish the keys (`sunset dkim-record`).

use std::path::Path;

use aws_lc_rs::digest::{self, SHA256};
use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair as _, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use lettre::message::Mailbox;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject as _;

use super::canonical::{self, Field};
use super::invalid;
use crate::config::{ConfigError, DkimAlgorithm, DkimConfig};

/// The config key of the key file, named in every error about it.
const KEY_FILE: &str = "email.dkim.key_file";

/// Receivers (Gmail, Outlook) ignore RSA signatures from shorter keys.
const RSA_MIN_BITS: usize = 2048;

/// The Ed25519 key of `rsa-sha256+ed25519-sha256` is published under `email.dkim.selector`
/// with this appended (`s1` → `s1-ed25519`): one selector setting names both records.
pub const ED25519_SELECTOR_SUFFIX: &str = "-ed25519";

/// Header fields every signature covers, present or not (a missing one is signed as absent,
/// so it cannot be added later).
const SIGNED: [&str; 8] = [
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-language",
];

/// Header fields covered when the email has them.
const SIGNED_WHEN_PRESENT: [&str; 2] = ["list-unsubscribe", "list-unsubscribe-post"];

/// Named once more than they occur: a second `From` or `Subject` added on the way (shown by
/// some clients instead of ours) breaks the signature.
const OVERSIGNED: [&str; 2] = ["from", "subject"];

/// Longest string in a DNS TXT record (RFC 1035 §3.3).
const TXT_STRING_MAX: usize = 255;

/// Characters of the `b=` value per header line.
const SIGNATURE_LINE: usize = 72;

/// A private key, parsed.
enum SigningKey {
    Rsa(RsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// One signature each email gets: its key and the tags written before `t=`.
struct Signature {
    key: SigningKey,
    selector: String,
    /// `v=1; a=…; c=relaxed/relaxed; d=…; s=…;`
    leading_tags: String,
}

/// One `h=` list, worked out once: the names, and the tag value they make.
struct HeaderList {
    names: Vec<&'static str>,
    /// `from:to:…`
    tag: String,
}

impl HeaderList {
    fn new(extra: &[&'static str]) -> HeaderList {
        let names: Vec<&'static str> = SIGNED
            .iter()
            .chain(extra)
            .chain(&OVERSIGNED)
            .copied()
            .collect();
        let tag = names.join(":");
        HeaderList { names, tag }
    }
}

/// The `h=` lists: without and with the `List-Unsubscribe` fields.
struct HeaderLists {
    plain: HeaderList,
    with_list: HeaderList,
}

impl HeaderLists {
    fn new() -> HeaderLists {
        HeaderLists {
            plain: HeaderList::new(&[]),
            with_list: HeaderList::new(&SIGNED_WHEN_PRESENT),
        }
    }
}

/// Signs emails with the configured key(s); built once per process.
pub struct DkimSigner {
    domain: String,
    signatures: Vec<Signature>,
    headers: HeaderLists,
    random: SystemRandom,
}

impl std::fmt::Debug for DkimSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkimSigner")
            .field("domain", &self.domain)
            .field(
                "selectors",
                &self
                    .signatures
                    .iter()
                    .map(|s| s.selector.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// The key refused to sign (it never does for a key that parsed).
#[derive(Debug, thiserror::Error)]
#[error("DKIM signing with the {0} key failed")]
pub struct SignError(&'static str);

impl DkimSigner {
    /// The signer `email.dkim` describes, or `None` when `key_file` is empty. A missing,
    /// unreadable, group- or other-accessible, non-PEM file, an RSA key under 2048 bits, or keys
    /// not matching `algorithm` are errors naming `email.dkim.key_file`. Warns when `domain` is
    /// neither `from`'s domain nor a parent of it (DMARC would not count the signature).
    pub fn from_config(
        config: &DkimConfig,
        from: &Mailbox,
    ) -> Result<Option<DkimSigner>, ConfigError> {
        if config.key_file.as_os_str().is_empty() {
            return Ok(None);
        }
        let domain = dns_name("email.dkim.domain", &config.domain)?;
        let selector = dns_name("email.dkim.selector", &config.selector)?;
        let keys = load_keys(&config.key_file)?;
        let (rsa, ed25519) = pick_keys(keys, config.algorithm, &config.key_file)?;
        let mut signatures = vec![Signature::new(rsa, &domain, selector.clone())];
        if let Some(ed25519) = ed25519 {
            let selector = format!("{selector}{ED25519_SELECTOR_SUFFIX}");
            signatures.push(Signature::new(ed25519, &domain, selector));
        }
        let from_domain = from.email.domain().to_ascii_lowercase();
        if from_domain != domain && !from_domain.ends_with(&format!(".{domain}")) {
            tracing::warn!(
                event = "dkim_not_aligned",
                dkim_domain = %domain,
                from_domain = %from_domain,
                "email.dkim.domain is neither email.from's domain nor a parent of it: DMARC \
                 will not count the signature"
            );
        }
        Ok(Some(DkimSigner {
            domain,
            signatures,
            headers: HeaderLists::new(),
            random: SystemRandom::new(),
        }))
    }

    /// The `DKIM-Signature` fields for `message` (CRLF line ends, header and body), each ending
    /// in CRLF, to be written above its first field. `timestamp` is `t=`, seconds since 1970.
    pub fn sign(&self, message: &[u8], timestamp: i64) -> Result<Vec<u8>, SignError> {
        let (header, body) = canonical::split(message);
        let fields = canonical::fields(header);
        let body_hash = BASE64.encode(canonical::relaxed_body_hash(body));
        let has_list = fields.iter().any(|f| {
            f.name
                .trim_ascii()
                .eq_ignore_ascii_case(b"list-unsubscribe")
        });
        let list = if has_list {
            &self.headers.with_list
        } else {
            &self.headers.plain
        };
        let mut signed = Vec::with_capacity(1024);
        for field in selected(&fields, &list.names) {
            canonical::relaxed_field(field.name, field.value, &mut signed);
            signed.extend_from_slice(b"\r\n");
        }
        let prefix_len = signed.len();
        let mut out = Vec::with_capacity(self.signatures.len() * 700);
        for signature in &self.signatures {
            let unsigned = format!(
                "DKIM-Signature: {}\r\n t={timestamp}; h={};\r\n bh={body_hash};\r\n b=",
                signature.leading_tags, list.tag
            );
            signed.truncate(prefix_len);
            let (name, value) = unsigned.split_at("DKIM-Signature".len());
            canonical::relaxed_field(name.as_bytes(), &value.as_bytes()[1..], &mut signed);
            let b = BASE64.encode(signature.key.sign(&signed, &self.random)?);
            out.extend_from_slice(unsigned.as_bytes());
            for (i, chunk) in b.as_bytes().chunks(SIGNATURE_LINE).enumerate() {
                if i > 0 {
                    out.extend_from_slice(b"\r\n  ");
                }
                out.extend_from_slice(chunk);
            }
            out.extend_from_slice(b"\r\n");
        }
        Ok(out)
    }

    /// One DNS TXT record per key, zone-file style:
    /// `s1._domainkey.example.com. IN TXT ( "v=DKIM1; k=rsa; p=…" "…" )`, strings ≤ 255 bytes.
    pub fn dns_records(&self) -> Vec<String> {
        self.signatures
            .iter()
            .map(|signature| {
                let text = signature.key.dns_text();
                let strings: Vec<String> = text
                    .as_bytes()
                    .chunks(TXT_STRING_MAX)
                    .map(|chunk| format!("\"{}\"", String::from_utf8_lossy(chunk)))
                    .collect();
                format!(
                    "{}._domainkey.{}. IN TXT ( {} )",
                    signature.selector,
                    self.domain,
                    strings.join(" ")
                )
            })
            .collect()
    }
}

impl Signature {
    fn new(key: SigningKey, domain: &str, selector: String) -> Signature {
        let leading_tags = format!(
            "v=1; a={}; c=relaxed/relaxed; d={domain}; s={selector};",
            key.algorithm()
        );
        Signature {
            key,
            selector,
            leading_tags,
        }
    }
}

impl SigningKey {
    /// `a=`'s algorithm.
    fn algorithm(&self) -> &'static str {
        match self {
            SigningKey::Rsa(_) => "rsa-sha256",
            SigningKey::Ed25519(_) => "ed25519-sha256",
        }
    }

    /// Signs the canonical header data: RSA over the data with SHA-256, Ed25519 over the
    /// SHA-256 of the data (RFC 8463 §3).
    fn sign(&self, data: &[u8], random: &SystemRandom) -> Result<Vec<u8>, SignError> {
        match self {
            SigningKey::Rsa(key) => {
                let mut out = vec![0; key.public_modulus_len()];
                key.sign(&signature::RSA_PKCS1_SHA256, random, data, &mut out)
                    .map_err(|_| SignError("RSA"))?;
                Ok(out)
            }
            SigningKey::Ed25519(key) => {
                let hash = digest::digest(&SHA256, data);
                Ok(key.sign(hash.as_ref()).as_ref().to_vec())
            }
        }
    }

    /// The TXT record's text: an RSA key as SubjectPublicKeyInfo, an Ed25519 key as its 32
    /// bytes (RFC 8463 §4).
    fn dns_text(&self) -> String {
        match self {
            SigningKey::Rsa(key) => {
                let public = key
                    .public_key()
                    .as_der()
                    .map(|der| BASE64.encode(der.as_ref()))
                    .unwrap_or_default();
                format!("v=DKIM1; k=rsa; p={public}")
            }
            SigningKey::Ed25519(key) => format!(
                "v=DKIM1; k=ed25519; p={}",
                BASE64.encode(key.public_key().as_ref())
            ),
        }
    }
}

/// For each name of `h=`, the field it covers: the last one of that name not yet taken
/// (RFC 6376 §5.4.2); a name with none left covers nothing.
fn selected<'a>(fields: &[Field<'a>], names: &[&str]) -> Vec<Field<'a>> {
    let mut taken = vec![false; fields.len()];
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let found =
            fields.iter().enumerate().rev().find(|(i, f)| {
                !taken[*i] && f.name.trim_ascii().eq_ignore_ascii_case(name.as_bytes())
            });
        if let Some((i, field)) = found {
            taken[i] = true;
            out.push(*field);
        }
    }
    out
}

/// A domain or selector: letters, digits, `-` and `.`, lower-cased.
fn dns_name(key: &str, value: &str) -> Result<String, ConfigError> {
    let value = value.trim().trim_end_matches('.');
    let valid = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    if valid {
        Ok(value.to_ascii_lowercase())
    } else {
        Err(invalid(
            key,
            format!("`{value}` is not a DNS name (letters, digits, `-`, `.`)"),
        ))
    }
}

/// Every private key in the owner-only PEM file at `path`.
fn load_keys(path: &Path) -> Result<Vec<SigningKey>, ConfigError> {
    let shown = path.display();
    let pem = crate::secret::read_file(KEY_FILE, path)?.unwrap_or_default();
    let mut keys = Vec::new();
    for item in PrivateKeyDer::pem_slice_iter(pem.as_bytes()) {
        let der = item.map_err(|e| invalid(KEY_FILE, format!("{shown} is not valid PEM: {e}")))?;
        keys.push(
            parse_key(&der).map_err(|problem| invalid(KEY_FILE, format!("{shown}: {problem}")))?,
        );
    }
    if keys.is_empty() {
        return Err(invalid(
            KEY_FILE,
            format!(
                "{shown} holds no PEM private key (`-----BEGIN PRIVATE KEY-----`); create one \
                 with `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out {shown}`"
            ),
        ));
    }
    Ok(keys)
}

/// An RSA (PKCS#1 or PKCS#8, ≥ 2048 bits) or Ed25519 (PKCS#8) key.
fn parse_key(der: &PrivateKeyDer<'_>) -> Result<SigningKey, String> {
    let rsa = match der {
        PrivateKeyDer::Pkcs1(der) => RsaKeyPair::from_der(der.secret_pkcs1_der()),
        PrivateKeyDer::Pkcs8(der) => {
            let der = der.secret_pkcs8_der();
            if let Ok(key) = Ed25519KeyPair::from_pkcs8(der) {
                return Ok(SigningKey::Ed25519(key));
            }
            RsaKeyPair::from_pkcs8(der)
        }
        PrivateKeyDer::Sec1(_) => {
            return Err("holds an EC key; DKIM signs with RSA or Ed25519".into());
        }
        _ => return Err("holds a key of an unknown kind; DKIM signs with RSA or Ed25519".into()),
    };
    let key = rsa.map_err(|e| format!("not an RSA (≥ {RSA_MIN_BITS} bits) or Ed25519 key: {e}"))?;
    let bits = key.public_modulus_len() * 8;
    if bits < RSA_MIN_BITS {
        return Err(format!(
            "the RSA key has {bits} bits; receivers need at least {RSA_MIN_BITS}"
        ));
    }
    Ok(SigningKey::Rsa(key))
}

/// The RSA key, and the Ed25519 key when `algorithm` asks for both; any other mix is an error.
fn pick_keys(
    keys: Vec<SigningKey>,
    algorithm: DkimAlgorithm,
    path: &Path,
) -> Result<(SigningKey, Option<SigningKey>), ConfigError> {
    let shown = path.display();
    let (mut rsa, mut ed25519) = (Vec::new(), Vec::new());
    for key in keys {
        match key {
            SigningKey::Rsa(_) => rsa.push(key),
            SigningKey::Ed25519(_) => ed25519.push(key),
        }
    }
    let found = format!(
        "{shown} holds {} RSA and {} Ed25519 key(s)",
        rsa.len(),
        ed25519.len()
    );
    let wanted = match algorithm {
        DkimAlgorithm::RsaSha256 => (1, 0),
        DkimAlgorithm::RsaSha256AndEd25519 => (1, 1),
    };
    if (rsa.len(), ed25519.len()) != wanted {
        let need = match algorithm {
            DkimAlgorithm::RsaSha256 => {
                "email.dkim.algorithm `rsa-sha256` takes exactly one RSA key"
            }
            DkimAlgorithm::RsaSha256AndEd25519 => {
                "email.dkim.algorithm `rsa-sha256+ed25519-sha256` takes one RSA and one \
                 Ed25519 key, both in this file"
            }
        };
        return Err(invalid(KEY_FILE, format!("{found}; {need}")));
    }
    Ok((rsa.remove(0), ed25519.pop()))
}
