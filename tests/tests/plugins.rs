//! Plugins end to end: real probes, real traffic, a sampler and a route normalizer dropped into
//! the watched directory of a running tracer, then removed, with no restart.
use std::{
    fs,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::Duration,
};

use serde_json::Value;
use tracer_tests::*;

/// A plugin component from `cargo xtask build-plugins`.
fn component(name: &str) -> Option<Vec<u8>> {
    let p = workspace().join("target/plugins").join(name);
    let found = fs::read(&p).ok();
    require(
        &format!("{} (`cargo xtask build-plugins`)", p.display()),
        found.is_some(),
    )
    .then(|| found.unwrap())
}

fn chain_label(tracer: &Tracer) -> String {
    let (code, body) = tracer.admin("GET", "/plugins");
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("GET /plugins is JSON");
    v["chain"]["label"].as_str().unwrap_or_default().to_string()
}

fn status_code(s: &Value) -> u64 {
    attr_u64(s, "http.response.status_code").unwrap_or(0)
}

#[test]
fn dropping_a_sampler_in_changes_spans_live_and_removing_it_changes_them_back() {
    let Some(_g) = setup_with_curl() else { return };
    let (Some(sampler), Some(route)) = (
        component("keep-errors-sampler.wasm"),
        component("route-normalizer.wasm"),
    ) else {
        return;
    };
    let server = Server::test_server();
    let dir = TempDir::new("plugins");
    let tracer = Tracer::start(&[
        "--port",
        &server.port().to_string(),
        "--plugins-dir",
        &dir.path().display().to_string(),
    ]);
    assert_eq!(chain_label(&tracer), "");

    // Traffic runs the whole time, through every swap.
    let stop = Arc::new(AtomicBool::new(false));
    let background = {
        let (stop, url) = (stop.clone(), server.url("/status/204"));
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Relaxed) {
                assert_eq!(curl(&[&url]).http_code, 204);
                n += 1;
            }
            n
        })
    };
    let phase = |ok: u16, err: u16| {
        for _ in 0..3 {
            assert_eq!(curl(&[&server.url(&format!("/status/{ok}"))]).http_code, ok);
        }
        assert_eq!(
            curl(&[&server.url(&format!("/status/{err}"))]).http_code,
            err
        );
        // Each request's trace leaves the joiner when it has ended, so in request order, and
        // the error request came last: once its two spans are printed, the others of the
        // phase are through the chain too, before the next swap.
        assert!(
            wait_until(Duration::from_secs(10), || {
                let printed = tracer.printed();
                printed
                    .iter()
                    .filter(|s| status_code(s) == u64::from(err))
                    .count()
                    >= 2
            }),
            "the spans of /status/{err} were not printed:\n{}",
            tracer.stderr()
        );
    };

    phase(201, 500);
    // Drop both in, the sampler keeping only errors. Plain copies, as an operator would.
    fs::write(dir.join("10-route.wasm"), &route).unwrap();
    fs::write(dir.join("20-sample.toml"), "ratio = 0.0\n").unwrap();
    fs::write(dir.join("20-sample.wasm"), &sampler).unwrap();
    let mut label = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            label = chain_label(&tracer);
            label.contains("20-sample@")
        }),
        "the plugins were not loaded: {:?}",
        tracer.admin("GET", "/plugins")
    );
    assert!(label.starts_with("10-route@"), "{label}");
    phase(202, 501);
    fs::remove_file(dir.join("10-route.wasm")).unwrap();
    fs::remove_file(dir.join("20-sample.wasm")).unwrap();
    assert!(wait_until(Duration::from_secs(10), || chain_label(&tracer).is_empty()));
    phase(203, 502);

    stop.store(true, Relaxed);
    let background_requests = background.join().unwrap();
    let (_, metrics) = tracer.admin("GET", "/metrics");
    let spans = tracer.stop();

    let of =
        |code: u64| -> Vec<&Value> { spans.iter().filter(|s| status_code(s) == code).collect() };
    // Before and after: every request is a server and a client span, untouched.
    for code in [201, 500, 203, 502] {
        let n = if code >= 500 { 2 } else { 6 };
        let got = of(code);
        assert_eq!(got.len(), n, "status {code}: {got:#?}");
        assert!(
            got.iter()
                .all(|s| attr(s, "tracer.plugins.chain").is_null()
                    && attr(s, "http.route").is_null()),
            "status {code}"
        );
    }
    // While loaded: only the errors are kept, the server span routed and renamed, and both
    // name the chain that processed them.
    assert!(of(202).is_empty(), "the sampler dropped the 2xx spans");
    let kept = of(501);
    assert_eq!(kept.len(), 2, "{kept:#?}");
    for s in &kept {
        assert_eq!(attr_str(s, "tracer.plugins.chain"), Some(label.as_str()));
        if kind(s) == "SERVER" {
            assert_eq!(attr_str(s, "http.route"), Some("/status/{id}"));
            assert_eq!(s["name"], "GET /status/{id}");
        } else {
            assert!(attr(s, "http.route").is_null(), "client spans get no route");
        }
    }
    // The traffic that ran through the swaps: whole chain or none, never part of one.
    let bg = of(204);
    assert!(
        !bg.is_empty() && bg.len() < 2 * background_requests,
        "{} of {background_requests}",
        bg.len()
    );
    for s in &bg {
        let l = attr_str(s, "tracer.plugins.chain");
        assert!(l.is_none() || l == Some(label.as_str()), "{l:?}");
    }
    let dropped = metric(&metrics, "tracer_spans_plugin_dropped_total").unwrap_or(0.0);
    assert!(dropped >= 6.0, "{metrics}");
    assert!(
        metrics.contains("tracer_plugin_spans_dropped_total{plugin=\"20-sample\",version="),
        "{metrics}"
    );
}

/// The chain label and the whole answer of `GET /plugins`.
fn plugin_status(tracer: &Tracer) -> Value {
    let (code, body) = tracer.admin("GET", "/plugins");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("GET /plugins is JSON")
}

/// Policy changes reach the backend: a plugin dropped in, its config changed, and a rollback
/// by hand are spans of the tracer's own service at a real collector (rotel), and the request
/// spans name the chain and the settings version that produced them.
#[test]
fn policy_changes_arrive_at_the_collector_as_spans_of_the_tracer() {
    let Some(_g) = setup_with_curl() else { return };
    let agent = rotel_agent();
    if !require("rotel (pip install rotel)", agent.is_some()) {
        return;
    }
    let Some(enricher) = component("enricher.wasm") else {
        return;
    };
    let collector = Collector::start(&agent.unwrap());
    let server = Server::test_server();
    let dir = TempDir::new("policy-otlp");
    let endpoint = format!("http://127.0.0.1:{}", collector.http_port);
    let tracer = Tracer::start_with(
        &[
            "--port",
            &server.port().to_string(),
            "--plugins-dir",
            &dir.path().display().to_string(),
            "--otlp-endpoint",
            &endpoint,
        ],
        &[("OTEL_BSP_SCHEDULE_DELAY", "200")],
        false,
    );
    fs::write(dir.join("10-e.toml"), "[attributes]\nv = \"a\"\n").unwrap();
    fs::write(dir.join("10-e.wasm"), &enricher).unwrap();
    assert!(wait_until(Duration::from_secs(10), || chain_label(&tracer)
        .starts_with("10-e@")));
    let first = chain_label(&tracer);
    fs::write(dir.join("10-e.toml"), "[attributes]\nv = \"b\"\n").unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        let l = chain_label(&tracer);
        l.starts_with("10-e@") && l != first
    }));
    assert_eq!(
        plugin_status(&tracer)["rollback_to"]["10-e"],
        first.as_str()
    );
    let (code, body) = tracer.admin("POST", "/plugins/10-e/rollback");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(&format!("to {first}")), "{body}");
    assert_eq!(chain_label(&tracer), first);
    let (code, body) = tracer.admin("POST", "/plugins/10-e/rollback");
    assert_eq!(code, 422, "nothing left to go back to: {body}");
    assert_eq!(curl(&[&server.url("/status/200")]).http_code, 200);

    let (code, config) = tracer.admin("GET", "/config");
    assert_eq!(code, 200, "{config}");
    let config: Value = serde_json::from_str(&config).unwrap();
    let version = config["effective"]["version"].as_str().unwrap().to_string();
    assert_eq!(version.len(), 12, "{config:#}");
    assert_eq!(config["plugin_chain"], first.as_str());

    let want = [
        "tracer.reload.trigger: Str(file_watch)".to_string(),
        "tracer.reload.trigger: Str(rollback)".to_string(),
        "Kind           : SPAN_KIND_INTERNAL".to_string(),
        "-> url.path: Str(/status/200)".to_string(),
        format!("tracer.config.version: Str({version})"),
        format!("tracer.plugins.chain: Str({first})"),
    ];
    let arrived = wait_until(Duration::from_secs(15), || {
        let out = collector.output();
        want.iter().all(|w| out.contains(w.as_str()))
    });
    let out = collector.output();
    assert!(
        arrived,
        "missing at the collector: {:?}\n{out}",
        want.iter()
            .filter(|w| !out.contains(w.as_str()))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        out.matches("tracer.reload.trigger: Str(file_watch)")
            .count(),
        2,
        "one span per reload: {out}"
    );
    let (_, metrics) = tracer.admin("GET", "/metrics");
    for (trigger, n) in [("file_watch", 2.0), ("rollback", 1.0)] {
        let name = format!(
            "tracer_reload_duration_seconds_count{{trigger=\"{trigger}\",outcome=\"applied\"}}"
        );
        assert_eq!(metric(&metrics, &name), Some(n), "{name}:\n{metrics}");
    }
    assert!(metric(&metrics, "tracer_reload_last_success_timestamp_seconds").unwrap_or(0.0) > 1e9);
    tracer.stop();
}

/// Two tracers on one host (as on two nodes) with the same canary at 30 % pick the same
/// traces for it: each request's spans carry the same version in both.
#[test]
fn a_canary_picks_the_same_traces_in_two_tracers() {
    let Some(_g) = setup_with_curl() else { return };
    let Some(enricher) = component("enricher.wasm") else {
        return;
    };
    let server = Server::test_server();
    let dir = TempDir::new("canary-two");
    fs::write(dir.join("10-e.wasm"), &enricher).unwrap();
    fs::write(dir.join("10-e.toml"), "[attributes]\nv = \"stable\"\n").unwrap();
    fs::write(dir.join("10-e.canary.wasm"), &enricher).unwrap();
    fs::write(
        dir.join("10-e.canary.toml"),
        "[attributes]\nv = \"canary\"\n\n[tracer]\ncanary = 0.3\n",
    )
    .unwrap();
    let args = [
        "--port",
        &server.port().to_string(),
        "--plugins-dir",
        &dir.path().display().to_string(),
        "--no-tls",
    ];
    let (a, b) = (Tracer::start(&args), Tracer::start(&args));
    for t in [&a, &b] {
        let s = plugin_status(t);
        let roles: Vec<&str> = s["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["role"].as_str())
            .collect();
        assert_eq!(roles, ["stable", "canary"], "{s:#}");
    }
    const N: usize = 100;
    for i in 0..N {
        let tp = format!(
            "00-{:032x}-00f067aa0ba902b7-01",
            0xabc0_0000 + i as u128 * 7919
        );
        let c = curl(&[
            "-H",
            &format!("traceparent: {tp}"),
            &server.url("/status/200"),
        ]);
        assert_eq!(c.http_code, 200);
    }
    let servers = |t: &Tracer| -> Vec<Value> {
        t.printed()
            .into_iter()
            .filter(|s| kind(s) == "SERVER")
            .collect()
    };
    for t in [&a, &b] {
        assert!(
            wait_until(Duration::from_secs(15), || servers(t).len() >= N),
            "{} server spans:\n{}",
            servers(t).len(),
            t.stderr()
        );
    }
    let by_trace = |spans: Vec<Value>| -> std::collections::BTreeMap<String, String> {
        spans
            .iter()
            .map(|s| {
                (
                    s["trace_id"].as_str().unwrap().to_string(),
                    attr_str(s, "v").unwrap_or("none").to_string(),
                )
            })
            .collect()
    };
    let (va, vb) = (by_trace(servers(&a)), by_trace(servers(&b)));
    assert_eq!(va.len(), N);
    assert_eq!(
        va, vb,
        "the two tracers disagree on which traces the canary takes"
    );
    let canary = va.values().filter(|v| *v == "canary").count();
    assert!(
        (10..=50).contains(&canary),
        "{canary} of {N} traces took the canary"
    );
    assert_eq!(va.values().filter(|v| *v == "stable").count(), N - canary);
    a.stop();
    b.stop();
}
