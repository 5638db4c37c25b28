//! Secrets (the SMTP password, the push token): from an environment variable, or from the file
//! that `<VAR>_FILE` names if only its owner may read it. Never from `sunset.toml`, never printed;
//! URLs shown with their password hidden.

use std::fmt;
use std::fs::File;
use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use crate::config::ConfigError;

/// Permission bits a secret file must not have: any access for group or others.
const SHARED_BITS: u32 = 0o077;

/// A secret value (a password, a token): `Debug` and `Display` show `***`, never the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret given by other means than the environment (tests, a secrets store).
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret from `var` or the file `<var>_FILE` names, as [`read`] gives it.
    pub fn from_env(var: &str) -> Result<Option<Secret>, ConfigError> {
        Ok(read(var)?.map(Secret))
    }

    /// The value itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The URL with any password replaced, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme && url[scheme + 3..at].contains(':') => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// The secret from `var`, or from the file named by `<var>_FILE`; `None` when neither is set
/// or the value is empty. A file readable or writable by group or others, both variables set,
/// or an unreadable file are configuration errors (exit 2) that name the variable and file but
/// never quote the secret. Trailing line ends of a file are dropped (`echo s3cret > file`).
pub fn read(var: &str) -> Result<Option<String>, ConfigError> {
    let file_var = format!("{var}_FILE");
    let value = env(var)?;
    let path = env(&file_var)?;
    match (value, path) {
        (Some(_), Some(_)) => Err(invalid(format!(
            "{var} and {file_var} are both set; set only one"
        ))),
        (Some(value), None) => Ok(Some(value.trim().to_string()).filter(|v| !v.is_empty())),
        (None, Some(path)) => from_file(&file_var, Path::new(&path)),
        (None, None) => Ok(None),
    }
}

/// A variable's value; unset and empty are the same.
fn env(var: &str) -> Result<Option<String>, ConfigError> {
    match std::env::var(var) {
        Ok(value) if value.is_empty() => Ok(None),
        Ok(value) => Ok(Some(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(invalid(format!("{var} is not UTF-8"))),
    }
}

/// The secret in the owner-only file at `path`, which the config key `key` names (a key such
/// as `feedback.secret_file`); `None` when the file is empty. Errors as for [`read`].
pub fn read_file(key: &str, path: &Path) -> Result<Option<String>, ConfigError> {
    from_file(&format!("key `{key}`"), path)
}

fn from_file(file_var: &str, path: &Path) -> Result<Option<String>, ConfigError> {
    let shown = path.display();
    let mut file =
        File::open(path).map_err(|e| invalid(format!("{file_var}: cannot open {shown}: {e}")))?;
    // The mode of the file opened, not of a name that could be swapped in between.
    let metadata = file
        .metadata()
        .map_err(|e| invalid(format!("{file_var}: cannot stat {shown}: {e}")))?;
    if !metadata.is_file() {
        return Err(invalid(format!(
            "{file_var}: {shown} is not a regular file"
        )));
    }
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & SHARED_BITS != 0 {
        return Err(invalid(format!(
            "{file_var}: {shown} has mode {mode:04o}: group or others may read it; \
             make it readable by its owner only (chmod 600 {shown})"
        )));
    }
    let mut secret = String::new();
    file.read_to_string(&mut secret)
        .map_err(|e| invalid(format!("{file_var}: cannot read {shown}: {e}")))?;
    let secret = secret.trim_end_matches(['\r', '\n']);
    Ok(Some(secret.to_string()).filter(|s| !s.is_empty()))
}

fn invalid(problem: String) -> ConfigError {
    ConfigError::Invalid(format!("  {problem}"))
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn file_with_mode(contents: &str, mode: u32) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("secret");
        fs::write(&path, contents).expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
        (dir, path)
    }

    #[test]
    fn a_secret_never_prints() {
        let secret = Secret::new("hunter2");
        let shown = format!("{secret:?} {secret} {:?}", Some(&secret));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn passwords_never_show_in_urls() {
        assert_eq!(
            redact("amqp://guest:secret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(redact("amqp://host:5672"), "amqp://host:5672");
        assert_eq!(
            redact("postgres://postgres@127.0.0.1:5432/test"),
            "postgres://postgres@127.0.0.1:5432/test",
            "no password, nothing to hide"
        );
    }

    #[test]
    fn an_owner_only_file_gives_its_first_line_without_the_line_end() {
        let (_dir, path) = file_with_mode("s3cret\n", 0o600);
        assert_eq!(
            from_file("X_FILE", &path).expect("readable").as_deref(),
            Some("s3cret")
        );
    }

    #[test]
    fn a_file_others_may_read_is_refused_naming_file_and_mode_but_not_the_secret() {
        for mode in [0o644, 0o640, 0o604, 0o660, 0o602] {
            let (_dir, path) = file_with_mode("s3cret", mode);
            let error = from_file("X_FILE", &path)
                .expect_err("shared file")
                .to_string();
            assert!(error.contains(&format!("{mode:04o}")), "{error}");
            assert!(error.contains(&path.display().to_string()), "{error}");
            assert!(!error.contains("s3cret"), "{error}");
        }
    }
}
