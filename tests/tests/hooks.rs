//! Which syscalls run a probe. With the socket hooks, a process doing hundreds of thousands of
//! read/write syscalls on files and pipes never enters one, even when it is traced; with the
//! syscall hooks (the fallback for old kernels) every one of them does. Counted by the
//! kernel itself (`kernel.bpf_stats_enabled`, each program's run count), not timed.
use std::{path::Path, process::Command};

use tracer_tests::*;

/// dd with bs=1: one read and one write per byte.
const BYTES: u64 = 100_000;

/// Probe runs while a traced dd copies [`BYTES`] bytes one at a time, with `--hooks <hooks>`.
fn probe_runs_during_dd(hooks: &str, prefixes: &[&str]) -> Option<u64> {
    let _g = setup()?;
    if !require("bpftool", which("bpftool").is_some())
        || !require("dd", which("dd").is_some())
        || !require("kernel.bpf_stats_enabled", Path::new(BPF_STATS).exists())
    {
        return None;
    }
    let _stats = BpfStats::on();
    let tracer = Tracer::start(&["--hooks", hooks, "--comm", "dd"]);
    let before = bpf_runs(prefixes);
    let st = Command::new("dd")
        .args([
            "if=/dev/zero",
            "of=/dev/null",
            "bs=1",
            &format!("count={BYTES}"),
            "status=none",
        ])
        .status()
        .expect("run dd");
    assert!(st.success());
    let after = bpf_runs(prefixes);
    tracer.stop();
    Some(after - before)
}

#[test]
fn socket_hooks_never_run_for_file_and_pipe_syscalls() {
    // `tracer check` mounts tracefs when a fresh boot has not.
    if let Some(bin) = tracer_bin() {
        let _ = Command::new(bin).arg("check").output();
    }
    if !require(
        "socket tracepoints (Linux 6.3+)",
        Path::new("/sys/kernel/tracing/events/sock/sock_send_length").exists()
            || Path::new("/sys/kernel/debug/tracing/events/sock/sock_send_length").exists(),
    ) {
        return;
    }
    let Some(n) = probe_runs_during_dd("socket", &["sock_send_len", "sock_recv_len"]) else {
        return;
    };
    // Only the host's own socket traffic meanwhile (dd made 2 x BYTES syscalls, none on a
    // socket): far less than one run per hundred of dd's syscalls.
    assert!(
        n < 2 * BYTES / 100,
        "{n} socket-hook runs during {} non-socket syscalls",
        2 * BYTES
    );
}

/// The measurement above can fail: with the fallback hooks, every read and write of dd runs an
/// entry and an exit probe.
#[test]
fn syscall_hooks_run_for_every_read_and_write() {
    let Some(n) = probe_runs_during_dd(
        "syscalls",
        &[
            "sys_enter_read",
            "sys_exit_read",
            "sys_enter_write",
            "sys_exit_write",
        ],
    ) else {
        return;
    };
    assert!(
        n >= 4 * BYTES,
        "{n} syscall-hook runs for {} reads and writes",
        2 * BYTES
    );
}

/// The kernel reuses a closed socket's memory for the next one, and a server reuses the fd:
/// a connection that carried no HTTP must not make the next one on the same fd (often at the
/// same socket address) look like more of it.
#[test]
fn a_socket_reborn_at_the_same_address_is_a_new_connection() {
    let Some(_g) = setup_with_curl() else { return };
    let server = Server::test_server();
    let tracer = Tracer::start(&["--port", &server.port().to_string()]);
    const ROUNDS: usize = 20;
    for _ in 0..ROUNDS {
        let reply = send_raw(server.port(), b"\x16\x03\x01 not http at all\r\n\r\n");
        assert!(String::from_utf8_lossy(&reply).contains("400"));
        assert_eq!(curl(&[&server.url("/status/200")]).http_code, 200);
    }
    let spans = tracer.stop();
    let servers = of_kind_pid(&spans, "SERVER", server.pid());
    assert_eq!(servers.len(), ROUNDS, "server spans:\n{}", pretty(&servers));
}
