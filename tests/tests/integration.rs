//! The workspace's integration tests, in one test binary: each behaviour is a module, grouped in
//! a folder per concern. One binary links libtorch once, where a file per behaviour linked it
//! once per file.
//!
//! The tests run the real `teacher-server`, `student-trainer` and `bench` binaries (build them
//! first: `cargo build --workspace --bins`, as `make test` does) through the harness in
//! `distill_tests`. They share this process and run on parallel threads: a test that uses
//! process-wide state (libtorch's global random generator above all) takes the harness's lock
//! for it, [`distill_tests::torch_rng`].

mod binaries;
mod images;
mod layout;
mod observability;
mod replicas;
mod security;
mod student;
mod teacher;
mod text;
