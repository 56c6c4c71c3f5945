//! Plugin cost: each shipped plugin through the real host (conversion, the wasm call, checks,
//! edits) per span at batch sizes 1, 16, 64 and 256; the time from a validated plugin to the
//! active chain; and memory per loaded plugin. Needs `cargo xtask build-plugins` first.
//! `cargo bench -p tracer-benches --bench plugins`
use std::{path::Path, sync::Arc, time::Instant};

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tracer_user::{
    metrics::Registry,
    plugins::{PluginHost, Settings, samples},
    span::{ATTRIBUTE_CAPACITY, Span},
};

/// (component, config): the shipped plugins as an operator would configure them.
const PLUGINS: &[(&str, &str)] = &[
    ("ratio-sampler", "ratio = 0.5\n"),
    ("keep-errors-sampler", "ratio = 0.1\nslow_ms = 500\n"),
    ("route-normalizer", ""),
    (
        "redactor",
        "remove = [\"*token*\"]\nmask = [\"user.email\"]\nquery_params = [\"token\", \"key\"]\n",
    ),
    (
        "enricher",
        "[attributes]\n\"deployment.environment\" = \"prod\"\nteam = \"payments\"\n",
    ),
];

fn component(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../target/plugins/{name}.wasm"));
    std::fs::read(&p)
        .unwrap_or_else(|e| panic!("{}: {e}; run `cargo xtask build-plugins`", p.display()))
}

fn batch(n: usize) -> Vec<Span> {
    let s = samples();
    (0..n)
        .map(|i| {
            let mut sp = s[i % s.len()].clone();
            sp.trace_id[15] = i as u8;
            sp.trace_id[8] = (i >> 8) as u8;
            sp
        })
        .collect()
}

/// A copy of the input batch whose spans have the room the span builder gives them (a clone
/// has exactly its length).
fn copy(input: &[Span]) -> Vec<Span> {
    input
        .iter()
        .map(|s| {
            let mut s = s.clone();
            s.attributes
                .reserve_exact(ATTRIBUTE_CAPACITY.saturating_sub(s.attributes.len()));
            s
        })
        .collect()
}

fn per_plugin(c: &mut Criterion) {
    for (name, cfg) in PLUGINS {
        let host = PluginHost::new(Settings::default(), &Registry::default()).unwrap();
        let wasm = component(name);
        let p = host
            .load(name, Path::new(name), &wasm, cfg)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        host.install(vec![p]);
        let mut g = c.benchmark_group(format!("plugin/{name}"));
        for n in [1usize, 16, 64, 256] {
            let input = batch(n);
            g.throughput(Throughput::Elements(n as u64));
            g.bench_with_input(BenchmarkId::from_parameter(n), &input, |b, input| {
                b.iter_batched(
                    || copy(input),
                    |mut spans| {
                        host.process(&mut spans);
                        spans
                    },
                    BatchSize::PerIteration,
                )
            });
        }
        g.finish();
    }
    // The baseline the figures above include: cloning the input batch, and the chain attribute.
    let empty = PluginHost::new(Settings::default(), &Registry::default()).unwrap();
    let mut g = c.benchmark_group("plugin/none");
    let input = batch(64);
    g.throughput(Throughput::Elements(64));
    g.bench_function("64", |b| {
        b.iter_batched(
            || copy(&input),
            |mut spans| {
                empty.process(&mut spans);
                spans
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Not a criterion measurement: one-off figures printed for benches/README.md.
fn swap_and_memory(_: &mut Criterion) {
    let host = Arc::new(PluginHost::new(Settings::default(), &Registry::default()).unwrap());
    let wasm = component("route-normalizer");
    // Compile once (the cache), then time: load (instantiate + validate) and install (swap).
    let first = host.load("r", Path::new("r"), &wasm, "").unwrap();
    host.install(vec![first]);
    let (mut load_us, mut swap_ns) = (Vec::new(), Vec::new());
    for i in 0..200 {
        let cfg = format!("placeholder = \"{{v{i}}}\"\n");
        let t0 = Instant::now();
        let p = host.load("r", Path::new("r"), &wasm, &cfg).unwrap();
        let t1 = Instant::now();
        host.install(vec![p]);
        swap_ns.push(t1.elapsed().as_nanos() as u64);
        load_us.push((t1 - t0).as_micros() as u64);
    }
    load_us.sort();
    swap_ns.sort();
    let t0 = Instant::now();
    let other = PluginHost::new(Settings::default(), &Registry::default()).unwrap();
    other.load("x", Path::new("x"), &wasm, "").unwrap();
    let compile_ms = t0.elapsed().as_millis();
    eprintln!(
        "swap: compile (cold) {compile_ms} ms; validate + instantiate (cached compile) median {} us, p99 {} us; \
         validated -> active (ArcSwap store) median {} ns, max {} ns",
        load_us[load_us.len() / 2],
        load_us[load_us.len() * 99 / 100],
        swap_ns[swap_ns.len() / 2],
        swap_ns[swap_ns.len() - 1]
    );
    // Memory: 20 more loaded plugins (distinct instances of each component).
    for (name, cfg) in PLUGINS {
        let wasm = component(name);
        let h = PluginHost::new(Settings::default(), &Registry::default()).unwrap();
        let _warm = h.load(name, Path::new(name), &wasm, cfg).unwrap();
        let before = rss_kib();
        let kept: Vec<_> = (0..20)
            .map(|i| {
                h.load(&format!("{name}{i}"), Path::new(name), &wasm, cfg)
                    .unwrap()
            })
            .collect();
        let after = rss_kib();
        eprintln!(
            "memory: {name}: {} KiB RSS per loaded plugin (20 loaded; compiled code shared)",
            (after.saturating_sub(before)) / kept.len() as u64
        );
    }
}

criterion_group!(benches, per_plugin, swap_and_memory);
criterion_main!(benches);
