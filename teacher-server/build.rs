//! Links libtorch with an rpath and keeps libtorch_cuda.so (see build-support/).
include!("../build-support/link_libtorch.rs");

fn main() {
    link_libtorch();
}
