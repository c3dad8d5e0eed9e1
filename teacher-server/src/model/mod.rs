//! The served model: what it is, the small synchronous trait the engine calls, and its two
//! implementations, a TorchScript module and a built-in architecture.
//!
//! - `spec.rs`: [`ModelSource`] (where the weights come from) and [`ModelSpec`] (what the model
//!   takes and returns; [`SequenceSpec`] for a causal language model).
//! - `precision.rs`: [`Precision`] (`--precision`) and the conversions of inputs to it and of
//!   logits back to f32.
//! - `teacher.rs`: the [`TeacherModel`] trait and what a model says of itself
//!   ([`ModelDescription`], [`OutputDescription`]).
//! - `load.rs`: [`load()`], which builds the model a source names and warms it up.
//! - `torchscript.rs`: a TorchScript module (`torch.jit.save`).
//! - `builtin.rs`: a built-in architecture with checkpoint or safetensors weights.
//! - `error.rs`: [`LoadError`] (the model could not be loaded) and [`ForwardError`] (a forward
//!   pass failed).
//!
//! This folder imports nothing else of the crate: the configuration, the engine and the error
//! mapping build on it. Models are built and used on the engine thread only (see
//! [`crate::engine`]): `tch::Tensor` is `Send` but not `Sync`, and grad mode is thread-local.

mod builtin;
mod error;
mod load;
mod precision;
mod spec;
mod teacher;
mod torchscript;

pub use error::{ForwardError, LoadError};
pub use load::load;
pub use precision::Precision;
pub use spec::{ModelSource, ModelSpec, SEQUENCE_DEFAULT_TOP_K, SequenceSpec};
pub(crate) use teacher::list_outputs;
pub use teacher::{DEFAULT_LOGITS_OUTPUT, ModelDescription, OutputDescription, TeacherModel};
