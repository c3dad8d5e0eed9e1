// Included (`include!`) by the build script of every crate that links a binary or test against
// libtorch.
//
// It makes the binaries start without `LD_LIBRARY_PATH` (an rpath to `$LIBTORCH/lib`) and keeps
// `libtorch_cuda.so` as a needed library: without `--no-as-needed` the linker drops it (no symbol
// of it is referenced directly), and CUDA then silently vanishes on a GPU machine (see the tch
// README, "Linking to libtorch_cuda"). `LIBTORCH` comes from the environment or from
// `.cargo/config.toml`, which points it at the `.libtorch` link `make setup` creates.


/// Emits the link arguments that add an rpath to `$LIBTORCH/lib` and keep `libtorch_cuda.so`.
fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=../build-support/link_libtorch.rs");
    let Ok(libtorch) = std::env::var("LIBTORCH") else {
        println!("cargo:warning=LIBTORCH is not set: run `make setup`");
        return;
    };
    let lib = std::path::PathBuf::from(&libtorch).join("lib");
    // Resolve the `.libtorch` link: the rpath then names the cache folder itself.
    let lib = lib.canonicalize().unwrap_or(lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-L{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-ltorch_cuda");
    }
    println!("cargo:rustc-link-arg=-ltorch_cpu");
    println!("cargo:rustc-link-arg=-ltorch");
    println!("cargo:rustc-link-arg=-Wl,--as-needed");
}
