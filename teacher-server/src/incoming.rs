//! The connections the gRPC server serves over TLS: TCP connections accepted here, each
//! handshake run on its own task (a slow or failed one holds up no other), and every failed
//! handshake logged at `warn` with the peer's address and rustls's reason, at most once per
//! [`FAILURE_LOG_INTERVAL`] for the same peer and kind of failure.
//!
//! The streams it yields are `tokio_rustls` server streams, for which tonic provides
//! `Connected`: a request's `remote_addr()` and `peer_certs()` work as with tonic's own TLS.

use rustls::ServerConfig;
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;

/// How long a client may take over the TLS handshake before its connection is closed.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A failed handshake is logged at `warn` at most once per this interval for the same peer IP
/// and [`FailureKind`]; the others within it are logged at `debug`, and counted in the next
/// `warn` line (`suppressed`).
pub(crate) const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Most (peer IP, kind) pairs remembered at once. When that many have failed within one
/// interval, failures from further sources are logged at `debug` only, so a scan of many
/// addresses cannot flood the log or grow the table.
const MAX_TRACKED_SOURCES: usize = 1024;
/// Handshaken connections waiting for the gRPC server to take them.
const ACCEPTED_BUFFER: usize = 64;
/// How long the connection of a failed handshake stays half-open after rustls's alert, its
/// input read and dropped: closing a socket with unread input resets it, and the reset can
/// overtake the alert, which then never reaches the client (whose error would not say why).
const LINGER: Duration = Duration::from_secs(1);

/// A stream of TLS connections on `listener` (with `TCP_NODELAY`), handshaken with `config`,
/// for tonic's `serve_with_incoming_shutdown`. TCP accept errors are passed on as tonic's own
/// `TcpIncoming` passes them; failed handshakes are logged and left out. Dropping the stream
/// closes the listener and abandons the handshakes in flight.
pub(crate) fn tls(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(ACCEPTED_BUFFER);
    let tcp = TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(accept_loop(tcp, TlsAcceptor::from(config), tx));
    ReceiverStream::new(rx)
}

/// Accepts TCP connections and starts a handshake task for each, until the receiving end of
/// `tx` is dropped (the server stopped accepting) or the listener ends.
async fn accept_loop(
    mut tcp: TcpIncoming,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<io::Result<TlsStream<TcpStream>>>,
) {
    let failures = Arc::new(Mutex::new(FailureLog::default()));
    let mut handshakes = JoinSet::new();
    loop {
        tokio::select! {
            () = tx.closed() => return,
            // Reaps finished handshake tasks (each has already handed on or logged its result).
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
            next = tcp.next() => match next {
                None => return,
                Some(Err(e)) => {
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(stream)) => {
                    handshakes.spawn(handshake(
                        acceptor.clone(),
                        stream,
                        tx.clone(),
                        failures.clone(),
                    ));
                }
            }
        }
    }
}

/// Runs one handshake (bounded by [`HANDSHAKE_TIMEOUT`]) and hands the connection to the server,
/// or logs why it failed.
async fn handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    tx: mpsc::Sender<io::Result<TlsStream<TcpStream>>>,
    failures: Arc<Mutex<FailureLog>>,
) {
    let peer = stream.peer_addr().ok();
    let accept = acceptor.accept(stream).into_fallible();
    let (failure, socket) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
        Ok(Ok(tls)) => {
            // Fails only when the server has stopped accepting: the connection is dropped.
            let _ = tx.send(Ok(tls)).await;
            return;
        }
        Ok(Err((e, socket))) => (Failure::from_io(&e), Some(socket)),
        Err(_) => {
            let reason = format!("no handshake within {} s", HANDSHAKE_TIMEOUT.as_secs());
            let kind = FailureKind::Timeout;
            (Failure { kind, reason }, None)
        }
    };
    report(peer, &failure, &failures);
    if let Some(socket) = socket {
        linger(socket).await;
    }
}

/// Logs a failed handshake with `peer` (see [`log_failure`]).
fn report(peer: Option<SocketAddr>, failure: &Failure, failures: &Mutex<FailureLog>) {
    let Some(peer) = peer else {
        tracing::debug!(reason = %failure.reason, "TLS handshake failed with a peer of unknown address");
        return;
    };
    if failure.kind == FailureKind::Closed {
        // A TCP probe (a load balancer's or kubelet's check) connects and closes without a word.
        tracing::debug!(%peer, reason = %failure.reason, "connection closed during the TLS handshake");
        return;
    }
    let admitted = failures.lock().unwrap_or_else(|e| e.into_inner()).admit(
        peer.ip(),
        failure.kind,
        Instant::now(),
    );
    log_failure(peer, failure, admitted);
}

/// Closes the connection of a failed handshake gently: our side first (after rustls's alert),
/// then whatever the client still sends is read and dropped until it closes too, for at most
/// [`LINGER`].
async fn linger(mut socket: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if socket.shutdown().await.is_err() {
        return;
    }
    let mut scratch = [0u8; 4096];
    let drain = async {
        while let Ok(n) = socket.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// The log line of a failed handshake: `warn` with the count of those left out before it, or
/// `debug` while the same failure is rate-limited.
fn log_failure(peer: SocketAddr, failure: &Failure, admitted: Option<u64>) {
    let Failure { kind, reason } = failure;
    match admitted {
        Some(suppressed) => tracing::warn!(
            %peer, %reason, suppressed,
            "TLS handshake failed: {kind}"
        ),
        None => tracing::debug!(
            %peer, %reason,
            "TLS handshake failed: {kind} (rate-limited: at most one warning per peer and kind every {} s)",
            FAILURE_LOG_INTERVAL.as_secs()
        ),
    }
}

/// What went wrong in a handshake, in the terms of the usual mistake behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum FailureKind {
    /// `--tls-client-ca` is set and the client sent no certificate.
    NoClientCertificate,
    /// The client's certificate does not verify against `--tls-client-ca` (another CA,
    /// expired, not for client authentication, ...).
    BadClientCertificate,
    /// The first bytes are not TLS: most likely a plain-text (`http://`) client.
    NotTls,
    /// The client ended the handshake with an alert (e.g. it does not trust our certificate).
    ClientAlert,
    /// No handshake within [`HANDSHAKE_TIMEOUT`].
    Timeout,
    /// The connection closed before the handshake ended, without an alert.
    Closed,
    /// Anything else rustls or the socket reported.
    Other,
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureKind::NoClientCertificate => {
                "the client sent no certificate (--tls-client-ca requires one)"
            }
            FailureKind::BadClientCertificate => {
                "the client's certificate was refused (it must chain to --tls-client-ca and be valid)"
            }
            FailureKind::NotTls => "the client does not speak TLS (a plain-text http:// client?)",
            FailureKind::ClientAlert => {
                "the client ended the handshake (does it trust --tls-cert's CA and name?)"
            }
            FailureKind::Timeout => "the client did not complete the handshake in time",
            FailureKind::Closed => "the connection closed",
            FailureKind::Other => "the handshake broke",
        })
    }
}

/// A failed handshake: its kind and rustls's (or the socket's) reason.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    kind: FailureKind,
    reason: String,
}

impl Failure {
    /// Sorts the error of `TlsAcceptor::accept` (rustls's error inside an I/O error).
    fn from_io(e: &io::Error) -> Failure {
        let Some(tls) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            let kind = if e.kind() == io::ErrorKind::UnexpectedEof {
                FailureKind::Closed
            } else {
                FailureKind::Other
            };
            return Failure {
                kind,
                reason: e.to_string(),
            };
        };
        Failure {
            kind: Self::kind_of(tls),
            reason: tls.to_string(),
        }
    }

    fn kind_of(e: &rustls::Error) -> FailureKind {
        use rustls::Error as E;
        match e {
            E::NoCertificatesPresented => FailureKind::NoClientCertificate,
            E::InvalidCertificate(_) | E::InvalidCertRevocationList(_) => {
                FailureKind::BadClientCertificate
            }
            E::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => FailureKind::NotTls,
            E::AlertReceived(_) => FailureKind::ClientAlert,
            _ => FailureKind::Other,
        }
    }
}

/// When each (peer IP, kind) last got a `warn` line, and how many of its failures have been
/// left out since.
#[derive(Debug, Default)]
struct FailureLog {
    seen: HashMap<(IpAddr, FailureKind), Seen>,
}

#[derive(Debug)]
struct Seen {
    warned_at: Instant,
    suppressed: u64,
}

impl FailureLog {
    /// Records a failure of `kind` from `ip` at `now`: `Some(n)` when it gets a `warn` line (`n`
    /// failures of the pair were left out since its previous one), `None` when it is
    /// rate-limited.
    fn admit(&mut self, ip: IpAddr, kind: FailureKind, now: Instant) -> Option<u64> {
        let key = (ip, kind);
        if let Some(seen) = self.seen.get_mut(&key) {
            if now.duration_since(seen.warned_at) < FAILURE_LOG_INTERVAL {
                seen.suppressed += 1;
                return None;
            }
            let suppressed = std::mem::take(&mut seen.suppressed);
            seen.warned_at = now;
            return Some(suppressed);
        }
        if self.seen.len() >= MAX_TRACKED_SOURCES {
            self.seen
                .retain(|_, s| now.duration_since(s.warned_at) < FAILURE_LOG_INTERVAL);
            if self.seen.len() >= MAX_TRACKED_SOURCES {
                return None;
            }
        }
        self.seen.insert(
            key,
            Seen {
                warned_at: now,
                suppressed: 0,
            },
        );
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_peer_and_kind_per_interval_counting_the_rest() {
        let mut log = FailureLog::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(log.admit(a, FailureKind::NotTls, at(0)), Some(0));
        assert_eq!(log.admit(a, FailureKind::NotTls, at(1)), None);
        assert_eq!(log.admit(a, FailureKind::NotTls, at(59)), None);
        // Another kind from the same peer, or another peer, is its own line.
        assert_eq!(
            log.admit(a, FailureKind::NoClientCertificate, at(2)),
            Some(0)
        );
        assert_eq!(log.admit(b, FailureKind::NotTls, at(3)), Some(0));
        // After the interval: one line again, counting the two left out.
        let next = FAILURE_LOG_INTERVAL.as_secs();
        assert_eq!(log.admit(a, FailureKind::NotTls, at(next)), Some(2));
        assert_eq!(log.admit(a, FailureKind::NotTls, at(next + 1)), None);
    }

    #[test]
    fn the_table_is_bounded() {
        let mut log = FailureLog::default();
        let t0 = Instant::now();
        let ip = |i: usize| IpAddr::from([10, 1, (i >> 8) as u8, i as u8]);
        for i in 0..MAX_TRACKED_SOURCES {
            assert_eq!(log.admit(ip(i), FailureKind::Other, t0), Some(0));
        }
        // Full of fresh entries: a new source is only counted at debug.
        let new = IpAddr::from([10, 2, 0, 0]);
        assert_eq!(log.admit(new, FailureKind::Other, t0), None);
        assert_eq!(log.seen.len(), MAX_TRACKED_SOURCES);
        // Once they are stale they make room.
        let later = t0 + FAILURE_LOG_INTERVAL;
        assert_eq!(log.admit(new, FailureKind::Other, later), Some(0));
        assert_eq!(log.seen.len(), 1);
    }

    #[test]
    fn rustls_errors_are_sorted_by_their_usual_cause() {
        let wrap = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);
        let f = Failure::from_io(&wrap(rustls::Error::NoCertificatesPresented));
        assert_eq!(f.kind, FailureKind::NoClientCertificate);
        assert_eq!(f.reason, "peer sent no certificates");
        let f = Failure::from_io(&wrap(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        )));
        assert_eq!(f.kind, FailureKind::BadClientCertificate);
        let f = Failure::from_io(&wrap(rustls::Error::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType,
        )));
        assert_eq!(f.kind, FailureKind::NotTls);
        let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "tls handshake eof");
        assert_eq!(Failure::from_io(&eof).kind, FailureKind::Closed);
    }
}
