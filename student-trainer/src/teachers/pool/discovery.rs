//! `dns://NAME:PORT` replica sources: looking names up (the [`Resolver`] trait, the system
//! resolver) and what the pool remembers of each name.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

/// A pending DNS lookup: every address of a name, or the lookup's error.
pub type Resolving = Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>>;

/// Looks up the addresses behind a `dns://NAME:PORT` replica URL. The pool calls it at start and
/// every `resolve_interval`; tests inject their own.
pub trait Resolver: Send + Sync + std::fmt::Debug {
    /// Every address of `host`, each with `port`.
    fn resolve(&self, host: &str, port: u16) -> Resolving;
}

/// The system resolver (`getaddrinfo` through [`tokio::net::lookup_host`]: `/etc/hosts`, DNS,
/// e.g. a Kubernetes headless service, which answers with one address per ready pod).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> Resolving {
        let target = format!("{host}:{port}");
        Box::pin(async move { Ok(tokio::net::lookup_host(target).await?.collect()) })
    }
}

/// A `dns://NAME:PORT` source of replicas of one group.
#[derive(Debug)]
pub(crate) struct DnsSource {
    /// The group its addresses join.
    pub(crate) group: usize,
    /// The name.
    pub(crate) host: String,
    /// The port of every address.
    pub(crate) port: u16,
    /// A lookup is under way.
    pub(crate) resolving: bool,
}

impl DnsSource {
    /// `dns://NAME:PORT`, for logs.
    pub(crate) fn url(&self) -> String {
        format!("dns://{}:{}", self.host, self.port)
    }
}
