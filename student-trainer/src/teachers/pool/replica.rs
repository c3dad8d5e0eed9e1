//! The task owning one replica's connection: connect (or reuse the connection made at start),
//! health check, consistency check, open the `StreamLogits` stream, then forward every response
//! to the pool's loop as an [`Event`].

use crate::teachers::client::{ClientOptions, TeacherClient};
use crate::teachers::error::{is_auth_refusal, rpc_error};
use crate::teachers::info::{TeacherInfo, inconsistency};
use distill_proto::v1::{LogitsRequest, LogitsResponse};
use std::net::SocketAddr;
use std::time::Instant;
use tokio::sync::mpsc;

/// What the replica tasks and DNS lookups tell the pool's loop. Every replica event carries the
/// connection generation it belongs to; the scheduler ignores stale ones.
#[derive(Debug)]
pub(crate) enum Event {
    /// The replica's stream is open; requests go to `tx`.
    Up {
        replica: usize,
        generation: u64,
        tx: mpsc::Sender<LogitsRequest>,
        /// The server process's `instance_id` (empty: unknown).
        instance_id: String,
    },
    /// Connecting, checking or the stream failed.
    Failed {
        replica: usize,
        generation: u64,
        reason: String,
        /// Refused by the consistency check or for its credentials (logged as an error).
        refused: bool,
    },
    /// One response, with its arrival time.
    Response {
        replica: usize,
        generation: u64,
        msg: Box<LogitsResponse>,
        at: Instant,
    },
    /// A `dns://` source was looked up again.
    Resolved {
        source: usize,
        result: std::io::Result<Vec<SocketAddr>>,
    },
}

/// One connection attempt of one replica, and then its stream.
#[derive(Debug)]
pub(crate) struct ReplicaTask {
    pub(crate) replica: usize,
    pub(crate) generation: u64,
    pub(crate) url: String,
    /// A connection made (and checked) at start, to reuse.
    pub(crate) client: Option<TeacherClient>,
    pub(crate) reference: TeacherInfo,
    pub(crate) options: ClientOptions,
    pub(crate) prefetch: usize,
    pub(crate) events: mpsc::Sender<Event>,
}

impl ReplicaTask {
    /// Runs until the stream ends or the pool aborts the task; reports through `events`.
    pub(crate) async fn run(self) {
        let (replica, generation) = (self.replica, self.generation);
        let failed = |reason: String, refused: bool| Event::Failed {
            replica,
            generation,
            reason,
            refused,
        };
        let client = match self.client {
            Some(c) => c,
            None => match connect_checked(&self.url, &self.options, &self.reference).await {
                Ok(c) => c,
                Err((reason, refused)) => {
                    let _ = self.events.send(failed(reason, refused)).await;
                    return;
                }
            },
        };
        let (tx, rx) = mpsc::channel(self.prefetch.max(1));
        let mut stream = match client.open_stream(rx).await {
            Ok(s) => s,
            Err(e) => {
                let refused = e.is_refusal();
                let _ = self.events.send(failed(e.to_string(), refused)).await;
                return;
            }
        };
        let up = Event::Up {
            replica,
            generation,
            tx,
            instance_id: client.info().instance_id.clone(),
        };
        if self.events.send(up).await.is_err() {
            return;
        }
        let mut refused = false;
        let reason = loop {
            match stream.message().await {
                Ok(Some(msg)) => {
                    let ev = Event::Response {
                        replica,
                        generation,
                        msg: Box::new(msg),
                        at: Instant::now(),
                    };
                    if self.events.send(ev).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break "the teacher ended the stream".to_string(),
                Err(s) if is_auth_refusal(s.code()) => {
                    refused = true;
                    break rpc_error(client.url(), "StreamLogits", s).to_string();
                }
                Err(s) => break format!("stream broke: {:?}: {}", s.code(), s.message()),
            }
        };
        let _ = self.events.send(failed(reason, refused)).await;
    }
}

/// Connects to `url`, checks its health and its consistency with `reference`. The error is the
/// reason and whether it is a refusal (inconsistent replica, or credentials refused).
async fn connect_checked(
    url: &str,
    options: &ClientOptions,
    reference: &TeacherInfo,
) -> Result<TeacherClient, (String, bool)> {
    let c = TeacherClient::connect(url, options)
        .await
        .map_err(|e| (e.to_string(), e.is_refusal()))?;
    match c.serving().await {
        Ok(true) => {}
        Ok(false) => return Err(("health check: not serving".into(), false)),
        Err(e) => return Err((e.to_string(), false)),
    }
    if let Some(why) = inconsistency(reference, c.info()) {
        let why = format!(
            "{why} (replica fingerprint {}, group fingerprint {})",
            c.info().fingerprint,
            reference.fingerprint
        );
        return Err((why, true));
    }
    Ok(c)
}
