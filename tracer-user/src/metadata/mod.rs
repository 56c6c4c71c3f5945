//! Where a traced process runs: its container (from its cgroup) and, in Kubernetes, its pod.
pub mod container;
pub mod k8s;
