//! The plugin host with real plugin components (built by `cargo xtask build-plugins`): loading,
//! swapping under load, refusing bad files, and containing hostile plugins. No root needed.
use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::Duration,
};

use tracer_user::{
    metrics::Registry,
    plugins::{
        self, CHAIN_ATTRIBUTE, OnFailure, PluginError, PluginHost, Settings, content_hash, samples,
    },
    span::{Span, Value},
};

/// A built plugin component, or None (with the reason printed) outside CI.
fn built(rel: &str) -> Option<Vec<u8>> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/plugins")
        .join(rel);
    match std::fs::read(&p) {
        Ok(b) => Some(b),
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!(
                "{}: {e}; `cargo xtask build-plugins` builds it",
                p.display()
            )
        }
        Err(e) => {
            eprintln!(
                "SKIP: {}: {e} (run `cargo xtask build-plugins` first)",
                p.display()
            );
            None
        }
    }
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tracer-plugins-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// A host on `dir` counting into `reg`.
fn host_in(dir: &Path, reg: &Registry) -> PluginHost {
    PluginHost::new(
        Settings {
            dir: Some(dir.to_owned()),
            ..Default::default()
        },
        reg,
    )
    .unwrap()
}

fn host(dir: &Path) -> PluginHost {
    host_in(dir, &Registry::default())
}

fn attr<'a>(s: &'a Span, k: &str) -> Option<&'a str> {
    match s.attr(k)? {
        Value::Str(v) => Some(v),
        _ => None,
    }
}

/// `n` sample spans with unique span ids starting at `first`.
fn spans(first: u64, n: usize) -> Vec<Span> {
    let base = samples();
    (0..n)
        .map(|i| {
            let mut s = base[i % base.len()].clone();
            s.span_id = (first + i as u64).to_be_bytes();
            s
        })
        .collect()
}

#[test]
fn enricher_edits_spans_and_names_the_chain_version() {
    let Some(wasm) = built("enricher.wasm") else {
        return;
    };
    let d = tmpdir("enrich");
    let cfg = "[attributes]\n\"deployment.environment\" = \"prod\"\n";
    write(&d, "10-enricher.wasm", &wasm);
    write(&d, "10-enricher.toml", cfg.as_bytes());
    let reg = Registry::default();
    let h = host_in(&d, &reg);
    let r = h.reload_dir();
    assert!(r.rejected.is_empty(), "{:?}", r.rejected);
    assert_eq!(r.swapped_to, Some(1));
    let mut batch = spans(0, 10);
    h.process(&mut batch);
    assert_eq!(batch.len(), 10);
    let label = format!("10-enricher@{}", content_hash(&wasm, cfg));
    for s in &batch {
        assert_eq!(attr(s, "deployment.environment"), Some("prod"));
        assert_eq!(attr(s, CHAIN_ATTRIBUTE), Some(label.as_str()));
    }
    // Nothing changed: a reload keeps the running instance and does not swap.
    assert_eq!(h.reload_dir().swapped_to, None);
    // Deleting the file unloads it: spans go through untouched.
    std::fs::remove_file(d.join("10-enricher.wasm")).unwrap();
    let r = h.reload_dir();
    assert_eq!(r.unloaded, [label]);
    let mut batch = spans(100, 3);
    h.process(&mut batch);
    assert!(
        batch.iter().all(
            |s| s.attr(CHAIN_ATTRIBUTE).is_none() && s.attr("deployment.environment").is_none()
        )
    );
    let text = reg.prometheus();
    assert!(
        text.contains("tracer_plugin_spans_edited_total{plugin=\"10-enricher\"} 10\n"),
        "{text}"
    );
    assert!(text.contains("tracer_plugin_calls_total{plugin=\"10-enricher\"} 1\n"));
    std::fs::remove_dir_all(&d).unwrap();
}

/// 100 swaps of a three-plugin chain (enricher, sampler, enricher) between versions A and B
/// while batches flow: every span comes out exactly once or is dropped by the sampler
/// (counted), and each names one whole version (both enrichers A, or both B).
#[test]
fn swapping_under_load_loses_nothing_and_never_mixes_versions() {
    let (Some(wasm), Some(sampler)) = (built("enricher.wasm"), built("ratio-sampler.wasm")) else {
        return;
    };
    let d = tmpdir("swap");
    let cfg = |k: &str, v: &str| format!("overwrite = true\n[attributes]\n{k} = \"{v}\"\n");
    let ratio = "ratio = 0.5\n";
    write(&d, "10-first.wasm", &wasm);
    write(&d, "15-sample.wasm", &sampler);
    write(&d, "15-sample.toml", ratio.as_bytes());
    write(&d, "20-second.wasm", &wasm);
    let set = |v: &str| {
        write(&d, "10-first.toml", cfg("first", v).as_bytes());
        write(&d, "20-second.toml", cfg("second", v).as_bytes());
    };
    set("A");
    let h = Arc::new(host(&d));
    assert_eq!(h.reload_dir().swapped_to, Some(1));
    let label = |v: &str| {
        format!(
            "10-first@{},15-sample@{},20-second@{}",
            content_hash(&wasm, &cfg("first", v)),
            content_hash(&sampler, ratio),
            content_hash(&wasm, &cfg("second", v))
        )
    };
    let labels: HashMap<String, &str> = [(label("A"), "A"), (label("B"), "B")].into();

    let done = Arc::new(AtomicBool::new(false));
    let producer = {
        let (h, done) = (h.clone(), done.clone());
        std::thread::spawn(move || {
            let (mut out, mut made) = (Vec::new(), 0u64);
            while !done.load(Relaxed) {
                let mut batch = spans(made, 64);
                for (i, s) in batch.iter_mut().enumerate() {
                    // Distinct traces, so the sampler keeps about half.
                    s.trace_id[8..].copy_from_slice(
                        &(made + i as u64)
                            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                            .to_be_bytes(),
                    );
                }
                made += 64;
                h.process(&mut batch);
                out.extend(batch);
            }
            (out, made)
        })
    };
    for i in 0..100 {
        set(if i % 2 == 0 { "B" } else { "A" });
        let r = h.reload_dir();
        assert!(r.rejected.is_empty(), "{:?}", r.rejected);
        assert!(r.swapped_to.is_some(), "swap {i} did not happen");
        std::thread::sleep(Duration::from_millis(2));
    }
    done.store(true, Relaxed);
    let (out, made) = producer.join().unwrap();

    let dropped = h.metrics.spans_dropped.get();
    assert_eq!(
        out.len() as u64 + dropped,
        made,
        "every span exported or dropped by the sampler"
    );
    assert!(
        dropped > made / 4 && dropped < made * 3 / 4,
        "{dropped} of {made}"
    );
    let ids: HashSet<[u8; 8]> = out.iter().map(|s| s.span_id).collect();
    assert_eq!(ids.len(), out.len(), "a span came out twice");
    let mut seen = HashMap::new();
    for s in &out {
        let l = attr(s, CHAIN_ATTRIBUTE).expect("every span names its chain");
        let v = labels
            .get(l)
            .unwrap_or_else(|| panic!("unknown chain label {l}: {:#}", h.status()));
        assert_eq!(
            (attr(s, "first"), attr(s, "second")),
            (Some(*v), Some(*v)),
            "span processed by a mix of versions under {l}"
        );
        *seen.entry(*v).or_insert(0u64) += 1;
    }
    assert_eq!(seen.len(), 2, "both versions processed spans: {seen:?}");
    assert_eq!(h.metrics.reloads.get(), 101);
    assert_eq!(h.chain().version, 101);
    eprintln!("{made} spans through 101 chain versions: {dropped} sampled out, kept {seen:?}");
    std::fs::remove_dir_all(&d).unwrap();
}

/// `tracer plugins check` on a good plugin: its id, interest and what it did to each sample.
#[test]
fn check_shows_what_a_plugin_does_to_the_samples() {
    let Some(wasm) = built("enricher.wasm") else {
        return;
    };
    let d = tmpdir("check");
    let cfg = "[attributes]\nteam = \"shop\"\n";
    write(&d, "10-enricher.wasm", &wasm);
    write(&d, "10-enricher.toml", cfg.as_bytes());
    let r = plugins::check::check(
        &d.join("10-enricher.wasm"),
        Some(&d.join("10-enricher.toml")),
    )
    .unwrap();
    assert!(r.warnings.is_empty());
    let p = r.verdict.as_ref().unwrap();
    assert_eq!(p.id, format!("10-enricher@{}", content_hash(&wasm, cfg)));
    assert_eq!(p.samples.len(), samples().len());
    let text = r.to_string();
    assert!(
        text.starts_with(&format!(
            "OK {}: implements tracer:plugin@0.2.0; sees span attributes",
            p.id
        )),
        "{text}"
    );
    assert_eq!(
        text.matches("  out:  kept, +team=shop\n").count(),
        samples().len(),
        "{text}"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

/// A plugin built for contract 0.1.0 (before the packed batch) loads and runs next to 0.2.0
/// ones, and `check` and `/plugins` name the version each was built for.
#[test]
fn plugins_built_for_contract_0_1_0_still_run() {
    let (Some(old), Some(new)) = (built("testing/v01-sampler.wasm"), built("enricher.wasm")) else {
        return;
    };
    let d = tmpdir("v01");
    write(&d, "10-old.wasm", &old);
    write(&d, "20-new.wasm", &new);
    write(
        &d,
        "20-new.toml",
        b"[attributes]
team = \"shop\"\n",
    );
    let h = host(&d);
    let r = h.reload_dir();
    assert!(r.rejected.is_empty(), "{:?}", r.rejected);
    let mut batch = samples();
    h.process(&mut batch);
    // The samples are two server spans, a client span and another server span.
    assert_eq!(batch.len(), samples().len() - 1);
    for s in &batch {
        assert_eq!(attr(s, "v01.name"), Some(s.name.as_str()), "{s:?}");
        assert_eq!(attr(s, "team"), Some("shop"));
    }
    let status = h.status();
    let contracts: Vec<_> = status["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["contract"].as_str().unwrap())
        .collect();
    assert_eq!(contracts, ["tracer:plugin@0.1.0", "tracer:plugin@0.2.0"]);
    let text = plugins::check::check(&d.join("10-old.wasm"), None)
        .unwrap()
        .to_string();
    assert!(
        text.contains(": implements tracer:plugin@0.1.0; sees span attributes [], resource attributes [], span names\n"),
        "{text}"
    );
    assert_eq!(text.matches("  out:  DROPPED\n").count(), 1, "{text}");
    std::fs::remove_dir_all(&d).unwrap();
}

/// The failure policy: the operator's `[tracer] on-failure`, else what the plugin declares (the
/// redactor: drop), else the tracer's default.
#[test]
fn the_failure_policy_is_the_configs_then_the_plugins_then_the_default() {
    let (Some(redactor), Some(enricher)) = (built("redactor.wasm"), built("enricher.wasm")) else {
        return;
    };
    let redact = "remove = [\"*token*\"]\n";
    let enrich = "[attributes]\nteam = \"shop\"\n";
    let pass = "[tracer]\non-failure = \"pass\"\n";
    for (fail_closed, wasm, cfg, want) in [
        (false, &redactor, redact.to_string(), OnFailure::Drop),
        (false, &redactor, format!("{redact}{pass}"), OnFailure::Pass),
        (false, &enricher, enrich.to_string(), OnFailure::Pass),
        (true, &enricher, enrich.to_string(), OnFailure::Drop),
    ] {
        let h = PluginHost::new(
            Settings {
                fail_closed,
                ..Default::default()
            },
            &Registry::default(),
        )
        .unwrap();
        let p = h.load("p", Path::new("p"), wasm, &cfg).unwrap();
        assert_eq!(p.on_failure, want, "{cfg} (fail closed: {fail_closed})");
    }
}

/// A component built for a WIT world (with dummy function bodies).
fn component_for(wit: &str) -> Vec<u8> {
    let mut resolve = wit_parser::Resolve::default();
    let pkg = resolve.push_str("test.wit", wit).unwrap();
    let world = resolve.select_world(&[pkg], None).unwrap();
    let mut module =
        wit_component::dummy_module(&resolve, world, wit_parser::ManglingAndAbi::Standard32);
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
        false,
    )
    .unwrap();
    wit_component::ComponentEncoder::default()
        .module(&module)
        .unwrap()
        .validate(true)
        .encode()
        .unwrap()
}

/// Bad files are refused with a reason, counted, and the running chain keeps working.
#[test]
fn bad_files_are_refused_and_the_last_good_chain_stays() {
    let Some(wasm) = built("enricher.wasm") else {
        return;
    };
    let d = tmpdir("bad");
    let cfg = b"[attributes]\ngood = \"yes\"\n";
    write(&d, "10-good.wasm", &wasm);
    write(&d, "10-good.toml", cfg);
    let h = host(&d);
    assert_eq!(h.reload_dir().swapped_to, Some(1));
    let ours = include_str!("../../plugins/wit/plugin.wit");
    type Kind = fn(&PluginError) -> bool;
    let cases: Vec<(&str, Vec<u8>, &str, Kind)> = vec![
        (
            "text",
            b"hello, I am not wasm".to_vec(),
            "not a WebAssembly file",
            |e| matches!(e, PluginError::NotWasm),
        ),
        ("empty", Vec::new(), "not a WebAssembly file", |e| {
            matches!(e, PluginError::NotWasm)
        }),
        (
            "truncated",
            wasm[..wasm.len() / 2].to_vec(),
            "not a valid component",
            |e| matches!(e, PluginError::Corrupt(_)),
        ),
        (
            "core-module",
            b"\0asm\x01\0\0\0".to_vec(),
            "core WebAssembly module",
            |e| matches!(e, PluginError::CoreModule),
        ),
        (
            "newer-contract",
            component_for(&ours.replace("@0.2.0", "@0.3.0")),
            "another contract version (tracer:plugin/host@0.3.0); this tracer implements \
             tracer:plugin@0.2.0 and tracer:plugin@0.1.0",
            |e| matches!(e, PluginError::OtherContract { .. }),
        ),
        (
            "other-world",
            component_for("package other:thing;\nworld w { export run: func(); }\n"),
            "does not implement the plugin contract, tracer:plugin@0.2.0 and tracer:plugin@0.1.0",
            |e| matches!(e, PluginError::NotAPlugin { .. }),
        ),
    ];
    for (i, (name, bytes, why, kind)) in cases.iter().enumerate() {
        let file = format!("20-{name}.wasm");
        write(&d, &file, bytes);
        let r = h.reload_dir();
        assert_eq!(r.rejected.len(), 1, "{name}: {r:?}");
        let refused = &r.rejected[0].1;
        assert!(refused.to_string().contains(why), "{name}: {refused}");
        assert!(kind(refused), "{name}: {refused:?}");
        assert_eq!(r.swapped_to, None, "{name}: the chain must not change");
        assert_eq!(h.metrics.reload_failures.get(), i as u64 + 1);
        // The same bad content is not retried at every scan.
        assert!(h.reload_dir().rejected.is_empty());
        let mut batch = spans(0, 4);
        h.process(&mut batch);
        assert!(
            batch.iter().all(|s| attr(s, "good") == Some("yes")),
            "{name}"
        );
        std::fs::remove_file(d.join(&file)).unwrap();
    }
    // A failing init (bad config) is refused with the plugin's own message...
    write(&d, "30-conf.wasm", &wasm);
    write(&d, "30-conf.toml", b"colour = 1\n");
    let r = h.reload_dir();
    assert!(
        matches!(&r.rejected[0].1, PluginError::ConfigRefused(_))
            && r.rejected[0]
                .1
                .to_string()
                .contains("init refused the config: invalid config"),
        "{:?}",
        r.rejected
    );
    // ...and a replaced good version of a running plugin keeps the old one running.
    write(&d, "10-good.toml", b"[attributes]\n");
    let r = h.reload_dir();
    assert!(
        r.rejected
            .iter()
            .any(|(n, why)| n == "10-good" && why.to_string().contains("nothing to add")),
        "{r:?}"
    );
    let mut batch = spans(0, 2);
    h.process(&mut batch);
    assert!(batch.iter().all(|s| attr(s, "good") == Some("yes")));
    let status = h.status();
    assert_eq!(status["plugins"][0]["name"], "10-good");
    assert_eq!(
        status["not_running"].as_array().unwrap().len(),
        2,
        "{status:#}"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn files_others_can_write_are_refused() {
    let Some(wasm) = built("enricher.wasm") else {
        return;
    };
    let d = tmpdir("perm");
    write(&d, "10-x.wasm", &wasm);
    write(&d, "10-x.toml", b"[attributes]\na = 1\n");
    std::fs::set_permissions(d.join("10-x.wasm"), std::fs::Permissions::from_mode(0o666)).unwrap();
    let r = host(&d).reload_dir();
    assert!(
        matches!(&r.rejected[0].1, PluginError::Writable { .. })
            && r.rejected[0].1.to_string().contains("writable by everyone"),
        "{:?}",
        r.rejected
    );
    let h = PluginHost::new(
        Settings {
            dir: Some(d.clone()),
            allow_writable: true,
            ..Default::default()
        },
        &Registry::default(),
    )
    .unwrap();
    assert!(h.reload_dir().rejected.is_empty());
    std::fs::remove_dir_all(&d).unwrap();
}

/// A file copied in slowly is loaded once, whole: the watcher waits until the directory has
/// stopped changing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_loads_a_slowly_copied_file_once_whole() {
    let Some(wasm) = built("enricher.wasm") else {
        return;
    };
    let d = tmpdir("watch");
    let h = Arc::new(host(&d));
    tokio::spawn(plugins::watch(h.clone(), Duration::from_millis(200)));
    write(&d, "10-x.toml", b"[attributes]\nslow = \"copy\"\n");
    let path = d.join("10-x.wasm");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&path).unwrap();
        for chunk in wasm.chunks(wasm.len() / 8 + 1) {
            f.write_all(chunk).unwrap();
            f.flush().unwrap();
            tokio::time::sleep(Duration::from_millis(120)).await;
        }
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut waited = 0;
    while h.chain().is_empty() && waited < 50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    assert_eq!(h.chain().plugins.len(), 1, "loaded after the copy ended");
    assert_eq!(
        h.metrics.reload_failures.get(),
        0,
        "a half-written file was read: {:?}",
        h.status()["last_error"]
    );
    // Deleting it unloads it, also through the watcher.
    std::fs::remove_file(&path).unwrap();
    let mut waited = 0;
    while !h.chain().is_empty() && waited < 50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    assert!(h.chain().is_empty());
    std::fs::remove_dir_all(&d).unwrap();
}

/// Spans that come out of six batches of ten.
fn six_batches_of_ten(h: &PluginHost) -> usize {
    (0..6)
        .map(|i| {
            let mut batch = spans(i * 10, 10);
            h.process(&mut batch);
            batch.len()
        })
        .sum()
}

fn strict_host(dir: &Path, fail_closed: bool, reg: &Registry) -> PluginHost {
    PluginHost::new(
        Settings {
            dir: Some(dir.to_owned()),
            limits: plugins::Limits {
                call_timeout: Duration::from_millis(250),
                init_timeout: Duration::from_millis(500),
                memory_bytes: 16 << 20,
            },
            fail_closed,
            ..Default::default()
        },
        reg,
    )
    .unwrap()
}

/// Plugins that misbehave from the start fail validation: refused with the reason, the rest
/// of the chain keeps running.
#[test]
fn hostile_plugins_are_refused_at_load() {
    let (Some(hostile), Some(enricher)) = (built("testing/hostile.wasm"), built("enricher.wasm"))
    else {
        return;
    };
    let d = tmpdir("hostile-load");
    write(&d, "10-good.wasm", &enricher);
    write(&d, "10-good.toml", b"[attributes]\ngood = \"yes\"\n");
    let h = strict_host(&d, false, &Registry::default());
    assert_eq!(h.reload_dir().swapped_to, Some(1));
    for (mode, why) in [
        ("init-error", "init refused the config: refusing on purpose"),
        ("loop-init", "init ran past its deadline of 500ms"),
        ("loop", "self-test batch: ran past its deadline of 250ms"),
        (
            "memory",
            "self-test batch: tried to use more than its memory cap of 16 MiB",
        ),
        ("trap", "self-test batch: trapped"),
        (
            "huge\"\ncount = 10000\nstring_len = 10\n#\"",
            "self-test batch: returned an invalid result: 10000 verdicts for 4 spans",
        ),
        (
            "huge",
            "self-test batch: tried to use more than its memory cap of 16 MiB",
        ),
        (
            "bad-index",
            "self-test batch: returned an invalid result: verdict for span 4 of a batch of 4",
        ),
    ] {
        write(&d, "20-hostile.wasm", &hostile);
        write(
            &d,
            "20-hostile.toml",
            format!("mode = \"{mode}\"\n").as_bytes(),
        );
        let t0 = std::time::Instant::now();
        let r = h.reload_dir();
        assert_eq!(r.rejected.len(), 1, "{mode}: {r:?}");
        assert!(
            r.rejected[0].1.to_string().contains(why),
            "{mode}: {}",
            r.rejected[0].1
        );
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{mode} took {:?}",
            t0.elapsed()
        );
        let mut batch = spans(0, 8);
        h.process(&mut batch);
        assert_eq!(batch.len(), 8, "{mode}");
        assert!(
            batch.iter().all(|s| attr(s, "good") == Some("yes")),
            "{mode}"
        );
    }
    assert_eq!(h.chain().plugins.len(), 1);
    std::fs::remove_dir_all(&d).unwrap();
}

/// Plugins that pass validation and misbehave later: each failed call lets its batch through
/// unchanged (fail-open) and is counted by kind; five in a row take the plugin out of the chain
/// until its file changes.
#[test]
fn hostile_plugins_at_run_time_are_contained_then_taken_out() {
    let (Some(hostile), Some(enricher)) = (built("testing/hostile.wasm"), built("enricher.wasm"))
    else {
        return;
    };
    for (mode, extra, counter) in [
        ("loop", "", "timeouts_total"),
        ("memory", "", "memory_exceeded_total"),
        ("trap", "", "traps_total"),
        ("huge", "", "memory_exceeded_total"),
        (
            "huge",
            "count = 10000\nstring_len = 10\n",
            "invalid_results_total",
        ),
        ("bad-index", "", "invalid_results_total"),
    ] {
        let d = tmpdir(&format!("hostile-run-{mode}"));
        write(&d, "10-hostile.wasm", &hostile);
        let cfg = format!("mode = \"{mode}\"\nafter = 1\n{extra}");
        write(&d, "10-hostile.toml", cfg.as_bytes());
        write(&d, "20-good.wasm", &enricher);
        write(&d, "20-good.toml", b"[attributes]\ngood = \"yes\"\n");
        let reg = Registry::default();
        let h = strict_host(&d, false, &reg);
        let r = h.reload_dir();
        assert!(r.rejected.is_empty(), "{mode}: {r:?}");
        let good = format!(
            "20-good@{}",
            content_hash(&enricher, "[attributes]\ngood = \"yes\"\n")
        );
        let both = format!("10-hostile@{},{good}", content_hash(&hostile, &cfg));
        // Batch 1 of the live instance behaves.
        let mut batch = spans(0, 8);
        h.process(&mut batch);
        assert!(
            batch.iter().all(|s| s.attr("hostile.ok").is_some()
                && attr(s, CHAIN_ATTRIBUTE) == Some(both.as_str())),
            "{mode}: expected {both}: {:?}",
            batch[0].attributes
        );
        // Then every other batch fails (a fresh instance behaves once): every span still
        // comes out, edited by the good plugin only when the hostile one failed; the fifth
        // failure takes it out of the chain.
        let mut failed = 0;
        for i in 0..9 {
            let mut batch = spans(100 + i * 8, 8);
            h.process(&mut batch);
            assert_eq!(batch.len(), 8, "{mode}: fail-open lets the batch through");
            let ran = batch[0].attr("hostile.ok").is_some();
            failed += u32::from(!ran);
            for s in &batch {
                assert_eq!(s.attr("hostile.ok").is_some(), ran, "{mode}");
                assert_eq!(attr(s, "good"), Some("yes"), "{mode}");
                let want = if ran { both.as_str() } else { good.as_str() };
                assert_eq!(
                    attr(s, CHAIN_ATTRIBUTE),
                    Some(want),
                    "{mode}: the chain names what ran"
                );
            }
        }
        assert_eq!(failed, 5, "{mode}");
        let status = h.status();
        assert_eq!(
            status["plugins"].as_array().unwrap().len(),
            1,
            "{mode}: {status:#}"
        );
        assert_eq!(status["not_running"][0]["state"], "quarantined", "{mode}");
        let text = reg.prometheus();
        assert!(
            text.contains(&format!(
                "tracer_plugin_{counter}{{plugin=\"10-hostile\"}} 5\n"
            )),
            "{mode}: {text}"
        );
        assert!(
            text.contains(
                "tracer_plugin_not_running{plugin=\"10-hostile\",state=\"quarantined\"} 1"
            )
        );
        // Unchanged file: stays out. Changed config: comes back (here as a well-behaved plugin).
        assert_eq!(h.reload_dir().swapped_to, None, "{mode}");
        write(&d, "10-hostile.toml", b"mode = \"ok\"\n");
        let r = h.reload_dir();
        assert!(
            r.swapped_to.is_some() && r.rejected.is_empty(),
            "{mode}: {r:?}"
        );
        let mut batch = spans(500, 4);
        h.process(&mut batch);
        assert!(
            batch.iter().all(|s| s.attr("hostile.ok").is_some()),
            "{mode}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}

#[test]
fn fail_closed_drops_the_batch_and_counts_it() {
    let Some(hostile) = built("testing/hostile.wasm") else {
        return;
    };
    let d = tmpdir("closed");
    write(&d, "10-h.wasm", &hostile);
    write(&d, "10-h.toml", b"mode = \"trap-every\"\nevery = 2\n");
    let reg = Registry::default();
    let h = strict_host(&d, true, &reg);
    assert!(h.reload_dir().rejected.is_empty());
    let out = six_batches_of_ten(&h);
    // Batches 2, 4 and 6 of the instance trap; a fresh instance starts after each trap, so
    // the plugin is never 5 failures in a row and stays in the chain.
    assert_eq!(h.metrics.spans_failed.get(), 30);
    assert_eq!(out, 30);
    assert_eq!(h.chain().plugins.len(), 1);
    let text = reg.prometheus();
    assert!(
        text.contains("tracer_plugin_traps_total{plugin=\"10-h\"} 3\n"),
        "{text}"
    );
    assert!(
        text.contains("tracer_plugin_restarts_total{plugin=\"10-h\"} 2\n"),
        "{text}"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

/// A plugin whose config says `on-failure = "drop"` (a redactor) never lets a span out that it
/// did not process: not when it fails on a batch, not once it is quarantined for failing
/// repeatedly (it stays in the chain, dropping every batch), whatever `--plugins-fail-closed`
/// says. `on-failure = "pass"` overrides a fail-closed host the other way.
#[test]
fn a_plugin_that_drops_on_failure_never_lets_an_unprocessed_span_out() {
    let Some(hostile) = built("testing/hostile.wasm") else {
        return;
    };
    let d = tmpdir("on-failure-drop");
    write(&d, "10-h.wasm", &hostile);
    // Behaves on the first batch of each instance, traps on the next.
    write(
        &d,
        "10-h.toml",
        b"mode = \"trap\"\nafter = 1\n\n[tracer]\non-failure = \"drop\"\n",
    );
    let reg = Registry::default();
    let h = strict_host(&d, false, &reg);
    let r = h.reload_dir();
    assert!(r.rejected.is_empty(), "{r:?}");
    let (mut sent, mut out) = (0, 0);
    for i in 0..20 {
        let mut batch = spans(i * 8, 8);
        sent += 8;
        h.process(&mut batch);
        out += batch.len();
        assert!(
            batch.iter().all(|s| s.attr("hostile.ok").is_some()),
            "batch {i}: a span the plugin did not process came out"
        );
    }
    // Batches 1, 3, 5, 7, 9 behave, 2, 4, 6, 8, 10 trap (the fifth quarantines it); from then
    // on every batch is dropped.
    assert_eq!(out, 5 * 8);
    assert_eq!(h.metrics.spans_failed.get(), (sent - out) as u64);
    assert_eq!(h.chain().plugins.len(), 1, "it stays in the chain");
    assert!(h.chain().plugins[0].is_quarantined());
    // The host's table never reaches the plugin: it would refuse an unknown key.
    let text = reg.prometheus();
    assert!(
        text.contains("tracer_plugin_traps_total{plugin=\"10-h\"} 5\n"),
        "{text}"
    );

    // The other way: a fail-closed host, a plugin that says pass.
    write(
        &d,
        "10-h.toml",
        b"mode = \"trap-every\"\nevery = 2\n\n[tracer]\non-failure = \"pass\"\n",
    );
    let reg = Registry::default();
    let h = strict_host(&d, true, &reg);
    assert!(h.reload_dir().rejected.is_empty());
    let out = six_batches_of_ten(&h);
    assert_eq!((out, h.metrics.spans_failed.get()), (60, 0));

    // A bad [tracer] table refuses the plugin, with what to write.
    write(
        &d,
        "10-h.toml",
        b"mode = \"ok\"\n[tracer]\non-failure = \"maybe\"\n",
    );
    let reg = Registry::default();
    let h = strict_host(&d, false, &reg);
    let r = h.reload_dir();
    assert_eq!(r.rejected.len(), 1, "{r:?}");
    assert!(format!("{r:?}").contains("on-failure"), "{r:?}");
    std::fs::remove_dir_all(&d).unwrap();
}
