//! Bearer tokens of the `distill.v1.Teacher` service: the secret type both sides hold, the
//! token files both read, and the metadata they travel in (`authorization: Bearer TOKEN`).
//!
//! A [`Token`] never prints: its `Debug` is `Token(<redacted>)` and it has no `Display`, so it
//! cannot leak into logs, `{:?}` of a configuration, errors or reports by accident. Errors about
//! a token file name the file and the line, never the token.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The gRPC metadata key of the bearer token.
pub const AUTHORIZATION: &str = "authorization";
/// The scheme prefix of the metadata value, as this crate writes it (readers accept any case, see
/// [`bearer_token`]).
pub const BEARER: &str = "Bearer ";

/// The token of an `authorization` value `Bearer TOKEN`, or `None` for another scheme or no
/// space after it. The scheme is matched without regard to case (RFC 7235 §2.1: `bearer` and
/// `BEARER` are `Bearer` too) and may be followed by several spaces. The token is returned as
/// sent, for the caller to compare in constant time.
pub fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let scheme = BEARER.trim_end().as_bytes();
    let (head, rest) = value.split_at_checked(scheme.len())?;
    if !head.eq_ignore_ascii_case(scheme) || rest.first() != Some(&b' ') {
        return None;
    }
    let start = rest.iter().position(|&b| b != b' ').unwrap_or(rest.len());
    Some(&rest[start..])
}

/// A bearer token: 1 to 4096 visible ASCII characters (what an HTTP/2 header value may carry
/// unescaped), with a redacting `Debug` and no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Longest token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 4096;

impl Token {
    /// The token's characters, to put on the wire or compare. Never log them.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The metadata value `Bearer TOKEN`.
    pub fn bearer(&self) -> String {
        format!("{BEARER}{}", self.0)
    }
}

impl FromStr for Token {
    type Err = String;

    /// Checks `s` (trimmed of surrounding white space) is a usable token; the error describes
    /// what is wrong without quoting the value.
    fn from_str(s: &str) -> Result<Token, String> {
        let t = s.trim();
        if t.is_empty() {
            return Err("expected a token (visible ASCII characters), got an empty value".into());
        }
        if t.len() > MAX_TOKEN_BYTES {
            return Err(format!(
                "expected at most {MAX_TOKEN_BYTES} bytes, got a token of {} bytes",
                t.len()
            ));
        }
        if let Some(pos) = t.bytes().position(|b| !b.is_ascii_graphic()) {
            return Err(format!(
                "expected visible ASCII characters only (no spaces or control characters), got another character at position {}",
                pos + 1
            ));
        }
        Ok(Token(t.to_string()))
    }
}

/// Why a token file cannot be used. Names the file (and the line), never a token.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file cannot be read.
    #[error("{flag} {}: cannot read the token file: {source}", path.display())]
    Read {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file holds no token.
    #[error("{flag} {}: expected one token per line, got an empty file", path.display())]
    Empty {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// A line is not a usable token.
    #[error("{flag} {} line {line}: {reason}", path.display())]
    Invalid {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// More tokens than the reader takes.
    #[error("{flag} {}: expected {expected}, got {got} tokens", path.display())]
    TooMany {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What the reader takes.
        expected: &'static str,
        /// Tokens in the file.
        got: usize,
    },
}

/// Reads the tokens of `path`, one per line; blank lines and lines starting with `#` are
/// skipped. `flag` names the flag in errors (e.g. `--auth-token-file`).
///
/// # Errors
/// [`TokenFileError`] for an unreadable file, a file without tokens, or a line that is not a
/// token (see [`Token::from_str`]).
pub fn read_token_file(flag: &'static str, path: &Path) -> Result<Vec<Token>, TokenFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
        flag,
        path: path.to_path_buf(),
        source,
    })?;
    let mut tokens = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        tokens.push(
            line.parse::<Token>()
                .map_err(|reason| TokenFileError::Invalid {
                    flag,
                    path: path.to_path_buf(),
                    line: i + 1,
                    reason,
                })?,
        );
    }
    if tokens.is_empty() {
        return Err(TokenFileError::Empty {
            flag,
            path: path.to_path_buf(),
        });
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_never_print_and_bad_ones_are_not_quoted() {
        let t: Token = " s3cret-Value \n".parse().unwrap();
        assert_eq!(t.expose(), "s3cret-Value");
        assert_eq!(t.bearer(), "Bearer s3cret-Value");
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
        assert_eq!(format!("{:?}", Some(t)), "Some(Token(<redacted>))");
        let e = "two words".parse::<Token>().unwrap_err();
        assert!(e.contains("position 4") && !e.contains("words"), "{e}");
        assert!("".parse::<Token>().unwrap_err().contains("empty"));
    }

    #[test]
    fn the_bearer_scheme_is_matched_in_any_case() {
        for value in ["Bearer abc", "bearer abc", "BEARER abc", "bEaReR  abc"] {
            assert_eq!(
                bearer_token(value.as_bytes()),
                Some(&b"abc"[..]),
                "{value:?}"
            );
        }
        assert_eq!(bearer_token(b"Bearer "), Some(&b""[..]));
        for value in ["Bearerabc", "Basic abc", "abc", "Bearer", "", "Bear abc"] {
            assert_eq!(bearer_token(value.as_bytes()), None, "{value:?}");
        }
        // The token keeps its case: only the scheme is case-insensitive.
        assert_eq!(bearer_token(b"bearer AbC"), Some(&b"AbC"[..]));
    }

    #[test]
    fn token_files_skip_blanks_and_comments_and_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("distill-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("tokens");
        std::fs::write(&f, "# rotated 2026-11\nfirst\n\n  second  \n").unwrap();
        let t = read_token_file("--auth-token-file", &f).unwrap();
        assert_eq!(
            t.iter().map(Token::expose).collect::<Vec<_>>(),
            ["first", "second"]
        );
        std::fs::write(&f, "\n# nothing\n").unwrap();
        let e = read_token_file("--auth-token-file", &f)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&f.display().to_string()) && e.contains("empty"),
            "{e}"
        );
        std::fs::write(&f, "ok\nbad token\n").unwrap();
        let e = read_token_file("--auth-token-file", &f)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && !e.contains("bad token"), "{e}");
        let missing = dir.join("missing");
        let e = read_token_file("--auth-token-file", &missing)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&missing.display().to_string()), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
