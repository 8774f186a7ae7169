//! Usernames and passwords (RFC 1929) from `socks.credentialsFile`: one
//! `user:password` a line (the password is everything after the first
//! `:`); blank lines and lines starting with `#` are skipped. A malformed
//! line is an error naming the file and the line, so the entry never starts
//! with fewer users than the operator wrote.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::handshake::Login;

/// The accepted logins.
#[derive(Clone, Default)]
pub struct Credentials {
    users: HashMap<Vec<u8>, Vec<u8>>,
}

/// Never print passwords.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("users", &self.users.len()).finish()
    }
}

/// A credentials file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read the SOCKS credentials file {path} (socks.credentialsFile): {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("SOCKS credentials file {path} line {line}: {reason}")]
    Line { path: PathBuf, line: usize, reason: String },
    #[error("SOCKS credentials file {path} (socks.credentialsFile) names no user")]
    Empty { path: PathBuf },
}

impl Credentials {
    pub fn from_file(path: &Path) -> Result<Self, CredentialsError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| CredentialsError::Read { path: path.to_owned(), source })?;
        Self::parse(&text, path)
    }

    /// Parses the file's text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, CredentialsError> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let bad =
                |reason: &str| CredentialsError::Line { path: path.to_owned(), line: i + 1, reason: reason.into() };
            let trimmed = line.trim_end_matches('\r');
            if trimmed.trim().is_empty() || trimmed.trim_start().starts_with('#') {
                continue;
            }
            let Some((user, password)) = trimmed.split_once(':') else {
                return Err(bad("expected user:password"));
            };
            if user.is_empty() || password.is_empty() {
                return Err(bad("the user and the password must not be empty"));
            }
            if user.len() > 255 || password.len() > 255 {
                return Err(bad("the user and the password are at most 255 bytes each (RFC 1929)"));
            }
            if users.insert(user.as_bytes().to_vec(), password.as_bytes().to_vec()).is_some() {
                return Err(bad(&format!("user {user:?} is listed twice")));
            }
        }
        if users.is_empty() {
            return Err(CredentialsError::Empty { path: path.to_owned() });
        }
        Ok(Self { users })
    }

    /// Whether `login` is one of the accepted ones (the password compared in
    /// time independent of where it differs).
    pub fn accepts(&self, login: &Login) -> bool {
        match self.users.get(&login.user) {
            Some(password) => {
                password.len() == login.password.len()
                    && password.iter().zip(&login.password).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
            }
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(user: &str, password: &str) -> Login {
        Login { user: user.into(), password: password.into() }
    }

    #[test]
    fn lines_comments_and_colons_in_passwords() {
        let c = Credentials::parse("# operators\nalice:s3cret\n\nbob:pa:ss\r\n", Path::new("/etc/socks")).unwrap();
        assert_eq!(c.len(), 2);
        assert!(c.accepts(&login("alice", "s3cret")));
        assert!(c.accepts(&login("bob", "pa:ss")));
        assert!(!c.accepts(&login("alice", "s3cre")));
        assert!(!c.accepts(&login("alice", "s3cret!")));
        assert!(!c.accepts(&login("carol", "s3cret")));
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn a_bad_file_names_the_file_and_the_line() {
        for (text, line, why) in [
            ("alice:x\nbob\n", 2, "expected user:password"),
            ("\n\n:x\n", 3, "must not be empty"),
            ("alice:\n", 1, "must not be empty"),
            ("a:1\na:2\n", 2, "listed twice"),
        ] {
            let e = Credentials::parse(text, Path::new("/etc/edgemesh/socks.txt")).unwrap_err().to_string();
            assert!(
                e.contains("/etc/edgemesh/socks.txt") && e.contains(&format!("line {line}")) && e.contains(why),
                "{e}"
            );
        }
        let e = Credentials::parse("# nobody\n", Path::new("/f")).unwrap_err().to_string();
        assert!(e.contains("names no user"), "{e}");
        let e = Credentials::from_file(Path::new("/nonexistent/socks.txt")).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/socks.txt") && e.contains("socks.credentialsFile"), "{e}");
    }
}
