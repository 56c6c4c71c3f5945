//! Kernel probes: load the embedded eBPF object, configure it, attach one set of hooks: the
//! socket tracepoints where the kernel has them, else the syscall tracepoints.
use std::{num::NonZeroU32, path::Path};

use crate::kernel_log::KernelLog;
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf, SockHash},
    programs::{
        CgroupAttachMode, Program, ProgramError, RawTracePoint, SkMsg, SockOps, TracePoint, UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
    },
};
use tracer_common::{
    COMM_LEN, Config, ConnKey, ConnState, MAX_CAPTURE, counter, feature, filter, protocol, role,
};

/// The eBPF object, built by `cargo xtask build-ebpf` (or this crate's build script) and
/// embedded so that the `tracer` binary is one self-contained file.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("TRACER_EBPF_OBJECT"));

/// The socket hooks (Linux 6.3+), raw tracepoints as (tracefs group, name): only socket I/O
/// runs a probe, and no syscall tracepoint is enabled (enabling any puts every task of the
/// node on the slow syscall path).
pub const SOCKET_HOOKS: &[(&str, &str)] = &[
    ("sock", "sock_send_length"),
    ("sock", "sock_recv_length"),
    ("tcp", "tcp_destroy_sock"),
];

/// The fallback for older kernels, attached to `syscalls/<name>`.
pub const TRACEPOINTS: &[&str] = &[
    "sys_enter_accept",
    "sys_exit_accept",
    "sys_enter_accept4",
    "sys_exit_accept4",
    "sys_enter_connect",
    "sys_exit_connect",
    "sys_enter_close",
    "sys_enter_read",
    "sys_exit_read",
    "sys_enter_write",
    "sys_exit_write",
    "sys_enter_readv",
    "sys_exit_readv",
    "sys_enter_writev",
    "sys_exit_writev",
    "sys_enter_recvfrom",
    "sys_exit_recvfrom",
    "sys_enter_sendto",
    "sys_exit_sendto",
    "sys_enter_recvmsg",
    "sys_exit_recvmsg",
    "sys_enter_sendmsg",
    "sys_exit_sendmsg",
    "sys_enter_sendfile64",
    "sys_exit_sendfile64",
];

/// Uprobe programs on TLS libraries and the dynamic linker, attached per file by
/// `tls::Tracker`; loaded at start with the raw tracepoint that reports execs.
pub const UPROBES: &[&str] = &[
    "ssl_read",
    "ssl_write",
    "ssl_read_ex",
    "ssl_write_ex",
    "ssl_return",
    "ssl_set_fd",
    "dl_debug_state",
    "go_tls_read",
    "go_tls_write",
    "go_tls_return",
];

pub const TRACEFS: &str = "/sys/kernel/tracing";

/// At most this many sockets open at attach time are handed to the probes: a quarter of their
/// LRU connection map, so seeding never pushes out connections being traced.
pub const MAX_PREEXISTING: usize = 16_384;

/// BPF_NOEXIST: never overwrite what the probes already learned about a socket.
const BPF_NOEXIST: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "tracefs is not mounted at {TRACEFS} and mounting it failed: {0} (run as root, or mount it: mount -t tracefs nodev {TRACEFS})"
    )]
    Tracefs(std::io::Error),
    #[error(
        "loading the eBPF object failed: {0} (run `tracer check` to see which kernel feature is missing)"
    )]
    Load(#[from] aya::EbpfError),
    #[error("program {0} is missing from the eBPF object (rebuild with `cargo xtask build-ebpf`)")]
    MissingProgram(String),
    #[error("map {0} is missing from the eBPF object (rebuild with `cargo xtask build-ebpf`)")]
    MissingMap(&'static str),
    #[error("{what} failed for {name}: {source}")]
    Program {
        what: &'static str,
        name: String,
        source: aya::programs::ProgramError,
    },
    #[error("configuring map {0} failed: {1}")]
    Map(&'static str, aya::maps::MapError),
    #[error("--comm {0:?} is longer than the kernel's {max} characters", max = COMM_LEN - 1)]
    Comm(String),
    #[error(
        "--hooks socket: this kernel has no socket tracepoints (sock:sock_send_length needs Linux 6.3+); use --hooks auto or syscalls"
    )]
    NoSocketHooks,
    #[error("the probes read the x86_64 syscall registers; this is {0}")]
    Arch(&'static str),
}

/// Which hooks feed the probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hooks {
    Socket,
    Syscalls,
}

impl Hooks {
    pub fn describe(self) -> &'static str {
        match self {
            Hooks::Socket => {
                "socket tracepoints (sock_send_length, sock_recv_length, tcp_destroy_sock): only socket I/O runs a probe"
            }
            Hooks::Syscalls => {
                "syscall tracepoints (fallback): every read/write syscall of every process runs a probe"
            }
        }
    }
}

/// `--hooks`: which hooks to use.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Deserialize,
    serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum HookChoice {
    /// The socket tracepoints when the kernel has them (6.3+), else the syscall tracepoints.
    #[default]
    Auto,
    /// The socket tracepoints, or fail.
    Socket,
    /// The syscall tracepoints (costs every process a probe per read/write).
    Syscalls,
}

/// Whether this kernel has the socket tracepoints (they appeared in Linux 6.3).
pub fn socket_hooks_present() -> bool {
    SOCKET_HOOKS.iter().all(|(group, tp)| {
        Path::new(TRACEFS)
            .join("events")
            .join(group)
            .join(tp)
            .is_dir()
    })
}

/// Offsets of kernel struct members the socket hooks read (0: not read).
#[derive(Clone, Copy, Debug, Default)]
struct SockOffsets {
    protocol: u16,
    v6_daddr: u16,
    v6_saddr: u16,
    /// `struct net *` of the socket, and the namespace inode in `struct net`.
    net: u16,
    net_inum: u16,
}

/// Offsets the socket hooks need, from the kernel's BTF; zeros (no protocol check, no IPv6
/// addresses, no network namespace) when it has none, with the reason.
fn sock_offsets() -> Result<SockOffsets, String> {
    let btf = crate::btf::Btf::from_sys_fs()?;
    let off = |s: &str, m: &str, size: u32| match btf.field(s, m) {
        Some(f) if f.size == size => {
            u16::try_from(f.offset).map_err(|_| format!("{s}.{m} is past 64 KiB"))
        }
        Some(f) => Err(format!("{s}.{m} is {} bytes, expected {size}", f.size)),
        None => Err(format!("{s}.{m} not in the kernel's BTF")),
    };
    // A kernel without network namespaces has no `struct net *` in its sockets: all share one.
    let netns = || {
        let net = off("sock_common", "skc_net", 8).ok()?;
        let ns = btf.field("net", "ns")?.offset;
        let inum = off("ns_common", "inum", 4).ok()?;
        Some((net, u16::try_from(ns + u32::from(inum)).ok()?))
    };
    let (net, net_inum) = netns().unwrap_or_default();
    Ok(SockOffsets {
        protocol: off("sock", "sk_protocol", 2)?,
        v6_daddr: off("sock_common", "skc_v6_daddr", 16)?,
        v6_saddr: off("sock_common", "skc_v6_rcv_saddr", 16)?,
        net,
        net_inum,
    })
}

/// Where cgroup v2 is mounted (`/sys/fs/cgroup` on a unified host, `/sys/fs/cgroup/unified`
/// on a hybrid one), from this process's mount table; the usual place when none is listed.
pub fn cgroup2_root() -> std::path::PathBuf {
    std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| {
                // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS... - FSTYPE SOURCE SUPER
                let (left, right) = l.split_once(" - ")?;
                (right.split(' ').next()? == "cgroup2")
                    .then(|| left.split(' ').nth(4).map(Into::into))?
            })
        })
        .unwrap_or_else(|| "/sys/fs/cgroup".into())
}

/// Kernel ring-buffer size in MiB unless `--ring-buffer-mib` says otherwise.
pub const DEFAULT_RING_MIB: u32 = 16;

#[derive(Clone, Debug)]
pub struct ProbeOptions {
    pub hooks: HookChoice,
    pub capture_size: u32,
    pub pids: Vec<u32>,
    pub comm: Option<String>,
    /// Ring-buffer size in bytes (a power of two, at least a page).
    pub ring_bytes: u32,
    /// The probes ask for a wake-up once this many bytes wait; the reader also drains on a timer.
    pub wakeup_bytes: u32,
    /// Load the TLS library probes (attached per library by `tls::Tracker`).
    pub tls: bool,
    /// Which of the probes' own messages to log (off: none, at no cost).
    pub kernel_log: KernelLog,
    /// Write trace context into the HTTP/1 requests of traced processes in this cgroup (v2)
    /// and below (`--propagate`; off by default: it changes bytes on the wire).
    pub propagate: Option<std::path::PathBuf>,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            hooks: HookChoice::Auto,
            capture_size: tracer_common::DEFAULT_CAPTURE,
            pids: vec![],
            comm: None,
            ring_bytes: DEFAULT_RING_MIB << 20,
            wakeup_bytes: 256 * 1024,
            tls: true,
            kernel_log: KernelLog::Off,
            propagate: None,
        }
    }
}

/// Mounts tracefs when it is missing. Returns true when it had to mount it.
pub fn ensure_tracefs() -> Result<bool, ProbeError> {
    if Path::new(TRACEFS).join("events").is_dir() {
        return Ok(false);
    }
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
    let (src, target, fstype) = (c("nodev"), c(TRACEFS), c("tracefs"));
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(ProbeError::Tracefs(std::io::Error::last_os_error()));
    }
    Ok(true)
}

/// Program `name` of the object, as its type.
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, ProbeError>
where
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| ProbeError::MissingProgram(name.to_string()))?
        .try_into()
        .map_err(failed("type check", name))
}

/// The error of doing `what` to program `name`.
fn failed(what: &'static str, name: &str) -> impl FnOnce(ProgramError) -> ProbeError + use<> {
    let name = name.to_string();
    move |source| ProbeError::Program { what, name, source }
}

/// Lets older kernels (before memcg accounting of BPF memory) load the maps.
fn raise_memlock() {
    let r = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer; failure only matters on old kernels.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &r) };
}

pub struct Probes {
    ebpf: Ebpf,
    hooks: Hooks,
    /// The TLS programs are loaded (why not, when they are not).
    tls: Result<(), String>,
    /// `--pid`: the uprobes are attached for these processes only (empty: every process).
    uprobe_pids: Vec<u32>,
    /// `struct sock` offsets for the socket hooks (protocol, IPv6 peer, IPv6 local).
    sock_offsets: SockOffsets,
    /// The trace-context writer is attached (why not, when it is not).
    propagate: Result<(), String>,
}

impl Probes {
    /// Loads, attaches and configures everything. Dropping the value detaches.
    pub fn attach(opts: &ProbeOptions) -> Result<Self, ProbeError> {
        let mut probes = Probes::attach_inert(opts)?;
        probes.configure(opts)?;
        Ok(probes)
    }

    /// Loads and attaches the hooks, not yet configured: until [`Probes::configure`] every
    /// probe returns at once. In between, the daemon hands them the sockets open now
    /// ([`Probes::seed_preexisting`]), so none of those is met first as a new socket.
    pub fn attach_inert(opts: &ProbeOptions) -> Result<Self, ProbeError> {
        if !cfg!(target_arch = "x86_64") {
            return Err(ProbeError::Arch(std::env::consts::ARCH));
        }
        raise_memlock();
        let hooks = match opts.hooks {
            HookChoice::Syscalls => Hooks::Syscalls,
            HookChoice::Socket if !socket_hooks_present() => {
                return Err(ProbeError::NoSocketHooks);
            }
            HookChoice::Socket => Hooks::Socket,
            HookChoice::Auto if socket_hooks_present() => Hooks::Socket,
            HookChoice::Auto => Hooks::Syscalls,
        };
        let sock_offsets = match hooks {
            Hooks::Socket => sock_offsets().unwrap_or_else(|e| {
                tracing::warn!(
                    "kernel BTF: {e}; the socket hooks will not filter by protocol and leave IPv6 addresses out"
                );
                SockOffsets::default()
            }),
            Hooks::Syscalls => SockOffsets::default(),
        };
        let level = opts.kernel_log.level();
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("EVENTS", opts.ring_bytes)
            .override_global(aya_log::LEVEL, &level, true)
            .load(EBPF_OBJECT)?;
        if opts.kernel_log != KernelLog::Off
            && let Err(e) = crate::kernel_log::start(&mut ebpf)
        {
            tracing::warn!("--kernel-log: cannot read the probes' log: {e}");
        }
        let mut probes = Probes {
            ebpf,
            hooks,
            tls: Err("switched off (--no-tls)".into()),
            uprobe_pids: Vec::new(),
            sock_offsets,
            propagate: Err("off (--propagate not given)".into()),
        };
        let names: Vec<(&str, &str)> = match hooks {
            Hooks::Socket => SOCKET_HOOKS.to_vec(),
            Hooks::Syscalls => TRACEPOINTS.iter().map(|n| ("syscalls", *n)).collect(),
        };
        for (group, name) in names {
            match hooks {
                Hooks::Socket => {
                    let prog: &mut RawTracePoint = program(&mut probes.ebpf, name)?;
                    prog.load().map_err(failed("loading", name))?;
                    prog.attach(name).map_err(failed("attaching", name))?;
                }
                Hooks::Syscalls => {
                    let prog: &mut TracePoint = program(&mut probes.ebpf, name)?;
                    prog.load().map_err(failed("loading", name))?;
                    prog.attach(group, name)
                        .map_err(failed("attaching", name))?;
                }
            }
        }
        if opts.tls {
            // TLS is an addition: without it the tracer still sees every request in the clear.
            probes.tls = probes.load_tls().map_err(|e| e.to_string());
            if let Err(e) = &probes.tls {
                tracing::warn!("TLS probes not loaded, encrypted traffic is not traced: {e}");
            }
        }
        if let Some(cgroup) = &opts.propagate {
            // Asked for, but an addition like TLS: tracing goes on without it, loudly.
            probes.propagate = probes.load_propagate(cgroup, opts.comm.is_some());
            match &probes.propagate {
                Ok(()) => tracing::info!(
                    "trace context: requests of traced processes in {} get a traceparent",
                    cgroup.display()
                ),
                Err(e) => tracing::warn!("--propagate: not attached, no request is changed: {e}"),
            }
        }
        // Not configured yet: capture_size is 0 and every probe returns at once, so tracing
        // starts with all probes attached and the filters in place (a half-attached set would
        // see responses without their sendfile bodies, say).
        Ok(probes)
    }

    /// Loads the uprobe programs and attaches the exec tracepoint.
    fn load_tls(&mut self) -> Result<(), ProbeError> {
        for name in UPROBES {
            let prog: &mut UProbe = program(&mut self.ebpf, name)?;
            prog.load().map_err(failed("loading", name))?;
        }
        let name = "sched_process_exec";
        let prog: &mut RawTracePoint = program(&mut self.ebpf, name)?;
        prog.load().map_err(failed("loading", name))?;
        prog.attach(name).map_err(failed("attaching", name))?;
        Ok(())
    }

    /// Attaches the `sk_msg` program to its socket map, then `sockops` to `cgroup`, which
    /// starts filling the map (a socket takes the map's programs when it is added).
    fn load_propagate(&mut self, cgroup: &Path, by_comm: bool) -> Result<(), String> {
        let dir = std::fs::File::open(cgroup).map_err(|e| {
            format!(
                "cannot open cgroup {}: {e} (give a cgroup v2 directory; `tracer check` shows where cgroup v2 is mounted)",
                cgroup.display()
            )
        })?;
        let sockets: SockHash<_, u64> = SockHash::try_from(
            self.ebpf
                .map("PROPAGATE_SOCKETS")
                .ok_or("map PROPAGATE_SOCKETS missing from the eBPF object")?,
        )
        .map_err(|e| e.to_string())?;
        let fd = sockets
            .fd()
            .try_clone()
            .map_err(|e| format!("PROPAGATE_SOCKETS: {e}"))?;
        let msg: &mut SkMsg =
            program(&mut self.ebpf, "propagate_msg").map_err(|e| e.to_string())?;
        msg.load()
            .map_err(|e| format!("loading sk_msg: {}", verifier_reason(&e)))?;
        msg.attach(&fd)
            .map_err(|e| format!("attaching sk_msg: {e}"))?;
        // Sockops programs may read the command name on recent kernels only (6.18 here, not
        // 6.12): without it the pid-only program, which takes no socket under a --comm filter.
        let mut name = "propagate_sockops";
        let full: &mut SockOps = program(&mut self.ebpf, name).map_err(|e| e.to_string())?;
        if let Err(e) = full.load() {
            let why = verifier_reason(&e);
            if by_comm {
                return Err(format!(
                    "loading sockops: {why} (with --comm it must read the command name, which this kernel does not let sockops programs do; --pid works)"
                ));
            }
            name = "propagate_sockops_pid";
            let pid_only: &mut SockOps =
                program(&mut self.ebpf, name).map_err(|e| e.to_string())?;
            pid_only.load().map_err(|e| {
                format!(
                    "loading sockops: {} (and before: {why})",
                    verifier_reason(&e)
                )
            })?;
        }
        let ops: &mut SockOps = program(&mut self.ebpf, name).map_err(|e| e.to_string())?;
        // A cgroup link (what aya makes on 5.7+, and the probes need 5.17+) always runs beside
        // the cgroup's other programs; link_create refuses the multi flag itself (EINVAL).
        ops.attach(dir, CgroupAttachMode::Single).map_err(|e| {
            format!(
                "attaching sockops to {}: {}",
                cgroup.display(),
                crate::probes::chain(&e)
            )
        })?;
        Ok(())
    }

    /// Whether the trace-context writer is attached, or why not.
    pub fn propagate(&self) -> Result<(), &str> {
        self.propagate.as_ref().map(|_| ()).map_err(String::as_str)
    }

    /// Whether the TLS programs are loaded, or why not.
    pub fn tls(&self) -> Result<(), &str> {
        self.tls.as_ref().map(|_| ()).map_err(String::as_str)
    }

    /// The processes the uprobes are for (`--pid`), empty for every process. A uprobe with a
    /// process puts no breakpoint in the others' memory: they pay nothing for it.
    pub fn uprobe_pids(&self) -> &[u32] {
        &self.uprobe_pids
    }

    /// Attaches uprobe program `prog` (one of [`UPROBES`]) at file offset `offset` of the
    /// ELF file `target`, for process `pid` or (0) every process that maps it.
    pub fn attach_uprobe(
        &mut self,
        prog: &str,
        target: &Path,
        offset: u64,
        cookie: Option<u64>,
        pid: u32,
    ) -> Result<UProbeLinkId, ProbeError> {
        let p: &mut UProbe = program(&mut self.ebpf, prog)?;
        let point = UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(offset),
            cookie,
        };
        let scope = NonZeroU32::new(pid).map_or(UProbeScope::AllProcesses, UProbeScope::OneProcess);
        p.attach(point, target, scope)
            .map_err(failed("attaching", prog))
    }

    pub fn detach_uprobe(&mut self, prog: &str, link: UProbeLinkId) {
        if let Some(Ok(p)) = self.ebpf.program_mut(prog).map(<&mut UProbe>::try_from) {
            let _ = p.detach(link);
        }
    }

    /// The hooks attached.
    pub fn hooks(&self) -> Hooks {
        self.hooks
    }

    /// Applies filters and capture size; also used for live reloads. The PIDS map is written
    /// before CONFIG so a new pid filter never briefly traces everything.
    pub fn configure(&mut self, opts: &ProbeOptions) -> Result<(), ProbeError> {
        let mut cfg = Config {
            capture_size: opts.capture_size.clamp(64, MAX_CAPTURE as u32),
            flags: 0,
            self_tgid: std::process::id(),
            wakeup_bytes: opts.wakeup_bytes,
            comm: [0; COMM_LEN],
            sk_protocol_off: self.sock_offsets.protocol,
            sk_v6_daddr_off: self.sock_offsets.v6_daddr,
            sk_v6_saddr_off: self.sock_offsets.v6_saddr,
            sk_net_off: self.sock_offsets.net,
            net_inum_off: self.sock_offsets.net_inum,
            features: if self.tls.is_ok() { feature::TLS } else { 0 }
                | if self.propagate.is_ok() {
                    feature::PROPAGATE
                } else {
                    0
                },
            _pad: [0; 2],
        };
        if let Some(comm) = &opts.comm {
            if comm.len() >= COMM_LEN {
                return Err(ProbeError::Comm(comm.clone()));
            }
            cfg.comm[..comm.len()].copy_from_slice(comm.as_bytes());
            cfg.flags |= filter::BY_COMM;
        }
        let mut pids: HashMap<_, u32, u8> = HashMap::try_from(
            self.ebpf
                .map_mut("PIDS")
                .ok_or(ProbeError::MissingMap("PIDS"))?,
        )
        .map_err(|e| ProbeError::Map("PIDS", e))?;
        let old: Vec<u32> = pids.keys().filter_map(Result::ok).collect();
        for pid in &opts.pids {
            pids.insert(pid, 1, 0)
                .map_err(|e| ProbeError::Map("PIDS", e))?;
        }
        if !opts.pids.is_empty() {
            cfg.flags |= filter::BY_PID;
        }
        self.uprobe_pids = opts.pids.clone();
        let mut config: Array<_, Config> = Array::try_from(
            self.ebpf
                .map_mut("CONFIG")
                .ok_or(ProbeError::MissingMap("CONFIG"))?,
        )
        .map_err(|e| ProbeError::Map("CONFIG", e))?;
        config
            .set(0, cfg, 0)
            .map_err(|e| ProbeError::Map("CONFIG", e))?;
        // Removed only once CONFIG no longer needs them.
        let mut pids: HashMap<_, u32, u8> = HashMap::try_from(
            self.ebpf
                .map_mut("PIDS")
                .ok_or(ProbeError::MissingMap("PIDS"))?,
        )
        .map_err(|e| ProbeError::Map("PIDS", e))?;
        for pid in old.iter().filter(|p| !opts.pids.contains(p)) {
            let _ = pids.remove(pid);
        }
        Ok(())
    }

    /// Hands the probes the TCP sockets that were open when they attached (`(pid, fd)` and
    /// peer, from `process::socket_snapshot`). Their next syscalls may start anywhere in a
    /// conversation, so the probes also classify them by an HTTP/2 frame header, and give them
    /// [`ConnState::PREEXISTING_SNIFFS`] syscalls to show one. Sockets the probes already know
    /// are left alone. Returns how many were added.
    pub fn seed_preexisting(
        &mut self,
        sockets: &std::collections::HashMap<(u32, u32), crate::process::SocketEnds>,
    ) -> Result<usize, ProbeError> {
        let mut conns: HashMap<_, ConnKey, ConnState> = HashMap::try_from(
            self.ebpf
                .map_mut("CONNS")
                .ok_or(ProbeError::MissingMap("CONNS"))?,
        )
        .map_err(|e| ProbeError::Map("CONNS", e))?;
        let me = std::process::id();
        let mut added = 0;
        for (&(tgid, fd), ends) in sockets.iter().filter(|((pid, _), _)| *pid != me) {
            if added >= MAX_PREEXISTING {
                break;
            }
            let state = ConnState::new(
                crate::events::to_wire(&ends.peer),
                0,
                protocol::UNKNOWN,
                role::UNKNOWN,
                ConnState::PREEXISTING_SNIFFS,
            );
            // EEXIST: the probes saw this socket already (it carried a request since).
            if conns
                .insert(ConnKey { tgid, fd }, state, BPF_NOEXIST)
                .is_ok()
            {
                added += 1;
            }
        }
        Ok(added)
    }

    /// The ring buffer of the traffic records (`EVENTS`), or of the new-code records
    /// (`CODE_EVENTS`, read by `tls::Tracker`).
    pub fn take_ring(&mut self, name: &'static str) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self
            .ebpf
            .take_map(name)
            .ok_or(ProbeError::MissingMap(name))?;
        RingBuf::try_from(map).map_err(|e| ProbeError::Map(name, e))
    }

    /// The kernel-side counters, summed over CPUs, indexed by `tracer_common::counter`.
    pub fn kernel_counters(&self) -> [u64; counter::LEN as usize] {
        let mut out = [0u64; counter::LEN as usize];
        let Some(map) = self.ebpf.map("COUNTERS") else {
            return out;
        };
        let Ok(arr) = PerCpuArray::<_, u64>::try_from(map) else {
            return out;
        };
        for (i, slot) in out.iter_mut().enumerate() {
            if let Ok(values) = arr.get(&(i as u32), 0) {
                *slot = values.iter().sum();
            }
        }
        out
    }
}

/// Why the verifier refused a program, in one line (the helper it may not call, say) rather
/// than its whole log.
fn verifier_reason(e: &ProgramError) -> String {
    if let ProgramError::LoadError { verifier_log, .. } = e {
        let log = verifier_log.to_string();
        let lines: Vec<&str> = log
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        if let Some(l) = lines.iter().find(|l| {
            l.contains("cannot use helper") || l.contains("unknown func") || l.contains("invalid")
        }) {
            return format!("the verifier says: {l}");
        }
        if let Some(i) = lines
            .iter()
            .position(|l| l.starts_with("verification time"))
        {
            return format!("the verifier says: {}", lines[i.saturating_sub(1)]);
        }
    }
    chain(e)
}

/// An error with its causes, for a one-line message.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
