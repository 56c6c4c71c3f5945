//! PodCache against a recorded-response API server (tests/mock_api): the real kube client,
//! watcher and owner lookups run; no cluster is needed.

#[path = "k8s/mock_api/mod.rs"]
mod mock_api;

use std::time::{Duration, Instant};

use mock_api::{MockApi, fixture, pod, pod_list};
use tracer_user::metadata::k8s::{PodCache, WorkloadKind};

const WEB_APP: &str = "6d325b55e6f8a210cfed11630debfab37e3b57b82f27781da9a9b9f017725739";
const WEB_SIDECAR: &str = "235fe5bdcd1aeb9e5d90edcd3046bcf041307460373c08058d7b1dff8ac76a44";
const WEB_INIT: &str = "80211297a41541d0b402ce92a278b435bfb530562f7d3b6928069e3e262adaa2";
const DB: &str = "051edc352802054c13941cca0ff90e18555a94fbb31ffc8b5f4406ff484d4adb";
const DB_INIT: &str = "d8d90cb2e553f75de77579d426cf68fc65a93c4fb11d54d29ccd7bbec4e6f96c";
const EXPORTER: &str = "30a5dd7e54f7634fa897ae0838e18718bdc71cbbcc236bde318ee255335e6942";
const BACKUP: &str = "c656ac42d0aba1eec9bce2f4e363ae53e775d6122c3aaa4b45b4bcf583188857";
const SHELL: &str = "d1e0ea7e4bb14a442a2ff65a78729f99562709393ce3ba25ac8aa1308ac2499a";
const DEBUGGER: &str = "72df8ae4ef53a4b68cfc20e7fb88e31b1ecd3869b34f25e05a41aeceacc5fc3e";
const LEGACY: &str = "f2d93d89c9fbb2e835b7bcfe09dbea4b4d0a8cc73c8dbbaccf45db2294239027";
const API: &str = "2c7b34c98228a4a3d49ac1be9dbc2693a72e5932d38f2a06d8575c7df6ce62e2";
const WORKER: &str = "1254db15a7c043affb8a83b6377486c8da4135e94dbd55c8ddeab00119300ef6";
const LATE: &str = "ee3db69409151b19c5561be0520b77a93df89f453bf7901c89a90c2b17bd1858";

const WEB_UID: &str = "fd3165bc-b7a7-442e-ba45-820c0aaddca2";
const API_UID: &str = "80415925-b494-446e-9f59-9f9252a18bc1";
const CACHE_UID: &str = "1c68e03d-c796-4873-bf3d-7d40f3938ef6";
const SHELL_UID: &str = "341df255-4f91-4944-a753-36e7e6bf995d";

const ALL_LISTED: [&str; 7] = [
    "web-7d4b9c8f6d-x2x9q",
    "db-0",
    "node-exporter-x7k2p",
    "backup-28930140-kq7zj",
    "debug-shell",
    "legacy-5f6c7d8e9f-abcde",
    "cache-0",
];

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn client(mock: &MockApi) -> kube::Client {
    let config = kube::Config::new(mock.url().parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

fn spawn(mock: &MockApi, max_pods: usize) -> PodCache {
    let labels = vec![
        "team".to_owned(),
        "app.kubernetes.io/name".to_owned(),
        "not-there".to_owned(),
    ];
    PodCache::spawn(client(mock), "node-a".to_owned(), labels, max_pods)
}

/// Polls `cond` until it holds or 10 s pass.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn workload(cache: &PodCache, id: &str) -> Option<(WorkloadKind, String)> {
    cache.by_container_id(id).and_then(|m| m.workload.clone())
}

fn wl(kind: WorkloadKind, name: &str) -> Option<(WorkloadKind, String)> {
    Some((kind, name.to_owned()))
}

fn assert_node_selector(mock: &MockApi) {
    let reqs = mock.pod_requests();
    assert!(!reqs.is_empty());
    for r in reqs {
        assert!(r.contains("fieldSelector=spec.nodeName=node-a"), "{r}");
    }
}

#[tokio::test]
async fn initial_list_then_lookups() {
    init_logs();
    let pods = ALL_LISTED.iter().map(|n| pod(n, 990)).collect();
    let objects = vec![
        fixture("objects/replicaset-web-7d4b9c8f6d.json"),
        fixture("objects/job-backup-28930140.json"),
    ];
    let mock = MockApi::start(vec![pod_list(1000, pods)], objects).await;
    let _feed = mock.feed(); // an idle watch
    let cache = spawn(&mock, 100);

    eventually("synced", || cache.is_synced()).await;
    eventually("watch started", || mock.pod_requests().len() >= 2).await;
    let reqs = mock.pod_requests();
    assert!(!reqs[0].contains("watch=true"), "first a list: {}", reqs[0]);
    assert!(reqs[1].contains("watch=true"), "{}", reqs[1]);
    assert!(reqs[1].contains("resourceVersion=1000"), "{}", reqs[1]);
    assert_node_selector(&mock);

    // Every runtime prefix, init and ephemeral containers.
    let app = cache.by_container_id(WEB_APP).unwrap();
    assert_eq!(app.pod_name, "web-7d4b9c8f6d-x2x9q");
    assert_eq!(app.pod_uid, WEB_UID);
    assert_eq!(app.namespace, "shop");
    assert_eq!(app.node_name, "node-a");
    assert_eq!(app.container_name, "web");
    assert_eq!(app.app_name.as_deref(), Some("web"));
    assert_eq!(
        app.labels,
        vec![
            ("team".to_owned(), "payments".to_owned()),
            ("app.kubernetes.io/name".to_owned(), "web".to_owned()),
        ]
    );
    assert_eq!(
        cache.by_container_id(WEB_SIDECAR).unwrap().container_name,
        "istio-proxy"
    );
    assert_eq!(
        cache.by_container_id(WEB_INIT).unwrap().container_name,
        "istio-init"
    );
    assert_eq!(
        cache.by_container_id(DB).unwrap().container_name,
        "postgres"
    ); // cri-o://
    assert_eq!(
        cache.by_container_id(DB_INIT).unwrap().container_name,
        "init-perms"
    );
    assert_eq!(
        cache.by_container_id(EXPORTER).unwrap().namespace,
        "monitoring"
    ); // docker://
    assert_eq!(
        cache.by_container_id(DEBUGGER).unwrap().container_name,
        "debugger-8kq2d"
    );
    assert_eq!(cache.by_container_id(SHELL).unwrap().labels, vec![]);
    assert!(cache.by_container_id(&"0".repeat(64)).is_none());

    // Workloads: direct owners at once, looked-up ones once the GET answered.
    assert_eq!(workload(&cache, DB), wl(WorkloadKind::StatefulSet, "db"));
    assert_eq!(
        workload(&cache, EXPORTER),
        wl(WorkloadKind::DaemonSet, "node-exporter")
    );
    assert_eq!(workload(&cache, SHELL), None);
    eventually("deployment resolved", || {
        workload(&cache, WEB_APP) == wl(WorkloadKind::Deployment, "web")
    })
    .await;
    assert_eq!(
        workload(&cache, WEB_INIT),
        wl(WorkloadKind::Deployment, "web")
    );
    eventually("cronjob resolved", || {
        workload(&cache, BACKUP) == wl(WorkloadKind::CronJob, "backup")
    })
    .await;
    // The legacy ReplicaSet 404s: it is reported itself and the failure counted.
    eventually("legacy lookup failed", || {
        cache.stats().owner_lookup_failures == 1
    })
    .await;
    assert_eq!(
        workload(&cache, LEGACY),
        wl(WorkloadKind::ReplicaSet, "legacy-5f6c7d8e9f")
    );
    let reqs = mock.requests();
    assert!(reqs.contains(&"/apis/apps/v1/namespaces/shop/replicasets/web-7d4b9c8f6d".to_owned()));
    assert!(reqs.contains(&"/apis/batch/v1/namespaces/ops/jobs/backup-28930140".to_owned()));
    assert!(
        reqs.contains(&"/apis/apps/v1/namespaces/shop/replicasets/legacy-5f6c7d8e9f".to_owned())
    );

    // A pending pod (no container ids yet) is known by uid only.
    assert_eq!(
        cache.by_pod_uid(CACHE_UID),
        Some(("cache-0".to_owned(), "shop".to_owned()))
    );
    let stats = cache.stats();
    assert_eq!(stats.pods, 7);
    assert_eq!(stats.containers, 10);
    assert_eq!(stats.owner_lookups, 3);
    assert_eq!(stats.owner_lookup_failures, 1);
    assert_eq!(stats.watch_restarts, 0);
    assert_eq!(stats.relists, 0);
}

#[tokio::test]
async fn pod_churn_follows_watch_events() {
    init_logs();
    let objects = vec![
        fixture("objects/replicaset-web-7d4b9c8f6d.json"),
        fixture("objects/replicaset-api-6c9d8b7f5.json"),
    ];
    let list = pod_list(1000, vec![pod("web-7d4b9c8f6d-x2x9q", 990)]);
    let mock = MockApi::start(vec![list], objects).await;
    let feed = mock.feed();
    let cache = spawn(&mock, 100);
    eventually("synced", || cache.is_synced()).await;

    // ADDED while still pending: known by uid, no containers yet.
    feed.event("ADDED", pod("api-6c9d8b7f5-qwert.pending", 1001));
    eventually("api pod added", || cache.by_pod_uid(API_UID).is_some()).await;
    assert!(cache.by_container_id(API).is_none());

    // MODIFIED once running: its container appears, its Deployment gets resolved.
    feed.event("MODIFIED", pod("api-6c9d8b7f5-qwert", 1002));
    eventually("api container", || {
        workload(&cache, API) == wl(WorkloadKind::Deployment, "api")
    })
    .await;
    assert_eq!(
        cache.by_container_id(API).unwrap().app_name.as_deref(),
        Some("api")
    );

    // A container restart changes the id: the old one must not linger.
    let mut restarted = pod("web-7d4b9c8f6d-x2x9q", 1003);
    let new_id = "14c608110edd020d7cef3f65f49476b1443a6c26a806b2f759b8d18f6a336f8a";
    restarted["status"]["containerStatuses"][0]["containerID"] =
        format!("containerd://{new_id}").into();
    feed.event("MODIFIED", restarted);
    eventually("restarted container", || {
        cache.by_container_id(new_id).is_some()
    })
    .await;
    assert!(cache.by_container_id(WEB_APP).is_none());
    assert!(cache.by_container_id(WEB_SIDECAR).is_some());

    feed.event("DELETED", pod("web-7d4b9c8f6d-x2x9q", 1004));
    eventually("web deleted", || cache.by_pod_uid(WEB_UID).is_none()).await;
    for id in [new_id, WEB_SIDECAR, WEB_INIT] {
        assert!(cache.by_container_id(id).is_none());
    }
    let stats = cache.stats();
    assert_eq!((stats.pods, stats.containers), (1, 1));
    // One GET per ReplicaSet, however many events its pods get.
    assert_eq!(stats.owner_lookups, 2);

    // The server ends the watch cleanly (its timeoutSeconds): resumed from the last version.
    let feed2 = mock.feed();
    feed.end();
    eventually("re-watch from 1004", || {
        mock.pod_requests()
            .iter()
            .any(|r| r.contains("watch=true") && r.contains("resourceVersion=1004"))
    })
    .await;
    feed2.event("DELETED", pod("api-6c9d8b7f5-qwert", 1005));
    eventually("api deleted", || cache.stats().pods == 0).await;
    assert!(cache.by_container_id(API).is_none());
    assert_eq!(cache.stats().relists, 0);
    assert_node_selector(&mock);
}

#[tokio::test]
async fn watch_breaks_and_resumes_with_relist() {
    init_logs();
    let objects = vec![
        fixture("objects/replicaset-web-7d4b9c8f6d.json"),
        fixture("objects/replicaset-api-6c9d8b7f5.json"),
        fixture("objects/replicaset-worker-7b8c9d6f4.json"),
    ];
    let first = pod_list(
        1000,
        vec![pod("web-7d4b9c8f6d-x2x9q", 990), pod("debug-shell", 990)],
    );
    // After the 410: debug-shell was deleted and late-static-node-a created meanwhile.
    let relisted = pod_list(
        1850,
        vec![
            pod("web-7d4b9c8f6d-x2x9q", 990),
            pod("api-6c9d8b7f5-qwert", 1001),
            pod("worker-7b8c9d6f4-zz9lm", 1005),
            pod("late-static-node-a", 1840),
        ],
    );
    let mock = MockApi::start(vec![first, relisted], objects).await;
    let watch1 = mock.feed();
    let watch2 = mock.feed();
    let _watch3 = mock.feed(); // idle after the relist
    let cache = spawn(&mock, 100);
    eventually("synced", || cache.is_synced()).await;

    // 1. The connection drops mid-stream: the watcher resumes from the last resourceVersion.
    watch1.event("ADDED", pod("api-6c9d8b7f5-qwert", 1001));
    eventually("api added", || cache.by_container_id(API).is_some()).await;
    watch1.abort();
    eventually("re-watch", || mock.pod_requests().len() >= 3).await;
    assert!(
        cache.by_container_id(WEB_APP).is_some(),
        "lookups work while broken"
    );
    let rewatch = &mock.pod_requests()[2];
    assert!(rewatch.contains("watch=true"), "{rewatch}");
    assert!(rewatch.contains("resourceVersion=1001"), "{rewatch}");
    // kube-client ends the stream on EOF and the watcher re-watches at once: no error.
    assert_eq!(cache.stats().watch_restarts, 0);

    // A pod created during the break arrives on the resumed watch.
    watch2.event("ADDED", pod("worker-7b8c9d6f4-zz9lm", 1005));
    eventually("worker found", || {
        workload(&cache, WORKER) == wl(WorkloadKind::Deployment, "worker")
    })
    .await;

    // 2. The resourceVersion expired: 410 Gone -> relist, which also drops deleted pods.
    watch2.gone();
    eventually("relisted", || cache.stats().relists == 1).await;
    eventually("late pod found", || cache.by_container_id(LATE).is_some()).await;
    eventually("deleted pod gone", || cache.by_pod_uid(SHELL_UID).is_none()).await;
    assert!(cache.by_container_id(SHELL).is_none());
    assert!(cache.by_container_id(WEB_APP).is_some());
    assert!(cache.by_container_id(API).is_some());
    assert!(cache.by_container_id(WORKER).is_some());
    // A Node-owned (static) pod has no workload.
    assert_eq!(workload(&cache, LATE), None);
    eventually("watch after relist", || {
        mock.pod_requests()
            .iter()
            .any(|r| r.contains("watch=true") && r.contains("resourceVersion=1850"))
    })
    .await;

    let stats = cache.stats();
    assert_eq!(stats.pods, 4);
    assert_eq!((stats.watch_restarts, stats.relists), (1, 1), "{stats:?}");
    let lists = mock
        .pod_requests()
        .into_iter()
        .filter(|r| !r.contains("watch=true"))
        .count();
    assert_eq!(lists, 2);
    assert_node_selector(&mock);
}

#[tokio::test]
async fn max_pods_is_respected() {
    init_logs();
    let pods = ALL_LISTED.iter().map(|n| pod(n, 990)).collect();
    let mock = MockApi::start(vec![pod_list(1000, pods)], vec![]).await;
    let feed = mock.feed();
    let cache = spawn(&mock, 3);
    eventually("synced", || cache.is_synced()).await;
    let stats = cache.stats();
    assert_eq!((stats.pods, stats.pods_dropped), (3, 4));
    // The first pods listed are kept.
    assert!(cache.by_container_id(WEB_APP).is_some());
    assert!(cache.by_container_id(EXPORTER).is_some());
    assert!(cache.by_container_id(BACKUP).is_none());

    feed.event("ADDED", pod("worker-7b8c9d6f4-zz9lm", 1001));
    eventually("dropped", || cache.stats().pods_dropped == 5).await;
    assert_eq!(cache.stats().pods, 3);

    // Deleting frees room for the next pod.
    feed.event("DELETED", pod("db-0", 1002));
    feed.event("ADDED", pod("late-static-node-a", 1003));
    eventually("late pod admitted", || {
        cache.by_container_id(LATE).is_some()
    })
    .await;
    assert!(cache.by_container_id(DB).is_none());
    assert_eq!(cache.stats().pods, 3);
}

/// A containerized process's resource: its pod's k8s.* attributes, and service.name from
/// OTEL_SERVICE_NAME, else app.kubernetes.io/name, else the workload.
#[tokio::test]
async fn resources_of_containerized_processes_get_pod_metadata() {
    use tracer_user::{process::Processes, span::Value};
    init_logs();
    let pods = ALL_LISTED.iter().map(|n| pod(n, 990)).collect();
    let objects = vec![fixture("objects/replicaset-web-7d4b9c8f6d.json")];
    let mock = MockApi::start(vec![pod_list(1000, pods)], objects).await;
    let _feed = mock.feed();
    let cache = spawn(&mock, 100);
    eventually("synced", || cache.is_synced()).await;
    eventually("deployment resolved", || {
        workload(&cache, WEB_APP).is_some_and(|w| w.0 == WorkloadKind::Deployment)
    })
    .await;

    // A fake /proc: the web container's process (with and without OTEL_SERVICE_NAME), a
    // StatefulSet's process without the app label, and a host process.
    let root = std::env::temp_dir().join(format!("tracer-pods-proc-{}", std::process::id()));
    let proc = |pid: u32, id: &str, env: &str| {
        let d = root.join(pid.to_string());
        std::fs::create_dir_all(&d).unwrap();
        let cgroup = if id.is_empty() {
            "0::/user.slice/session-1.scope\n".to_string()
        } else {
            format!(
                "0::/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{id}.scope\n",
                WEB_UID.replace('-', "_")
            )
        };
        std::fs::write(d.join("cgroup"), cgroup).unwrap();
        std::fs::write(d.join("environ"), env).unwrap();
    };
    proc(10, WEB_APP, "");
    proc(11, WEB_APP, "OTEL_SERVICE_NAME=checkout\0");
    proc(12, DB, "");
    proc(13, "", "");
    let mut procs = Processes::new(&root, vec![]).with_pods(cache.clone());
    let attr = |r: &tracer_user::span::Resource, k: &str| {
        r.attributes
            .iter()
            .find(|a| a.key == k)
            .map(|a| a.value.to_string())
    };

    let web = procs.resource(10, "web");
    assert_eq!(web.service_name, "web", "app.kubernetes.io/name");
    assert_eq!(
        attr(&web, "k8s.pod.name").as_deref(),
        Some("web-7d4b9c8f6d-x2x9q")
    );
    assert_eq!(attr(&web, "k8s.namespace.name").as_deref(), Some("shop"));
    assert_eq!(attr(&web, "k8s.node.name").as_deref(), Some("node-a"));
    assert_eq!(attr(&web, "k8s.container.name").as_deref(), Some("web"));
    assert_eq!(attr(&web, "k8s.pod.uid").as_deref(), Some(WEB_UID));
    assert_eq!(attr(&web, "k8s.deployment.name").as_deref(), Some("web"));
    assert_eq!(attr(&web, "container.id").as_deref(), Some(WEB_APP));
    assert!(
        web.attributes
            .iter()
            .filter(|a| a.key == "k8s.pod.uid")
            .count()
            == 1
    );
    assert_eq!(
        procs.resource(11, "web").service_name,
        "checkout",
        "the process's own OTEL_SERVICE_NAME wins"
    );
    let db = procs.resource(12, "postgres");
    assert_eq!(attr(&db, "k8s.statefulset.name").as_deref(), Some("db"));
    let host = procs.resource(13, "curl");
    assert_eq!(host.service_name, "curl");
    assert!(host.attributes.iter().all(|a| !a.key.starts_with("k8s.")));
    assert!(matches!(
        host.attributes
            .iter()
            .find(|a| a.key == "process.pid")
            .map(|a| &a.value),
        Some(Value::Int(13))
    ));
    let _ = std::fs::remove_dir_all(&root);
}
