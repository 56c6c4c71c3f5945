//! What a traced process is: service name and resource attributes, read from /proc once per
//! process and cached (bounded; entries of processes that exited are swept).
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use rustc_hash::FxHashMap;

use crate::{
    metadata::{
        container::{Runtime, container_of_pid},
        k8s::{ContainerMeta, PodCache},
    },
    semconv,
    span::{KeyValue, Resource, Value, kv},
};

pub struct Processes {
    proc_root: PathBuf,
    host_name: String,
    /// OTEL_RESOURCE_ATTRIBUTES of the daemon: added to every resource (e.g. deployment.environment).
    extra: Vec<KeyValue>,
    /// By pid: a fast hash, the keys are the kernel's.
    cache: FxHashMap<u32, Cached>,
    max: usize,
    /// Pod metadata, when running in Kubernetes.
    pods: Option<PodCache>,
}

struct Cached {
    resource: Arc<Resource>,
    /// A container whose pod the cache did not know yet (it is still listing, or the pod is
    /// brand new): look again after this.
    retry_at: Option<Instant>,
}

/// How long a containerized process waits before its pod is looked up again.
const POD_RETRY: Duration = Duration::from_secs(5);

/// Parses `k1=v1,k2=v2` (OTEL_RESOURCE_ATTRIBUTES); values are percent-decoded per the spec.
pub fn parse_resource_attributes(s: &str) -> Vec<KeyValue> {
    s.split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            let k = k.trim();
            (!k.is_empty()).then(|| kv(k.to_string(), Value::Str(percent_decode(v.trim()))))
        })
        .collect()
}

pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    // On bytes: a `%` before a multi-byte character must not slice the str inside it.
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(hi), Some(lo)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn env_var(environ: &[u8], name: &str) -> Option<String> {
    environ.split(|&b| b == 0).find_map(|entry| {
        let rest = entry.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
        (!rest.is_empty()).then(|| String::from_utf8_lossy(rest).into_owned())
    })
}

impl Processes {
    pub fn new(proc_root: impl Into<PathBuf>, extra: Vec<KeyValue>) -> Self {
        // In a pod the kernel hostname is the pod's name: the DaemonSet's NODE_NAME is the host.
        let host_name = std::env::var("NODE_NAME")
            .ok()
            .filter(|n| !n.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|s| s.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Processes {
            proc_root: proc_root.into(),
            host_name,
            extra,
            cache: FxHashMap::default(),
            max: 16384,
            pods: None,
        }
    }

    /// Adds pod metadata (k8s.* attributes, service.name from labels) to containerized processes.
    pub fn with_pods(mut self, pods: PodCache) -> Self {
        self.pods = Some(pods);
        self
    }

    /// The resource of `pid`; `comm` (from the kernel record) names it when /proc is gone
    /// (a short-lived client that exited before we looked).
    pub fn resource(&mut self, pid: u32, comm: &str) -> Arc<Resource> {
        if let Some(c) = self
            .cache
            .get(&pid)
            .filter(|c| c.retry_at.is_none_or(|t| Instant::now() < t))
        {
            return c.resource.clone();
        }
        if self.cache.len() >= self.max {
            self.sweep();
            if self.cache.len() >= self.max {
                self.cache.clear();
            }
        }
        let (resource, pod_pending) = self.read(pid, comm);
        let resource = Arc::new(resource);
        let retry_at = pod_pending.then(|| Instant::now() + POD_RETRY);
        self.cache.insert(
            pid,
            Cached {
                resource: resource.clone(),
                retry_at,
            },
        );
        resource
    }

    /// The resource, and whether it lacks pod metadata the cache may know later.
    fn read(&self, pid: u32, comm: &str) -> (Resource, bool) {
        let dir = self.proc_root.join(pid.to_string());
        let exe_name = std::fs::read_link(dir.join("exe"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .map(|n| n.trim_end_matches(" (deleted)").to_string())
            .unwrap_or_else(|| comm.to_string());
        let environ = std::fs::read(dir.join("environ")).unwrap_or_default();
        let mut attributes = vec![
            kv(semconv::PROCESS_PID, Value::Int(pid as i64)),
            kv(
                semconv::PROCESS_EXECUTABLE_NAME,
                Value::Str(exe_name.clone()),
            ),
            kv(semconv::HOST_NAME, Value::Str(self.host_name.clone())),
        ];
        if let Ok(cmdline) = std::fs::read(dir.join("cmdline")) {
            let args: Vec<_> = cmdline
                .split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if !args.is_empty() {
                attributes.push(kv(
                    semconv::PROCESS_COMMAND_ARGS,
                    Value::Str(args.join(" ")),
                ));
            }
        }
        let mut pod: Option<Arc<ContainerMeta>> = None;
        let mut pod_pending = false;
        if let Some(c) = container_of_pid(&self.proc_root, pid) {
            attributes.push(kv(semconv::CONTAINER_ID, Value::Str(c.id.clone())));
            let runtime = match c.runtime {
                Runtime::Docker => Some("docker"),
                Runtime::Containerd => Some("containerd"),
                Runtime::CriO => Some("cri-o"),
                Runtime::Podman => Some("podman"),
                Runtime::Unknown => None,
            };
            if let Some(r) = runtime {
                attributes.push(kv(semconv::CONTAINER_RUNTIME_NAME, Value::Str(r.into())));
            }
            match self.pods.as_ref().map(|p| p.by_container_id(&c.id)) {
                Some(Some(meta)) => pod = Some(meta),
                // Not known yet; the cgroup still tells the pod uid.
                Some(None) => pod_pending = true,
                None => {}
            }
            if let Some(uid) = c.pod_uid.filter(|_| pod.is_none()) {
                attributes.push(kv(semconv::K8S_POD_UID, Value::Str(uid)));
            }
        }
        if let Some(m) = &pod {
            pod_attributes(m, &mut attributes);
        }
        // OTEL_SERVICE_NAME of the process, else the pod's app.kubernetes.io/name, else its
        // workload, else the executable.
        let service_name = env_var(&environ, "OTEL_SERVICE_NAME")
            .or_else(|| pod.as_ref().and_then(|m| m.app_name.clone()))
            .or_else(|| {
                pod.as_ref()
                    .and_then(|m| m.workload.as_ref().map(|(_, n)| n.clone()))
            })
            .unwrap_or_else(|| exe_name.clone());
        attributes.insert(
            0,
            kv(semconv::SERVICE_NAME, Value::Str(service_name.clone())),
        );
        for e in &self.extra {
            if !attributes.iter().any(|a| a.key == e.key) {
                attributes.push(e.clone());
            }
        }
        (
            Resource {
                pid,
                service_name,
                attributes,
            },
            pod_pending,
        )
    }

    /// Forgets processes that exited (their pid may be reused by another program).
    pub fn sweep(&mut self) {
        let root = self.proc_root.clone();
        self.cache
            .retain(|pid, _| root.join(pid.to_string()).exists());
    }
}

/// The OTel k8s.* resource attributes of a container's pod.
fn pod_attributes(m: &ContainerMeta, out: &mut Vec<KeyValue>) {
    for (k, v) in [
        (semconv::K8S_POD_NAME, &m.pod_name),
        (semconv::K8S_POD_UID, &m.pod_uid),
        (semconv::K8S_NAMESPACE_NAME, &m.namespace),
        (semconv::K8S_NODE_NAME, &m.node_name),
        (semconv::K8S_CONTAINER_NAME, &m.container_name),
    ] {
        out.push(kv(k, Value::Str(v.clone())));
    }
    if let Some((kind, name)) = &m.workload {
        out.push(kv(kind.attribute_key(), Value::Str(name.clone())));
    }
    for (k, v) in &m.labels {
        out.push(kv(format!("k8s.pod.label.{k}"), Value::Str(v.clone())));
    }
}

/// What an fd of a traced process turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum FdKind {
    /// The process or the fd is already gone.
    Gone,
    /// A file or pipe that happened to carry HTTP-looking bytes.
    NotSocket,
    /// A socket; its peer when it is a TCP socket found in the process's network namespace.
    Socket { peer: Option<SocketAddr> },
}

/// Looks an fd up in /proc: for connections set up before the tracer started, this is the
/// only way to learn the peer.
pub fn inspect_fd(proc_root: &Path, pid: u32, fd: u32) -> FdKind {
    let Ok(link) = std::fs::read_link(proc_root.join(format!("{pid}/fd/{fd}"))) else {
        return FdKind::Gone;
    };
    let link = link.to_string_lossy();
    let Some(inode) = link
        .strip_prefix("socket:[")
        .and_then(|s| s.strip_suffix(']'))
    else {
        return FdKind::NotSocket;
    };
    let peer = ["tcp", "tcp6"].iter().find_map(|t| {
        let table = std::fs::read_to_string(proc_root.join(format!("{pid}/net/{t}"))).ok()?;
        tcp_peer(&table, inode)
    });
    FdKind::Socket { peer }
}

/// Both ends of a process's TCP socket, from /proc: for connections set up before the probes
/// (the port filter needs the local port when no Host or :authority header names it), and for
/// the syscall hooks, which do not read them from the socket (joining traces needs them; an
/// accept that did not ask for the peer's address leaves even that unknown).
pub fn socket_ends(proc_root: &Path, pid: u32, fd: u32) -> Option<SocketEnds> {
    let link = std::fs::read_link(proc_root.join(format!("{pid}/fd/{fd}"))).ok()?;
    let link = link.to_string_lossy();
    let inode = link.strip_prefix("socket:[")?.strip_suffix(']')?;
    ["tcp", "tcp6"].iter().find_map(|t| {
        let table = std::fs::read_to_string(proc_root.join(format!("{pid}/net/{t}"))).ok()?;
        tcp_sockets(&table).find_map(|(i, ends)| (i == inode).then_some(ends))
    })
}

/// Both ends of a TCP connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketEnds {
    pub local: SocketAddr,
    pub peer: SocketAddr,
}

/// The pids of the processes /proc lists now.
pub fn pids(proc_root: &Path) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect()
}

/// Both ends of every TCP socket open on the host, keyed by (pid, fd). Taken once, right after
/// the probes attach: connections set up before that were not seen being accepted or
/// connected, and by the time their first record is read the peer may already have closed
/// them (then /proc no longer knows the fd).
pub fn socket_snapshot(proc_root: &Path) -> HashMap<(u32, u32), SocketEnds> {
    let mut by_inode: HashMap<String, Vec<(u32, u32)>> = HashMap::new();
    let mut netns_seen = std::collections::HashSet::new();
    let mut ends: HashMap<String, SocketEnds> = HashMap::new();
    for pid in pids(proc_root) {
        let Ok(fds) = std::fs::read_dir(proc_root.join(pid.to_string()).join("fd")) else {
            continue;
        };
        let mut has_socket = false;
        for fd in fds.flatten() {
            let Some(n) = fd.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(link) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if let Some(inode) = link
                .to_str()
                .and_then(|l| l.strip_prefix("socket:["))
                .and_then(|l| l.strip_suffix(']'))
            {
                by_inode
                    .entry(inode.to_string())
                    .or_default()
                    .push((pid, n));
                has_socket = true;
            }
        }
        // Each network namespace has its own tables: read them once per namespace.
        let netns = std::fs::read_link(proc_root.join(pid.to_string()).join("ns/net")).ok();
        if has_socket && netns_seen.insert(netns) {
            for t in ["tcp", "tcp6"] {
                let Ok(table) =
                    std::fs::read_to_string(proc_root.join(pid.to_string()).join("net").join(t))
                else {
                    continue;
                };
                for (inode, e) in tcp_sockets(&table) {
                    ends.insert(inode.to_string(), e);
                }
            }
        }
    }
    let mut out = HashMap::new();
    for (inode, owners) in by_inode {
        if let Some(e) = ends.get(&inode) {
            for o in owners {
                out.insert(o, *e);
            }
        }
    }
    out
}

/// The remote address of the socket with this inode in a /proc/net/tcp{,6} table.
fn tcp_peer(table: &str, inode: &str) -> Option<SocketAddr> {
    tcp_sockets(table).find_map(|(i, e)| (i == inode).then_some(e.peer))
}

/// The sockets of a /proc/net/tcp{,6} table: each one's inode and ends.
pub fn tcp_sockets(table: &str) -> impl Iterator<Item = (&str, SocketEnds)> {
    table.lines().skip(1).filter_map(|line| {
        let mut f = line.split_whitespace();
        let (local, peer) = (f.nth(1)?, f.next()?);
        let inode = f.nth(6)?;
        Some((
            inode,
            SocketEnds {
                local: parse_hex_addr(local)?,
                peer: parse_hex_addr(peer)?,
            },
        ))
    })
}

/// `0100007F:1F90` (IPv4) or 32 hex digits + port (IPv6), each 32-bit word in host byte order.
fn parse_hex_addr(s: &str) -> Option<SocketAddr> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> = (0..addr.len() / 8)
        .map(|i| u32::from_str_radix(&addr[8 * i..8 * i + 8], 16).map(u32::from_be))
        .collect::<Result<_, _>>()
        .ok()?;
    let ip = match words.as_slice() {
        [w] => IpAddr::V4(Ipv4Addr::from(w.to_be_bytes())),
        [a, b, c, d] => {
            let mut o = [0u8; 16];
            for (i, w) in [a, b, c, d].iter().enumerate() {
                o[4 * i..4 * i + 4].copy_from_slice(&w.to_be_bytes());
            }
            let v6 = Ipv6Addr::from(o);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_name_from_environment_then_executable() {
        let dir = std::env::temp_dir().join(format!("tracer-proc-test-{}", std::process::id()));
        let p = dir.join("77");
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("environ"), b"A=1\0OTEL_SERVICE_NAME=checkout\0B=2\0").unwrap();
        std::fs::write(p.join("cmdline"), b"python3\0-m\0http.server\0").unwrap();
        let mut procs = Processes::new(
            &dir,
            parse_resource_attributes("deployment.environment=prod,team=a%2Cb"),
        );
        let r = procs.resource(77, "python3");
        assert_eq!(r.service_name, "checkout");
        assert!(
            r.attributes
                .contains(&kv("process.executable.name", Value::Str("python3".into())))
        );
        assert!(r.attributes.contains(&kv(
            "process.command_args",
            Value::Str("python3 -m http.server".into())
        )));
        assert!(
            r.attributes
                .contains(&kv("deployment.environment", Value::Str("prod".into())))
        );
        assert!(r.attributes.contains(&kv("team", Value::Str("a,b".into()))));
        // A process already gone: named by its comm.
        let gone = procs.resource(78, "curl");
        assert_eq!(gone.service_name, "curl");
        procs.sweep();
        assert!(!procs.cache.contains_key(&78));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn percent_decoding_never_slices_inside_a_character() {
        // A `%` before a multi-byte character panicked at start-up (a str sliced inside it).
        assert_eq!(percent_decode("a%é"), "a%é");
        assert_eq!(percent_decode("%€x"), "%€x");
        assert_eq!(percent_decode("café%20au%20lait"), "café au lait");
        assert_eq!(percent_decode("%2C%2c%4"), ",,%4");
        assert_eq!(percent_decode("%zz%"), "%zz%");
        assert_eq!(
            parse_resource_attributes("k=%é,j=ok"),
            [
                kv("k", Value::Str("%é".into())),
                kv("j", Value::Str("ok".into()))
            ]
        );
    }

    #[test]
    fn finds_the_peer_of_a_socket_in_proc_net_tcp() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
                  0: 0100007F:1F90 0100007F:A2B4 01 00000000:00000000 00:00000000 00000000     0        0 4242 1 0\n";
        assert_eq!(
            tcp_peer(v4, "4242"),
            Some("127.0.0.1:41652".parse().unwrap())
        );
        assert_eq!(tcp_peer(v4, "4243"), None);
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
                  0: 00000000000000000000000001000000:1F90 0000000000000000FFFF00000100007F:A2B4 01 00000000:00000000 00:00000000 00000000     0        0 77 1 0\n";
        assert_eq!(tcp_peer(v6, "77"), Some("127.0.0.1:41652".parse().unwrap()));
        assert_eq!(
            parse_hex_addr("00000000000000000000000001000000:0050"),
            Some("[::1]:80".parse().unwrap())
        );
        // Our own fds: a real socket and a real file.
        let sock = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let me = std::process::id();
        use std::os::fd::AsRawFd;
        assert!(matches!(
            inspect_fd(Path::new("/proc"), me, sock.as_raw_fd() as u32),
            FdKind::Socket { .. }
        ));
        let file = std::fs::File::open("/proc/self/status").unwrap();
        assert_eq!(
            inspect_fd(Path::new("/proc"), me, file.as_raw_fd() as u32),
            FdKind::NotSocket
        );
        assert_eq!(inspect_fd(Path::new("/proc"), me, 987654), FdKind::Gone);
        let client = std::net::TcpStream::connect(sock.local_addr().unwrap()).unwrap();
        let snap = socket_snapshot(Path::new("/proc"));
        assert_eq!(
            snap.get(&(me, client.as_raw_fd() as u32)),
            Some(&SocketEnds {
                local: client.local_addr().unwrap(),
                peer: sock.local_addr().unwrap()
            })
        );
        assert_eq!(
            socket_ends(Path::new("/proc"), me, client.as_raw_fd() as u32),
            Some(SocketEnds {
                local: client.local_addr().unwrap(),
                peer: sock.local_addr().unwrap()
            })
        );
        assert_eq!(
            socket_ends(Path::new("/proc"), me, sock.as_raw_fd() as u32).map(|e| e.local),
            Some(sock.local_addr().unwrap())
        );
        assert_eq!(
            socket_ends(Path::new("/proc"), me, file.as_raw_fd() as u32),
            None
        );
    }
}
