//! The training loop, on its own named thread.
//!
//! One thread owns the network, its `VarStore` and the optimizer. In `distill` it receives
//! [`crate::soft_targets::TeacherBatch`]es through a bounded channel from the async client (the channel capacity is
//! the prefetch; nothing sleeps) and checks each against its own schedule before training on it,
//! so logits can never be paired with the wrong samples. In `train` it reads its batches from the
//! dataset directly.
//!
//! After every epoch it writes a checkpoint (weights, optimizer state, epoch, step, and the
//! schedule position in `checkpoint.json`'s `trainer` field) and appends a line to
//! `metrics.jsonl`. When the stop flag is raised (Ctrl-C or SIGTERM) it saves a checkpoint at
//! the current batch and returns with [`Outcome::interrupted`] set.
//!
//! Determinism: the weights are initialised after `tch::manual_seed(seed)`, each epoch's sample
//! order is [`crate::data::epoch_permutation`]`(seed, epoch)`, and every step reseeds libtorch's
//! generator with [`crate::schedule::step_seed`]`(seed, epoch, batch)` before it draws anything
//! (dropout masks; in [`step`], which every student kind goes through). A step's draws are then a
//! function of its place in the schedule alone, so on the CPU a run resumed at any batch (at an
//! epoch boundary, or mid-epoch after Ctrl-C or SIGTERM) equals an uninterrupted run, dropout
//! included, and the checkpoint holds no generator state.
//!
//! The student is a built-in network or a TorchScript module (`--student FILE.pt`), behind one
//! interface ([`distill_models::Model`]): a TorchScript student's parameters join the `VarStore`
//! under their `state_dict()` names (shared with the module, so the optimizer trains it in
//! place), its mode follows each call (training for steps, eval for evaluations), its dropout
//! draws from the same seeded generator, and its checkpoint adds the module file with its
//! buffers (see [`distill_models::checkpoint`]). `--init DIR` starts a fresh run from a
//! checkpoint's weights ([`student::StudentSource`]).
//!
//! # Layout
//!
//! - [`job`]: what a run is given ([`Job`], [`TrainConfig`], [`Objective`]) and returns
//!   ([`Outcome`]);
//! - [`run`]: the thread and the epoch loop; [`step`]: one batch; [`targets`]: where a batch's
//!   soft targets come from (teacher stream, logit cache, none); [`student`]: the network, its
//!   hint regressor and the stages' parameters; [`sums`]: an epoch's running sums; [`views`]:
//!   the student's per-batch views of an image folder (augmented crops) from the loader thread;
//!   [`on_policy`]: on-policy distillation's batches (the student's own samples, handed to the
//!   teachers) and its held-out reverse KL;
//! - [`checkpoint`]: what a checkpoint records of the run, and where a run starts.
//!
//! Imports: data, losses, optimizers, hints, the logit cache, evaluation, the schedule, the
//! soft-target hand-off and the outputs; never the teachers (gRPC), the config, the command line
//! or the commands.

pub mod checkpoint;
pub mod error;
pub mod job;
pub mod on_policy;
pub mod run;
pub mod step;
pub mod student;
pub mod sums;
pub mod targets;
pub mod views;

pub use checkpoint::{ResumeState, Start};
pub use error::TrainError;
pub use job::{ImageJob, Job, LabelPolicy, Objective, Outcome, TrainConfig};
pub use on_policy::{Decoder, OnPolicyJob, OnPolicySettings};
pub use run::{join, run, spawn};
pub use step::label_mask;
pub use targets::check_pairing;
