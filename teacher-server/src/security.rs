//! TLS (`--tls-cert`, `--tls-key`, `--tls-client-ca`), bearer tokens (`--auth-token-file`) and
//! the compressions the server speaks.
//!
//! Files are read and checked when the configuration is built ([`TlsSettings::load`],
//! [`load_tokens`]), so a wrong path, a key that does not belong to the certificate, or an
//! empty token file stops the server at start with an error naming the file. [`Auth`] is the
//! interceptor in front of `distill.v1.Teacher` and reflection; health stays open to probes.
//! The handshakes themselves run in `incoming`, with the [`rustls::ServerConfig`] built here.

use distill_proto::auth::{self, Token};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Status};

/// The ALPN protocol the server offers: gRPC runs on HTTP/2 only.
const ALPN_H2: &[u8] = b"h2";

/// Why a TLS file or the token file was refused at start: one line naming the flag and the file
/// (never a token). The configuration reports it as an invalid flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SecurityError(pub String);

/// The server's TLS material, read and checked at start.
#[derive(Clone)]
pub struct TlsSettings {
    /// `--tls-cert`: the certificate chain (PEM), leaf first.
    pub cert_path: PathBuf,
    /// `--tls-key`: the leaf's private key (PEM).
    pub key_path: PathBuf,
    /// `--tls-client-ca`: the CA that client certificates must chain to (mTLS), if any.
    pub client_ca_path: Option<PathBuf>,
    /// The rustls configuration built from the files: this identity, ALPN `h2`, and with a
    /// client CA, client certificates required.
    server_config: Arc<rustls::ServerConfig>,
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .field("client_ca_path", &self.client_ca_path)
            .finish_non_exhaustive()
    }
}

fn read(flag: &str, path: &Path) -> Result<Vec<u8>, SecurityError> {
    std::fs::read(path).map_err(|e| {
        SecurityError(format!(
            "{flag} {}: cannot read the file: {e}",
            path.display()
        ))
    })
}

/// Every certificate of a PEM file; an error naming the file when there is none.
fn certificates(
    flag: &str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, SecurityError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            SecurityError(format!(
                "{flag} {}: expected PEM certificates, got unreadable PEM: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(SecurityError(format!(
            "{flag} {}: expected at least one `-----BEGIN CERTIFICATE-----` block, found none",
            path.display()
        )));
    }
    Ok(certs)
}

impl TlsSettings {
    /// Reads the certificate chain, the key and the client CA, and checks that the key belongs
    /// to the chain's first certificate (rustls would only notice at the first handshake).
    ///
    /// # Errors
    /// [`SecurityError`] naming the file that cannot be read or parsed, or both files when the
    /// key does not match the certificate.
    pub fn load(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Result<TlsSettings, SecurityError> {
        let cert_pem = read("--tls-cert", cert)?;
        let key_pem = read("--tls-key", key)?;
        let chain = certificates("--tls-cert", cert, &cert_pem)?;
        let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            SecurityError(format!(
                "--tls-key {}: expected a PEM private key (PKCS#8, PKCS#1 or SEC1), got: {e}",
                key.display()
            ))
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        rustls::sign::CertifiedKey::from_der(chain.clone(), key_der.clone_key(), &provider)
            .map_err(|e| {
                SecurityError(format!(
                    "--tls-key {} does not fit the certificate in --tls-cert {}: {e}",
                    key.display(),
                    cert.display()
                ))
            })?;
        let verifier = match client_ca {
            Some(ca) => Some(client_verifier(ca, &provider)?),
            None => None,
        };
        let builder = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| SecurityError(format!("--tls-cert: no usable TLS version: {e}")))?;
        let builder = match verifier {
            Some(v) => builder.with_client_cert_verifier(v),
            None => builder.with_no_client_auth(),
        };
        let mut server_config = builder.with_single_cert(chain, key_der).map_err(|e| {
            SecurityError(format!(
                "--tls-cert {} with --tls-key {}: {e}",
                cert.display(),
                key.display()
            ))
        })?;
        server_config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(TlsSettings {
            cert_path: cert.to_path_buf(),
            key_path: key.to_path_buf(),
            client_ca_path: client_ca.map(Path::to_path_buf),
            server_config: Arc::new(server_config),
        })
    }

    /// The rustls configuration the handshakes run with: the identity of `--tls-cert` and
    /// `--tls-key`, ALPN `h2`, and with `--tls-client-ca`, a client certificate required that
    /// chains to that CA (mTLS).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server_config.clone()
    }
}

/// The verifier of client certificates (mTLS): every certificate of `--tls-client-ca` is a trust
/// anchor, and a client without a certificate is refused.
fn client_verifier(
    ca: &Path,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, SecurityError> {
    let pem = read("--tls-client-ca", ca)?;
    let mut roots = RootCertStore::empty();
    let (added, _ignored) =
        roots.add_parsable_certificates(certificates("--tls-client-ca", ca, &pem)?);
    if added == 0 {
        return Err(SecurityError(format!(
            "--tls-client-ca {}: expected CA certificates, got none that rustls can use",
            ca.display()
        )));
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| SecurityError(format!("--tls-client-ca {}: {e}", ca.display())))
}

/// Reads `--auth-token-file`: one or more tokens, one per line.
///
/// # Errors
/// [`SecurityError`] naming the file when it cannot be read, holds no token, or a line is not a
/// token (the token itself is never quoted).
pub fn load_tokens(path: &Path) -> Result<Vec<Token>, SecurityError> {
    auth::read_token_file("--auth-token-file", path).map_err(|e| SecurityError(e.to_string()))
}

/// The bearer-token check in front of `distill.v1.Teacher` and reflection: with tokens, a call
/// without `authorization: Bearer TOKEN` (the scheme in any case) for one of them gets
/// `UNAUTHENTICATED`; without
/// tokens, every call passes. Tokens are compared as SHA-256 digests in constant time, against
/// every token (no early exit).
#[derive(Clone, Default)]
pub struct Auth {
    digests: Arc<[[u8; 32]]>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("tokens", &self.digests.len())
            .finish()
    }
}

impl Auth {
    /// A check accepting any of `tokens` (none: no check).
    pub fn new(tokens: &[Token]) -> Auth {
        Auth {
            digests: tokens
                .iter()
                .map(|t| Sha256::digest(t.expose().as_bytes()).into())
                .collect(),
        }
    }

    /// Whether `presented` is one of the tokens.
    fn accepts(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        self.digests
            .iter()
            .fold(subtle::Choice::from(0), |any, d| {
                any | d[..].ct_eq(&digest[..])
            })
            .into()
    }
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        if self.digests.is_empty() {
            return Ok(req);
        }
        let Some(value) = req.metadata().get(auth::AUTHORIZATION) else {
            return Err(Status::unauthenticated(
                "missing `authorization: Bearer TOKEN` metadata (teacher-server --auth-token-file is set)",
            ));
        };
        let presented = auth::bearer_token(value.as_bytes()).ok_or_else(|| {
            Status::unauthenticated("`authorization` metadata: expected `Bearer TOKEN`")
        })?;
        if self.accepts(presented) {
            Ok(req)
        } else {
            Err(Status::unauthenticated(
                "the bearer token is not one of teacher-server's --auth-token-file tokens",
            ))
        }
    }
}

/// The compressions the server decodes in requests: all of gzip, deflate and zstd.
pub const ACCEPTED_COMPRESSIONS: [CompressionEncoding; 3] = [
    CompressionEncoding::Gzip,
    CompressionEncoding::Deflate,
    CompressionEncoding::Zstd,
];

/// Parses a `--send-compression` item: `gzip`, `deflate`, `zstd`, or `none` (nothing).
///
/// # Errors
/// The message names the accepted values and the value given.
pub fn parse_compression(s: &str) -> Result<Option<CompressionEncoding>, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "gzip" => Ok(Some(CompressionEncoding::Gzip)),
        "deflate" => Ok(Some(CompressionEncoding::Deflate)),
        "zstd" => Ok(Some(CompressionEncoding::Zstd)),
        "none" | "identity" => Ok(None),
        other => Err(format!(
            "expected gzip, deflate, zstd or none, got {other:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    fn call(auth: &mut Auth, header: Option<&str>) -> Result<(), tonic::Code> {
        let mut req = Request::new(());
        if let Some(h) = header {
            req.metadata_mut()
                .insert(auth::AUTHORIZATION, h.parse().unwrap());
        }
        auth.call(req).map(|_| ()).map_err(|s| s.code())
    }

    #[test]
    fn tokens_are_checked_and_never_printed() {
        let tokens: Vec<Token> = ["alpha-1", "beta-2"].map(|t| t.parse().unwrap()).to_vec();
        let mut auth = Auth::new(&tokens);
        assert_eq!(call(&mut auth, Some("Bearer alpha-1")), Ok(()));
        assert_eq!(call(&mut auth, Some("Bearer beta-2")), Ok(()));
        assert_eq!(call(&mut auth, Some("bearer alpha-1")), Ok(()));
        assert_eq!(call(&mut auth, Some("BEARER beta-2")), Ok(()));
        for bad in [None, Some("Bearer alpha"), Some("alpha-1"), Some("Bearer ")] {
            assert_eq!(
                call(&mut auth, bad),
                Err(tonic::Code::Unauthenticated),
                "{bad:?}"
            );
        }
        assert_eq!(call(&mut Auth::new(&[]), None), Ok(()));
        let shown = format!("{auth:?} {tokens:?}");
        assert!(
            !shown.contains("alpha") && !shown.contains("beta"),
            "{shown}"
        );
    }

    #[test]
    fn compression_names_parse() {
        assert_eq!(
            parse_compression("GZIP"),
            Ok(Some(CompressionEncoding::Gzip))
        );
        assert_eq!(parse_compression("none"), Ok(None));
        assert!(parse_compression("br").unwrap_err().contains("\"br\""));
    }
}
