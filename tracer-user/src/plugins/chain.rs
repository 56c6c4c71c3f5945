//! A chain of loaded plugins and how a batch of spans goes through it: each plugin sees the
//! spans the previous one kept, with only the attributes it asked for; its verdicts are checked
//! against the contract before anything is applied.
use std::{
    collections::HashSet,
    collections::VecDeque,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::{Duration, Instant, SystemTime},
};

use super::{
    PluginError,
    abi::{Compiled, HostEdit, HostVerdict, Interest, View},
    runtime::{CallError, Instance, Limits},
    stats::PluginStats,
};
use crate::span::{Span, Value, clock_ns, kv};

/// The attribute naming the plugin versions that processed a span.
pub const CHAIN_ATTRIBUTE: &str = "tracer.plugins.chain";
/// Spans per call: bounds a plugin's working memory and its time per call.
pub const MAX_BATCH: usize = 256;
const MAX_EDITS: usize = 64;
/// Failed calls count toward quarantine for this long.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
const MAX_KEY: usize = 256;
const MAX_VALUE: usize = 4096;

/// A plugin that passed validation: its compiled code, config, interest and live instance.
pub struct Loaded {
    /// File name without `.wasm`, e.g. `10-sampler`.
    pub name: Arc<str>,
    pub file: PathBuf,
    /// Content hash of the module and its config (12 hex digits).
    pub hash: String,
    pub config: String,
    pub loaded_at: SystemTime,
    pub stats: Arc<PluginStats>,
    pre: Compiled,
    /// The contract version it was built for (`tracer:plugin@0.2.0`).
    pub contract: &'static str,
    limits: Limits,
    view: View,
    /// None after a failed call: a trapped instance cannot be re-entered.
    instance: Mutex<Option<Instance>>,
    /// When the recent failed calls happened (CLOCK_MONOTONIC ns), oldest first.
    failures: Mutex<VecDeque<u64>>,
    max_failures: u32,
    quarantined: AtomicBool,
    pub last_error: Mutex<Option<String>>,
    /// What its failures do to the batch it failed on.
    pub on_failure: OnFailure,
    /// The share of traces its config asks for when it runs as a canary.
    pub canary: Option<f64>,
}

/// What a plugin's failure (trap, timeout, bad result, quarantine) does to its batch: `Pass`
/// lets the batch go on as it was (right for a sampler), `Drop` drops it, counted (right for
/// a redactor: a span it did not process must not leave).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFailure {
    Pass,
    Drop,
}

impl Loaded {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        name: Arc<str>,
        file: PathBuf,
        hash: String,
        config: String,
        pre: Compiled,
        limits: Limits,
        stats: Arc<PluginStats>,
        instance: Instance,
        interest: Interest,
        max_failures: u32,
        on_failure: OnFailure,
        canary: Option<f64>,
    ) -> Self {
        Self {
            name,
            file,
            hash,
            config,
            loaded_at: SystemTime::now(),
            stats,
            contract: pre.contract(),
            pre,
            limits,
            view: View::new(&interest),
            instance: Mutex::new(Some(instance)),
            failures: Mutex::default(),
            max_failures,
            quarantined: AtomicBool::new(false),
            last_error: Mutex::new(None),
            on_failure,
            canary,
        }
    }

    /// `name@hash`, as it appears in the chain attribute.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.hash)
    }

    pub fn interest(&self) -> (Vec<String>, Vec<String>, bool) {
        let v = &self.view;
        (
            v.attributes.patterns().to_vec(),
            v.resource_attributes.patterns().to_vec(),
            v.span_name,
        )
    }

    pub fn is_quarantined(&self) -> bool {
        self.quarantined.load(Relaxed)
    }

    /// Runs the plugin on `batch` (at most MAX_BATCH spans) and applies its verdicts; the
    /// spans it drops move to `dropped`. On error nothing was applied.
    pub fn run(&self, batch: &mut Vec<Span>, dropped: &mut Vec<Span>) -> Result<(), CallError> {
        let st = &self.stats;
        let mut guard = self.instance.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            st.restarts.inc();
            match Instance::start(
                &self.pre,
                self.name.clone(),
                st.clone(),
                &self.limits,
                &self.config,
                false,
            ) {
                Ok((inst, _)) => *guard = Some(inst),
                Err(PluginError::Init(e)) => return Err(self.failed(e)),
                // The config was accepted when the plugin was loaded: refusing it now is an
                // invalid answer.
                Err(e) => return Err(self.failed(CallError::Invalid(e.to_string()))),
            }
        }
        let Some(inst) = guard.as_mut() else {
            unreachable!("instance started above")
        };
        let t0 = Instant::now();
        let result = inst.process(batch, &self.view);
        st.call_seconds.inc_by(t0.elapsed().as_secs_f64());
        st.calls.inc();
        st.spans_in.inc_by(batch.len() as u64);
        let verdicts = match result {
            Ok(v) => v,
            Err(e) => {
                *guard = None;
                return Err(self.failed(e));
            }
        };
        if let Err(e) = check(&verdicts, batch.len()) {
            // Whatever state produced it is not trusted with the next batch either.
            *guard = None;
            return Err(self.failed(e));
        }
        drop(guard);
        let (n_dropped, edited) = apply(batch, verdicts, dropped);
        st.spans_dropped.inc_by(n_dropped);
        st.spans_edited.inc_by(edited);
        Ok(())
    }

    fn failed(&self, e: CallError) -> CallError {
        let st = &self.stats;
        match &e {
            CallError::Timeout(_) => &st.timeouts,
            CallError::Memory(_) => &st.memory_exceeded,
            CallError::Trap(_) => &st.traps,
            CallError::Invalid(_) => &st.invalid_results,
        }
        .inc();
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(e.to_string());
        }
        // Failures within the window count, successes in between do not excuse them: a plugin
        // that fails every other batch (a fresh instance works once, then traps) is failing.
        let now = clock_ns(libc::CLOCK_MONOTONIC);
        let n = {
            let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            f.push_back(now);
            while f
                .front()
                .is_some_and(|&t| now - t > FAILURE_WINDOW.as_nanos() as u64)
            {
                f.pop_front();
            }
            f.len() as u32
        };
        if self.max_failures == 0 {
            // A candidate in validation: its refusal says why, there is nothing to quarantine.
            return e;
        }
        if n >= self.max_failures && !self.quarantined.swap(true, Relaxed) {
            tracing::error!(
                plugin = &*self.name,
                version = &*self.hash,
                "failed {n} calls within {FAILURE_WINDOW:?} (last: {e}): quarantined"
            );
        } else if n == 1 {
            tracing::warn!(plugin = &*self.name, "{e}");
        }
        e
    }
}

/// The contract's limits on a result, checked before anything is applied.
fn check(verdicts: &[HostVerdict], n: usize) -> Result<(), CallError> {
    let invalid = |why: String| Err(CallError::Invalid(why));
    if verdicts.len() > n {
        return invalid(format!("{} verdicts for {n} spans", verdicts.len()));
    }
    let mut seen = HashSet::with_capacity(verdicts.len());
    // The host's own attributes say what ran: no plugin forges them.
    let key_ok = |k: &str| {
        !k.is_empty() && k.len() <= MAX_KEY && k != CHAIN_ATTRIBUTE && k != FAILED_ATTRIBUTE
    };
    for v in verdicts {
        if v.span as usize >= n {
            return invalid(format!("verdict for span {} of a batch of {n}", v.span));
        }
        if !seen.insert(v.span) {
            return invalid(format!("two verdicts for span {}", v.span));
        }
        if v.edits.len() > MAX_EDITS {
            return invalid(format!(
                "{} edits for one span (at most {MAX_EDITS})",
                v.edits.len()
            ));
        }
        for e in &v.edits {
            let ok = match e {
                HostEdit::Set(k, v) => {
                    key_ok(k) && !matches!(v, Value::Str(s) if s.len() > MAX_VALUE)
                }
                HostEdit::Remove(k) => key_ok(k),
                HostEdit::Rename(name) => !name.is_empty() && name.len() <= MAX_KEY,
            };
            if !ok {
                return invalid(format!(
                    "an edit breaks the limits (keys 1..={MAX_KEY} bytes, not {CHAIN_ATTRIBUTE} nor {FAILED_ATTRIBUTE}, \
                     string values up to {MAX_VALUE} bytes, names 1..={MAX_KEY} bytes): {}",
                    format!("{e:?}").chars().take(200).collect::<String>()
                ));
            }
        }
    }
    Ok(())
}

/// Applies checked verdicts, moving the spans dropped to `out`; returns (dropped, edited).
fn apply(batch: &mut Vec<Span>, verdicts: Vec<HostVerdict>, out: &mut Vec<Span>) -> (u64, u64) {
    let (mut dropped, mut edited) = (0, 0);
    let mut keep = vec![true; batch.len()];
    for v in verdicts {
        let i = v.span as usize;
        if !v.keep {
            keep[i] = false;
            dropped += 1;
            continue;
        }
        if v.edits.is_empty() {
            continue;
        }
        edited += 1;
        let span = &mut batch[i];
        for e in v.edits {
            match e {
                HostEdit::Set(key, value) => {
                    match span.attributes.iter_mut().find(|x| x.key == key) {
                        Some(x) => x.value = value,
                        None => span.attributes.push(kv(key, value)),
                    }
                }
                HostEdit::Remove(k) => span.attributes.retain(|x| x.key != k),
                HostEdit::Rename(name) => span.name = name,
            }
        }
    }
    if dropped > 0 {
        let mut i = 0;
        out.extend(batch.extract_if(.., |_| {
            i += 1;
            !keep[i - 1]
        }));
    }
    (dropped, edited)
}

/// A canary: a new version of a plugin trying its luck on a fraction of the traces, beside
/// the stable version that takes the rest.
pub struct Canary {
    pub plugin: Arc<Loaded>,
    /// Share of traces, 0..=1.
    pub fraction: f64,
}

/// One place in the chain: the stable version of a plugin, and maybe its canary.
pub struct Slot {
    pub stable: Arc<Loaded>,
    pub canary: Option<Canary>,
}

impl Slot {
    pub fn new(stable: Arc<Loaded>) -> Self {
        Self {
            stable,
            canary: None,
        }
    }

    /// The version that processes the trace `trace_id`.
    fn version_for(&self, trace_id: &[u8; 16]) -> &Arc<Loaded> {
        match &self.canary {
            Some(c) if canary_takes(trace_id, &c.plugin.name, c.fraction) => &c.plugin,
            _ => &self.stable,
        }
    }

    /// The same slot, for a new chain that changes another one.
    pub fn copy(&self) -> Self {
        Self {
            stable: self.stable.clone(),
            canary: self.canary.as_ref().map(|c| Canary {
                plugin: c.plugin.clone(),
                fraction: c.fraction,
            }),
        }
    }

    /// Runs the same versions with the same share.
    pub fn same_as(&self, other: &Slot) -> bool {
        Arc::ptr_eq(&self.stable, &other.stable)
            && match (&self.canary, &other.canary) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(&a.plugin, &b.plugin) && a.fraction == b.fraction,
                _ => false,
            }
    }

    /// Every version running in this slot.
    pub fn versions(&self) -> impl Iterator<Item = &Arc<Loaded>> {
        std::iter::once(&self.stable).chain(self.canary.as_ref().map(|c| &c.plugin))
    }
}

/// Whether the canary of plugin `name` takes the trace: a hash of the trace id and the name,
/// so every node and every restart decides the same for one trace (its spans stay together),
/// and canaries of different plugins take independent samples.
pub fn canary_takes(trace_id: &[u8; 16], name: &str, fraction: f64) -> bool {
    // FNV-1a, then the splitmix64 finalizer: fixed here, unlike std's hasher.
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in name.as_bytes().iter().chain(trace_id) {
        h = (h ^ *b as u64).wrapping_mul(0x100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    ((h >> 11) as f64 / (1u64 << 53) as f64) < fraction
}

/// One version of the whole chain. Batches load it once; a swap publishes a new one.
pub struct Chain {
    pub version: u64,
    pub slots: Vec<Slot>,
    /// The stable versions' label (what most spans carry).
    label: Arc<str>,
    canaries: bool,
}

/// What happened to a batch beyond the plugins' own counters.
#[derive(Default, Debug, PartialEq, Eq)]
pub struct BatchReport {
    /// Spans the plugins dropped.
    pub dropped: u64,
    /// Spans dropped because a plugin that drops on failure failed (or is quarantined).
    pub failed_closed: u64,
    /// Some plugin reached its failure limit during this batch.
    pub quarantined: bool,
}

/// The attribute naming the plugin versions that failed on a span's batch and let it pass
/// unprocessed (on-failure = pass).
pub const FAILED_ATTRIBUTE: &str = "tracer.plugins.failed";

impl Chain {
    pub fn new(version: u64, slots: Vec<Slot>) -> Self {
        let label = label(slots.iter().map(|s| &*s.stable));
        Self {
            version,
            canaries: slots.iter().any(|s| s.canary.is_some()),
            slots,
            label: label.into(),
        }
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The slot of plugin `name`.
    pub fn slot(&self, name: &str) -> Option<&Slot> {
        self.slots.iter().find(|s| *s.stable.name == *name)
    }

    /// Runs every span through the chain and marks each survivor with the versions that
    /// processed it; the dropped ones move to `dropped`, as they were when dropped. Without
    /// canaries the whole batch takes the stable versions; with one, spans are grouped by the
    /// versions their trace gets, each group run on its own.
    pub fn process(&self, spans: &mut Vec<Span>, dropped: &mut Vec<Span>) -> BatchReport {
        let mut report = BatchReport::default();
        if self.slots.is_empty() {
            return report;
        }
        if !self.canaries {
            let stable: Vec<&Arc<Loaded>> = self.slots.iter().map(|s| &s.stable).collect();
            run_group(&stable, Some(&self.label), spans, dropped, &mut report);
            return report;
        }
        let mut groups: Vec<(Vec<&Arc<Loaded>>, Vec<Span>)> = Vec::new();
        for s in spans.drain(..) {
            let versions: Vec<&Arc<Loaded>> = self
                .slots
                .iter()
                .map(|slot| slot.version_for(&s.trace_id))
                .collect();
            match groups
                .iter_mut()
                .find(|(v, _)| v.iter().zip(&versions).all(|(a, b)| Arc::ptr_eq(a, b)))
            {
                Some((_, g)) => g.push(s),
                None => groups.push((versions, vec![s])),
            }
        }
        for (versions, mut group) in groups {
            run_group(&versions, None, &mut group, dropped, &mut report);
            spans.append(&mut group);
        }
        report
    }
}

/// Runs `spans` through `plugins`, MAX_BATCH at a time; `label` is theirs when known. A batch
/// that fits (the pipeline's always do) is processed where it is, without moving its spans.
fn run_group(
    plugins: &[&Arc<Loaded>],
    label_all: Option<&Arc<str>>,
    spans: &mut Vec<Span>,
    dropped: &mut Vec<Span>,
    report: &mut BatchReport,
) {
    if spans.len() <= MAX_BATCH {
        return run_batch(plugins, label_all, spans, dropped, report);
    }
    let mut rest = std::mem::take(spans).into_iter();
    loop {
        let mut batch: Vec<Span> = rest.by_ref().take(MAX_BATCH).collect();
        if batch.is_empty() {
            break;
        }
        run_batch(plugins, label_all, &mut batch, dropped, report);
        spans.append(&mut batch);
    }
}

fn run_batch(
    plugins: &[&Arc<Loaded>],
    label_all: Option<&Arc<str>>,
    batch: &mut Vec<Span>,
    dropped: &mut Vec<Span>,
    report: &mut BatchReport,
) {
    let mut ran: Vec<&Loaded> = Vec::with_capacity(plugins.len());
    let mut failed: Vec<&Loaded> = Vec::new();
    for p in plugins {
        if batch.is_empty() {
            break;
        }
        if p.is_quarantined() {
            failed.push(p);
            if p.on_failure == OnFailure::Drop {
                report.failed_closed += batch.len() as u64;
                dropped.append(batch);
            }
            continue;
        }
        let before = batch.len();
        match p.run(batch, dropped) {
            Ok(()) => {
                report.dropped += (before - batch.len()) as u64;
                ran.push(p);
            }
            Err(_) => {
                failed.push(p);
                report.quarantined |= p.is_quarantined();
                if p.on_failure == OnFailure::Drop {
                    report.failed_closed += batch.len() as u64;
                    dropped.append(batch);
                }
            }
        }
    }
    let chain: Arc<str> = match label_all {
        Some(l) if failed.is_empty() => l.clone(),
        _ => label(ran.into_iter()).into(),
    };
    let failed: Option<Arc<str>> = (!failed.is_empty()).then(|| label(failed.into_iter()).into());
    for s in batch.iter_mut() {
        s.attributes
            .push(kv(CHAIN_ATTRIBUTE, Value::Str(chain.to_string())));
        if let Some(f) = &failed {
            s.attributes
                .push(kv(FAILED_ATTRIBUTE, Value::Str(f.to_string())));
        }
    }
}

fn label<'a>(plugins: impl Iterator<Item = &'a Loaded>) -> String {
    plugins.map(Loaded::id).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::plugins::abi::tests::span;

    fn verdict(span: u32, keep: bool, edits: Vec<HostEdit>) -> HostVerdict {
        HostVerdict { span, keep, edits }
    }

    #[test]
    fn results_breaking_the_contract_are_refused() {
        let set = |k: &str, v: Value| HostEdit::Set(k.into(), v);
        assert!(check(&[verdict(0, false, vec![])], 1).is_ok());
        for (bad, n, what) in [
            (vec![verdict(1, true, vec![])], 1, "of a batch of 1"),
            (
                vec![verdict(0, true, vec![]), verdict(0, false, vec![])],
                2,
                "two verdicts",
            ),
            (
                vec![verdict(0, true, vec![set(CHAIN_ATTRIBUTE, Value::Int(1))])],
                1,
                "limits",
            ),
            (
                vec![verdict(
                    0,
                    true,
                    vec![set("k", Value::Str("x".repeat(MAX_VALUE + 1)))],
                )],
                1,
                "limits",
            ),
            (
                vec![verdict(0, true, vec![HostEdit::Remove(String::new())])],
                1,
                "limits",
            ),
            (
                vec![verdict(
                    0,
                    true,
                    vec![HostEdit::Remove("k".into()); MAX_EDITS + 1],
                )],
                1,
                "edits for one span",
            ),
        ] {
            match check(&bad, n) {
                Err(CallError::Invalid(e)) => assert!(e.contains(what), "{e}"),
                other => panic!("{what}: {other:?}"),
            }
        }
        assert!(matches!(
            check(&[verdict(0, true, vec![]), verdict(1, true, vec![])], 1),
            Err(CallError::Invalid(e)) if e == "2 verdicts for 1 spans"
        ));
    }

    #[test]
    fn verdicts_apply_drops_sets_removes_and_renames() {
        let mut batch = vec![span(1), span(2), span(3)];
        let mut out = Vec::new();
        let (dropped, edited) = apply(
            &mut batch,
            vec![
                verdict(0, false, vec![]),
                verdict(
                    2,
                    true,
                    vec![
                        HostEdit::Set("url.path".into(), Value::Str("/u/{id}".into())),
                        HostEdit::Set("team".into(), Value::Float(1.5)),
                        HostEdit::Rename("GET /u/{id}".into()),
                        HostEdit::Remove("nothing.here".into()),
                    ],
                ),
            ],
            &mut out,
        );
        assert_eq!((dropped, edited), (1, 1));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].span_id, [1; 8], "the dropped span is handed back");
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[0].span_id, [2; 8]);
        let s = &batch[1];
        assert_eq!(s.name, "GET /u/{id}");
        assert_eq!(s.attr("url.path"), Some(&Value::Str("/u/{id}".into())));
        assert_eq!(s.attr("team"), Some(&Value::Float(1.5)));
        assert_eq!(s.attributes.len(), 2);
    }
}
