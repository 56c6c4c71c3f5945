//! `tracer check`: can tracing work on this host, and if not, what to do about it.
use std::path::Path;

use crate::probes::{
    Hooks, ProbeOptions, Probes, SOCKET_HOOKS, TRACEFS, TRACEPOINTS, ensure_tracefs,
    socket_hooks_present,
};

pub struct Finding {
    pub ok: bool,
    pub what: String,
    /// What to do when not ok.
    pub fix: String,
}

fn finding(ok: bool, what: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding {
        ok,
        what: what.into(),
        fix: fix.into(),
    }
}

/// Effective capability bits of this process.
fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

pub fn run_checks() -> Vec<Finding> {
    let mut out = Vec::new();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    let mut parts = release
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    out.push(finding(
        (major, minor) >= (5, 17),
        format!("kernel {release} (the probes use bpf_loop: 5.17 or newer)"),
        "upgrade the kernel to 5.17 or newer",
    ));
    out.push(finding(
        Path::new("/sys/kernel/btf/vmlinux").exists(),
        "kernel BTF at /sys/kernel/btf/vmlinux",
        "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (the probes work without it, but later features need it)",
    ));
    let caps = effective_caps();
    let has = |bit: u32| caps & (1u64 << bit) != 0;
    // CAP_SYS_ADMIN (21) implies the BPF and perf permissions on every kernel.
    let bpf_ok = has(21) || (has(39) && has(38));
    out.push(finding(
        bpf_ok,
        format!(
            "capabilities: CAP_BPF={} CAP_PERFMON={} CAP_SYS_ADMIN={}",
            has(39),
            has(38),
            has(21)
        ),
        "run as root, or grant CAP_BPF, CAP_PERFMON and CAP_DAC_READ_SEARCH (and CAP_SYS_ADMIN to mount tracefs)",
    ));
    match ensure_tracefs() {
        Ok(mounted) => out.push(finding(
            true,
            if mounted {
                format!("tracefs was not mounted: mounted it at {TRACEFS}")
            } else {
                format!("tracefs mounted at {TRACEFS}")
            },
            "",
        )),
        Err(e) => out.push(finding(false, "tracefs", e.to_string())),
    }
    let socket_hooks = socket_hooks_present();
    out.push(finding(
        true,
        if socket_hooks {
            format!(
                "socket tracepoints present ({}): only socket I/O will run a probe",
                SOCKET_HOOKS
                    .iter()
                    .map(|(g, t)| format!("{g}:{t}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            "no socket tracepoints (Linux 6.3+): falling back to syscall tracepoints, which cost every read/write syscall of every process a probe".to_string()
        },
        "",
    ));
    if !socket_hooks {
        let missing: Vec<_> = TRACEPOINTS
            .iter()
            .filter(|tp| !Path::new(TRACEFS).join("events/syscalls").join(tp).is_dir())
            .copied()
            .collect();
        out.push(finding(
            missing.is_empty(),
            format!(
                "{} syscall tracepoints present",
                TRACEPOINTS.len() - missing.len()
            ),
            format!(
                "missing: {} (needs CONFIG_FTRACE_SYSCALLS=y)",
                missing.join(", ")
            ),
        ));
    }
    match Probes::attach(&ProbeOptions::default()) {
        Ok(p) => {
            let n = match p.hooks() {
                Hooks::Socket => SOCKET_HOOKS.len(),
                Hooks::Syscalls => TRACEPOINTS.len(),
            };
            out.push(finding(
                true,
                format!(
                    "eBPF object loads (ring buffer, maps) and all {n} hooks attach: {}",
                    p.hooks().describe()
                ),
                "",
            ));
            out.push(match p.tls() {
                Ok(()) => finding(
                    true,
                    "TLS probes load (uprobes on SSL_read/SSL_write and their _ex forms, SSL_set_fd; exec tracepoint)",
                    "",
                ),
                Err(e) => finding(
                    false,
                    "TLS probes",
                    format!("{e}; plain HTTP is still traced (--no-tls silences this)"),
                ),
            });
            out.extend(tls_findings(Path::new("/proc")));
        }
        Err(e) => out.push(finding(
            false,
            "loading and attaching the probes",
            e.to_string(),
        )),
    }
    out
}

/// What the TLS probes would attach to in the processes running now, and what they cannot see.
fn tls_findings(proc_root: &Path) -> Vec<Finding> {
    let survey = crate::tls::survey(proc_root);
    let mut out = vec![finding(
        true,
        if survey.probed.is_empty() {
            "TLS libraries: none mapped by a running process now (libssl files of the host and every library loaded later are probed when the tracer runs)".to_string()
        } else {
            format!(
                "TLS libraries in running processes ({}): {}",
                survey.probed.len(),
                survey.probed.join(", ")
            )
        },
        "",
    )];
    if !survey.unprobed.is_empty() {
        out.push(finding(
            true,
            format!(
                "TLS not traced in ({}): {}",
                survey.unprobed.len(),
                survey.unprobed.join("; ")
            ),
            "",
        ));
    }
    out
}

/// Prints the report; returns whether tracing can work.
pub fn report(findings: &[Finding]) -> bool {
    for f in findings {
        if f.ok {
            println!("ok    {}", f.what);
        } else {
            println!("FAIL  {}\n      -> {}", f.what, f.fix);
        }
    }
    let ok = findings.iter().all(|f| f.ok);
    println!(
        "{}",
        if ok {
            "tracing can work on this host"
        } else {
            "tracing cannot work on this host until the FAIL lines are fixed"
        }
    );
    ok
}
