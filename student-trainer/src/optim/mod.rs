//! The optimizers ([`optimizer`]: Adam, AdamW, SGD on plain tensors, with checkpointable state,
//! gradient clipping and the resume policy) and the learning-rate schedules they follow
//! ([`lr_schedule`]: constant or cosine, with linear warm-up).

pub mod lr_schedule;
pub mod optimizer;

pub use lr_schedule::{LrSchedule, LrScheduleKind};
pub use optimizer::{
    OptimError, Optimizer, OptimizerConfig, OptimizerKind, StepStats, check_resume,
    trainable_parameters,
};
