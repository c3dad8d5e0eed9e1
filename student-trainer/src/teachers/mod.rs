//! Everything that talks to the teachers, and the only folder that sees gRPC (tonic and the
//! generated `distill.v1` types): where they are ([`endpoint`]), how they are reached safely
//! ([`security`]), one connection ([`client`]), who a teacher is and whether it fits ([`info`]),
//! wire messages to and from tensors ([`wire`]), and the replica [`pool`] with failover.
//!
//! Imports: the hand-off types of [`crate::soft_targets`], the batch plan of [`crate::schedule`],
//! the ensemble mixture of [`crate::ensemble`] and the Prometheus metrics of
//! [`crate::outputs::monitoring`]; never the training loop, the losses, the optimizer, the data,
//! the logit cache, the config, the command line or the commands.

pub mod client;
pub mod endpoint;
pub mod error;
pub mod info;
pub mod pool;
pub mod security;
pub mod wire;

pub use client::ClientOptions;
pub use endpoint::GroupSpec;
pub use error::ClientError;
pub use info::{Expect, TeacherInfo};
pub use pool::{Pool, PoolError, PoolOptions};
pub use security::{ClientSecurity, Compression, ConnectionConfig, SecurityError, TokenSource};
