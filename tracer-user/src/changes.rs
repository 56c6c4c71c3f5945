//! Policy changes, told everywhere an operator looks: every reload of the config or the
//! plugin chain (whatever started it, whatever came of it) is one structured log event, a
//! point of `tracer_reload_duration_seconds`, and a span of the tracer's own service, so a
//! trace backend shows when policy changed next to the spans it changed. Also holds the
//! effective daemon settings and their version, which every exported span carries.
use std::{
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{family::Family, histogram::Histogram},
};
use sha2::{Digest, Sha256};

use crate::{
    export::Submitter,
    metrics::{Gauge, Registry},
    span::{Resource, Span, SpanKind, Status, Value, kv},
};

/// The span attribute naming the effective daemon settings a span was produced under.
pub const CONFIG_VERSION_ATTRIBUTE: &str = "tracer.config.version";

/// What started a reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)] // the label values, as operators type them
pub enum Trigger {
    /// The daemon starting up with its plugin directory.
    start,
    /// A change in the plugin directory.
    file_watch,
    sighup,
    /// `POST /reload`.
    admin,
    /// A plugin failed too often and was taken out or replaced.
    quarantine,
    /// `tracer plugins rollback`.
    rollback,
    /// `tracer plugins promote`.
    promote,
}

/// What came of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    /// Something changed, and nothing was refused.
    applied,
    /// Nothing differed from what runs: nothing was touched.
    unchanged,
    /// Some file or setting was refused (the last good version of it stays); the rest applied.
    rejected,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Labels {
    trigger: Trigger,
    outcome: Outcome,
}

/// One reload, as it is reported.
#[derive(Clone, Debug)]
pub struct Change {
    pub trigger: Trigger,
    pub outcome: Outcome,
    pub started: SystemTime,
    pub duration: Duration,
    /// What changed, one item each (`loaded 20-redactor@ab12..`, `settings v1 -> v2`, ...).
    pub what: Vec<String>,
    /// The plugin chain running afterwards.
    pub chain: String,
}

/// The effective daemon settings, as `GET /config` shows them.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Effective {
    /// 12 hex digits of SHA-256 over the settings: the value of `tracer.config.version`.
    pub version: String,
    pub settings: serde_json::Value,
    /// Settings changed in the file that take effect only after a restart.
    pub pending_restart: Vec<String>,
    pub config_file: Option<String>,
}

impl Effective {
    pub fn new(
        settings: serde_json::Value,
        pending_restart: Vec<String>,
        config_file: Option<String>,
    ) -> Self {
        Effective {
            version: version_of(&settings),
            settings,
            pending_restart,
            config_file,
        }
    }
}

/// 12 hex digits of SHA-256 over the settings' canonical JSON (serde_json sorts the keys).
fn version_of(settings: &serde_json::Value) -> String {
    Sha256::digest(settings.to_string().as_bytes())[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Where the own spans go, set once the exporters run.
struct Sender {
    export: Submitter,
    resource: Arc<Resource>,
}

pub struct Changes {
    durations: Family<Labels, Histogram>,
    last_success: Gauge,
    effective: ArcSwap<Effective>,
    /// The version as the span attribute's value, shared by every span until it changes.
    version: ArcSwap<String>,
    sender: OnceLock<Sender>,
    /// The latest changes, newest last, for `GET /config`.
    recent: Mutex<Vec<Change>>,
}

const RECENT: usize = 16;

impl Changes {
    pub fn new(reg: &Registry) -> Self {
        let durations = Family::<Labels, Histogram>::new_with_constructor(|| {
            // 100 us to 10 s: a swap of validated plugins is sub-millisecond, a reload that
            // compiles a new module takes hundreds of ms on a small node.
            Histogram::new([
                0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ])
        });
        reg.register(
            "reload_duration_seconds",
            "Time a reload took, by what started it (start, file_watch, sighup, admin, quarantine, rollback, promote) and its outcome (applied, unchanged, rejected)",
            durations.clone(),
        );
        Changes {
            durations,
            last_success: reg.gauge(
                "reload_last_success_timestamp_seconds",
                "Unix time of the last reload that applied a change",
            ),
            effective: ArcSwap::from_pointee(Effective::default()),
            version: ArcSwap::from_pointee(String::new()),
            sender: OnceLock::new(),
            recent: Mutex::default(),
        }
    }

    /// From now on every change is also a span of the tracer's own `resource`.
    pub fn export_to(&self, export: Submitter, resource: Arc<Resource>) {
        let _ = self.sender.set(Sender { export, resource });
    }

    pub fn set_effective(&self, e: Effective) {
        self.version.store(Arc::new(e.version.clone()));
        self.effective.store(Arc::new(e));
    }

    pub fn effective(&self) -> Arc<Effective> {
        self.effective.load_full()
    }

    /// The `tracer.config.version` value of spans produced now.
    pub fn version(&self) -> Arc<String> {
        self.version.load_full()
    }

    /// The latest changes, oldest first.
    pub fn recent(&self) -> Vec<Change> {
        self.recent.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Reports one reload: log event, histogram point, own span.
    pub fn record(&self, c: Change) {
        let what = c.what.join("; ");
        let ms = c.duration.as_secs_f64() * 1e3;
        let (trigger, outcome) = (format!("{:?}", c.trigger), format!("{:?}", c.outcome));
        match c.outcome {
            Outcome::rejected => tracing::warn!(
                target: "tracer::reload", trigger, outcome, duration_ms = ms, chain = c.chain,
                "reload: {what}"
            ),
            Outcome::applied => tracing::info!(
                target: "tracer::reload", trigger, outcome, duration_ms = ms, chain = c.chain,
                "reload: {what}"
            ),
            Outcome::unchanged => tracing::debug!(
                target: "tracer::reload", trigger, outcome, duration_ms = ms, "reload: nothing changed"
            ),
        }
        self.durations
            .get_or_create(&Labels {
                trigger: c.trigger,
                outcome: c.outcome,
            })
            .observe(c.duration.as_secs_f64());
        if c.outcome == Outcome::applied {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            self.last_success.set(now as i64);
        }
        if c.outcome != Outcome::unchanged
            && let Some(s) = self.sender.get()
        {
            s.export.submit(vec![self.span(&c, &s.resource)]);
        }
        if let Ok(mut r) = self.recent.lock() {
            if r.len() >= RECENT {
                r.remove(0);
            }
            r.push(c);
        }
    }

    fn span(&self, c: &Change, resource: &Arc<Resource>) -> Span {
        let start = c
            .started
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let str = |s: &str| Value::Str(s.to_owned());
        Span {
            trace_id: rand::random(),
            span_id: rand::random(),
            parent_span_id: None,
            flags: 1,
            trace_state: None,
            kind: SpanKind::Internal,
            name: "tracer reload".into(),
            start_unix_ns: start,
            end_unix_ns: start + c.duration.as_nanos() as u64,
            status: match c.outcome {
                Outcome::rejected => Status::Error("a file or setting was refused".into()),
                _ => Status::Unset,
            },
            attributes: vec![
                kv("tracer.reload.trigger", str(&format!("{:?}", c.trigger))),
                kv("tracer.reload.outcome", str(&format!("{:?}", c.outcome))),
                kv("tracer.reload.changes", str(&c.what.join("; "))),
                kv(crate::plugins::CHAIN_ATTRIBUTE, str(&c.chain)),
                kv(CONFIG_VERSION_ATTRIBUTE, str(&self.version())),
            ],
            resource: resource.clone(),
        }
    }
}

impl serde::Serialize for Change {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Change", 6)?;
        st.serialize_field("trigger", &format!("{:?}", self.trigger))?;
        st.serialize_field("outcome", &format!("{:?}", self.outcome))?;
        st.serialize_field(
            "at_unix",
            &self
                .started
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        )?;
        st.serialize_field("duration_ms", &(self.duration.as_secs_f64() * 1e3))?;
        st.serialize_field("changes", &self.what)?;
        st.serialize_field("chain", &self.chain)?;
        st.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_a_histogram_point_and_unchanged_reloads_move_no_timestamp() {
        let reg = Registry::default();
        let c = Changes::new(&reg);
        c.set_effective(Effective::new(serde_json::json!({"a": 1}), vec![], None));
        let v1 = c.version();
        assert_eq!(v1.len(), 12);
        let change = |outcome| Change {
            trigger: Trigger::admin,
            outcome,
            started: SystemTime::now(),
            duration: Duration::from_millis(3),
            what: vec!["loaded x@1".into()],
            chain: "x@1".into(),
        };
        c.record(change(Outcome::unchanged));
        let text = reg.prometheus();
        assert!(
            text.contains("tracer_reload_last_success_timestamp_seconds 0"),
            "{text}"
        );
        assert!(text.contains(
            "tracer_reload_duration_seconds_count{trigger=\"admin\",outcome=\"unchanged\"} 1"
        ));
        c.record(change(Outcome::applied));
        assert!(
            !reg.prometheus()
                .contains("tracer_reload_last_success_timestamp_seconds 0")
        );
        assert_eq!(c.recent().len(), 2);
        // The same settings give the same version; other settings another.
        c.set_effective(Effective::new(serde_json::json!({"a": 1}), vec![], None));
        assert_eq!(c.version(), v1);
        c.set_effective(Effective::new(serde_json::json!({"a": 2}), vec![], None));
        assert_ne!(c.version(), v1);
    }
}
