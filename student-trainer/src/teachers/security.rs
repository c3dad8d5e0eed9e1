//! How the student reaches its teachers safely: TLS (`--tls-ca`, `--tls-cert`, `--tls-key`,
//! `--tls-server-name`, `https://` URLs), the bearer token (`--auth-token-file`,
//! `STUDENT_AUTH_TOKEN`) and compression (`--compression`).
//!
//! [`ConnectionConfig`] is the validated, file-free part (built in [`crate::config`]);
//! [`ConnectionConfig::load`] reads the files when a command starts, with errors naming them.
//! The loaded [`ClientSecurity`] travels in [`crate::client::ClientOptions`]; its `Debug` shows
//! no key and no token.

use crate::cli::{Compression, ConnectionArgs};
use crate::config::ConfigError;
use distill_proto::auth::{self, Token};
use std::fmt;
use std::path::{Path, PathBuf};
use tonic::codec::CompressionEncoding;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// Where the bearer token comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TokenSource {
    /// No token.
    #[default]
    None,
    /// `--auth-token-file`: a file of one token.
    File(PathBuf),
    /// `STUDENT_AUTH_TOKEN` (or `--auth-token`).
    Value(Token),
}

/// Validated connection settings (no file read yet).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConnectionConfig {
    /// Whether the teachers are reached over TLS (`https://` URLs, or `--tls-ca` /
    /// `--tls-server-name` / `--tls-cert`; `dns://` replicas then become `https://` ones).
    pub tls: bool,
    /// `--tls-ca`: the CA file (`None`: the system's roots).
    pub ca: Option<PathBuf>,
    /// `--tls-cert` and `--tls-key`: a client identity for mutual TLS.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// `--tls-server-name`: the name the certificates are checked against.
    pub server_name: Option<String>,
    /// The bearer token's source.
    pub token: TokenSource,
    /// `--compression`.
    pub compression: Compression,
}

fn invalid(flag: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        flag,
        reason: reason.into(),
    }
}

impl ConnectionConfig {
    /// Validates the flags against the teacher URLs (after [`crate::config::teacher_url`]).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for a bad token value, an empty server name, or an `http://`
    /// URL while TLS is on (the message names the URL).
    pub fn from_args<'a>(
        a: ConnectionArgs,
        urls: impl IntoIterator<Item = &'a str>,
    ) -> Result<ConnectionConfig, ConfigError> {
        let urls: Vec<&str> = urls.into_iter().collect();
        let https = urls.iter().any(|u| u.starts_with("https://"));
        let tls =
            https || a.tls_ca.is_some() || a.tls_server_name.is_some() || a.tls_cert.is_some();
        if tls && let Some(plain) = urls.iter().find(|u| u.starts_with("http://")) {
            return Err(invalid(
                "teacher",
                format!(
                    "{plain}: expected an https:// URL when TLS is on (https:// teachers or --tls-* flags), got plain http://"
                ),
            ));
        }
        if let Some(name) = &a.tls_server_name
            && name.trim().is_empty()
        {
            return Err(invalid(
                "tls-server-name",
                "expected a DNS name, got an empty value",
            ));
        }
        let token = match (a.auth_token_file, a.auth_token) {
            (Some(path), None) => TokenSource::File(path),
            (None, Some(raw)) => TokenSource::Value(raw.0.parse().map_err(|reason: String| {
                invalid("auth-token", format!("(or STUDENT_AUTH_TOKEN): {reason}"))
            })?),
            (None, None) => TokenSource::None,
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "auth-token-file",
                    "expected one token source, got both --auth-token-file and STUDENT_AUTH_TOKEN",
                ));
            }
        };
        let identity = match (a.tls_cert, a.tls_key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "tls-cert",
                    "--tls-cert and --tls-key: expected both or neither, got one",
                ));
            }
        };
        Ok(ConnectionConfig {
            tls,
            ca: a.tls_ca,
            identity,
            server_name: a.tls_server_name,
            token,
            compression: a.compression,
        })
    }

    /// Reads the CA, the client identity and the token file.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the flag and the file that cannot be read, holds no PEM
    /// certificate or key, or holds no token (or more than one).
    pub fn load(&self) -> Result<ClientSecurity, ConfigError> {
        let tls = if self.tls {
            let mut config = ClientTlsConfig::new();
            config = match &self.ca {
                Some(ca) => config.ca_certificate(Certificate::from_pem(pem_file(
                    "tls-ca",
                    ca,
                    "CERTIFICATE",
                )?)),
                None => config.with_native_roots(),
            };
            if let Some((cert, key)) = &self.identity {
                let cert = pem_file("tls-cert", cert, "CERTIFICATE")?;
                let key = pem_file("tls-key", key, "PRIVATE KEY")?;
                config = config.identity(Identity::from_pem(cert, key));
            }
            if let Some(name) = &self.server_name {
                config = config.domain_name(name.trim());
            }
            Some(config)
        } else {
            None
        };
        let token = match &self.token {
            TokenSource::None => None,
            TokenSource::Value(t) => Some(t.clone()),
            TokenSource::File(path) => {
                let mut tokens = auth::read_token_file("--auth-token-file", path)
                    .map_err(|e| invalid("auth-token-file", strip_flag(&e.to_string())))?;
                if tokens.len() > 1 {
                    return Err(invalid(
                        "auth-token-file",
                        format!(
                            "{}: expected one token, got {} (the student sends a single token)",
                            path.display(),
                            tokens.len()
                        ),
                    ));
                }
                tokens.pop()
            }
        };
        let compression = match self.compression {
            Compression::None => None,
            Compression::Gzip => Some(CompressionEncoding::Gzip),
            Compression::Zstd => Some(CompressionEncoding::Zstd),
        };
        Ok(ClientSecurity {
            tls,
            token,
            compression,
        })
    }
}

/// `--auth-token-file X: reason` without the leading flag (the error adds it again).
fn strip_flag(s: &str) -> String {
    s.strip_prefix("--auth-token-file ")
        .unwrap_or(s)
        .to_string()
}

/// The bytes of a PEM file, checked to hold a `-----BEGIN ...{label}-----` block.
fn pem_file(flag: &'static str, path: &Path, label: &str) -> Result<Vec<u8>, ConfigError> {
    let pem = std::fs::read(path).map_err(|e| {
        invalid(
            flag,
            format!("{}: cannot read the file: {e}", path.display()),
        )
    })?;
    let text = String::from_utf8_lossy(&pem);
    let found = text
        .lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.trim_end().ends_with(&format!("{label}-----")));
    if !found {
        return Err(invalid(
            flag,
            format!(
                "{}: expected a PEM file with a `-----BEGIN ...{label}-----` block, found none",
                path.display()
            ),
        ));
    }
    Ok(pem)
}

/// The loaded connection settings, ready for tonic.
#[derive(Clone, Default)]
pub struct ClientSecurity {
    /// TLS configuration (`None`: plain text).
    pub(crate) tls: Option<ClientTlsConfig>,
    /// The bearer token.
    pub(crate) token: Option<Token>,
    /// Request (and asked-for response) compression.
    pub(crate) compression: Option<CompressionEncoding>,
}

impl fmt::Debug for ClientSecurity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSecurity")
            .field("tls", &self.tls.is_some())
            .field("token", &self.token)
            .field("compression", &self.compression)
            .finish()
    }
}

impl ClientSecurity {
    /// Whether replicas found through `dns://` are reached over `https://`.
    pub(crate) fn tls(&self) -> bool {
        self.tls.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::TokenArg;

    #[test]
    fn tls_follows_the_urls_and_flags_and_plain_urls_are_refused_under_tls() {
        let plain = ConnectionConfig::from_args(ConnectionArgs::default(), ["http://a:1"]).unwrap();
        assert!(!plain.tls);
        let https =
            ConnectionConfig::from_args(ConnectionArgs::default(), ["https://a:1"]).unwrap();
        assert!(https.tls);
        let ca = ConnectionArgs {
            tls_ca: Some("ca.pem".into()),
            ..ConnectionArgs::default()
        };
        assert!(
            ConnectionConfig::from_args(ca.clone(), ["dns://svc:1"])
                .unwrap()
                .tls
        );
        let e = ConnectionConfig::from_args(ca, ["https://a:1", "http://b:2"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("http://b:2") && e.contains("https://"), "{e}");
    }

    #[test]
    fn tokens_are_checked_without_being_quoted() {
        let args = |raw: &str| ConnectionArgs {
            auth_token: Some(TokenArg(raw.into())),
            ..ConnectionArgs::default()
        };
        let ok = ConnectionConfig::from_args(args("t0k3n"), ["http://a:1"]).unwrap();
        assert_eq!(ok.token, TokenSource::Value("t0k3n".parse().unwrap()));
        assert!(!format!("{ok:?}").contains("t0k3n"));
        let e = ConnectionConfig::from_args(args("sec ret"), ["http://a:1"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("STUDENT_AUTH_TOKEN") && !e.contains("sec ret"),
            "{e}"
        );
        let loaded = ok.load().unwrap();
        assert!(!format!("{loaded:?}").contains("t0k3n"));
    }

    #[test]
    fn missing_files_are_named() {
        let cfg = ConnectionConfig {
            tls: true,
            ca: Some("/nonexistent/ca.pem".into()),
            ..ConnectionConfig::default()
        };
        let e = cfg.load().unwrap_err().to_string();
        assert!(
            e.contains("--tls-ca") && e.contains("/nonexistent/ca.pem"),
            "{e}"
        );
        let cfg = ConnectionConfig {
            token: TokenSource::File("/nonexistent/token".into()),
            ..ConnectionConfig::default()
        };
        let e = cfg.load().unwrap_err().to_string();
        assert!(
            e.contains("--auth-token-file") && e.contains("/nonexistent/token"),
            "{e}"
        );
    }
}
