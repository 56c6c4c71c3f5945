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
    runtime::{
        Attribute, CallError, Edit, HostState, Instance, Interest, Limits, SpanPluginPre, Verdict,
        WitKind, WitResource, WitSpan, WitStatus, WitValue,
    },
    stats::PluginStats,
};
use crate::span::{Resource, Span, SpanKind, Status, Value, clock_ns, kv};

/// The attribute naming the plugin versions that processed a span.
pub const CHAIN_ATTRIBUTE: &str = "tracer.plugins.chain";
/// Spans per call: bounds a plugin's working memory and its time per call.
pub const MAX_BATCH: usize = 256;
const MAX_EDITS: usize = 64;
/// Failed calls count toward quarantine for this long.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
const MAX_KEY: usize = 256;
const MAX_VALUE: usize = 4096;

/// Attribute key patterns; `*` matches any run of characters.
#[derive(Clone, Debug, Default)]
pub struct KeyMatcher {
    all: bool,
    patterns: Vec<String>,
}

impl KeyMatcher {
    pub fn new(patterns: &[String]) -> Self {
        Self {
            all: patterns.iter().any(|p| p == "*"),
            patterns: patterns.to_vec(),
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.all && self.patterns.is_empty()
    }

    pub fn matches(&self, key: &str) -> bool {
        self.all
            || self
                .patterns
                .iter()
                .any(|p| glob(p.as_bytes(), key.as_bytes()))
    }
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    tracer_common::glob_match(p, s, |a, b| a == b)
}

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
    pre: SpanPluginPre<HostState>,
    limits: Limits,
    attributes: KeyMatcher,
    resource_attributes: KeyMatcher,
    span_name: bool,
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
        pre: SpanPluginPre<HostState>,
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
            pre,
            limits,
            attributes: KeyMatcher::new(&interest.attributes),
            resource_attributes: KeyMatcher::new(&interest.resource_attributes),
            span_name: interest.span_name,
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
        (
            self.attributes.patterns.clone(),
            self.resource_attributes.patterns.clone(),
            self.span_name,
        )
    }

    pub fn is_quarantined(&self) -> bool {
        self.quarantined.load(Relaxed)
    }

    /// Runs the plugin on `batch` (at most MAX_BATCH spans) and applies its verdicts.
    /// On error nothing was applied.
    pub fn run(&self, batch: &mut Vec<Span>) -> Result<(), CallError> {
        let (spans, resources) = to_wit(
            batch,
            &self.attributes,
            &self.resource_attributes,
            self.span_name,
        );
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
        let result = inst.process(&spans, &resources);
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
        let (dropped, edited) = apply(batch, verdicts);
        st.spans_dropped.inc_by(dropped);
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

fn value_to_wit(v: &Value) -> WitValue {
    match v {
        Value::Str(s) => WitValue::Str(s.clone()),
        Value::Int(i) => WitValue::Int(*i),
        Value::Float(x) => WitValue::Float(*x),
        Value::Bool(b) => WitValue::Boolean(*b),
    }
}

fn value_from_wit(v: WitValue) -> Value {
    match v {
        WitValue::Str(s) => Value::Str(s),
        WitValue::Int(i) => Value::Int(i),
        WitValue::Float(x) => Value::Float(x),
        WitValue::Boolean(b) => Value::Bool(b),
    }
}

fn filtered<'a>(
    attrs: impl Iterator<Item = (&'a str, &'a Value)>,
    m: &KeyMatcher,
) -> Vec<Attribute> {
    if m.is_empty() {
        return Vec::new();
    }
    attrs
        .filter(|(k, _)| m.matches(k))
        .map(|(k, v)| Attribute {
            key: k.to_owned(),
            value: value_to_wit(v),
        })
        .collect()
}

/// The batch as the plugin sees it: resources once each, only the attributes it asked for.
fn to_wit(
    batch: &[Span],
    attrs: &KeyMatcher,
    res_attrs: &KeyMatcher,
    span_name: bool,
) -> (Vec<WitSpan>, Vec<WitResource>) {
    let mut seen: Vec<*const Resource> = Vec::new();
    let mut resources = Vec::new();
    let spans = batch
        .iter()
        .map(|s| {
            let ptr = Arc::as_ptr(&s.resource);
            let idx = match seen.iter().position(|&p| p == ptr) {
                Some(i) => i,
                None => {
                    seen.push(ptr);
                    resources.push(WitResource {
                        attributes: filtered(
                            s.resource.attributes.iter().map(|a| (&*a.key, &a.value)),
                            res_attrs,
                        ),
                    });
                    seen.len() - 1
                }
            };
            let half = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap_or_default());
            WitSpan {
                trace_id: (half(&s.trace_id[..8]), half(&s.trace_id[8..])),
                span_id: u64::from_be_bytes(s.span_id),
                parent_span_id: s.parent_span_id.map(u64::from_be_bytes),
                kind: match s.kind {
                    SpanKind::Server => WitKind::Server,
                    SpanKind::Client => WitKind::Client,
                    SpanKind::Internal => WitKind::Internal,
                },
                name: if span_name {
                    s.name.clone()
                } else {
                    String::new()
                },
                start_unix_nano: s.start_unix_ns,
                end_unix_nano: s.end_unix_ns,
                status: match &s.status {
                    Status::Unset => WitStatus::Unset,
                    Status::Error(m) => WitStatus::Error(m.clone()),
                },
                attributes: filtered(s.attributes.iter().map(|a| (&*a.key, &a.value)), attrs),
                resource: idx as u32,
            }
        })
        .collect();
    (spans, resources)
}

/// The contract's limits on a result, checked before anything is applied.
fn check(verdicts: &[Verdict], n: usize) -> Result<(), CallError> {
    let invalid = |why: String| Err(CallError::Invalid(why));
    if verdicts.len() > n {
        return invalid(format!("{} verdicts for {n} spans", verdicts.len()));
    }
    let mut seen = HashSet::with_capacity(verdicts.len());
    let key_ok = |k: &str| !k.is_empty() && k.len() <= MAX_KEY && k != CHAIN_ATTRIBUTE;
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
                Edit::Set(a) => {
                    key_ok(&a.key) && !matches!(&a.value, WitValue::Str(s) if s.len() > MAX_VALUE)
                }
                Edit::Remove(k) => key_ok(k),
                Edit::Rename(name) => !name.is_empty() && name.len() <= MAX_KEY,
            };
            if !ok {
                return invalid(format!(
                    "an edit breaks the limits (keys 1..={MAX_KEY} bytes and not {CHAIN_ATTRIBUTE}, \
                     string values up to {MAX_VALUE} bytes, names 1..={MAX_KEY} bytes): {}",
                    format!("{e:?}").chars().take(200).collect::<String>()
                ));
            }
        }
    }
    Ok(())
}

/// Applies checked verdicts; returns (dropped, edited).
fn apply(batch: &mut Vec<Span>, verdicts: Vec<Verdict>) -> (u64, u64) {
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
                Edit::Set(a) => {
                    let value = value_from_wit(a.value);
                    match span.attributes.iter_mut().find(|x| x.key == a.key) {
                        Some(x) => x.value = value,
                        None => span.attributes.push(kv(a.key, value)),
                    }
                }
                Edit::Remove(k) => span.attributes.retain(|x| x.key != k),
                Edit::Rename(name) => span.name = name,
            }
        }
    }
    if dropped > 0 {
        let mut it = keep.iter();
        batch.retain(|_| *it.next().unwrap_or(&true));
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
    /// processed it. Without canaries the whole batch takes the stable versions; with one,
    /// spans are grouped by the versions their trace gets, each group run on its own.
    pub fn process(&self, spans: &mut Vec<Span>) -> BatchReport {
        let mut report = BatchReport::default();
        if self.slots.is_empty() {
            return report;
        }
        if !self.canaries {
            let stable: Vec<&Arc<Loaded>> = self.slots.iter().map(|s| &s.stable).collect();
            run_group(&stable, Some(&self.label), spans, &mut report);
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
            run_group(&versions, None, &mut group, &mut report);
            spans.append(&mut group);
        }
        report
    }
}

/// Runs `spans` through `plugins`, MAX_BATCH at a time; `label` is theirs when known.
fn run_group(
    plugins: &[&Arc<Loaded>],
    label_all: Option<&Arc<str>>,
    spans: &mut Vec<Span>,
    report: &mut BatchReport,
) {
    let mut rest = std::mem::take(spans).into_iter();
    loop {
        let mut batch: Vec<Span> = rest.by_ref().take(MAX_BATCH).collect();
        if batch.is_empty() {
            break;
        }
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
                    batch.clear();
                }
                continue;
            }
            let before = batch.len();
            match p.run(&mut batch) {
                Ok(()) => {
                    report.dropped += (before - batch.len()) as u64;
                    ran.push(p);
                }
                Err(_) => {
                    failed.push(p);
                    report.quarantined |= p.is_quarantined();
                    if p.on_failure == OnFailure::Drop {
                        report.failed_closed += batch.len() as u64;
                        batch.clear();
                    }
                }
            }
        }
        let chain: Arc<str> = match label_all {
            Some(l) if failed.is_empty() => l.clone(),
            _ => label(ran.into_iter()).into(),
        };
        let failed: Option<Arc<str>> =
            (!failed.is_empty()).then(|| label(failed.into_iter()).into());
        for s in &mut batch {
            s.attributes
                .push(kv(CHAIN_ATTRIBUTE, Value::Str(chain.to_string())));
            if let Some(f) = &failed {
                s.attributes
                    .push(kv(FAILED_ATTRIBUTE, Value::Str(f.to_string())));
            }
        }
        spans.append(&mut batch);
    }
}

fn label<'a>(plugins: impl Iterator<Item = &'a Loaded>) -> String {
    plugins.map(Loaded::id).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_patterns() {
        for (p, k, want) in [
            ("*", "anything", true),
            ("url.path", "url.path", true),
            ("url.path", "url.paths", false),
            ("http.*", "http.request.method", true),
            ("http.*", "url.path", false),
            ("*token*", "x.api_token.value", true),
            ("*token*", "tok", false),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYc_", false),
            ("", "", true),
            ("", "a", false),
        ] {
            assert_eq!(glob(p.as_bytes(), k.as_bytes()), want, "{p} vs {k}");
        }
        let m = KeyMatcher::new(&["url.*".into(), "http.route".into()]);
        assert!(m.matches("url.query") && m.matches("http.route") && !m.matches("http.method"));
        assert!(KeyMatcher::new(&[]).is_empty());
    }

    fn span(i: u8) -> Span {
        Span {
            trace_id: [i; 16],
            span_id: [i; 8],
            parent_span_id: None,
            flags: 1,
            trace_state: None,
            kind: SpanKind::Server,
            name: "GET".into(),
            start_unix_ns: 1,
            end_unix_ns: 2,
            status: Status::Unset,
            attributes: vec![kv("url.path", Value::Str(format!("/u/{i}")))],
            resource: Arc::new(Resource {
                pid: 1,
                service_name: "svc".into(),
                attributes: vec![kv("service.name", Value::Str("svc".into()))],
            }),
        }
    }

    #[test]
    fn conversion_sends_only_what_was_asked() {
        let shared = span(1).resource;
        let mut batch = vec![span(1), span(2), span(3)];
        batch[1].resource = shared.clone();
        batch[2].resource = shared;
        let (s, r) = to_wit(&batch, &KeyMatcher::new(&[]), &KeyMatcher::new(&[]), false);
        assert!(
            s.iter()
                .all(|s| s.attributes.is_empty() && s.name.is_empty())
        );
        assert_eq!(r.len(), 2, "two distinct resources");
        assert_eq!((s[0].resource, s[1].resource, s[2].resource), (0, 1, 1));
        assert_eq!(s[0].trace_id, (0x0101010101010101, 0x0101010101010101));
        let (s, r) = to_wit(
            &batch,
            &KeyMatcher::new(&["url.*".into()]),
            &KeyMatcher::new(&["service.name".into()]),
            true,
        );
        assert_eq!(s[2].attributes[0].key, "url.path");
        assert_eq!(s[2].name, "GET");
        assert_eq!(r[1].attributes.len(), 1);
    }

    fn verdict(span: u32, keep: bool, edits: Vec<Edit>) -> Verdict {
        Verdict { span, keep, edits }
    }

    #[test]
    fn results_breaking_the_contract_are_refused() {
        let set = |k: &str, v: WitValue| {
            Edit::Set(Attribute {
                key: k.into(),
                value: v,
            })
        };
        assert!(check(&[verdict(0, false, vec![])], 1).is_ok());
        for (bad, n, what) in [
            (vec![verdict(1, true, vec![])], 1, "of a batch of 1"),
            (
                vec![verdict(0, true, vec![]), verdict(0, false, vec![])],
                2,
                "two verdicts",
            ),
            (
                vec![verdict(
                    0,
                    true,
                    vec![set(CHAIN_ATTRIBUTE, WitValue::Int(1))],
                )],
                1,
                "limits",
            ),
            (
                vec![verdict(
                    0,
                    true,
                    vec![set("k", WitValue::Str("x".repeat(MAX_VALUE + 1)))],
                )],
                1,
                "limits",
            ),
            (
                vec![verdict(0, true, vec![Edit::Remove(String::new())])],
                1,
                "limits",
            ),
            (
                vec![verdict(
                    0,
                    true,
                    vec![Edit::Remove("k".into()); MAX_EDITS + 1],
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
        let (dropped, edited) = apply(
            &mut batch,
            vec![
                verdict(0, false, vec![]),
                verdict(
                    2,
                    true,
                    vec![
                        Edit::Set(Attribute {
                            key: "url.path".into(),
                            value: WitValue::Str("/u/{id}".into()),
                        }),
                        Edit::Set(Attribute {
                            key: "team".into(),
                            value: WitValue::Float(1.5),
                        }),
                        Edit::Rename("GET /u/{id}".into()),
                        Edit::Remove("nothing.here".into()),
                    ],
                ),
            ],
        );
        assert_eq!((dropped, edited), (1, 1));
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[0].span_id, [2; 8]);
        let s = &batch[1];
        assert_eq!(s.name, "GET /u/{id}");
        assert_eq!(s.attr("url.path"), Some(&Value::Str("/u/{id}".into())));
        assert_eq!(s.attr("team"), Some(&Value::Float(1.5)));
        assert_eq!(s.attributes.len(), 2);
    }
}
