//! How the student reaches its teachers safely: TLS (`--tls-ca`, `--tls-cert`, `--tls-key`,
//! `--tls-server-name`, `https://` URLs), the bearer token (`--auth-token-file`,
//! `STUDENT_AUTH_TOKEN`) and compression (`--compression`).
//!
//! [`ConnectionConfig`] is the validated, file-free part (built from the flags by the config);
//! [`ConnectionConfig::load`] reads the files when a command starts, with errors naming them.
//! The loaded [`ClientSecurity`] travels in [`super::client::ClientOptions`]; its `Debug` shows
//! no key and no token.

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

/// `--compression`: how messages to and from the teachers are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Compression {
    /// Uncompressed.
    #[default]
    None,
    /// gzip (any gRPC implementation understands it).
    Gzip,
    /// zstd (faster than gzip at a similar ratio; tonic servers).
    Zstd,
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

/// A connection flag's file that cannot be used: `--{flag}: {reason}`, naming the file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("--{flag}: {reason}")]
pub struct SecurityError {
    /// The flag, without the dashes.
    pub flag: &'static str,
    /// What is wrong with its file and what was expected.
    pub reason: String,
}

fn invalid(flag: &'static str, reason: impl Into<String>) -> SecurityError {
    SecurityError {
        flag,
        reason: reason.into(),
    }
}

impl ConnectionConfig {
    /// Reads the CA, the client identity and the token file.
    ///
    /// # Errors
    /// [`SecurityError`] naming the flag and the file that cannot be read, holds no PEM
    /// certificate or key, or holds no token (or more than one).
    pub fn load(&self) -> Result<ClientSecurity, SecurityError> {
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
            client_certificate: self.tls && self.identity.is_some(),
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
fn pem_file(flag: &'static str, path: &Path, label: &str) -> Result<Vec<u8>, SecurityError> {
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
    /// Whether the TLS configuration offers a client certificate (`--tls-cert`/`--tls-key`):
    /// what a teacher's refusal most likely means depends on it.
    pub(crate) client_certificate: bool,
    /// The bearer token.
    pub(crate) token: Option<Token>,
    /// Request (and asked-for response) compression.
    pub(crate) compression: Option<CompressionEncoding>,
}

impl fmt::Debug for ClientSecurity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSecurity")
            .field("tls", &self.tls.is_some())
            .field("client_certificate", &self.client_certificate)
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
