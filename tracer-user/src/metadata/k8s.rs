//! Pod metadata for the containers of this node, kept current by a watch on the API server.
//!
//! One task runs `kube_runtime::watcher` over the pods of `spec.nodeName=NODE` (so the
//! API server does the filtering and memory scales with the node, not the cluster) and
//! keeps a container-id index. A second task resolves ReplicaSet -> Deployment and
//! Job -> CronJob owners, so a slow or failing GET never holds up pod events: until it
//! answers, a pod reports its ReplicaSet/Job.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Config};
use tokio::sync::mpsc;

use crate::semconv;

/// The label that OTel maps to `service.name`-like app names.
const APP_NAME_LABEL: &str = "app.kubernetes.io/name";
/// Owner lookups that failed are retried after this long, not on every pod event.
const OWNER_RETRY_AFTER: Duration = Duration::from_secs(60);
/// An owner GET slower than this counts as failed; the watch goes on regardless.
const OWNER_LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound of the ReplicaSet/Job -> owner cache; a node rarely sees more than a few hundred.
const OWNER_CACHE_CAP: usize = 4096;
/// Pending owner lookups; beyond this, pods keep their ReplicaSet/Job until their next event.
const OWNER_QUEUE_CAP: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    #[error("in-cluster Kubernetes config: {0}")]
    InCluster(#[from] kube::config::InClusterError),
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkloadKind {
    Deployment,
    ReplicaSet,
    StatefulSet,
    DaemonSet,
    Job,
    CronJob,
}

impl WorkloadKind {
    /// Resource attribute key per the OTel k8s semantic conventions.
    pub fn attribute_key(&self) -> &'static str {
        match self {
            WorkloadKind::Deployment => semconv::K8S_DEPLOYMENT_NAME,
            WorkloadKind::ReplicaSet => semconv::K8S_REPLICASET_NAME,
            WorkloadKind::StatefulSet => semconv::K8S_STATEFULSET_NAME,
            WorkloadKind::DaemonSet => semconv::K8S_DAEMONSET_NAME,
            WorkloadKind::Job => semconv::K8S_JOB_NAME,
            WorkloadKind::CronJob => semconv::K8S_CRONJOB_NAME,
        }
    }
}

/// What a span's resource gets for a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerMeta {
    pub pod_name: String,
    pub pod_uid: String,
    pub namespace: String,
    pub node_name: String,
    pub container_name: String,
    pub workload: Option<(WorkloadKind, String)>,
    /// Only the selected label keys, in the order they were selected.
    pub labels: Vec<(String, String)>,
    pub app_name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub pods: usize,
    pub containers: usize,
    /// Pods not cached because `max_pods` was reached.
    pub pods_dropped: u64,
    pub owner_lookups: u64,
    pub owner_lookup_failures: u64,
    /// Errors from the watch (failed list/watch, broken stream, 410 Gone); each is
    /// followed by a backoff and a re-watch or relist.
    pub watch_restarts: u64,
    /// Full relists after the initial one.
    pub relists: u64,
}

/// Pod metadata cache for one node. Cheap to clone; the background tasks stop when the last
/// clone is dropped.
#[derive(Clone)]
pub struct PodCache {
    shared: Arc<Shared>,
    _tasks: Arc<TaskGuard>,
}

struct TaskGuard(Vec<tokio::task::AbortHandle>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

struct Shared {
    state: RwLock<State>,
    synced: AtomicBool,
    pods_dropped: AtomicU64,
    owner_lookups: AtomicU64,
    owner_lookup_failures: AtomicU64,
    watch_restarts: AtomicU64,
    relists: AtomicU64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct OwnerKey {
    namespace: String,
    /// ReplicaSet or Job: the kinds whose own owner needs a GET.
    kind: WorkloadKind,
    name: String,
}

#[derive(Debug, Clone)]
enum OwnerState {
    Pending,
    /// `None`: the ReplicaSet/Job has no Deployment/CronJob owner.
    Resolved(Option<(WorkloadKind, String)>),
    Failed(Instant),
}

struct PodEntry {
    name: String,
    namespace: String,
    /// Controller owner (kind, name) as written on the pod.
    owner: Option<(String, String)>,
    /// (container id, container name)
    containers: Vec<(String, String)>,
    /// Shared template for this pod's containers.
    base: ContainerMeta,
}

struct State {
    pods: HashMap<String, PodEntry>,
    containers: HashMap<String, Arc<ContainerMeta>>,
    /// Pods of the (re)list in progress; `Some` between Init and InitDone. Lookups keep
    /// using `pods` meanwhile, and pods deleted while unwatched vanish with the swap.
    staging: Option<HashMap<String, PodEntry>>,
    owners: HashMap<OwnerKey, OwnerState>,
    /// Insertion order of `owners`, for FIFO eviction.
    owner_order: VecDeque<OwnerKey>,
    max_pods: usize,
    selected_labels: Vec<String>,
    full_warned: bool,
}

impl PodCache {
    /// Starts a watch of the pods on `node_name` only (fieldSelector spec.nodeName=NODE),
    /// resumes after errors/disconnects with backoff, keeps at most `max_pods` pods.
    /// Must be called inside a tokio runtime.
    pub fn spawn(
        client: Client,
        node_name: String,
        selected_labels: Vec<String>,
        max_pods: usize,
    ) -> PodCache {
        if node_name.is_empty() {
            // An empty selector value matches unscheduled pods, never ours.
            tracing::warn!("node name is empty: no pod metadata will be found");
        }
        let shared = Arc::new(Shared {
            state: RwLock::new(State {
                pods: HashMap::new(),
                containers: HashMap::new(),
                staging: None,
                owners: HashMap::new(),
                owner_order: VecDeque::new(),
                max_pods,
                selected_labels,
                full_warned: false,
            }),
            synced: AtomicBool::new(false),
            pods_dropped: AtomicU64::new(0),
            owner_lookups: AtomicU64::new(0),
            owner_lookup_failures: AtomicU64::new(0),
            watch_restarts: AtomicU64::new(0),
            relists: AtomicU64::new(0),
        });
        let (lookup_tx, lookup_rx) = mpsc::channel(OWNER_QUEUE_CAP);
        let watch = tokio::spawn(watch_pods(
            shared.clone(),
            client.clone(),
            node_name,
            lookup_tx,
        ));
        let owners = tokio::spawn(resolve_owners(shared.clone(), client, lookup_rx));
        PodCache {
            shared,
            _tasks: Arc::new(TaskGuard(vec![watch.abort_handle(), owners.abort_handle()])),
        }
    }

    /// `id` is the 64-hex container id, as `container::container_from_cgroup` gives it.
    pub fn by_container_id(&self, id: &str) -> Option<Arc<ContainerMeta>> {
        self.shared.read().containers.get(id).cloned()
    }

    /// (pod name, namespace) of a pod uid (with dashes).
    pub fn by_pod_uid(&self, uid: &str) -> Option<(String, String)> {
        let state = self.shared.read();
        let pod = state.pods.get(uid)?;
        Some((pod.name.clone(), pod.namespace.clone()))
    }

    /// The initial list has been loaded.
    pub fn is_synced(&self) -> bool {
        self.shared.synced.load(Ordering::Acquire)
    }

    pub fn stats(&self) -> CacheStats {
        let s = &self.shared;
        let state = s.read();
        CacheStats {
            pods: state.pods.len(),
            containers: state.containers.len(),
            pods_dropped: s.pods_dropped.load(Ordering::Relaxed),
            owner_lookups: s.owner_lookups.load(Ordering::Relaxed),
            owner_lookup_failures: s.owner_lookup_failures.load(Ordering::Relaxed),
            watch_restarts: s.watch_restarts.load(Ordering::Relaxed),
            relists: s.relists.load(Ordering::Relaxed),
        }
    }
}

impl Shared {
    // A panic while holding the lock leaves consistent-enough maps; keep serving.
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }
    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }
}

async fn watch_pods(
    shared: Arc<Shared>,
    client: Client,
    node_name: String,
    lookups: mpsc::Sender<OwnerKey>,
) {
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node_name}"));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    let mut inits = 0u64;
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => {
                inits += 1;
                if inits > 1 {
                    shared.relists.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(node = %node_name, "relisting pods");
                }
                shared.write().staging = Some(HashMap::new());
            }
            Ok(Event::InitApply(pod)) => shared.write().stage(&shared, pod, &lookups),
            Ok(Event::InitDone) => {
                shared.write().swap_in_staged();
                if !shared.synced.swap(true, Ordering::AcqRel) {
                    tracing::info!(node = %node_name, pods = shared.read().pods.len(), "pod cache synced");
                }
            }
            Ok(Event::Apply(pod)) => shared.write().apply(&shared, pod, &lookups),
            Ok(Event::Delete(pod)) => {
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    shared.write().remove(uid);
                }
            }
            Err(err) => {
                // The watcher recovers by itself (re-watch or relist) after the backoff.
                shared.watch_restarts.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %err, "pod watch failed; retrying");
            }
        }
    }
}

async fn resolve_owners(
    shared: Arc<Shared>,
    client: Client,
    mut lookups: mpsc::Receiver<OwnerKey>,
) {
    while let Some(key) = lookups.recv().await {
        shared.owner_lookups.fetch_add(1, Ordering::Relaxed);
        let result = tokio::time::timeout(OWNER_LOOKUP_TIMEOUT, lookup_owner(&client, &key)).await;
        let owner_state = match result {
            Ok(Ok(owner)) => OwnerState::Resolved(owner),
            Ok(Err(err)) => {
                shared.owner_lookup_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(namespace = %key.namespace, kind = ?key.kind, name = %key.name, error = %err, "owner lookup failed");
                OwnerState::Failed(Instant::now())
            }
            Err(_) => {
                shared.owner_lookup_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(namespace = %key.namespace, kind = ?key.kind, name = %key.name, "owner lookup timed out");
                OwnerState::Failed(Instant::now())
            }
        };
        let mut state = shared.write();
        state.set_owner(key.clone(), owner_state);
        state.refresh_owned_by(&key);
    }
}

async fn lookup_owner(
    client: &Client,
    key: &OwnerKey,
) -> Result<Option<(WorkloadKind, String)>, kube::Error> {
    let (refs, parent_kind, parent) = match key.kind {
        WorkloadKind::ReplicaSet => {
            let rs = Api::<ReplicaSet>::namespaced(client.clone(), &key.namespace)
                .get(&key.name)
                .await?;
            (
                rs.metadata.owner_references,
                "Deployment",
                WorkloadKind::Deployment,
            )
        }
        WorkloadKind::Job => {
            let job = Api::<Job>::namespaced(client.clone(), &key.namespace)
                .get(&key.name)
                .await?;
            (
                job.metadata.owner_references,
                "CronJob",
                WorkloadKind::CronJob,
            )
        }
        _ => return Ok(None),
    };
    Ok(controller_ref(refs.as_deref().unwrap_or_default())
        .filter(|r| r.kind == parent_kind)
        .map(|r| (parent, r.name.clone())))
}

/// The controlling owner, or the first one when none is marked controller.
fn controller_ref(refs: &[OwnerReference]) -> Option<&OwnerReference> {
    refs.iter()
        .find(|r| r.controller == Some(true))
        .or_else(|| refs.first())
}

fn container_id(raw: &str) -> Option<&str> {
    // "containerd://<id>", "cri-o://<id>", "docker://<id>"
    let id = raw.rsplit_once("://").map_or(raw, |(_, id)| id);
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

impl State {
    /// Watch event: add or update one pod.
    fn apply(&mut self, shared: &Shared, pod: Pod, lookups: &mpsc::Sender<OwnerKey>) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        if !self.pods.contains_key(&uid) && self.pods.len() >= self.max_pods {
            self.dropped(shared);
            return;
        }
        let entry = self.entry_from_pod(uid.clone(), pod);
        self.remove(&uid);
        self.insert(uid, entry, lookups);
    }

    /// (Re)list item: collected aside until the list is complete.
    fn stage(&mut self, shared: &Shared, pod: Pod, lookups: &mpsc::Sender<OwnerKey>) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let full = match &self.staging {
            Some(staged) => !staged.contains_key(&uid) && staged.len() >= self.max_pods,
            // The watcher always sends Init first; be lenient if it did not.
            None => return self.apply(shared, pod, lookups),
        };
        if full {
            self.dropped(shared);
            return;
        }
        let entry = self.entry_from_pod(uid.clone(), pod);
        // Start owner lookups now so they are answered by the time the list is swapped in.
        self.workload_and_lookup(&entry, lookups);
        if let Some(staged) = self.staging.as_mut() {
            staged.insert(uid, entry);
        }
    }

    fn swap_in_staged(&mut self) {
        let Some(staged) = self.staging.take() else {
            return;
        };
        self.containers.clear();
        self.pods = staged;
        let uids: Vec<String> = self.pods.keys().cloned().collect();
        for uid in uids {
            self.reindex(&uid);
        }
    }

    fn dropped(&mut self, shared: &Shared) {
        shared.pods_dropped.fetch_add(1, Ordering::Relaxed);
        if !self.full_warned {
            self.full_warned = true;
            tracing::warn!(
                max_pods = self.max_pods,
                "pod cache full; further pods get no metadata"
            );
        }
    }

    fn entry_from_pod(&self, uid: String, pod: Pod) -> PodEntry {
        let meta = pod.metadata;
        let labels_map = meta.labels.unwrap_or_default();
        let labels = self
            .selected_labels
            .iter()
            .filter_map(|k| labels_map.get(k).map(|v| (k.clone(), v.clone())))
            .collect();
        let owner = controller_ref(meta.owner_references.as_deref().unwrap_or_default())
            .map(|r| (r.kind.clone(), r.name.clone()));
        let status = pod.status.unwrap_or_default();
        let containers = [
            status.init_container_statuses,
            status.container_statuses,
            status.ephemeral_container_statuses,
        ]
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|cs| {
            let id = container_id(cs.container_id.as_deref()?)?.to_ascii_lowercase();
            Some((id, cs.name))
        })
        .collect();
        PodEntry {
            name: meta.name.clone().unwrap_or_default(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            owner,
            containers,
            base: ContainerMeta {
                pod_name: meta.name.unwrap_or_default(),
                pod_uid: uid,
                namespace: meta.namespace.unwrap_or_default(),
                node_name: pod.spec.and_then(|s| s.node_name).unwrap_or_default(),
                container_name: String::new(),
                workload: None,
                labels,
                app_name: labels_map.get(APP_NAME_LABEL).cloned(),
            },
        }
    }

    fn insert(&mut self, uid: String, mut entry: PodEntry, lookups: &mpsc::Sender<OwnerKey>) {
        entry.base.workload = self.workload_and_lookup(&entry, lookups);
        self.index_containers(&entry);
        self.pods.insert(uid, entry);
    }

    fn workload_and_lookup(
        &mut self,
        entry: &PodEntry,
        lookups: &mpsc::Sender<OwnerKey>,
    ) -> Option<(WorkloadKind, String)> {
        let (workload, lookup) = self.workload_of(entry);
        if let Some(key) = lookup {
            // Marked pending only if queued, so a full queue is retried on a later event.
            if lookups.try_send(key.clone()).is_ok() {
                self.set_owner(key, OwnerState::Pending);
            }
        }
        workload
    }

    /// Recomputes a cached pod's workload from the owner cache and re-indexes its containers.
    fn reindex(&mut self, uid: &str) {
        let Some(mut entry) = self.pods.remove(uid) else {
            return;
        };
        // A lookup this might want (expired failure, full queue) waits for the next event.
        entry.base.workload = self.workload_of(&entry).0;
        self.index_containers(&entry);
        self.pods.insert(uid.to_owned(), entry);
    }

    fn index_containers(&mut self, entry: &PodEntry) {
        for (id, name) in &entry.containers {
            let meta = ContainerMeta {
                container_name: name.clone(),
                ..entry.base.clone()
            };
            self.containers.insert(id.clone(), Arc::new(meta));
        }
    }

    fn remove(&mut self, uid: &str) {
        if let Some(old) = self.pods.remove(uid) {
            for (id, _) in &old.containers {
                self.containers.remove(id);
            }
        }
    }

    /// The workload to report now, and the owner lookup to start, if any.
    fn workload_of(&self, entry: &PodEntry) -> (Option<(WorkloadKind, String)>, Option<OwnerKey>) {
        let Some((kind, name)) = &entry.owner else {
            return (None, None);
        };
        let kind = match kind.as_str() {
            "ReplicaSet" => WorkloadKind::ReplicaSet,
            "Job" => WorkloadKind::Job,
            "StatefulSet" => return (Some((WorkloadKind::StatefulSet, name.clone())), None),
            "DaemonSet" => return (Some((WorkloadKind::DaemonSet, name.clone())), None),
            "Deployment" => return (Some((WorkloadKind::Deployment, name.clone())), None),
            "CronJob" => return (Some((WorkloadKind::CronJob, name.clone())), None),
            // e.g. Node (static pods' mirrors) or custom controllers.
            _ => return (None, None),
        };
        let key = OwnerKey {
            namespace: entry.namespace.clone(),
            kind,
            name: name.clone(),
        };
        let own = Some((kind, name.clone()));
        match self.owners.get(&key) {
            Some(OwnerState::Resolved(Some(parent))) => (Some(parent.clone()), None),
            Some(OwnerState::Resolved(None)) | Some(OwnerState::Pending) => (own, None),
            Some(OwnerState::Failed(at)) if at.elapsed() < OWNER_RETRY_AFTER => (own, None),
            Some(OwnerState::Failed(_)) | None => (own, Some(key)),
        }
    }

    fn set_owner(&mut self, key: OwnerKey, owner_state: OwnerState) {
        if self.owners.insert(key.clone(), owner_state).is_none() {
            self.owner_order.push_back(key);
            while self.owners.len() > OWNER_CACHE_CAP {
                let Some(oldest) = self.owner_order.pop_front() else {
                    break;
                };
                self.owners.remove(&oldest);
            }
        }
    }

    /// Recomputes the workload of the pods owned by `key` after its lookup finished.
    fn refresh_owned_by(&mut self, key: &OwnerKey) {
        let kind_name = match key.kind {
            WorkloadKind::ReplicaSet => "ReplicaSet",
            _ => "Job",
        };
        let uids: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, p)| {
                p.namespace == key.namespace
                    && p.owner
                        .as_ref()
                        .is_some_and(|(k, n)| k == kind_name && *n == key.name)
            })
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in uids {
            self.reindex(&uid);
        }
    }
}

/// Builds a client from the in-cluster service account (KUBERNETES_SERVICE_HOST/PORT and
/// /var/run/secrets/kubernetes.io/serviceaccount) or from KUBECONFIG / ~/.kube/config.
/// `Ok(None)` when neither is there, so a daemon outside Kubernetes stays quiet.
/// Must be called inside a tokio runtime.
pub async fn client_from_environment() -> Result<Option<Client>, K8sError> {
    let source = config_source(
        std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(),
        std::env::var_os("KUBECONFIG").as_deref(),
        std::env::var_os("HOME").as_deref().map(Path::new),
    );
    let Some(config) = config_from_source(source).await? else {
        return Ok(None);
    };
    Ok(Some(Client::try_from(config)?))
}

#[derive(Debug, PartialEq, Eq)]
enum ConfigSource {
    InCluster,
    Kubeconfig(Vec<PathBuf>),
    None,
}

fn config_source(
    in_cluster: bool,
    kubeconfig_env: Option<&OsStr>,
    home: Option<&Path>,
) -> ConfigSource {
    if in_cluster {
        return ConfigSource::InCluster;
    }
    // KUBECONFIG is a path list like PATH; files that are missing are skipped, as kubectl does.
    let paths: Vec<PathBuf> = match kubeconfig_env.filter(|v| !v.is_empty()) {
        Some(list) => std::env::split_paths(list)
            .filter(|p| p.is_file())
            .collect(),
        None => home
            .map(|h| h.join(".kube").join("config"))
            .filter(|p| p.is_file())
            .into_iter()
            .collect(),
    };
    if paths.is_empty() {
        ConfigSource::None
    } else {
        ConfigSource::Kubeconfig(paths)
    }
}

async fn config_from_source(source: ConfigSource) -> Result<Option<Config>, K8sError> {
    match source {
        ConfigSource::None => Ok(None),
        ConfigSource::InCluster => Ok(Some(Config::incluster()?)),
        ConfigSource::Kubeconfig(paths) => {
            let mut merged: Option<Kubeconfig> = None;
            for path in paths {
                let next = Kubeconfig::read_from(&path)?;
                merged = Some(match merged {
                    Some(acc) => acc.merge(next)?,
                    None => next,
                });
            }
            let Some(kubeconfig) = merged else {
                return Ok(None);
            };
            let options = KubeConfigOptions::default();
            Ok(Some(
                Config::from_custom_kubeconfig(kubeconfig, &options).await?,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_keys() {
        assert_eq!(
            WorkloadKind::Deployment.attribute_key(),
            "k8s.deployment.name"
        );
        assert_eq!(
            WorkloadKind::ReplicaSet.attribute_key(),
            "k8s.replicaset.name"
        );
        assert_eq!(
            WorkloadKind::StatefulSet.attribute_key(),
            "k8s.statefulset.name"
        );
        assert_eq!(
            WorkloadKind::DaemonSet.attribute_key(),
            "k8s.daemonset.name"
        );
        assert_eq!(WorkloadKind::Job.attribute_key(), "k8s.job.name");
        assert_eq!(WorkloadKind::CronJob.attribute_key(), "k8s.cronjob.name");
    }

    #[test]
    fn container_id_prefixes() {
        let id = "80211297a41541d0b402ce92a278b435bfb530562f7d3b6928069e3e262adaa2";
        for scheme in ["containerd", "cri-o", "docker"] {
            assert_eq!(container_id(&format!("{scheme}://{id}")), Some(id));
        }
        assert_eq!(container_id(id), Some(id));
        assert_eq!(container_id("containerd://"), None);
        assert_eq!(container_id("containerd://abc"), None);
    }

    #[test]
    fn config_source_outside_kubernetes_is_none() {
        let empty = std::env::temp_dir().join(format!("k8smeta-home-{}", std::process::id()));
        assert_eq!(config_source(false, None, Some(&empty)), ConfigSource::None);
        assert_eq!(config_source(false, None, None), ConfigSource::None);
        let missing = OsStr::new("/nonexistent/kubeconfig");
        assert_eq!(
            config_source(false, Some(missing), None),
            ConfigSource::None
        );
        assert_eq!(config_source(true, None, None), ConfigSource::InCluster);
    }

    #[tokio::test]
    async fn kubeconfig_builds_a_client() {
        let dir = std::env::temp_dir().join(format!("k8smeta-kc-{}", std::process::id()));
        std::fs::create_dir_all(dir.join(".kube")).unwrap();
        let path = dir.join(".kube").join("config");
        // https so that building the client exercises the rustls (ring) setup.
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\ncurrent-context: test\n\
             clusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:6443\n    insecure-skip-tls-verify: true\n\
             contexts:\n- name: test\n  context:\n    cluster: c\n    user: u\n    namespace: shop\n\
             users:\n- name: u\n  user:\n    token: abc\n",
        )
        .unwrap();
        let source = config_source(false, None, Some(&dir));
        assert_eq!(source, ConfigSource::Kubeconfig(vec![path.clone()]));
        let config = config_from_source(source).await.unwrap().unwrap();
        assert_eq!(config.cluster_url.to_string(), "https://127.0.0.1:6443/");
        assert_eq!(config.default_namespace, "shop");
        Client::try_from(config).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
