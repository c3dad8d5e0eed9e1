//! Where the teachers are: groups of replica URLs ([`GroupSpec`]) and `dns://NAME:PORT` names.
//!
//! Shared by [`crate::config`] (which builds the groups from the flags) and [`crate::pool`]
//! (which connects to them); it depends on neither.

use std::net::SocketAddr;

/// One group of replicas of the same teacher.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSpec {
    /// Name in logs and the report (`teacher` for plain `--teacher` flags).
    pub name: String,
    /// Weight of the group's probabilities in the ensemble mixture (normalised over groups).
    pub weight: f64,
    /// Replica URLs: `http://HOST:PORT`, or `dns://NAME:PORT` for every address of NAME
    /// (re-resolved every `resolve_interval`).
    pub urls: Vec<String>,
}

/// Splits `dns://NAME:PORT` into its name and port (`None` for any other URL).
pub(crate) fn parse_dns_url(url: &str) -> Option<(String, u16)> {
    let rest = url.strip_prefix("dns://")?;
    let (host, port) = rest.trim_end_matches('/').rsplit_once(':')?;
    if host.is_empty() {
        return None;
    }
    Some((host.to_string(), port.parse().ok()?))
}

/// The replica URL of one resolved address: `http://IP:PORT` (`http://[IPv6]:PORT`), or
/// `https://` when the connections use TLS (the certificate is then checked against
/// `--tls-server-name`, as the pods' addresses are not in it).
pub(crate) fn address_url(addr: &SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{addr}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_urls_split_into_name_and_port() {
        assert_eq!(
            parse_dns_url("dns://teachers:50051"),
            Some(("teachers".into(), 50051))
        );
        assert_eq!(
            parse_dns_url("dns://a.b.svc:1/"),
            Some(("a.b.svc".into(), 1))
        );
        for bad in ["dns://:1", "dns://x", "dns://x:port", "http://x:1"] {
            assert_eq!(parse_dns_url(bad), None, "{bad}");
        }
        let v6: SocketAddr = "[::1]:7".parse().unwrap();
        assert_eq!(address_url(&v6, false), "http://[::1]:7");
        assert_eq!(address_url(&v6, true), "https://[::1]:7");
    }
}
