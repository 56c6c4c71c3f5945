//! What a traced process is: service name and resource attributes, read from /proc once per
//! process and cached (bounded; entries of processes that exited are swept).
use std::{collections::HashMap, path::PathBuf, sync::Arc};

use crate::span::{KeyValue, Resource, Value, kv};

pub struct Processes {
    proc_root: PathBuf,
    host_name: String,
    /// OTEL_RESOURCE_ATTRIBUTES of the daemon: added to every resource (e.g. deployment.environment).
    extra: Vec<KeyValue>,
    cache: HashMap<u32, Arc<Resource>>,
    max: usize,
}

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
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
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
        let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        Processes {
            proc_root: proc_root.into(),
            host_name,
            extra,
            cache: HashMap::new(),
            max: 16384,
        }
    }

    /// The resource of `pid`; `comm` (from the kernel record) names it when /proc is gone
    /// (a short-lived client that exited before we looked).
    pub fn resource(&mut self, pid: u32, comm: &str) -> Arc<Resource> {
        if let Some(r) = self.cache.get(&pid) {
            return r.clone();
        }
        if self.cache.len() >= self.max {
            self.sweep();
            if self.cache.len() >= self.max {
                self.cache.clear();
            }
        }
        let r = Arc::new(self.read(pid, comm));
        self.cache.insert(pid, r.clone());
        r
    }

    fn read(&self, pid: u32, comm: &str) -> Resource {
        let dir = self.proc_root.join(pid.to_string());
        let exe_name = std::fs::read_link(dir.join("exe"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .map(|n| n.trim_end_matches(" (deleted)").to_string())
            .unwrap_or_else(|| comm.to_string());
        let environ = std::fs::read(dir.join("environ")).unwrap_or_default();
        let service_name =
            env_var(&environ, "OTEL_SERVICE_NAME").unwrap_or_else(|| exe_name.clone());
        let mut attributes = vec![
            kv("service.name", Value::Str(service_name.clone())),
            kv("process.pid", Value::Int(pid as i64)),
            kv("process.executable.name", Value::Str(exe_name)),
            kv("host.name", Value::Str(self.host_name.clone())),
        ];
        if let Ok(cmdline) = std::fs::read(dir.join("cmdline")) {
            let args: Vec<_> = cmdline
                .split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if !args.is_empty() {
                attributes.push(kv("process.command_args", Value::Str(args.join(" "))));
            }
        }
        for e in &self.extra {
            if !attributes.iter().any(|a| a.key == e.key) {
                attributes.push(e.clone());
            }
        }
        Resource {
            pid,
            service_name,
            attributes,
        }
    }

    /// Forgets processes that exited (their pid may be reused by another program).
    pub fn sweep(&mut self) {
        let root = self.proc_root.clone();
        self.cache
            .retain(|pid, _| root.join(pid.to_string()).exists());
    }

    pub fn forget(&mut self, pid: u32) {
        self.cache.remove(&pid);
    }
}

/// Whether `fd` of `pid` is a socket. `None` when the process or fd is already gone.
pub fn is_socket(proc_root: &std::path::Path, pid: u32, fd: u32) -> Option<bool> {
    let link = std::fs::read_link(proc_root.join(format!("{pid}/fd/{fd}"))).ok()?;
    Some(link.to_string_lossy().starts_with("socket:["))
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
}
