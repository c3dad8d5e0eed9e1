//! The teacher flags every command that talks to teachers shares: replica URLs and groups,
//! waits and timeouts, TLS, token and compression ([`TeacherConfig`]), and the one place the
//! pool's and the client's options are built from them ([`TeacherConfig::pool_options`]).

use super::error::{ConfigError, invalid, number};
use crate::cli::{ConnectionArgs, TeacherArgs};
use crate::outputs::monitoring::StudentMetrics;
use crate::teachers::endpoint::parse_dns_url;
use crate::teachers::security::TokenSource;
use crate::teachers::{ClientOptions, ConnectionConfig, GroupSpec, PoolOptions, SecurityError};
use std::time::Duration;

/// HTTP/2 keepalive of every teacher connection: a ping every 10 s, answered within 10 s. A
/// teacher that died without closing its connection (a killed pod, a cut network) is found
/// within about 20 s, before `--batch-timeout`'s default 30 s, on an idle stream too (a run
/// reading the logit cache, a capture waiting for its writer).
pub const KEEPALIVE: Duration = Duration::from_secs(10);

/// Where the teachers are, how long to wait for them and how to reach them.
#[derive(Debug, Clone)]
pub struct TeacherConfig {
    /// Teacher groups (one for plain `--teacher` replicas; several for an ensemble), each with
    /// its replica URLs (with scheme, `http://host:port`, or `dns://NAME:PORT`). Empty for a
    /// `distill` run that reads a complete logit cache without a teacher.
    pub groups: Vec<GroupSpec>,
    /// A batch unanswered this long moves to another replica.
    pub batch_timeout: Duration,
    /// Longest wait with no replica reachable before giving up.
    pub teacher_wait: Duration,
    /// How often `dns://` teachers are resolved again.
    pub resolve_interval: Duration,
    /// How long to wait for a teacher's connection.
    pub connect_timeout: Duration,
    /// Batches in flight per replica (≥ 1).
    pub prefetch: usize,
    /// TLS, bearer token and compression of the teacher connections.
    pub connection: ConnectionConfig,
}

impl TeacherConfig {
    /// The validated settings of `a` for `groups` (built from `a.teacher` and, for `distill`,
    /// its ensemble flags).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for a timeout that is not a positive number of seconds, a
    /// prefetch of 0, or connection flags that do not fit the URLs.
    pub fn from_args(a: TeacherArgs, groups: Vec<GroupSpec>) -> Result<TeacherConfig, ConfigError> {
        if a.prefetch == 0 {
            return Err(invalid("prefetch", "must be at least 1 batch"));
        }
        Ok(TeacherConfig {
            batch_timeout: timeout("batch-timeout", a.batch_timeout)?,
            teacher_wait: timeout("teacher-wait", a.teacher_wait)?,
            resolve_interval: timeout("resolve-interval", a.resolve_interval)?,
            connect_timeout: timeout("connect-timeout", a.connect_timeout)?,
            prefetch: a.prefetch,
            connection: connection(a.connection, group_urls(&groups))?,
            groups,
        })
    }

    /// The pool's options (and its clients'), with the connection files read; `metrics` the
    /// Prometheus metrics to keep up to date, if served.
    ///
    /// # Errors
    /// [`SecurityError`] naming a TLS or token file that cannot be used.
    pub fn pool_options(
        &self,
        metrics: Option<StudentMetrics>,
    ) -> Result<PoolOptions, SecurityError> {
        Ok(PoolOptions {
            prefetch: self.prefetch,
            batch_timeout: self.batch_timeout,
            teacher_wait: self.teacher_wait,
            client: ClientOptions {
                connect_timeout: self.connect_timeout,
                keepalive_interval: KEEPALIVE,
                keepalive_timeout: KEEPALIVE,
                security: self.connection.load()?,
            },
            resolve_interval: self.resolve_interval,
            metrics,
            ..PoolOptions::default()
        })
    }
}

/// Adds `http://` to a bare `host:port` and checks the result looks like a URL.
///
/// # Errors
/// [`ConfigError::Invalid`] for an empty URL or a scheme other than http/https.
pub fn teacher_url(flag: &'static str, url: &str) -> Result<String, ConfigError> {
    let url = url.trim();
    if url.is_empty() {
        return Err(invalid(
            flag,
            "empty teacher URL: expected http://HOST:PORT",
        ));
    }
    if url.starts_with("dns://") {
        return match parse_dns_url(url) {
            Some(_) => Ok(url.to_string()),
            None => Err(invalid(flag, format!("{url:?}: expected dns://NAME:PORT"))),
        };
    }
    let url = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(invalid(
            flag,
            format!("{url:?}: expected an http:// or https:// URL"),
        ));
    }
    Ok(url)
}

/// Name of the group formed by plain `--teacher` flags.
pub const DEFAULT_GROUP: &str = "teacher";

/// The teacher groups of `distill`: the `--teacher` URLs as group [`DEFAULT_GROUP`] (if any),
/// then each `--teacher-group NAME=URL,URL`, weighted by `--group-weight NAME=W` (default 1).
///
/// # Errors
/// [`ConfigError::Invalid`] for a malformed group, a duplicate name, a group without URLs, a
/// weight for no group, or a negative weight.
pub fn teacher_groups(
    teachers: &[String],
    groups: &[String],
    weights: &[String],
) -> Result<Vec<GroupSpec>, ConfigError> {
    let mut out: Vec<GroupSpec> = Vec::new();
    let urls = |flag: &'static str, list: &mut dyn Iterator<Item = &str>| {
        list.map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| teacher_url(flag, u))
            .collect::<Result<Vec<String>, ConfigError>>()
    };
    let plain = urls("teacher", &mut teachers.iter().map(String::as_str))?;
    if !plain.is_empty() {
        out.push(GroupSpec {
            name: DEFAULT_GROUP.into(),
            weight: 1.0,
            urls: plain,
        });
    }
    for g in groups {
        let Some((name, list)) = g.split_once('=') else {
            return Err(invalid(
                "teacher-group",
                format!("{g:?}: expected NAME=URL,URL,..."),
            ));
        };
        let name = name.trim();
        if name.is_empty() || out.iter().any(|o| o.name == name) {
            return Err(invalid(
                "teacher-group",
                format!("{g:?}: group names must be non-empty and distinct"),
            ));
        }
        let u = urls("teacher-group", &mut list.split(','))?;
        if u.is_empty() {
            return Err(invalid("teacher-group", format!("{g:?}: no URL")));
        }
        out.push(GroupSpec {
            name: name.into(),
            weight: 1.0,
            urls: u,
        });
    }
    if out.is_empty() {
        return Err(invalid(
            "teacher",
            "give --teacher URL (repeatable) or --teacher-group NAME=URL,...",
        ));
    }
    for w in weights {
        let parsed = w
            .split_once('=')
            .and_then(|(n, v)| Some((n.trim(), v.trim().parse::<f64>().ok()?)));
        let Some((name, weight)) = parsed else {
            return Err(invalid("group-weight", format!("{w:?}: expected NAME=W")));
        };
        if !(weight.is_finite() && weight >= 0.0) {
            return Err(invalid("group-weight", format!("{w:?}: W must be ≥ 0")));
        }
        let Some(g) = out.iter_mut().find(|g| g.name == name) else {
            return Err(invalid(
                "group-weight",
                format!("{w:?}: no group named {name:?}"),
            ));
        };
        g.weight = weight;
    }
    if out.iter().map(|g| g.weight).sum::<f64>() <= 0.0 {
        return Err(invalid("group-weight", "the weights sum to 0"));
    }
    Ok(out)
}

/// Every replica URL of `groups`.
pub(super) fn group_urls(groups: &[GroupSpec]) -> impl Iterator<Item = &str> {
    groups
        .iter()
        .flat_map(|g| g.urls.iter().map(String::as_str))
}

/// The longest time a seconds flag accepts (exclusive): 10⁶ s, about 11.6 days.
pub const MAX_SECONDS: f64 = 1e6;

/// `--FLAG SECONDS`: positive and under [`MAX_SECONDS`].
///
/// # Errors
/// [`ConfigError::Invalid`] for a value that is not positive (or NaN), or too large (naming the
/// limit).
pub(super) fn timeout(flag: &'static str, seconds: f64) -> Result<Duration, ConfigError> {
    if seconds > 0.0 && seconds < MAX_SECONDS {
        Ok(Duration::from_secs_f64(seconds))
    } else if seconds >= MAX_SECONDS {
        Err(invalid(
            flag,
            format!(
                "{} seconds is too large: expected less than {MAX_SECONDS} (about 11.6 days)",
                number(seconds)
            ),
        ))
    } else {
        Err(invalid(
            flag,
            format!("{seconds} is not a positive number of seconds"),
        ))
    }
}

/// Validates the flags against the teacher URLs (after [`teacher_url`]).
///
/// # Errors
/// [`ConfigError::Invalid`] for a bad token value, an empty server name, or an `http://`
/// URL while TLS is on (the message names the URL).
pub(super) fn connection<'a>(
    a: ConnectionArgs,
    urls: impl IntoIterator<Item = &'a str>,
) -> Result<ConnectionConfig, ConfigError> {
    let urls: Vec<&str> = urls.into_iter().collect();
    let https = urls.iter().any(|u| u.starts_with("https://"));
    let tls = https || a.tls_ca.is_some() || a.tls_server_name.is_some() || a.tls_cert.is_some();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::TokenArg;

    #[test]
    fn tls_follows_the_urls_and_flags_and_plain_urls_are_refused_under_tls() {
        let plain = connection(ConnectionArgs::default(), ["http://a:1"]).unwrap();
        assert!(!plain.tls);
        let https = connection(ConnectionArgs::default(), ["https://a:1"]).unwrap();
        assert!(https.tls);
        let ca = ConnectionArgs {
            tls_ca: Some("ca.pem".into()),
            ..ConnectionArgs::default()
        };
        assert!(connection(ca.clone(), ["dns://svc:1"]).unwrap().tls);
        let e = connection(ca, ["https://a:1", "http://b:2"])
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
        let ok = connection(args("t0k3n"), ["http://a:1"]).unwrap();
        assert_eq!(ok.token, TokenSource::Value("t0k3n".parse().unwrap()));
        assert!(!format!("{ok:?}").contains("t0k3n"));
        let e = connection(args("sec ret"), ["http://a:1"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("STUDENT_AUTH_TOKEN") && !e.contains("sec ret"),
            "{e}"
        );
        let loaded = ok.load().unwrap();
        assert!(!format!("{loaded:?}").contains("t0k3n"));
    }
}
