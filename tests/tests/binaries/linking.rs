//! Both binaries keep `libtorch_cuda.so` as a needed library (else CUDA silently vanishes on a GPU
//! machine: the linker drops libraries none of whose symbols are referenced) and start without
//! `LD_LIBRARY_PATH` (they carry an rpath to libtorch).

use std::path::PathBuf;
use std::process::Command;

/// `target/<profile>/NAME`, beside the directory of this test executable (`target/<profile>/deps`).
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps")
        .join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first (make test does)",
        path.display()
    );
    path
}

fn needed_libraries(name: &str) -> Vec<String> {
    let path = binary(name);
    let bytes = std::fs::read(&path).expect("read binary");
    let elf = goblin::elf::Elf::parse(&bytes).expect("binary is ELF");
    elf.libraries.iter().map(|s| s.to_string()).collect()
}

fn libtorch_has_cuda() -> bool {
    let libtorch = std::env::var("LIBTORCH").expect("LIBTORCH is set by .cargo/config.toml");
    PathBuf::from(libtorch)
        .join("lib/libtorch_cuda.so")
        .exists()
}

#[test]
fn binaries_need_libtorch_cuda() {
    assert!(
        libtorch_has_cuda(),
        "the project's libtorch (torch==2.11.0 wheel) ships libtorch_cuda.so"
    );
    for bin in ["teacher-server", "student-trainer"] {
        let needed = needed_libraries(bin);
        for lib in ["libtorch_cuda.so", "libtorch_cpu.so", "libtorch.so"] {
            assert!(
                needed.iter().any(|n| n == lib),
                "{bin} does not list {lib} among its needed libraries: {needed:?}"
            );
        }
    }
}

#[test]
fn binaries_start_without_ld_library_path() {
    for bin in ["teacher-server", "student-trainer"] {
        let out = Command::new(binary(bin))
            .arg("--version")
            .env_remove("LD_LIBRARY_PATH")
            .env_remove("LIBTORCH")
            .output()
            .expect("spawn binary");
        assert!(
            out.status.success(),
            "{bin} --version failed without LD_LIBRARY_PATH: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(bin));
    }
}
