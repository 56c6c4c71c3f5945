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
