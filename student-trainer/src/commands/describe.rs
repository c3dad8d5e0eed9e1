//! `describe`: a built-in architecture's named layers, their per-sample shapes, and its
//! parameter count.

use super::error::AppError;
use super::output::outln;
use distill_models::{Arch, ArchSpec, Network};
use tch::{Device, nn};

/// `describe`: prints the architecture `arch` built for `input_shape` inputs and `num_classes`
/// classes: its parameter count, then one line per named layer ([`Network::layers`]: the cut
/// points of hint distillation and of a teacher's named outputs) with its per-sample shape.
///
/// # Errors
/// [`AppError::Model`] for an unknown architecture or one that cannot take `input_shape`;
/// [`AppError::StdoutClosed`].
pub fn describe(arch: &str, input_shape: &[i64], num_classes: i64) -> Result<(), AppError> {
    let spec = ArchSpec {
        arch: arch.parse::<Arch>()?,
        input_shape: input_shape.to_vec(),
        num_classes,
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let net = Network::new(&vs.root(), &spec)?;
    outln!(
        "{}: {} parameters, input {:?}",
        spec.arch,
        distill_models::arch::param_count(&vs),
        spec.input_shape
    )?;
    outln!("{:<12} per-sample shape", "layer")?;
    for layer in net.layers() {
        outln!("{:<12} {:?}", layer.name, layer.shape)?;
    }
    Ok(())
}
