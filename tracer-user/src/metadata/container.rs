//! Container identity of a process, read from `/proc/PID/cgroup`.
//!
//! The container runtimes put the 64-hex container id into the cgroup path; Kubernetes
//! additionally puts the pod uid into a parent `kubepods` directory. Both cgroup v2 (one
//! `0::/path` line) and v1 (one line per hierarchy) are handled.

use std::path::Path;

/// The runtime that created the container, as far as the cgroup path tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    Docker,
    Containerd,
    CriO,
    Podman,
    /// The id is there but the path does not name the runtime: a bare id under `kubepods/...`
    /// (cgroupfs driver) is written the same by containerd and by dockershim.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerRef {
    /// 64 lowercase hex characters.
    pub id: String,
    pub runtime: Runtime,
    /// Pod uid with dashes, when the path is under `kubepods`.
    pub pod_uid: Option<String>,
}

/// Reads `/proc/PID/cgroup` under `proc_root` (normally `/proc`). `None` when the process is
/// gone, unreadable, or not in a container.
pub fn container_of_pid(proc_root: &Path, pid: u32) -> Option<ContainerRef> {
    let path = proc_root.join(pid.to_string()).join("cgroup");
    match std::fs::read_to_string(&path) {
        Ok(contents) => container_from_cgroup(&contents),
        Err(err) => {
            // Processes exit all the time; this is not worth more than a trace.
            tracing::trace!(pid, error = %err, "cannot read cgroup file");
            None
        }
    }
}

/// Parses the text of `/proc/PID/cgroup`. Returns the first line's container whose path
/// holds a container id (on v1 only some hierarchies carry it, and hybrid hosts add a `0::`
/// line that may be `/`).
pub fn container_from_cgroup(contents: &str) -> Option<ContainerRef> {
    contents.lines().find_map(|line| {
        // hierarchy-id:controllers:path; the path itself may contain ':'.
        let mut parts = line.splitn(3, ':');
        let (_hier, _controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        container_from_path(path.trim())
    })
}

fn container_from_path(path: &str) -> Option<ContainerRef> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // Deepest id wins: with nesting (e.g. kind nodes, docker-in-docker) the innermost
    // container is the one the process really runs in.
    let (index, id, runtime) = segments.iter().enumerate().rev().find_map(|(i, seg)| {
        let parent = i.checked_sub(1).and_then(|p| segments.get(p)).copied();
        id_from_segment(seg, parent).map(|(id, rt)| (i, id, rt))
    })?;
    let pod_uid = segments
        .get(..index)
        .filter(|parents| parents.iter().any(|s| s.contains("kubepods")))
        .and_then(|parents| parents.iter().rev().find_map(|s| pod_uid_from_segment(s)));
    Some(ContainerRef {
        id: id.to_owned(),
        runtime,
        pod_uid,
    })
}

fn id_from_segment<'a>(segment: &'a str, parent: Option<&str>) -> Option<(&'a str, Runtime)> {
    let name = segment.strip_suffix(".scope").unwrap_or(segment);
    // conmon (CRI-O / podman monitor) scopes carry the container's id but are not the
    // container: a process there is conmon itself.
    if name.starts_with("crio-conmon-") || name.starts_with("libpod-conmon-") {
        return None;
    }
    const PREFIXES: [(&str, Runtime); 5] = [
        ("cri-containerd-", Runtime::Containerd),
        ("docker-", Runtime::Docker),
        ("crio-", Runtime::CriO),
        ("libpod-", Runtime::Podman),
        ("cri-o-", Runtime::CriO),
    ];
    for (prefix, runtime) in PREFIXES {
        if let Some(id) = name.strip_prefix(prefix) {
            return is_container_id(id).then_some((id, runtime));
        }
    }
    if is_container_id(name) {
        let runtime = match parent {
            Some("docker") => Runtime::Docker,
            _ => Runtime::Unknown,
        };
        return Some((name, runtime));
    }
    None
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `pod<uid>` (cgroupfs) or `kubepods[-qos]-pod<uid_with_underscores>.slice` (systemd).
fn pod_uid_from_segment(segment: &str) -> Option<String> {
    let name = segment.strip_suffix(".slice").unwrap_or(segment);
    let raw = match name.strip_prefix("pod") {
        Some(rest) => rest,
        None => name.rsplit_once("-pod")?.1,
    };
    let uid = raw.replace('_', "-");
    is_uid(&uid).then_some(uid)
}

fn is_uid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Literal /proc/PID/cgroup contents from the hosts each shape comes from.
#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "80211297a41541d0b402ce92a278b435bfb530562f7d3b6928069e3e262adaa2";
    const UID: &str = "fd3165bc-b7a7-442e-ba45-820c0aaddca2";

    fn expect(contents: &str, runtime: Runtime, pod_uid: Option<&str>) {
        let got = container_from_cgroup(contents).unwrap_or_else(|| panic!("no id in {contents}"));
        assert_eq!(got.id, ID);
        assert_eq!(got.runtime, runtime, "{contents}");
        assert_eq!(got.pod_uid.as_deref(), pod_uid, "{contents}");
    }

    #[test]
    fn docker_cgroupfs_v1() {
        let f = format!(
            "12:pids:/docker/{ID}\n11:hugetlb:/docker/{ID}\n10:net_prio,net_cls:/docker/{ID}\n\
             9:memory:/docker/{ID}\n8:cpu,cpuacct:/docker/{ID}\n1:name=systemd:/docker/{ID}\n0::/system.slice/containerd.service\n"
        );
        expect(&f, Runtime::Docker, None);
    }

    #[test]
    fn docker_systemd_v2() {
        expect(
            &format!("0::/system.slice/docker-{ID}.scope\n"),
            Runtime::Docker,
            None,
        );
    }

    #[test]
    fn containerd_k8s_systemd_v2() {
        let uid = UID.replace('-', "_");
        let f = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/cri-containerd-{ID}.scope\n"
        );
        expect(&f, Runtime::Containerd, Some(UID));
        // Guaranteed QoS has no QoS slice.
        let f = format!("0::/kubepods.slice/kubepods-pod{uid}.slice/cri-containerd-{ID}.scope\n");
        expect(&f, Runtime::Containerd, Some(UID));
    }

    #[test]
    fn containerd_k8s_systemd_v1() {
        let uid = UID.replace('-', "_");
        let p = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice/cri-containerd-{ID}.scope"
        );
        let f = format!(
            "13:rdma:/\n12:cpuset:{p}\n11:memory:{p}\n4:devices:{p}\n1:name=systemd:{p}\n0::/\n"
        );
        expect(&f, Runtime::Containerd, Some(UID));
    }

    #[test]
    fn kubepods_cgroupfs() {
        for qos in ["burstable/", "besteffort/", ""] {
            let f = format!("0::/kubepods/{qos}pod{UID}/{ID}\n");
            expect(&f, Runtime::Unknown, Some(UID));
            let f = format!(
                "11:memory:/kubepods/{qos}pod{UID}/{ID}\n5:cpuset:/kubepods/{qos}pod{UID}/{ID}\n1:name=systemd:/kubepods/{qos}pod{UID}/{ID}\n"
            );
            expect(&f, Runtime::Unknown, Some(UID));
        }
    }

    #[test]
    fn crio() {
        let uid = UID.replace('-', "_");
        let f = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/crio-{ID}.scope\n"
        );
        expect(&f, Runtime::CriO, Some(UID));
        // A nested cgroup under the container scope (crun puts one there) still names it.
        let f = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/crio-{ID}.scope/container\n"
        );
        expect(&f, Runtime::CriO, Some(UID));
    }

    #[test]
    fn crio_conmon_is_not_the_container() {
        let uid = UID.replace('-', "_");
        let f = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/crio-conmon-{ID}.scope\n"
        );
        assert_eq!(container_from_cgroup(&f), None);
        let f = format!("0::/machine.slice/libpod-conmon-{ID}.scope\n");
        assert_eq!(container_from_cgroup(&f), None);
    }

    #[test]
    fn podman() {
        expect(
            &format!("0::/machine.slice/libpod-{ID}.scope\n"),
            Runtime::Podman,
            None,
        );
        let f = format!(
            "0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope\n"
        );
        expect(&f, Runtime::Podman, None);
        // Rootless podman with a nested container cgroup.
        let f = format!(
            "0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container\n"
        );
        expect(&f, Runtime::Podman, None);
    }

    #[test]
    fn nested_takes_innermost() {
        // A kind node (itself a docker container) running a pod.
        let outer = "235fe5bdcd1aeb9e5d90edcd3046bcf041307460373c08058d7b1dff8ac76a44";
        let uid = UID.replace('-', "_");
        let f = format!(
            "0::/system.slice/docker-{outer}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod{uid}.slice/cri-containerd-{ID}.scope\n"
        );
        expect(&f, Runtime::Containerd, Some(UID));
    }

    #[test]
    fn host_processes() {
        for f in [
            "0::/user.slice/user-0.slice/session-1.scope\n",
            "0::/init.scope\n",
            "0::/\n",
            "0::/system.slice/containerd.service\n",
            "12:pids:/user.slice/user-1000.slice\n1:name=systemd:/user.slice/user-1000.slice/session-2.scope\n0::/\n",
            "0::/kubepods.slice/kubepods-burstable.slice\n",
            "",
        ] {
            assert_eq!(container_from_cgroup(f), None, "{f:?}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        let long_id = format!("0::/docker/{ID}0\n");
        let upper = format!("0::/docker/{}\n", ID.to_uppercase());
        let inputs = [
            "garbage",
            ":",
            "::",
            "0::",
            "0::docker-",
            "0::/docker-.scope",
            "0::/kubepods/pod/",
            "0::/kubepods.slice/kubepods-pod.slice/",
            "\u{0}\u{ff}::/é/ü/🙂-pod🙂.slice",
            long_id.as_str(),
            upper.as_str(),
        ];
        for f in inputs {
            assert_eq!(container_from_cgroup(f), None, "{f:?}");
        }
        // An id with a malformed pod directory keeps the id and drops the uid.
        let f = format!("0::/kubepods/burstable/podnot-a-uid/{ID}\n");
        expect(&f, Runtime::Unknown, None);
    }

    #[test]
    fn reads_proc_file() {
        let root = std::env::temp_dir().join(format!("k8smeta-proc-{}", std::process::id()));
        let dir = root.join("4242");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("cgroup"),
            format!("0::/system.slice/docker-{ID}.scope\n"),
        )
        .unwrap();
        let got = container_of_pid(&root, 4242).unwrap();
        assert_eq!(got.id, ID);
        assert_eq!(container_of_pid(&root, 4243), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
