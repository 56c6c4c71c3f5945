//! Kernel probes: load the embedded eBPF object, configure it, attach every tracepoint.
use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
};
use tracer_common::{
    COMM_LEN, Config, ConnKey, ConnState, MAX_CAPTURE, SockAddr, counter, filter, protocol, role,
};

/// The eBPF object, built by `cargo xtask build-ebpf` (or this crate's build script) and
/// embedded so that the `tracer` binary is one self-contained file.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("TRACER_EBPF_OBJECT"));

/// Every program in the object, attached to `syscalls/<name>`.
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

pub const TRACEFS: &str = "/sys/kernel/tracing";

/// At most this many sockets open at attach time are handed to the probes: a quarter of their
/// LRU connection map, so seeding never pushes out connections being traced.
pub const MAX_PREEXISTING: usize = 16_384;

/// BPF_NOEXIST: never overwrite what the probes already learned about a socket.
const BPF_NOEXIST: u64 = 1;

fn sock_addr(a: &SocketAddr) -> SockAddr {
    let mut sa = SockAddr {
        port: a.port(),
        ..Default::default()
    };
    match a.ip() {
        IpAddr::V4(v4) => {
            sa.family = 2;
            sa.addr[..4].copy_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            sa.family = 10;
            sa.addr = v6.octets();
        }
    }
    sa
}

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
}

#[derive(Clone, Debug)]
pub struct ProbeOptions {
    pub capture_size: u32,
    pub pids: Vec<u32>,
    pub comm: Option<String>,
    /// Ring-buffer size in bytes (a power of two, at least a page).
    pub ring_bytes: u32,
    /// The probes ask for a wake-up once this many bytes wait; the reader also drains on a timer.
    pub wakeup_bytes: u32,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            capture_size: tracer_common::DEFAULT_CAPTURE,
            pids: vec![],
            comm: None,
            ring_bytes: 16 * 1024 * 1024,
            wakeup_bytes: 256 * 1024,
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
}

impl Probes {
    /// Loads, configures and attaches everything. Dropping the value detaches.
    pub fn attach(opts: &ProbeOptions) -> Result<Self, ProbeError> {
        raise_memlock();
        let ebpf = EbpfLoader::new()
            .map_max_entries("EVENTS", opts.ring_bytes)
            .load(EBPF_OBJECT)?;
        let mut probes = Probes { ebpf };
        for name in TRACEPOINTS {
            let err = |what| {
                move |source| ProbeError::Program {
                    what,
                    name: name.to_string(),
                    source,
                }
            };
            let prog: &mut TracePoint = probes
                .ebpf
                .program_mut(name)
                .ok_or_else(|| ProbeError::MissingProgram(name.to_string()))?
                .try_into()
                .map_err(err("type check"))?;
            prog.load().map_err(err("loading"))?;
            prog.attach("syscalls", name).map_err(err("attaching"))?;
        }
        // Configured last: until then capture_size is 0 and every probe returns at once, so
        // tracing starts with all probes attached and the filters in place (a half-attached set
        // would see responses without their sendfile bodies, say).
        probes.configure(opts)?;
        Ok(probes)
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
            let state = ConnState {
                peer: sock_addr(&ends.peer),
                seq: [0; 2],
                protocol: protocol::UNKNOWN,
                role: role::UNKNOWN,
                announced: 0,
                sniffs_left: ConnState::PREEXISTING_SNIFFS,
                h2: Default::default(),
            };
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

    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or(ProbeError::MissingMap("EVENTS"))?;
        RingBuf::try_from(map).map_err(|e| ProbeError::Map("EVENTS", e))
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
