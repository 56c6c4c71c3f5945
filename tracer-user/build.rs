//! Builds the eBPF object with the nightly toolchain and hands its path to the crate, so the
//! `tracer` binary embeds it and is one self-contained file.
use std::{env, path::PathBuf, process::Command};

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("..");
    let ebpf = root.join("tracer-ebpf");
    for dir in [
        "tracer-ebpf/src",
        "tracer-common/src",
        "tracer-ebpf/Cargo.toml",
        "tracer-ebpf/build.rs",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-env-changed=TRACER_EBPF_OBJECT");
    // A prebuilt object (e.g. from a container build stage) wins.
    if let Ok(obj) = env::var("TRACER_EBPF_OBJECT") {
        println!("cargo:rustc-env=TRACER_EBPF_OBJECT={obj}");
        return;
    }
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&ebpf).args(["build", "--release"]);
    // The outer cargo's settings are for the host toolchain; the eBPF crate picks its own
    // (nightly, bpfel target) from tracer-ebpf/rust-toolchain.toml and .cargo/config.toml.
    for (key, _) in env::vars() {
        if key.starts_with("CARGO") || key.starts_with("RUSTC") || key == "RUSTUP_TOOLCHAIN" {
            cmd.env_remove(key);
        }
    }
    let status = cmd.status().expect("cannot run cargo to build tracer-ebpf");
    if !status.success() {
        panic!(
            "building the eBPF object failed. Run `cargo xtask build-ebpf` once: it installs \
             what is missing (nightly rust-src, bpf-linker) and shows the full error."
        );
    }
    let obj = ebpf.join("target/bpfel-unknown-none/release/tracer-ebpf");
    println!("cargo:rustc-env=TRACER_EBPF_OBJECT={}", obj.display());
}
