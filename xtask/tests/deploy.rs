//! The Kubernetes manifests (`deploy/kubernetes`) and the container image recipe (`Dockerfile`).
//!
//! Every kustomization is rendered with `kubectl kustomize` and the output is validated against
//! the Kubernetes API schemas with `kubernetes-validate --strict` (an unknown or misspelt field
//! fails, and so does a kind it has no schema for), for the oldest and a recent Kubernetes
//! version we support. Then the rendered objects are checked for what deploy/README.md promises:
//! the exact capability set, hostPID, the node name from the downward API, the probes, the
//! mounts, the RBAC rules, and what each variant changes.
//!
//! No root, no cluster and no container engine: kubectl renders locally. Tools: kubectl 1.24 or
//! later (kustomize v4+ built in) and kubernetes-validate from PyPI, whose PyYAML dependency
//! also turns the YAML into JSON here. Missing tools skip (fail under `CI=true`).
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::Write,
    path::{Component, Path, PathBuf},
    process::{Command, Stdio},
    sync::Mutex,
};

use serde_json::Value;

// The end-to-end kit's prerequisite checks (SKIP, or fail under CI=true). Nothing here needs
// root, so these tests run with the unit tests.
#[path = "../../tests/src/prereq.rs"]
mod prereq;
use prereq::{require, tracer_bin, which, workspace};

/// Kubernetes versions the manifests must be valid for: the oldest we support and a recent one
/// (kubernetes-validate ships the schemas, no network needed).
const K8S_VERSIONS: [&str; 2] = ["1.28.0", "1.35.0"];

/// The capabilities the DaemonSet adds, as documented in deploy/README.md and the manifest.
const CAPABILITIES: [&str; 5] = [
    "BPF",
    "PERFMON",
    "SYS_PTRACE",
    "DAC_READ_SEARCH",
    "SYS_RESOURCE",
];

/// Where the manifests mount the plugins: the tracer's default plugin directory.
const PLUGINS_DIR: &str = "/etc/tracer/plugins";

const ADMIN_PORT: u64 = 9464;

fn kubernetes_dir() -> PathBuf {
    workspace().join("deploy/kubernetes")
}

// ---------------------------------------------------------------------------------------------
// Tools

/// kubectl with a kustomize v4+ inside (`kubectl version --client` names it from 1.24 on).
fn kubectl() -> Option<PathBuf> {
    let kubectl = which("kubectl");
    let kustomize_major = kubectl.as_ref().and_then(|k| {
        let out = Command::new(k)
            .args(["version", "--client"])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let v = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Kustomize Version: v"))?
            .to_string();
        v.split('.').next()?.parse::<u32>().ok()
    });
    require(
        "kubectl 1.24 or later (kustomize v4+ built in) in PATH",
        kustomize_major.is_some_and(|m| m >= 4),
    )
    .then(|| kubectl.expect("checked"))
}

/// `kubernetes-validate` (PyPI): its command, or `python3 -m kubernetes_validate`.
fn validator() -> Option<Command> {
    if let Some(cli) = which("kubernetes-validate") {
        return Some(Command::new(cli));
    }
    let module = python_can("import kubernetes_validate");
    require(
        "kubernetes-validate (pip install kubernetes-validate)",
        module,
    )
    .then(|| {
        let mut c = Command::new("python3");
        c.args(["-m", "kubernetes_validate"]);
        c
    })
}

fn python_can(import: &str) -> bool {
    Command::new("python3")
        .args(["-c", import])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `kubectl kustomize DIR`; a render error is a test failure, with kubectl's message.
fn render(kubectl: &Path, dir: &Path) -> String {
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("run kubectl kustomize");
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("kustomize prints UTF-8")
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("deploy-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create a scratch dir");
    dir
}

/// Strict schema validation for every Kubernetes version in [`K8S_VERSIONS`]. Any finding fails,
/// warnings included: kubernetes-validate only warns (exit 0) about a kind it has no schema for,
/// which is how a misspelt kind or apiVersion shows.
fn validate(mut validator: Command, name: &str, yaml: &str) {
    let file = scratch_dir(&format!("validate-{name}")).join("rendered.yaml");
    fs::write(&file, yaml).expect("write the rendered manifests");
    validator.args(["--strict", "--quiet"]);
    for v in K8S_VERSIONS {
        validator.args(["-k", v]);
    }
    let out = validator
        .arg(&file)
        .output()
        .expect("run kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let findings: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("INFO"))
        .collect();
    assert!(
        out.status.success() && findings.is_empty(),
        "{name}: the rendered manifests ({}) do not validate strictly against Kubernetes {:?}:\n{}",
        file.display(),
        K8S_VERSIONS,
        findings.join("\n")
    );
    let _ = fs::remove_dir_all(file.parent().expect("the scratch dir"));
}

/// The YAML documents as JSON values, through PyYAML (a dependency of kubernetes-validate).
fn parse(yaml: &str) -> Option<Vec<Value>> {
    if !require(
        "python3 with PyYAML (pip install kubernetes-validate brings it)",
        python_can("import yaml"),
    ) {
        return None;
    }
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml\n\
             json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python3");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(yaml.as_bytes())
        .expect("feed python3");
    let out = child.wait_with_output().expect("python3 output");
    assert!(out.status.success(), "PyYAML could not parse:\n{yaml}");
    match serde_json::from_slice(&out.stdout).expect("python3 printed JSON") {
        Value::Array(docs) => Some(docs),
        other => panic!("expected a list of documents, got {other}"),
    }
}

/// Renders DIR, validates it and returns its objects; None when a tool is missing. Each
/// directory is rendered and validated once per test run; the tools are checked by every test
/// (so that each one says SKIP).
fn objects(name: &str, dir: &Path) -> Option<Vec<Value>> {
    static RENDERED: Mutex<BTreeMap<PathBuf, Vec<Value>>> = Mutex::new(BTreeMap::new());
    let kubectl = kubectl()?;
    let validator = validator()?;
    let mut rendered = RENDERED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(objs) = rendered.get(dir) {
        return Some(objs.clone());
    }
    let yaml = render(&kubectl, dir);
    validate(validator, name, &yaml);
    let objs = parse(&yaml)?;
    rendered.insert(dir.to_path_buf(), objs.clone());
    Some(objs)
}

// ---------------------------------------------------------------------------------------------
// Reading the objects

fn kind_and_name(o: &Value) -> (String, String) {
    let s = |p: &str| {
        o.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    (s("/kind"), s("/metadata/name"))
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| kind_and_name(o) == (kind.to_string(), name.to_string()))
        .unwrap_or_else(|| panic!("no {kind} {name} in {:?}", names(objs)))
}

/// The generated ConfigMap whose name starts with `prefix` (kustomize appends a content hash).
fn find_generated<'a>(objs: &'a [Value], prefix: &str) -> &'a Value {
    objs.iter()
        .find(|o| {
            let (kind, name) = kind_and_name(o);
            kind == "ConfigMap" && name.starts_with(&format!("{prefix}-"))
        })
        .unwrap_or_else(|| {
            panic!(
                "no generated ConfigMap {prefix}-<hash> in {:?}",
                names(objs)
            )
        })
}

fn names(objs: &[Value]) -> Vec<(String, String)> {
    objs.iter().map(kind_and_name).collect()
}

fn daemonset(objs: &[Value]) -> &Value {
    find(objs, "DaemonSet", "tracer")
}

fn container(ds: &Value) -> &Value {
    let containers = ds
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .expect("containers");
    assert_eq!(containers.len(), 1, "one container: the tracer");
    &containers[0]
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().expect("a string").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn env<'a>(c: &'a Value, name: &str) -> &'a Value {
    c["env"]
        .as_array()
        .and_then(|e| e.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("no env {name} in {}", c["env"]))
}

/// The value following `flag` in the container's args.
fn arg_value<'a>(args: &'a [String], flag: &str) -> &'a str {
    let i = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("no {flag} in args {args:?}"));
    args.get(i + 1).expect("a value after the flag")
}

fn volume<'a>(ds: &'a Value, name: &str) -> &'a Value {
    ds.pointer("/spec/template/spec/volumes")
        .and_then(Value::as_array)
        .and_then(|v| v.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("no volume {name}"))
}

fn mount<'a>(c: &'a Value, path: &str) -> &'a Value {
    c["volumeMounts"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["mountPath"] == path))
        .unwrap_or_else(|| panic!("nothing mounted at {path}: {}", c["volumeMounts"]))
}

/// The DaemonSet with its pod's security settings and plugin source taken out: what the
/// variants must leave untouched.
fn without(ds: &Value, security: bool, plugins_volume: bool) -> Value {
    let mut ds = ds.clone();
    if security {
        ds["spec"]["template"]["spec"]["containers"][0]
            .as_object_mut()
            .expect("container")
            .remove("securityContext");
    }
    if plugins_volume {
        let volumes = ds["spec"]["template"]["spec"]["volumes"]
            .as_array_mut()
            .expect("volumes");
        volumes.retain(|v| v["name"] != "plugins");
    }
    ds
}

fn variant_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(kubernetes_dir().join("variants"))
        .expect("deploy/kubernetes/variants")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.join("kustomization.yaml").is_file())
        .collect();
    dirs.sort();
    dirs
}

// ---------------------------------------------------------------------------------------------
// Rendering and schemas

#[test]
fn default_deployment_renders_and_validates_strictly() {
    let Some(objs) = objects("base", &kubernetes_dir()) else {
        return;
    };
    let kinds: BTreeSet<(String, String)> = names(&objs)
        .into_iter()
        // The config ConfigMap's name ends in a content hash.
        .map(|(k, n)| match n.starts_with("tracer-config-") {
            true => (k, "tracer-config".to_string()),
            false => (k, n),
        })
        .collect();
    let want: BTreeSet<(String, String)> = [
        ("Namespace", "tracer-system"),
        ("ServiceAccount", "tracer"),
        ("ClusterRole", "tracer"),
        ("ClusterRoleBinding", "tracer"),
        ("ResourceQuota", "tracer-critical-pods"),
        ("ConfigMap", "tracer-config"),
        ("ConfigMap", "tracer-plugins"),
        ("DaemonSet", "tracer"),
    ]
    .iter()
    .map(|(k, n)| (k.to_string(), n.to_string()))
    .collect();
    assert_eq!(kinds, want);
    for o in &objs {
        let (kind, name) = kind_and_name(o);
        let cluster_scoped = matches!(
            kind.as_str(),
            "Namespace" | "ClusterRole" | "ClusterRoleBinding"
        );
        let ns = o.pointer("/metadata/namespace").and_then(Value::as_str);
        if cluster_scoped {
            assert_eq!(ns, None, "{kind} {name} is cluster-scoped");
        } else {
            assert_eq!(ns, Some("tracer-system"), "{kind} {name}");
        }
        assert_eq!(
            o.pointer("/metadata/labels/app.kubernetes.io~1name"),
            Some(&Value::from("tracer")),
            "{kind} {name} carries app.kubernetes.io/name=tracer (to find and delete it all)"
        );
    }
}

#[test]
fn every_variant_renders_and_validates_strictly() {
    let dirs = variant_dirs();
    let names: Vec<String> = dirs
        .iter()
        .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.contains(&"privileged".to_string())
            && names.contains(&"hostpath-plugins".to_string()),
        "the documented variants exist: {names:?}"
    );
    for (dir, name) in dirs.iter().zip(&names) {
        let Some(objs) = objects(name, dir) else {
            return;
        };
        daemonset(&objs);
    }
}

// ---------------------------------------------------------------------------------------------
// What the default deployment promises

#[test]
fn daemonset_has_exactly_the_documented_privileges() {
    let Some(objs) = objects("base", &kubernetes_dir()) else {
        return;
    };
    let ds = daemonset(&objs);
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true, "the kernel reports host pids");
    assert!(
        pod.get("hostNetwork").is_none_or(|v| v == false),
        "no hostNetwork: the admin port stays on the pod IP"
    );
    assert!(pod.get("hostIPC").is_none_or(|v| v == false));
    let sc = &container(ds)["securityContext"];
    assert_eq!(sc["privileged"], false, "the base is not privileged");
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(strings(sc.pointer("/capabilities/drop")), ["ALL"]);
    let added: BTreeSet<String> = strings(sc.pointer("/capabilities/add"))
        .into_iter()
        .collect();
    let documented: BTreeSet<String> = CAPABILITIES.iter().map(|c| c.to_string()).collect();
    assert_eq!(
        added, documented,
        "capabilities: exactly the documented set"
    );
    assert_eq!(
        strings(sc.pointer("/capabilities/add")).len(),
        CAPABILITIES.len(),
        "no capability listed twice"
    );
    for (kind, name) in names(&objs) {
        assert!(
            kind != "Pod" && kind != "Deployment" && kind != "StatefulSet",
            "only the DaemonSet runs pods, found {kind} {name}"
        );
    }
    // Each added capability is explained to the operators who have to approve it.
    let readme =
        fs::read_to_string(workspace().join("deploy/README.md")).expect("deploy/README.md");
    for cap in CAPABILITIES {
        assert!(readme.contains(cap), "deploy/README.md explains {cap}");
    }
}

#[test]
fn daemonset_wires_node_name_export_probes_and_mounts() {
    let Some(objs) = objects("base", &kubernetes_dir()) else {
        return;
    };
    let ds = daemonset(&objs);
    let spec = &ds["spec"];
    let pod = &spec["template"]["spec"];
    let c = container(ds);

    assert_eq!(
        env(c, "NODE_NAME").pointer("/valueFrom/fieldRef/fieldPath"),
        Some(&Value::from("spec.nodeName"))
    );
    assert!(
        env(c, "OTEL_EXPORTER_OTLP_ENDPOINT")["value"]
            .as_str()
            .is_some_and(|u| u.starts_with("http://") || u.starts_with("https://")),
        "an OTLP endpoint URL"
    );
    assert_eq!(env(c, "OTEL_EXPORTER_OTLP_PROTOCOL")["value"], "grpc");
    assert_eq!(
        env(c, "OTEL_EXPORTER_OTLP_HEADERS").pointer("/valueFrom/secretKeyRef/optional"),
        Some(&Value::from(true)),
        "the headers Secret is optional: the pod starts without it"
    );

    let args = strings(c.get("args"));
    assert_eq!(args.first().map(String::as_str), Some("run"));
    assert_eq!(
        arg_value(&args, "--admin-addr"),
        format!("0.0.0.0:{ADMIN_PORT}")
    );
    let port = c["ports"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "admin"))
        .expect("a port named admin");
    assert_eq!(port["containerPort"], ADMIN_PORT);
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert!(
            get["port"] == "admin" || get["port"] == ADMIN_PORT,
            "{probe} goes to the admin port: {get}"
        );
    }

    // --config names a file of the mounted config ConfigMap; the plugins mount is the default
    // plugin directory.
    let config = Path::new(arg_value(&args, "--config"));
    let config_mount = mount(c, config.parent().unwrap().to_str().unwrap());
    assert_eq!(config_mount["readOnly"], true);
    let config_volume = volume(ds, config_mount["name"].as_str().unwrap());
    let config_map = find_generated(&objs, "tracer-config");
    assert_eq!(
        config_volume["configMap"]["name"],
        config_map["metadata"]["name"]
    );
    let key = config.file_name().unwrap().to_str().unwrap();
    assert!(
        config_map["data"][key].is_string(),
        "the config ConfigMap has {key}"
    );
    let plugins_mount = mount(c, PLUGINS_DIR);
    assert_eq!(plugins_mount["readOnly"], true);
    assert_eq!(
        volume(ds, plugins_mount["name"].as_str().unwrap())["configMap"]["name"],
        "tracer-plugins"
    );
    find(&objs, "ConfigMap", "tracer-plugins");

    // Host mounts, all read-only: tracefs (tracepoint ids) and the cgroup tree.
    for (path, host) in [
        ("/sys/kernel/tracing", "/sys/kernel/tracing"),
        ("/sys/fs/cgroup", "/sys/fs/cgroup"),
    ] {
        let m = mount(c, path);
        assert_eq!(m["readOnly"], true, "{path} is mounted read-only");
        let v = volume(ds, m["name"].as_str().unwrap());
        assert_eq!(v["hostPath"]["path"], host);
    }
    // /proc comes with hostPID, never as a host mount.
    for m in c["volumeMounts"].as_array().unwrap() {
        let v = volume(ds, m["name"].as_str().unwrap());
        if let Some(p) = v.pointer("/hostPath/path").and_then(Value::as_str) {
            assert!(
                !p.starts_with("/proc"),
                "no hostPath /proc: hostPID shows it"
            );
            assert_eq!(m["readOnly"], true, "host path {p} is mounted read-only");
        }
    }
    // No mount point inside another mount: it cannot be created in a read-only ConfigMap
    // volume, and the pod would not start.
    let paths: Vec<String> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["mountPath"]
                .as_str()
                .unwrap()
                .trim_end_matches('/')
                .to_string()
        })
        .collect();
    for a in &paths {
        for b in &paths {
            assert!(
                a == b || !b.starts_with(&format!("{a}/")),
                "{b} is mounted inside {a}"
            );
        }
    }

    // Scheduling and rollout.
    assert_eq!(pod["serviceAccountName"], "tracer");
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert!(
        pod["tolerations"].as_array().is_some_and(|t| t
            .iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none())),
        "tolerates every taint: runs on every node"
    );
    assert_eq!(spec["updateStrategy"]["type"], "RollingUpdate");
    assert_eq!(
        spec["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
        "10%"
    );
    for (what, want) in [
        ("requests/cpu", "100m"),
        ("requests/memory", "128Mi"),
        ("limits/cpu", "1"),
        ("limits/memory", "256Mi"),
    ] {
        assert_eq!(
            c.pointer(&format!("/resources/{what}")),
            Some(&Value::from(want)),
            "resources {what}"
        );
    }
    let selector = &spec["selector"]["matchLabels"];
    for (k, v) in selector.as_object().unwrap() {
        assert_eq!(
            &spec["template"]["metadata"]["labels"][k], v,
            "the selector matches the pods"
        );
    }
}

#[test]
fn rbac_is_read_only_on_pods_replicasets_and_jobs() {
    let Some(objs) = objects("base", &kubernetes_dir()) else {
        return;
    };
    let role = find(&objs, "ClusterRole", "tracer");
    let mut rules: Vec<(Vec<String>, Vec<String>, Vec<String>)> = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                strings(r.get("apiGroups")),
                strings(r.get("resources")),
                strings(r.get("verbs")),
            )
        })
        .collect();
    rules.sort();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let mut want = vec![
        (s(&[""]), s(&["pods"]), s(&["get", "list", "watch"])),
        (s(&["apps"]), s(&["replicasets"]), s(&["get"])),
        (s(&["batch"]), s(&["jobs"]), s(&["get"])),
    ];
    want.sort();
    assert_eq!(rules, want, "exactly these rules, nothing else");
    let rbac: Vec<(String, String)> = names(&objs)
        .into_iter()
        .filter(|(k, _)| k.contains("Role"))
        .collect();
    assert_eq!(
        rbac.len(),
        2,
        "one ClusterRole and its binding, nothing else: {rbac:?}"
    );
    let binding = find(&objs, "ClusterRoleBinding", "tracer");
    assert_eq!(binding["roleRef"]["name"], "tracer");
    assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
    let subjects = binding["subjects"].as_array().unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0]["kind"], "ServiceAccount");
    assert_eq!(subjects[0]["name"], "tracer");
    assert_eq!(subjects[0]["namespace"], "tracer-system");
    find(&objs, "ServiceAccount", "tracer");
}

// ---------------------------------------------------------------------------------------------
// Variants: each changes one thing

#[test]
fn privileged_variant_changes_only_the_privilege() {
    let (Some(base), Some(var)) = (
        objects("base", &kubernetes_dir()),
        objects("privileged", &kubernetes_dir().join("variants/privileged")),
    ) else {
        return;
    };
    let sc = &container(daemonset(&var))["securityContext"];
    assert_eq!(sc["privileged"], true);
    assert_ne!(
        sc["allowPrivilegeEscalation"], false,
        "the API server rejects privileged with allowPrivilegeEscalation: false"
    );
    assert_eq!(
        without(daemonset(&var), true, false),
        without(daemonset(&base), true, false),
        "only the securityContext differs"
    );
    assert_eq!(names(&var), names(&base), "the same objects");
}

#[test]
fn hostpath_plugins_variant_reads_plugins_from_the_node() {
    let (Some(base), Some(var)) = (
        objects("base", &kubernetes_dir()),
        objects(
            "hostpath-plugins",
            &kubernetes_dir().join("variants/hostpath-plugins"),
        ),
    ) else {
        return;
    };
    let ds = daemonset(&var);
    let plugins = volume(ds, "plugins");
    assert_eq!(plugins["hostPath"]["path"], "/var/lib/tracer/plugins");
    assert_eq!(plugins["hostPath"]["type"], "DirectoryOrCreate");
    assert!(
        plugins.get("configMap").is_none(),
        "hostPath only: {plugins}"
    );
    assert_eq!(mount(container(ds), PLUGINS_DIR)["name"], "plugins");
    assert!(
        !names(&var).contains(&("ConfigMap".into(), "tracer-plugins".into())),
        "the unused plugins ConfigMap is gone"
    );
    assert_eq!(
        without(ds, false, true),
        without(daemonset(&base), false, true),
        "only the plugins volume differs"
    );
}

/// The overlay deploy/README.md tells platform engineers to write: their image, their collector.
#[test]
fn an_overlay_like_the_readme_one_sets_image_and_collector() {
    let Some(kubectl) = kubectl() else {
        return;
    };
    let dir = scratch_dir("overlay");
    let base = relative(&dir, &kubernetes_dir());
    fs::write(
        dir.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {base}
images:
  - name: tracer
    newName: registry.example.com/platform/tracer
    newTag: \"0.1.0\"
patches:
  - patch: |-
      apiVersion: apps/v1
      kind: DaemonSet
      metadata:
        name: tracer
        namespace: tracer-system
      spec:
        template:
          spec:
            containers:
              - name: tracer
                env:
                  - name: OTEL_EXPORTER_OTLP_ENDPOINT
                    value: http://collector.monitoring:4318
                  - name: OTEL_EXPORTER_OTLP_PROTOCOL
                    value: http/protobuf
",
            base = base.display()
        ),
    )
    .unwrap();
    let yaml = render(&kubectl, &dir);
    let Some(validator) = validator() else {
        return;
    };
    validate(validator, "readme-overlay", &yaml);
    let Some(objs) = parse(&yaml) else {
        return;
    };
    let c = container(daemonset(&objs));
    assert_eq!(c["image"], "registry.example.com/platform/tracer:0.1.0");
    assert_eq!(
        env(c, "OTEL_EXPORTER_OTLP_ENDPOINT")["value"],
        "http://collector.monitoring:4318"
    );
    assert_eq!(
        env(c, "OTEL_EXPORTER_OTLP_PROTOCOL")["value"],
        "http/protobuf"
    );
    assert_eq!(
        env(c, "NODE_NAME").pointer("/valueFrom/fieldRef/fieldPath"),
        Some(&Value::from("spec.nodeName")),
        "the other variables are kept"
    );
    let _ = fs::remove_dir_all(&dir);
}

/// `to` relative to `from` (kustomize refuses absolute resource paths).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from = fs::canonicalize(from).unwrap();
    let to = fs::canonicalize(to).unwrap();
    let (f, t): (Vec<Component>, Vec<Component>) =
        (from.components().collect(), to.components().collect());
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut rel = PathBuf::new();
    for _ in common..f.len() {
        rel.push("..");
    }
    for c in &t[common..] {
        rel.push(c);
    }
    rel
}

// ---------------------------------------------------------------------------------------------
// The manifests and the binary agree

/// Every flag in the DaemonSet's args and every key of the config file is a `tracer run` flag:
/// an unknown one would stop the daemon at start (the config file rejects unknown names).
#[test]
fn args_and_config_file_use_flags_the_tracer_has() {
    let Some(objs) = objects("base", &kubernetes_dir()) else {
        return;
    };
    let bin = tracer_bin();
    if !require(
        "the tracer binary (cargo build -p tracer-user, or TRACER_BIN)",
        bin.is_some(),
    ) {
        return;
    }
    let out = Command::new(bin.unwrap())
        .args(["run", "--help"])
        .output()
        .expect("run tracer run --help");
    assert!(out.status.success(), "tracer run --help failed");
    let help = String::from_utf8_lossy(&out.stdout);
    let flags: BTreeSet<String> = help
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = l.strip_prefix("-h, ").unwrap_or(l);
            let l = if l.len() > 4 && l.as_bytes()[0] == b'-' && &l[2..4] == ", " {
                &l[4..]
            } else {
                l
            };
            let name = l.strip_prefix("--")?;
            let end = name
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .unwrap_or(name.len());
            Some(format!("--{}", &name[..end]))
        })
        .collect();
    assert!(flags.contains("--config"), "parsed the flags: {flags:?}");

    let args = strings(container(daemonset(&objs)).get("args"));
    for a in args.iter().filter(|a| a.starts_with("--")) {
        let flag = a.split('=').next().unwrap();
        assert!(
            flags.contains(flag),
            "the DaemonSet passes {flag}, which `tracer run` does not have"
        );
    }

    let config_map = find_generated(&objs, "tracer-config");
    let file = config_map["data"]["config.yaml"]
        .as_str()
        .expect("config.yaml");
    let Some(docs) = parse(file) else {
        return;
    };
    assert_eq!(docs.len(), 1, "config.yaml is one YAML document");
    let keys = docs[0].as_object().expect("config.yaml is a mapping");
    assert!(!keys.is_empty(), "config.yaml sets something");
    for key in keys.keys() {
        assert!(
            flags.contains(&format!("--{key}")) && key != "config" && key != "log",
            "config.yaml sets {key}, which is not a `tracer run` option"
        );
    }
}

/// The image's entry point and the DaemonSet's args make `tracer run ...`, and the build context
/// leaves out what would only slow it down or leak into it.
#[test]
fn image_runs_the_tracer_as_the_manifests_expect() {
    let dockerfile = fs::read_to_string(workspace().join("Dockerfile")).expect("Dockerfile");
    let last_stage = dockerfile
        .rsplit_once("\nFROM ")
        .map(|(_, s)| s)
        .expect("a multi-stage Dockerfile");
    let line = |instr: &str| {
        last_stage
            .lines()
            .find(|l| l.starts_with(instr))
            .unwrap_or_else(|| panic!("no {instr} in the final stage"))
            .to_string()
    };
    assert_eq!(
        line("ENTRYPOINT "),
        r#"ENTRYPOINT ["/usr/local/bin/tracer"]"#
    );
    assert_eq!(line("CMD "), r#"CMD ["run"]"#);
    assert!(
        last_stage.contains("ca-certificates"),
        "TLS endpoints need CA certificates"
    );
    // The builder follows xtask: nightly with rust-src, bpf-linker on the nightly's LLVM.
    for needle in [
        "rust-src",
        "bpf-linker",
        "--no-default-features",
        "llvm-$",
        "LLVM_PREFIX",
        "cargo xtask build",
    ] {
        assert!(
            dockerfile.contains(needle),
            "the Dockerfile builds like xtask: {needle}"
        );
    }
    let ignore = fs::read_to_string(workspace().join(".dockerignore")).expect(".dockerignore");
    let ignored: BTreeSet<&str> = ignore
        .lines()
        .map(|l| l.trim().trim_start_matches('/').trim_end_matches('/'))
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for p in ["target", "tracer-ebpf/target", ".git"] {
        assert!(ignored.contains(p), ".dockerignore leaves out {p}");
    }
}
