//! `tracer check`: can tracing work on this host, and if not, what to do about it.
use std::path::Path;

use crate::probes::{
    Hooks, ProbeOptions, Probes, SOCKET_HOOKS, TRACEFS, TRACEPOINTS, cgroup2_root, ensure_tracefs,
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
    // Attached but never configured: every probe returns at once, so checking changes no
    // byte of anyone's traffic, the trace-context writer's included.
    let cgroup = cgroup2_root();
    let opts = ProbeOptions {
        propagate: Some(cgroup.clone()),
        ..ProbeOptions::default()
    };
    match Probes::attach_inert(&opts) {
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
            out.extend(propagate_findings(p.propagate(), &cgroup));
        }
        Err(e) => out.push(finding(
            false,
            "loading and attaching the probes",
            e.to_string(),
        )),
    }
    out
}

/// Whether `--propagate` can write trace context here, and what may stand in its way. It is
/// optional, so these never fail the check.
fn propagate_findings(attached: Result<(), &str>, cgroup: &Path) -> Vec<Finding> {
    let mut out = vec![finding(
        true,
        match attached {
            Ok(()) => format!(
                "--propagate can write trace context: sockops attaches to cgroup v2 at {} and sk_msg to its socket map",
                cgroup.display()
            ),
            Err(e) => format!(
                "--propagate is not available here, requests would go unchanged: {e} (it needs cgroup v2 and sockops/sk_msg programs, CONFIG_CGROUP_BPF and CONFIG_BPF_STREAM_PARSER)"
            ),
        },
        "",
    )];
    // Socket-map programs of others: a socket belongs to one socket map's programs, so those
    // a CNI (Cilium's socket acceleration, say) puts in its own map get no trace context.
    const SOCK_OPS: u32 = 13;
    const SK_SKB: u32 = 14;
    const SK_MSG: u32 = 16;
    let others: Vec<String> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| [SOCK_OPS, SK_SKB, SK_MSG].contains(&(p.program_type() as u32)))
        .filter_map(|p| p.name_as_str().map(str::to_string))
        .filter(|n| !n.starts_with("propagate_"))
        .collect();
    if !others.is_empty() {
        out.push(finding(
            true,
            format!(
                "other socket-map programs are loaded ({}): sockets they own get no trace context (tracer_trace_context_sockets_busy_total counts them); give --propagate a cgroup they do not cover, or turn off the CNI's socket acceleration for those workloads",
                others.join(", ")
            ),
            "",
        ));
    }
    out.push(finding(
        true,
        "--propagate rewrites HTTP/1.x requests only: HTTP/2 and gRPC requests are sent as written (see docs/ARCHITECTURE.md, \"Trace context on the wire\")",
        "",
    ));
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
