//! The probes on kernels other than the build machine's: a Debian kernel booted under qemu
//! (TCG, so no KVM is needed) from an initramfs holding busybox, nginx, the tracer and
//! `tests/vm/init`. The init runs `tracer check`, then `tracer run` around one wget of a file
//! that nginx serves, and prints every output between `@@@` markers on the serial console.
//! The host reads them: nothing of the host's own kernel is involved.
//!
//! The kernels come from `apt-get download` and are kept in `target/vm/<package>/` (delete it
//! to fetch newer ones). Needs qemu-system-x86_64, busybox, nginx, apt-get, dpkg-deb, objcopy,
//! ldd and gzip, network for the first download, not root:
//!
//! ```text
//! CI=true TRACER_BIN=$PWD/target/debug/tracer cargo test -p tracer-tests --test kernels -- --test-threads=1 --nocapture
//! ```
//!
//! The whole serial console of the last run is kept in `target/vm/<package>.serial.log`.
use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc::{self, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use tracer_tests::*;

/// One VM run under TCG: the boot, two loads of the probes (`tracer check`, then `tracer run`)
/// and the exchange. A load the verifier rejects prints thousands of lines of its log, which
/// the emulated UART takes tens of seconds to carry.
const VM_TIMEOUT: Duration = Duration::from_secs(600);

/// Debian 12's cloud kernel, 6.1: no socket tracepoints, so the syscall hooks are the ones that
/// load, and no private BPF stacks, so every call chain of a probe must fit in 512 bytes.
#[test]
fn debian12_cloud_6_1() {
    boot_and_trace("linux-image-cloud-amd64");
}

/// Debian 12's newer cloud kernel, 6.12: the socket tracepoints, on a kernel built by others.
#[test]
fn debian12_cloud_6_12() {
    boot_and_trace("linux-image-6.12-cloud-amd64");
}

fn boot_and_trace(package: &str) {
    // Not for the host's probes (there are none here): two emulated machines at once would
    // share the CPU and run into each other's timeouts.
    let _serial = serial();
    let tools = [
        "qemu-system-x86_64",
        "busybox",
        "nginx",
        "apt-get",
        "dpkg-deb",
        "objcopy",
        "ldd",
        "gzip",
    ];
    if !tools.iter().all(|t| require(t, which(t).is_some()))
        || !require(
            "the tracer binary (set TRACER_BIN or run `cargo build -p tracer-user`)",
            tracer_bin().is_some(),
        )
    {
        return;
    }
    let started = Instant::now();
    let Some(vmlinuz) = kernel(package) else {
        return;
    };
    let dir = TempDir::new("vm");
    let initrd = dir.join("initrd.gz");
    build_initramfs(&dir, &initrd);
    let prepared = started.elapsed();

    let vm = boot(
        &vmlinuz,
        &initrd,
        &vm_dir().join(format!("{package}.serial.log")),
    );
    let release = vm.marker("init kernel=").unwrap_or_else(|| {
        panic!(
            "{package}: the VM never ran /init; the end of its serial console:\n{}",
            vm.tail(100)
        )
    });
    let between = |from: &str, to: &str| -> Option<String> {
        Some(format!("{:.1}s", (vm.at(to)? - vm.at(from)?).as_secs_f64()))
    };
    let load = between("tracer-start", "tracer-ready")
        .map(|t| format!("probe load {t} (tracer run to `tracing HTTP/1.x`)"))
        .or_else(|| {
            between("tracer-start", "tracer-not-ready")
                .map(|t| format!("no probe load: tracer run gave up after {t}"))
        })
        .unwrap_or_else(|| "tracer run did not start".to_string());
    println!(
        "{package} ({release}): boot {:.1}s (qemu start to /init), tracer check {}, {load}, \
         whole VM run {:.1}s; {:.1}s before it to fetch the kernel and build the initramfs",
        vm.at("init").unwrap_or_default().as_secs_f64(),
        between("check-start", "check-done").unwrap_or_else(|| "-".to_string()),
        vm.powered_off.as_secs_f64(),
        prepared.as_secs_f64(),
    );

    let check = vm.section("check");
    let stderr = vm.section("stderr");
    let hooks = stderr
        .iter()
        .find_map(|l| l.split_once("kernel hooks: ").map(|(_, h)| h))
        .unwrap_or("(none: the probes did not attach)");
    println!("{package}: hooks: {hooks}");
    // Optional, so reported rather than asserted: whether this kernel takes the writer.
    if let Some(l) = check
        .iter()
        .find(|l| l.contains("--propagate") && !l.contains("HTTP/2"))
    {
        println!("{package}: {l}");
    }
    assert!(
        check.iter().all(|l| !l.starts_with("FAIL"))
            && check.last() == Some(&"tracing can work on this host"),
        "{package} ({release}): `tracer check` says the probes cannot work here:\n{}\n\
         (whole serial console: {})",
        check_summary(&check),
        vm.log.display()
    );
    assert!(
        vm.at("tracer-ready").is_some(),
        "{package} ({release}): `tracer run` did not attach its probes; its log begins:\n{}",
        stderr[..stderr.len().min(20)].join("\n")
    );
    assert_eq!(
        vm.marker("wget "),
        Some("rc=0 body=hello"),
        "{package}: the wget of nginx failed"
    );
    assert_eq!(
        vm.marker("tracer-exit "),
        Some("rc=0"),
        "{package}: the tracer did not stop cleanly on SIGTERM; its log:\n{}",
        stderr.join("\n")
    );

    let spans: Vec<Value> = vm
        .section("spans")
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON span ({e}): {l}")))
        .collect();
    let of = |k: &str, service: &str| -> &Value {
        let found: Vec<&Value> = of_kind(&spans, k)
            .into_iter()
            .filter(|s| s["resource"]["service.name"] == service)
            .collect();
        let s = one_with_path(&found, "/hello.txt");
        assert_well_formed(s);
        assert_eq!(attr_u64(s, "http.response.status_code"), Some(200), "{s}");
        s
    };
    let (server, client) = (of("SERVER", "nginx"), of("CLIENT", "wget"));
    // The syscall hooks learn a connection's local end from /proc, too late for a wget that
    // has exited: there the server span may be a trace of its own, never under another span.
    if hooks.starts_with("syscall") && server["parent_span_id"].is_null() {
        assert_ne!(server["trace_id"], client["trace_id"], "{server}");
    } else {
        assert_eq!(
            server["parent_span_id"], client["span_id"],
            "{server}\n{client}"
        );
        assert_eq!(server["trace_id"], client["trace_id"], "{server}\n{client}");
    }
}

/// What the VM printed, each line with when it arrived (since qemu started).
struct Vm {
    lines: Vec<(Duration, String)>,
    powered_off: Duration,
    /// Where the whole console is kept.
    log: PathBuf,
}

impl Vm {
    /// The text after the first `@@@ <name>` marker. Escape sequences of the firmware may
    /// precede a marker on its line.
    fn marker(&self, name: &str) -> Option<&str> {
        self.marked(name).map(|(_, rest)| rest)
    }

    /// When the first `@@@ <name>` marker arrived.
    fn at(&self, name: &str) -> Option<Duration> {
        self.marked(name).map(|(t, _)| t)
    }

    fn marked(&self, name: &str) -> Option<(Duration, &str)> {
        let tag = format!("@@@ {name}");
        self.lines.iter().find_map(|(t, l)| {
            let i = l.find(&tag)?;
            Some((*t, &l[i + tag.len()..]))
        })
    }

    /// The lines between `@@@ begin <name>` and `@@@ end <name>`.
    fn section(&self, name: &str) -> Vec<&str> {
        let (begin, end) = (format!("@@@ begin {name}"), format!("@@@ end {name}"));
        self.lines
            .iter()
            .map(|(_, l)| l.as_str())
            .skip_while(|l| !l.contains(&begin))
            .skip(1)
            .take_while(|l| !l.contains(&end))
            .collect()
    }

    fn tail(&self, n: usize) -> String {
        let from = self.lines.len().saturating_sub(n);
        self.lines[from..]
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Boots `vmlinuz` with `initrd` and collects its serial console until it powers off, into
/// `log` too. Killed after [`VM_TIMEOUT`].
fn boot(vmlinuz: &Path, initrd: &Path, log: &Path) -> Vm {
    let started = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-m", "2048", "-smp", "1"])
        // No network card: nothing leaves the VM, and no option ROM of one has to be installed.
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        // panic=-1: a kernel panic (an init that died) powers off at once instead of hanging.
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-system-x86_64 runs");
    let (tx, rx) = mpsc::channel();
    let stdout = qemu.stdout.take().unwrap();
    thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        while r.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            let line = String::from_utf8_lossy(&buf)
                .trim_end_matches(['\r', '\n'])
                .to_string();
            if tx.send((started.elapsed(), line)).is_err() {
                return;
            }
            buf.clear();
        }
    });
    let mut lines = Vec::new();
    let deadline = started + VM_TIMEOUT;
    let timed_out = loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => lines.push(line),
            Err(RecvTimeoutError::Disconnected) => break false,
            Err(RecvTimeoutError::Timeout) => break true,
        }
    };
    if timed_out {
        let _ = qemu.kill();
    }
    let status = qemu.wait().expect("waiting for qemu");
    let mut qemu_stderr = String::new();
    let _ = std::io::Read::read_to_string(&mut qemu.stderr.take().unwrap(), &mut qemu_stderr);
    let vm = Vm {
        lines,
        powered_off: started.elapsed(),
        log: log.to_path_buf(),
    };
    let text: String = vm
        .lines
        .iter()
        .map(|(t, l)| format!("{:7.2} {l}\n", t.as_secs_f64()))
        .collect();
    fs::write(log, text).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    assert!(
        !timed_out,
        "the VM did not power off within {VM_TIMEOUT:?}: killed. The end of its serial console \
         (all of it in {}):\n{}",
        log.display(),
        vm.tail(200)
    );
    assert!(
        status.success(),
        "qemu failed ({status}): {qemu_stderr}\nthe end of the serial console:\n{}",
        vm.tail(50)
    );
    vm
}

/// `tracer check`'s one-line findings and, under a finding whose fix holds a verifier log, the
/// verifier's verdict: from the instruction it stopped at to its totals.
fn check_summary(check: &[&str]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < check.len() {
        let l = check[i];
        if l.starts_with("ok") || l.starts_with("FAIL") || l.trim_start().starts_with("->") {
            out.push(l.to_string());
        }
        if l.trim_start().starts_with("verification time") {
            let insn = (0..i)
                .rev()
                .find(|&j| is_instruction(check[j]))
                .unwrap_or(i);
            let last = (i + 2).min(check.len() - 1);
            out.push("      verifier's verdict:".to_string());
            out.extend(
                check[insn..=last]
                    .iter()
                    .map(|v| format!("        {}", v.trim())),
            );
        }
        i += 1;
    }
    out.join("\n")
}

/// A line of the verifier's log for one instruction: `3012: (85) call ...`.
fn is_instruction(line: &str) -> bool {
    line.trim_start()
        .split_once(": (")
        .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn vm_dir() -> PathBuf {
    workspace().join("target").join("vm")
}

/// The vmlinuz of the kernel that metapackage `package` depends on: from `target/vm/` or, the
/// first time, from the Debian mirror. `None`: the download failed (`require` said why).
fn kernel(package: &str) -> Option<PathBuf> {
    let kept = vm_dir().join(package);
    if let Some(k) = vmlinuz_in(&kept) {
        return Some(k);
    }
    // Everything happens in `partial` and one rename puts the kernel in place: an interrupted
    // fetch leaves nothing that a later run would take for a kernel.
    let partial = vm_dir().join(format!("{package}.partial"));
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(&partial).expect("target/vm");
    let meta = download(package, &partial)?;
    let depends = run_ok("dpkg-deb", &["-f", &meta, "Depends"]);
    let image = depends
        .split([' ', ',', '|', '\n'])
        .find(|p| !p.is_empty())
        .unwrap_or_else(|| panic!("{package} depends on no kernel image: {depends:?}"));
    let deb = download(image, &partial)?;
    let extracted = partial.join("x");
    run_ok("dpkg-deb", &["-x", &deb, extracted.to_str().unwrap()]);
    let vmlinuz =
        vmlinuz_in(&extracted.join("boot")).unwrap_or_else(|| panic!("no boot/vmlinuz-* in {deb}"));
    let staged = partial.join("kernel");
    fs::create_dir_all(&staged).unwrap();
    fs::rename(&vmlinuz, staged.join(vmlinuz.file_name().unwrap())).unwrap();
    fs::rename(&staged, &kept).unwrap();
    let _ = fs::remove_dir_all(&partial);
    vmlinuz_in(&kept)
}

fn vmlinuz_in(dir: &Path) -> Option<PathBuf> {
    fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
}

/// `apt-get download package` into `dir`: the path of the .deb.
fn download(package: &str, dir: &Path) -> Option<String> {
    let out = Command::new("apt-get")
        .args(["download", "-q", package])
        .current_dir(dir)
        .output()
        .expect("apt-get runs");
    let why = format!(
        "`apt-get download {package}` (the Debian mirror): {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    if !require(&why, out.status.success()) {
        return None;
    }
    let prefix = format!("{package}_");
    let deb = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .unwrap_or_else(|| panic!("apt-get download {package} left no {prefix}*.deb"));
    Some(deb.to_str().unwrap().to_string())
}

/// The initramfs: `/init`, busybox, nginx and a copy of the tracer without its debug info
/// (half a gigabyte less to unpack), each with the shared libraries `ldd` names at the same
/// paths, as gzipped cpio.
fn build_initramfs(dir: &TempDir, out: &Path) {
    let tracer = dir.join("tracer");
    let bin = tracer_bin().expect("checked above");
    run_ok(
        "objcopy",
        &[
            "--strip-debug",
            bin.to_str().unwrap(),
            tracer.to_str().unwrap(),
        ],
    );
    let init = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("vm")
        .join("init");
    let programs = [
        ("bin/busybox", which("busybox").unwrap()),
        ("bin/nginx", which("nginx").unwrap()),
        ("bin/tracer", tracer),
    ];

    let mut gzip = Command::new("gzip")
        .arg("-1")
        .stdin(Stdio::piped())
        .stdout(fs::File::create(out).expect("initrd file"))
        .spawn()
        .expect("gzip runs");
    let mut cpio = Cpio::new(gzip.stdin.take().unwrap());
    for d in ["dev", "proc", "sys", "tmp"] {
        cpio.dir(d);
    }
    // The kernel opens it for init's stdin, stdout and stderr before anything is mounted.
    cpio.node("dev/console", 0o020600, (5, 1), &[]);
    cpio.file("init", &init, 0o755);
    let mut libs = BTreeSet::new();
    for (name, path) in &programs {
        cpio.file(name, path, 0o755);
        libs.extend(shared_libraries(path));
    }
    for lib in &libs {
        cpio.file(lib.strip_prefix("/").unwrap(), Path::new(lib), 0o755);
    }
    cpio.finish();
    assert!(gzip.wait().unwrap().success(), "gzip failed");
}

/// The absolute paths in `ldd`'s answer (none for a static binary, for which it fails).
fn shared_libraries(program: &Path) -> Vec<String> {
    let out = Command::new("ldd").arg(program).output().expect("ldd runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let l = l.split_once("=>").map_or(l, |(_, to)| to);
            l.split_whitespace().next().filter(|p| p.starts_with('/'))
        })
        .map(str::to_string)
        .collect()
}

/// A cpio archive in the "newc" format, the one the kernel unpacks into its first root.
struct Cpio<W: Write> {
    out: W,
    next_ino: u32,
    dirs: BTreeSet<String>,
}

impl<W: Write> Cpio<W> {
    fn new(out: W) -> Self {
        Cpio {
            out,
            next_ino: 1,
            dirs: BTreeSet::new(),
        }
    }

    fn dir(&mut self, name: &str) {
        if self.dirs.insert(name.to_string()) {
            self.node(name, 0o040755, (0, 0), &[]);
        }
    }

    /// `path`'s contents (symbolic links followed) as `name`, after the directories above it.
    fn file(&mut self, name: &str, path: &Path, perm: u32) {
        let parents: Vec<&str> = name.match_indices('/').map(|(i, _)| &name[..i]).collect();
        for p in parents {
            self.dir(p);
        }
        let data = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        self.node(name, 0o100000 | perm, (0, 0), &data);
    }

    /// One entry: 110 bytes of header in hex fields, the name, the data, each padded to 4.
    fn node(&mut self, name: &str, mode: u32, (rmajor, rminor): (u32, u32), data: &[u8]) {
        let ino = self.next_ino;
        self.next_ino += 1;
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let fields = [
            ino,
            mode,
            0,
            0,
            nlink,
            0,
            u32::try_from(data.len()).expect("a file under 4 GiB"),
            0,
            0,
            rmajor,
            rminor,
            name.len() as u32 + 1,
            0,
        ];
        let mut header = String::from("070701");
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        let write = |out: &mut W, bytes: &[u8]| out.write_all(bytes).expect("writing the cpio");
        write(&mut self.out, header.as_bytes());
        write(&mut self.out, name.as_bytes());
        // The name ends in a NUL, then zeros up to a multiple of 4.
        write(
            &mut self.out,
            &[0; 4][..1 + pad4(header.len() + name.len() + 1)],
        );
        write(&mut self.out, data);
        write(&mut self.out, &[0; 3][..pad4(data.len())]);
    }

    fn finish(mut self) {
        self.node("TRAILER!!!", 0, (0, 0), &[]);
        self.out.flush().expect("writing the cpio");
    }
}

/// The zero bytes that bring `len` to a multiple of 4.
fn pad4(len: usize) -> usize {
    (4 - len % 4) % 4
}
