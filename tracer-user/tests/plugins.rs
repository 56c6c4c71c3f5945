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
    export::printer::to_json,
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

/// The labels of one plugin version's counters.
fn series(name: &str, wasm: &[u8], cfg: &str) -> String {
    format!(
        "{{plugin=\"{name}\",version=\"{}\"}}",
        content_hash(wasm, cfg)
    )
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
    let text = reg.prometheus();
    let series = series("10-enricher", &wasm, cfg);
    assert!(
        text.contains(&format!("tracer_plugin_spans_edited_total{series} 10\n")),
        "{text}"
    );
    assert!(text.contains(&format!("tracer_plugin_calls_total{series} 1\n")));
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
    // The unloaded version's counters are still served.
    assert!(
        reg.prometheus()
            .contains(&format!("tracer_plugin_calls_total{series} 1\n"))
    );
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
        None,
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

/// The shipped plugins in target/plugins, by name (None, with the reason printed, outside CI).
fn shipped() -> Option<Vec<String>> {
    // Any one shipped plugin tells whether they were built.
    built("enricher.wasm")?;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let f = e.file_name().to_string_lossy().into_owned();
            f.strip_suffix(".wasm").map(str::to_owned)
        })
        .collect();
    names.sort();
    Some(names)
}

/// Every shipped plugin has an example config beside it (NAME.example.toml) and accepts it.
#[test]
fn every_shipped_plugin_accepts_the_example_beside_it() {
    let Some(names) = shipped() else {
        return;
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins");
    assert!(names.len() >= 5, "{names:?}");
    for n in names {
        let example = dir.join(format!("{n}.example.toml"));
        assert!(example.is_file(), "{n}: no {}", example.display());
        let r =
            plugins::check::check(&dir.join(format!("{n}.wasm")), Some(&example), None).unwrap();
        assert!(r.verdict.is_ok(), "{n}: {r}");
    }
}

/// Without a config, a plugin that needs one says what it needs, and the check points at the
/// example beside it (also once installed as NN-name.wasm); defaults run as they are.
#[test]
fn check_without_config_says_what_is_needed_and_where_the_example_is() {
    if shipped().is_none() {
        return;
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins");
    let d = tmpdir("check-noconfig");
    for (plugin, needs) in [
        ("enricher", "nothing to add: set [attributes]"),
        ("ratio-sampler", "no ratio: set `ratio`"),
        ("keep-errors-sampler", "no ratio: set `ratio`"),
    ] {
        write(
            &d,
            &format!("10-{plugin}.wasm"),
            &std::fs::read(src.join(format!("{plugin}.wasm"))).unwrap(),
        );
        let example = format!("{plugin}.example.toml");
        write(&d, &example, &std::fs::read(src.join(&example)).unwrap());
        let wasm = d.join(format!("10-{plugin}.wasm"));
        let r = plugins::check::check(&wasm, None, None).unwrap();
        assert!(
            matches!(&r.verdict, Err(PluginError::ConfigRefused(why)) if why.starts_with(needs)),
            "{plugin}: {r}"
        );
        let example = d.join(example);
        assert_eq!(r.example.as_deref(), Some(example.as_path()));
        assert!(
            r.to_string().ends_with(&format!(
                "\n  see {e} beside it, a config it accepts: `tracer plugins check {w} --config {e}`\n",
                e = example.display(),
                w = wasm.display()
            )),
            "{r}"
        );
    }
    for plugin in ["redactor", "route-normalizer"] {
        let r = plugins::check::check(&src.join(format!("{plugin}.wasm")), None, None).unwrap();
        assert!(r.verdict.is_ok() && r.example.is_none(), "{plugin}: {r}");
    }
    std::fs::remove_dir_all(&d).unwrap();
}

/// `--spans FILE`: the plugin runs on the author's spans (JSON lines as `tracer run --output
/// json` prints them) and the report says what happened to each; a bad line is named.
#[test]
fn check_runs_the_plugin_on_spans_from_a_file() {
    let Some(wasm) = built("keep-errors-sampler.wasm") else {
        return;
    };
    let d = tmpdir("check-spans");
    write(&d, "s.wasm", &wasm);
    write(&d, "s.toml", b"ratio = 0\nrecord = true\n");
    let mut mine = samples();
    // Two of the samples again as other spans: unique span ids, the same trace.
    mine.extend(samples().into_iter().take(2).map(|mut s| {
        s.span_id[0] += 100;
        s
    }));
    let lines: String = mine.iter().map(|s| format!("{}\n", to_json(s))).collect();
    std::fs::write(d.join("spans.json"), &lines).unwrap();
    let r = plugins::check::check(
        &d.join("s.wasm"),
        Some(&d.join("s.toml")),
        Some(&d.join("spans.json")),
    )
    .unwrap();
    let p = r.verdict.as_ref().unwrap();
    let kept: Vec<bool> = p.samples.iter().map(|(_, a)| a.is_some()).collect();
    // ratio 0 and no slow_ms: only the failed call (the second sample) is kept, both times.
    assert_eq!(kept, [false, true, false, false, false, true]);
    let text = r.to_string();
    assert!(
        text.contains(&format!(
            "\non 6 spans from {}:\n",
            d.join("spans.json").display()
        )),
        "{text}"
    );
    assert_eq!(text.matches("  out:  DROPPED\n").count(), 4, "{text}");
    assert_eq!(
        text.matches("  out:  kept, +sampling.kept_by=error\n")
            .count(),
        2,
        "{text}"
    );
    let mut bad = to_json(&mine[1]);
    bad["span_id"] = serde_json::json!(1);
    std::fs::write(
        d.join("bad.json"),
        format!("{}\n{bad}\n", to_json(&mine[0])),
    )
    .unwrap();
    let e = plugins::check::check(&d.join("s.wasm"), None, Some(&d.join("bad.json")))
        .err()
        .expect("a bad line is an error");
    assert_eq!(
        e.to_string(),
        format!(
            "{}: line 2: span_id: expected a string (one span per line, as `tracer run --output json` prints them)",
            d.join("bad.json").display()
        )
    );
    std::fs::remove_dir_all(&d).unwrap();
}

/// Runs the tracer binary with its stdout read for a moment and then closed (`| head -c`):
/// what it says on stderr, and how it ended.
fn closed_early(args: &[&std::ffi::OsStr]) -> std::process::Output {
    use std::{io::Read, process::Stdio};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tracer"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0; 64];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    // The read end is closed here: the tracer's next write fails with EPIPE.
    child.wait_with_output().unwrap()
}

/// `tracer plugins list | head` and `tracer plugins check ... | head` end quietly (no panic,
/// no error) when the reader goes away.
#[test]
fn a_closed_stdout_ends_the_output_quietly() {
    use std::{
        io::{BufRead, BufReader, Write},
        net::TcpListener,
    };
    // An admin endpoint whose /plugins answer is far more than a pipe holds.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let mut r = BufReader::new(conn);
        let mut line = String::new();
        while r.read_line(&mut line).unwrap() > 2 {
            line.clear();
        }
        let body = format!("{{\"pad\": \"{}\"}}", "x".repeat(4 << 20));
        let mut conn = r.into_inner();
        let _ = write!(
            conn,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
    });
    let out = closed_early(
        &["plugins", "list", "--json", "--admin-addr", &addr].map(std::ffi::OsStr::new),
    );
    server.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.is_empty(),
        "{:?}: {stderr}",
        out.status
    );

    let Some(wasm) = built("enricher.wasm") else {
        return;
    };
    let d = tmpdir("check-pipe");
    write(&d, "e.wasm", &wasm);
    write(&d, "e.toml", b"[attributes]\nteam = \"shop\"\n");
    let lines: String = spans(0, 2_000)
        .iter()
        .map(|s| format!("{}\n", to_json(s)))
        .collect();
    std::fs::write(d.join("spans.json"), lines).unwrap();
    let arg = |f: &str| d.join(f).into_os_string();
    let (w, c, s) = (arg("e.wasm"), arg("e.toml"), arg("spans.json"));
    let out = closed_early(&[
        "plugins".as_ref(),
        "check".as_ref(),
        w.as_os_str(),
        "--config".as_ref(),
        c.as_os_str(),
        "--spans".as_ref(),
        s.as_os_str(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.is_empty(),
        "{:?}: {stderr}",
        out.status
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
    let text = plugins::check::check(&d.join("10-old.wasm"), None, None)
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
    assert_eq!(h.chain().slots.len(), 1, "loaded after the copy ended");
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
    assert_eq!(h.chain().slots.len(), 1);
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
        let hostile_hash = content_hash(&hostile, &cfg);
        let both = format!("10-hostile@{hostile_hash},{good}");
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
                "tracer_plugin_{counter}{{plugin=\"10-hostile\",version=\"{hostile_hash}\"}} 5\n"
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
    assert_eq!(h.chain().slots.len(), 1);
    let text = reg.prometheus();
    assert!(
        text.contains(&format!(
            "tracer_plugin_traps_total{} 3\n",
            series("10-h", &hostile, "mode = \"trap-every\"\nevery = 2\n")
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "tracer_plugin_restarts_total{} 2\n",
            series("10-h", &hostile, "mode = \"trap-every\"\nevery = 2\n")
        )),
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
    assert_eq!(h.chain().slots.len(), 1, "it stays in the chain");
    assert!(h.chain().slots[0].stable.is_quarantined());
    // The host's table never reaches the plugin: it would refuse an unknown key.
    let text = reg.prometheus();
    assert!(
        text.contains(&format!(
            "tracer_plugin_traps_total{} 5\n",
            series(
                "10-h",
                &hostile,
                "mode = \"trap\"\nafter = 1\n\n[tracer]\non-failure = \"drop\"\n"
            )
        )),
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

/// `n` sample spans, each of its own random trace.
fn traces(first: u64, n: usize) -> Vec<Span> {
    let mut v = spans(first, n);
    for s in &mut v {
        s.trace_id = rand::random();
    }
    v
}

/// A new version that fails is quarantined and the host goes back to the version that ran
/// before it, saying so: every span of the traffic around it comes out exactly once (the
/// policy is pass), processed by the new version until it failed, then by the old one.
#[test]
fn quarantine_rolls_back_to_the_last_good_version() {
    let Some(hostile) = built("testing/hostile.wasm") else {
        return;
    };
    let d = tmpdir("rollback");
    write(&d, "10-h.wasm", &hostile);
    write(&d, "10-h.toml", b"mode = \"ok\"\n");
    let good = format!("10-h@{}", content_hash(&hostile, "mode = \"ok\"\n"));
    let reg = Registry::default();
    let h = strict_host(&d, false, &reg);
    assert!(h.reload_dir().rejected.is_empty());
    assert!(
        h.rollback("10-h")
            .unwrap_err()
            .contains("no earlier version")
    );
    let bad_cfg = "mode = \"trap\"\nafter = 1\n";
    write(&d, "10-h.toml", bad_cfg.as_bytes());
    let bad = format!("10-h@{}", content_hash(&hostile, bad_cfg));
    let r = h.reload_dir();
    assert_eq!(r.loaded, std::slice::from_ref(&bad), "{r:?}");
    assert_eq!(h.status()["rollback_to"]["10-h"], good.as_str());
    let mut seen = HashSet::new();
    let mut by_label: HashMap<String, usize> = HashMap::new();
    for i in 0..20 {
        let mut batch = spans(i * 8, 8);
        h.process(&mut batch);
        assert_eq!(batch.len(), 8, "pass: every span comes out");
        for s in &batch {
            assert!(seen.insert(s.span_id), "a span came out twice");
            *by_label
                .entry(attr(s, CHAIN_ATTRIBUTE).unwrap_or("").to_owned())
                .or_default() += 1;
            if s.attr("hostile.ok").is_none() {
                assert_eq!(attr(s, plugins::FAILED_ATTRIBUTE), Some(bad.as_str()));
            }
        }
    }
    assert_eq!(seen.len(), 160);
    // Batches 1, 3, 5, 7, 9 of the new version behave, 2..10 fail; then the old one runs.
    assert_eq!(by_label[&bad], 5 * 8, "{by_label:?}");
    assert_eq!(by_label[""], 5 * 8, "{by_label:?}");
    assert_eq!(by_label[&good], 10 * 8, "{by_label:?}");
    assert_eq!(h.chain().label(), good);
    let last = h.changes.recent().pop().unwrap();
    assert_eq!(format!("{:?}", last.trigger), "quarantine");
    assert!(
        last.what[0].contains(&format!("rolled back to {good}")),
        "{last:?}"
    );
    let text = reg.prometheus();
    assert!(
        text.contains(
            "tracer_reload_duration_seconds_count{trigger=\"quarantine\",outcome=\"applied\"} 1"
        ),
        "{text}"
    );
    // The bad file stays out while it is unchanged.
    assert_eq!(h.reload_dir().swapped_to, None);
    assert_eq!(h.chain().label(), good);
    std::fs::remove_dir_all(&d).unwrap();
}

/// A canary takes a consistent share of traces (the same traces in two hosts, as in two
/// tracers on two nodes), with counters of its own; promote makes it the stable version on
/// disk; rollback goes back; under traffic no span is lost or doubled.
#[test]
fn a_canary_takes_its_share_and_promote_and_rollback_lose_nothing() {
    let Some(enricher) = built("enricher.wasm") else {
        return;
    };
    let d = tmpdir("canary");
    let a_cfg = "[attributes]\nv = \"a\"\n";
    let b_cfg = "[attributes]\nv = \"b\"\n\n[tracer]\ncanary = 0.1\n";
    write(&d, "10-e.wasm", &enricher);
    write(&d, "10-e.toml", a_cfg.as_bytes());
    write(&d, "10-e.canary.wasm", &enricher);
    write(&d, "10-e.canary.toml", b_cfg.as_bytes());
    let (a, b) = (
        content_hash(&enricher, a_cfg),
        content_hash(&enricher, b_cfg),
    );
    let reg = Registry::default();
    let h = Arc::new(host_in(&d, &reg));
    let r = h.reload_dir();
    assert!(r.rejected.is_empty(), "{r:?}");
    assert_eq!(
        r.loaded,
        [
            format!("10-e@{a}"),
            format!("10-e@{b} (canary, 10% of traces)")
        ]
    );
    let other = host(&d);
    assert!(other.reload_dir().rejected.is_empty());
    let mut batch = traces(0, 10_000);
    let mut copy = batch.clone();
    h.process(&mut batch);
    other.process(&mut copy);
    let canary: HashSet<[u8; 16]> = batch
        .iter()
        .filter(|s| attr(s, "v") == Some("b"))
        .map(|s| s.trace_id)
        .collect();
    assert!(
        (800..1200).contains(&canary.len()),
        "{} of 10000 traces",
        canary.len()
    );
    let canary_other: HashSet<[u8; 16]> = copy
        .iter()
        .filter(|s| attr(s, "v") == Some("b"))
        .map(|s| s.trace_id)
        .collect();
    assert_eq!(canary, canary_other, "both hosts pick the same traces");
    for s in &batch {
        let want = if canary.contains(&s.trace_id) { &b } else { &a };
        assert_eq!(
            attr(s, CHAIN_ATTRIBUTE),
            Some(format!("10-e@{want}").as_str())
        );
    }
    let text = reg.prometheus();
    assert!(
        text.contains(&format!(
            "tracer_plugin_spans_in_total{{plugin=\"10-e\",version=\"{b}\"}} {}\n",
            canary.len()
        )),
        "{text}"
    );
    assert!(text.contains(&format!(
        "tracer_plugin_active{{plugin=\"10-e\",version=\"{b}\",role=\"canary\"}} 1"
    )));

    // Promote and roll back while batches flow: every span once, with one version.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (h, stop) = (h.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut sent, mut out) = (0u64, HashSet::new());
            while !stop.load(Relaxed) {
                let mut batch = traces(sent, 64);
                sent += 64;
                h.process(&mut batch);
                for s in batch {
                    assert!(s.attr(plugins::FAILED_ATTRIBUTE).is_none());
                    assert!(out.insert(s.span_id), "a span came out twice");
                }
            }
            (sent, out.len() as u64)
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    let msg = h.promote("10-e").unwrap();
    assert!(msg.contains(&format!("promoted canary 10-e@{b}")), "{msg}");
    assert!(!d.join("10-e.canary.wasm").exists());
    assert_eq!(std::fs::read_to_string(d.join("10-e.toml")).unwrap(), b_cfg);
    assert_eq!(h.chain().label(), format!("10-e@{b}"));
    // The renamed files are what runs: a rescan changes nothing.
    assert_eq!(h.reload_dir().swapped_to, None);
    assert!(h.promote("10-e").unwrap_err().contains("no canary"));
    std::thread::sleep(Duration::from_millis(50));
    let msg = h.rollback("10-e").unwrap();
    assert!(msg.contains(&format!("to 10-e@{a}")), "{msg}");
    assert_eq!(h.chain().label(), format!("10-e@{a}"));
    assert_eq!(
        h.reload_dir().swapped_to,
        None,
        "the withdrawn file stays out"
    );
    std::thread::sleep(Duration::from_millis(50));
    stop.store(true, Relaxed);
    let (sent, out) = traffic.join().unwrap();
    assert_eq!(sent, out, "no span lost");
    let triggers: Vec<String> = h
        .changes
        .recent()
        .iter()
        .map(|c| format!("{:?}", c.trigger))
        .collect();
    assert_eq!(triggers, ["promote", "rollback"]);
    std::fs::remove_dir_all(&d).unwrap();
}

/// A canary whose stable version is missing is refused with what to do; one that fails
/// where its stable version does not is rolled back by itself.
#[test]
fn a_lone_canary_is_refused_and_a_failing_one_rolls_back() {
    let (Some(hostile), Some(enricher)) = (built("testing/hostile.wasm"), built("enricher.wasm"))
    else {
        return;
    };
    let d = tmpdir("canary-bad");
    write(&d, "10-h.canary.wasm", &hostile);
    let h = strict_host(&d, false, &Registry::default());
    let r = h.reload_dir();
    assert_eq!(r.rejected.len(), 1, "{r:?}");
    let why = r.rejected[0].1.to_string();
    assert!(why.contains("there is no 10-h.wasm"), "{why}");
    write(&d, "10-h.wasm", &enricher);
    write(&d, "10-h.toml", b"[attributes]\nv = \"a\"\n");
    write(
        &d,
        "10-h.canary.toml",
        b"mode = \"trap\"\nafter = 1\n[tracer]\ncanary = 1.0\n",
    );
    let r = h.reload_dir();
    assert!(r.rejected.is_empty(), "{r:?}");
    let stable = format!(
        "10-h@{}",
        content_hash(&enricher, "[attributes]\nv = \"a\"\n")
    );
    for i in 0..20 {
        let mut batch = traces(i * 8, 8);
        h.process(&mut batch);
        assert_eq!(batch.len(), 8);
    }
    assert_eq!(h.chain().label(), stable);
    assert!(h.chain().slots[0].canary.is_none(), "the canary is gone");
    let last = h.changes.recent().pop().unwrap();
    assert!(last.what[0].starts_with("canary 10-h@"), "{last:?}");
    assert_eq!(h.status()["not_running"][0]["state"], "quarantined");
    std::fs::remove_dir_all(&d).unwrap();
}

/// A plugin that panics is reported in its own words (the SDK's panic hook, through the
/// host's log), not as a wasm backtrace: in the error of the call and in `/plugins`.
#[test]
fn a_panic_is_reported_with_its_message() {
    let Some(hostile) = built("testing/hostile.wasm") else {
        return;
    };
    let d = tmpdir("panic");
    write(&d, "10-h.wasm", &hostile);
    write(&d, "10-h.toml", b"mode = \"trap\"\nafter = 1\n");
    let h = strict_host(&d, false, &Registry::default());
    assert!(h.reload_dir().rejected.is_empty());
    for i in 0..2 {
        let mut batch = spans(i * 4, 4);
        h.process(&mut batch);
    }
    let status = h.status();
    let err = status["plugins"][0]["last_error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        err.starts_with("trapped: panicked at ") && err.ends_with(": trap on purpose"),
        "{status:#}"
    );
    assert!(!err.contains("wasm backtrace"), "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}
