//! Compiles `distill/v1/teacher.proto` with protox (no system `protoc`) and emits a descriptor
//! set for gRPC server reflection.
use prost::Message;

include!("../build-support/link_libtorch.rs");

fn main() -> Result<(), Box<dyn std::error::Error>> {
    link_libtorch();
    let protos = ["distill/v1/teacher.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["."])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("distill_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
