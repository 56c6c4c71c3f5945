//! `tracer:plugin@0.1.0`: every string and attribute list crosses the boundary on its own.
//! Kept so plugins built before 0.2.0 still run.
use wasmtime::Store;

use super::{Answer, HostEdit, HostVerdict, Interest, KeyMatcher, Resources, View, matching, v2};
use crate::{
    plugins::runtime::HostState,
    span::{Span, SpanKind, Status, Value},
};

wasmtime::component::bindgen!({
    path: "../plugins/wit/v0.1",
    world: "span-plugin",
});

use exports::tracer::plugin::plugin::Verdict;
use tracer::plugin::types::{
    Attribute, Edit, Resource as WitResource, Span as WitSpan, SpanKind as WitKind,
    Status as WitStatus, Value as WitValue,
};

pub const CONTRACT: &str = "tracer:plugin@0.1.0";

/// The host interface did not change in 0.2.0: the same functions serve both.
impl tracer::plugin::host::Host for HostState {
    fn log(&mut self, level: tracer::plugin::host::Level, message: String) {
        use {tracer::plugin::host::Level as L1, v2::tracer::plugin::host::Level as L2};
        let level = match level {
            L1::Trace => L2::Trace,
            L1::Debug => L2::Debug,
            L1::Info => L2::Info,
            L1::Warn => L2::Warn,
            L1::Error => L2::Error,
        };
        v2::tracer::plugin::host::Host::log(self, level, message)
    }

    fn random_u64(&mut self) -> u64 {
        v2::tracer::plugin::host::Host::random_u64(self)
    }

    fn now_unix_nano(&mut self) -> u64 {
        v2::tracer::plugin::host::Host::now_unix_nano(self)
    }

    fn counter_add(&mut self, name: String, delta: u64) {
        v2::tracer::plugin::host::Host::counter_add(self, name, delta)
    }
}

impl tracer::plugin::types::Host for HostState {}

pub(super) fn init(b: &SpanPlugin, store: &mut Store<HostState>, config: &str) -> Answer<Interest> {
    Ok(b.tracer_plugin_plugin()
        .call_init(store, config)?
        .map(|i| Interest {
            attributes: i.attributes,
            resource_attributes: i.resource_attributes,
            span_name: i.span_name,
            trace_state: false,
            on_failure: None,
        }))
}

pub(super) fn process(
    b: &SpanPlugin,
    store: &mut Store<HostState>,
    batch: &[Span],
    view: &View,
) -> Answer<Vec<HostVerdict>> {
    let (spans, resources) = to_wit(batch, view);
    let verdicts = b
        .tracer_plugin_plugin()
        .call_process_batch(store, &spans, &resources)?;
    Ok(Ok(verdicts.into_iter().map(from_wit).collect()))
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

fn attributes(attrs: &[crate::span::KeyValue], m: &KeyMatcher) -> Vec<Attribute> {
    matching(attrs, m)
        .map(|(k, v)| Attribute {
            key: k.to_owned(),
            value: value_to_wit(v),
        })
        .collect()
}

/// The batch as the plugin sees it: resources once each, only the attributes it asked for.
fn to_wit(batch: &[Span], view: &View) -> (Vec<WitSpan>, Vec<WitResource>) {
    let mut seen = Resources::default();
    let mut resources = Vec::new();
    let spans = batch
        .iter()
        .map(|s| {
            let (idx, new) = seen.index(&s.resource);
            if new {
                resources.push(WitResource {
                    attributes: attributes(&s.resource.attributes, &view.resource_attributes),
                });
            }
            WitSpan {
                trace_id: super::trace_id_halves(&s.trace_id),
                span_id: u64::from_be_bytes(s.span_id),
                parent_span_id: s.parent_span_id.map(u64::from_be_bytes),
                kind: match s.kind {
                    SpanKind::Server => WitKind::Server,
                    SpanKind::Client => WitKind::Client,
                    SpanKind::Internal => WitKind::Internal,
                },
                name: if view.span_name {
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
                attributes: attributes(&s.attributes, &view.attributes),
                resource: idx,
            }
        })
        .collect();
    (spans, resources)
}

fn from_wit(v: Verdict) -> HostVerdict {
    HostVerdict {
        span: v.span,
        keep: v.keep,
        edits: v
            .edits
            .into_iter()
            .map(|e| match e {
                Edit::Set(a) => HostEdit::Set(a.key, value_from_wit(a.value)),
                Edit::Remove(k) => HostEdit::Remove(k),
                Edit::Rename(n) => HostEdit::Rename(n),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::{super::tests::*, *};

    #[test]
    fn conversion_sends_only_what_was_asked() {
        let batch = batch();
        let (none, all) = views();
        let (s, r) = to_wit(&batch, &none);
        assert!(
            s.iter()
                .all(|s| s.attributes.is_empty() && s.name.is_empty())
        );
        assert_eq!(r.len(), 2, "two distinct resources");
        assert_eq!((s[0].resource, s[1].resource, s[2].resource), (0, 1, 1));
        assert_eq!(s[0].trace_id, (0x0101010101010101, 0x0101010101010101));
        let (s, r) = to_wit(&batch, &all);
        assert_eq!(s[2].attributes[0].key, "url.path");
        assert_eq!(s[2].name, "GET");
        assert_eq!(r[1].attributes.len(), 1);
    }

    #[test]
    fn verdicts_come_back_in_host_types() {
        let v = from_wit(Verdict {
            span: 2,
            keep: true,
            edits: vec![
                Edit::Set(Attribute {
                    key: "k".into(),
                    value: WitValue::Boolean(true),
                }),
                Edit::Remove("r".into()),
                Edit::Rename("n".into()),
            ],
        });
        assert_eq!(
            v,
            HostVerdict {
                span: 2,
                keep: true,
                edits: vec![
                    HostEdit::Set("k".into(), Value::Bool(true)),
                    HostEdit::Remove("r".into()),
                    HostEdit::Rename("n".into()),
                ],
            }
        );
    }
}
