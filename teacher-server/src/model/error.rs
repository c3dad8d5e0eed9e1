//! The model's two errors: [`LoadError`] (the model could not be loaded) and [`ForwardError`]
//! (one forward pass failed), and [`no_panic`], the guard that turns a panic inside tch into a
//! [`ForwardError`].

/// Why a model could not be loaded (one line, naming the file).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("loading the model: {0}")]
pub struct LoadError(pub String);

impl From<distill_models::ModelError> for LoadError {
    fn from(e: distill_models::ModelError) -> Self {
        LoadError(e.to_string())
    }
}

/// Why a model's forward pass failed. Cloneable: one failed forward pass answers every request
/// merged into it. The engine reports each variant as its own error variant of the same name and
/// message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ForwardError {
    /// A libtorch error (message as reported by libtorch), or a call the model refuses (a mask
    /// for a model that takes none, a module whose outputs changed since the load).
    #[error("libtorch: {0}")]
    Torch(String),
    /// The model panicked (a bug in tch or the model; caught where the model calls tch).
    #[error("model panicked: {0}")]
    Panicked(String),
    /// The model gave up the forward pass because the server is stopping (a model that waits on
    /// a device or an outside signal, released at shutdown).
    #[error("the inference engine stopped")]
    Stopped,
}

impl From<tch::TchError> for ForwardError {
    fn from(e: tch::TchError) -> Self {
        ForwardError::Torch(distill_models::torch_message(&e))
    }
}

/// Runs `f`, turning a panic (tch's non-fallible paths, e.g. inside `SequentialT`) into an error.
pub(super) fn no_panic<T>(f: impl FnOnce() -> Result<T, ForwardError>) -> Result<T, ForwardError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|p| Err(ForwardError::Panicked(distill_models::panic_message(&*p))))
}
