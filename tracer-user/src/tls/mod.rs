//! TLS libraries: finds the files that carry OpenSSL's API in the processes of the node and
//! attaches the TLS probes to each, once per file (uprobes are per inode: every process that
//! maps the file is covered, including ones started later). Also probes the dynamic linkers,
//! whose `_dl_debug_state` tells when a process loaded libraries, so a `dlopen`ed libssl is
//! found within milliseconds; an exec is reported by a tracepoint. Files nobody maps any more
//! are released at the next full scan.
//!
//! Runs on its own thread: reading /proc and ELF symbol tables never delays the ring-buffer
//! reader.
pub mod elf;
pub mod maps;

use std::{
    collections::{HashMap, HashSet},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::{Mutex, Weak},
    time::{Duration, Instant},
};

use aya::{
    maps::{MapData, RingBuf},
    programs::uprobe::UProbeLinkId,
};

use crate::{
    metrics::{Counter, Gauge, Registry},
    probes::Probes,
};
use elf::{Kind, Library};
use maps::{FileId, Mapping};

/// Every process is scanned this often too: what an event was missed for, and the files
/// nobody maps any more (released).
const FULL_SCAN: Duration = Duration::from_secs(30);

/// Where a host keeps its shared libraries: the libssl files there are probed at start even
/// when no process maps them yet, so a short-lived client (curl) is covered from its first call.
const LIB_DIRS: &[&str] = &[
    "usr/lib/x86_64-linux-gnu",
    "lib/x86_64-linux-gnu",
    "usr/lib64",
    "lib64",
    "usr/lib",
    "usr/local/lib",
];

/// One file the tracker looked at.
enum FileState {
    Probed {
        path: String,
        kind: Kind,
        links: Vec<(&'static str, UProbeLinkId)>,
    },
    /// No TLS library, or attaching failed (logged once): not looked at again while mapped.
    Skipped,
}

/// What the TLS library tracker counts, and the libraries it probes.
pub struct TlsMetrics {
    pub probe_failures: Counter,
    pub libraries_probed: Gauge,
}

impl TlsMetrics {
    pub fn new(reg: &Registry) -> Self {
        TlsMetrics {
            probe_failures: reg.counter(
                "tls_probe_failures",
                "TLS libraries found that the probes could not be attached to (the log says why)",
            ),
            libraries_probed: reg.gauge(
                "tls_libraries_probed",
                "Files with a TLS library the TLS probes are attached to: OpenSSL's API (libssl, binaries that link it in) or Go's crypto/tls",
            ),
        }
    }
}

pub struct Tracker {
    probes: Weak<Mutex<Probes>>,
    /// The `--pid` list the attached uprobes are for (empty: every process).
    scoped: Vec<u32>,
    proc_root: PathBuf,
    files: HashMap<FileId, FileState>,
    metrics: TlsMetrics,
}

impl Tracker {
    pub fn new(probes: Weak<Mutex<Probes>>, proc_root: PathBuf, metrics: TlsMetrics) -> Self {
        Tracker {
            probes,
            scoped: Vec::new(),
            proc_root,
            files: HashMap::new(),
            metrics,
        }
    }

    /// Probes what every process maps now and the host's libssl files, then follows new code
    /// reported on `ring` until the probes are gone.
    pub fn spawn(mut self, ring: RingBuf<MapData>) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("tls".into())
            .spawn(move || {
                if let Some(pids) = self.pids_changed() {
                    self.scoped = pids;
                }
                self.full_scan();
                self.host_libraries();
                self.follow(ring);
            })
    }

    fn follow(&mut self, mut ring: RingBuf<MapData>) {
        let mut last_full = Instant::now();
        let mut pids = HashSet::new();
        while self.probes.strong_count() > 0 {
            wait_readable(&ring, Duration::from_millis(200));
            if let Some(pids) = self.pids_changed() {
                // A reload changed --pid: every file again, with breakpoints where they belong.
                self.scoped = pids;
                self.release_all();
                self.full_scan();
                self.host_libraries();
                last_full = Instant::now();
            }
            while let Some(rec) = ring.next() {
                match crate::events::code_loaded(&rec) {
                    Ok(pid) => {
                        pids.insert(pid);
                    }
                    Err(e) => tracing::debug!("skipping a new-code record: {e}"),
                }
            }
            for pid in pids.drain() {
                self.scan_process(pid);
            }
            if last_full.elapsed() >= FULL_SCAN {
                self.full_scan();
                last_full = Instant::now();
            }
        }
    }

    /// The `--pid` list, when it changed since the probes were attached.
    fn pids_changed(&self) -> Option<Vec<u32>> {
        let p = self.probes.upgrade()?;
        let p = p.lock().unwrap_or_else(|e| e.into_inner());
        (p.uprobe_pids() != self.scoped.as_slice()).then(|| p.uprobe_pids().to_vec())
    }

    /// Detaches every probe and forgets every file.
    fn release_all(&mut self) {
        let files = std::mem::take(&mut self.files);
        if let Some(p) = self.probes.upgrade() {
            let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
            for state in files.into_values() {
                if let FileState::Probed { links, .. } = state {
                    for (prog, link) in links {
                        p.detach_uprobe(prog, link);
                    }
                }
            }
        }
    }

    /// Probes what `pid` maps that was not looked at yet.
    fn scan_process(&mut self, pid: u32) {
        let Ok(text) = std::fs::read_to_string(self.proc_root.join(format!("{pid}/maps"))) else {
            return; // gone already
        };
        for m in maps::executable_files(&text) {
            if !self.files.contains_key(&m.file) {
                let root = self.proc_root.join(format!("{pid}/root"));
                self.look_at(&m, &root);
            }
        }
    }

    /// Every process: probes new files, releases the probes of files nobody maps any more.
    fn full_scan(&mut self) {
        let mut mapped = HashSet::new();
        for pid in crate::process::pids(&self.proc_root) {
            let Ok(text) = std::fs::read_to_string(self.proc_root.join(format!("{pid}/maps")))
            else {
                continue;
            };
            for m in maps::executable_files(&text) {
                if mapped.insert(m.file) && !self.files.contains_key(&m.file) {
                    let root = self.proc_root.join(format!("{pid}/root"));
                    self.look_at(&m, &root);
                }
            }
        }
        let unused: Vec<FileId> = self
            .files
            .keys()
            .filter(|f| !mapped.contains(f) && !self.is_host_library(f))
            .copied()
            .collect();
        for f in unused {
            if let Some(FileState::Probed { path, links, .. }) = self.files.remove(&f) {
                tracing::info!("TLS: released the probes of {path} (no process maps it)");
                if let Some(p) = self.probes.upgrade() {
                    let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
                    for (prog, link) in links {
                        p.detach_uprobe(prog, link);
                    }
                }
            }
        }
        self.publish();
    }

    /// The libssl files of the host's library directories.
    fn host_libraries(&mut self) {
        // The host's files through pid 1 (the tracer may run in a container of its own); where
        // pid 1's root is closed to us (a sandbox whose init is in another user namespace),
        // our own root, which is then the host's.
        let Some(root) = ["1/root", "self/root"]
            .map(|r| self.proc_root.join(r))
            .into_iter()
            .find(|r| std::fs::read_dir(r).is_ok())
        else {
            return;
        };
        for dir in LIB_DIRS {
            let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                // Links (libssl.so -> libssl.so.3) name a file the directory also holds.
                if !name.starts_with("libssl.so") || e.file_type().is_ok_and(|t| t.is_symlink()) {
                    continue;
                }
                let path = format!("/{dir}/{name}");
                let Ok(meta) = std::fs::metadata(root.join(&path[1..])) else {
                    continue;
                };
                use std::os::unix::fs::MetadataExt;
                let file = FileId {
                    dev: dev_id(meta.dev()),
                    inode: meta.ino(),
                };
                if !self.files.contains_key(&file) {
                    self.look_at(&Mapping { file, path }, &root);
                }
            }
        }
    }

    /// Host libraries stay probed while unmapped: that is what they are probed for.
    fn is_host_library(&self, f: &FileId) -> bool {
        matches!(self.files.get(f), Some(FileState::Probed { path, kind: Kind::OpenSsl, .. })
            if path.contains("/libssl.so") && LIB_DIRS.iter().any(|d| path.starts_with(&format!("/{d}/"))))
    }

    /// Inspects one file (as seen from `root`, the process's root) and probes it if it is a
    /// TLS library or a dynamic linker.
    fn look_at(&mut self, m: &Mapping, root: &Path) {
        let on_disk = root.join(m.path.trim_start_matches('/'));
        let state = match elf::inspect(&on_disk) {
            Ok(Some(lib)) => self.attach(m, &on_disk, lib),
            Ok(None) => FileState::Skipped,
            Err(e @ elf::ElfError::Go { .. }) => {
                tracing::info!("TLS: not probed: {e}; its HTTPS is not traced");
                FileState::Skipped
            }
            Err(e) => {
                tracing::debug!("TLS: {e}");
                FileState::Skipped
            }
        };
        let probed = matches!(state, FileState::Probed { .. });
        self.files.insert(m.file, state);
        if probed {
            self.publish();
        }
    }

    fn attach(&mut self, m: &Mapping, on_disk: &Path, lib: Library) -> FileState {
        let Some(probes) = self.probes.upgrade() else {
            return FileState::Skipped;
        };
        let mut p = probes.lock().unwrap_or_else(|e| e.into_inner());
        // With --pid, one attachment per traced process: no other process gets a breakpoint.
        let pids = if self.scoped.is_empty() {
            vec![0]
        } else {
            self.scoped.clone()
        };
        let mut links = Vec::with_capacity(lib.targets.len() * pids.len());
        for (t, &pid) in lib
            .targets
            .iter()
            .flat_map(|t| pids.iter().map(move |p| (t, p)))
        {
            match p.attach_uprobe(t.program, on_disk, t.offset, t.cookie, pid) {
                Ok(link) => links.push((t.program, link)),
                Err(e) => {
                    self.metrics.probe_failures.inc();
                    tracing::warn!(
                        "TLS: cannot probe {} ({}): {e}; its traffic is not traced",
                        m.path,
                        lib.kind.describe()
                    );
                    for (prog, link) in links {
                        p.detach_uprobe(prog, link);
                    }
                    return FileState::Skipped;
                }
            }
        }
        if lib.kind != Kind::DynamicLinker {
            tracing::info!("TLS: probing {} ({})", m.path, lib.kind.describe());
        } else {
            tracing::debug!("TLS: probing {} ({})", m.path, lib.kind.describe());
        }
        FileState::Probed {
            path: m.path.clone(),
            kind: lib.kind,
            links,
        }
    }

    fn publish(&self) {
        let n = self
            .files
            .values()
            .filter(|f| matches!(f, FileState::Probed { kind, .. } if *kind != Kind::DynamicLinker))
            .count();
        self.metrics.libraries_probed.set(n as i64);
    }
}

/// What `tracer check` reports: the files of the running processes the TLS probes attach to
/// (path and what they are), and the Go programs with TLS they cannot probe, and why.
#[derive(Debug, Default)]
pub struct Survey {
    pub probed: Vec<String>,
    pub unprobed: Vec<String>,
}

/// Looks at every executable file the running processes map; attaches nothing.
pub fn survey(proc_root: &Path) -> Survey {
    let mut seen = HashSet::new();
    let mut out = Survey::default();
    for pid in crate::process::pids(proc_root) {
        let Ok(text) = std::fs::read_to_string(proc_root.join(format!("{pid}/maps"))) else {
            continue;
        };
        for m in maps::executable_files(&text) {
            if !seen.insert(m.file) {
                continue;
            }
            let on_disk = proc_root
                .join(format!("{pid}/root"))
                .join(m.path.trim_start_matches('/'));
            match elf::inspect(&on_disk) {
                Ok(Some(lib)) if lib.kind != Kind::DynamicLinker => {
                    out.probed
                        .push(format!("{} ({})", m.path, lib.kind.describe()))
                }
                Err(e @ elf::ElfError::Go { .. }) => out.unprobed.push(e.to_string()),
                _ => {}
            }
        }
    }
    for v in [&mut out.probed, &mut out.unprobed] {
        v.sort();
        v.dedup();
    }
    out
}

/// The kernel's `dev_t` as /proc/PID/maps prints it (`major:minor`), packed like
/// [`FileId::dev`].
fn dev_id(dev: u64) -> u64 {
    (u64::from(libc::major(dev)) << 32) | u64::from(libc::minor(dev))
}

/// Waits until `ring` has records or `timeout` passed.
fn wait_readable(ring: &RingBuf<MapData>, timeout: Duration) {
    let mut pfd = libc::pollfd {
        fd: ring.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, alive for the call.
    unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
}
