//! Bad input from the command line or a file it names: the error every command returns for
//! what the user must fix (exit 2).

/// Bad input from the command line or a file it names (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);
