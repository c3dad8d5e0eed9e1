//! The channel between student and teacher: TLS, mutual TLS and bearer tokens, and compression.

mod compression;
mod credentials;
