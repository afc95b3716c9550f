//! Secret files (`api.token_file`, `queues.password_file`): readable, only
//! by their owner, and not empty.

use std::path::Path;

/// Why a secret file cannot be used.
#[derive(Debug)]
pub enum SecretFileError {
    Read(std::io::Error),
    /// Readable by group or others (the mode).
    Mode(u32),
    Empty,
}

/// The trimmed content of a secret file.
pub fn read_secret_file(path: &Path) -> Result<String, SecretFileError> {
    let text = std::fs::read_to_string(path).map_err(SecretFileError::Read)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(SecretFileError::Read)?
            .permissions()
            .mode()
            & 0o7777;
        if mode & 0o077 != 0 {
            return Err(SecretFileError::Mode(mode));
        }
    }
    match text.trim() {
        "" => Err(SecretFileError::Empty),
        t => Ok(t.to_string()),
    }
}

impl SecretFileError {
    /// What is wrong, and what is allowed, for a startup error.
    pub fn describe(&self) -> (&'static str, String) {
        match self {
            SecretFileError::Read(e) => ("unreadable", format!("a readable file ({e})")),
            SecretFileError::Mode(m) => (
                "readable by group or others",
                format!("a file only its owner can read (chmod 600; it has {m:04o})"),
            ),
            SecretFileError::Empty => ("empty", "a file holding the secret".to_string()),
        }
    }
}
