//! The packed batch of contract 0.2.0 turned into the plugin's types and back. Plugin code
//! never sees it: a span's strings arrive as ranges of one buffer and leave the same way, so
//! the boundary costs a few copies per batch instead of an allocation per string.
use crate::{
    Attribute, Edit, Interest, Resource, Span, Status, Value, Verdict,
    bindings::tracer::plugin::types as wit,
};

pub(crate) fn interest(i: Interest) -> wit::Interest {
    wit::Interest {
        attributes: i.attributes,
        resource_attributes: i.resource_attributes,
        span_name: i.span_name,
        trace_state: i.trace_state,
        on_failure: i.on_failure,
    }
}

/// A text of the batch (empty if the host sent one outside its buffer, which it does not).
fn text(b: &wit::Batch, t: wit::Text) -> String {
    let start = t.offset as usize;
    b.strings
        .get(start..start.saturating_add(t.len as usize))
        .unwrap_or_default()
        .to_owned()
}

fn attributes(b: &wit::Batch, rows: wit::Rows) -> Vec<Attribute> {
    let start = rows.first as usize;
    let rows = b
        .attributes
        .get(start..start.saturating_add(rows.len as usize))
        .unwrap_or_default();
    rows.iter()
        .map(|a| Attribute {
            key: text(b, a.key),
            value: match a.value {
                wit::Value::Str(s) => Value::Str(text(b, s)),
                wit::Value::Int(i) => Value::Int(i),
                wit::Value::Float(x) => Value::Float(x),
                wit::Value::Boolean(x) => Value::Boolean(x),
            },
        })
        .collect()
}

pub(crate) fn unpack(b: &wit::Batch) -> (Vec<Span>, Vec<Resource>) {
    let resources = b
        .resources
        .iter()
        .map(|r| Resource {
            attributes: attributes(b, r.attributes),
        })
        .collect();
    let spans = b
        .spans
        .iter()
        .map(|s| Span {
            trace_id: s.trace_id,
            span_id: s.span_id,
            parent_span_id: s.parent_span_id,
            trace_flags: s.trace_flags,
            trace_state: s.trace_state.map(|t| text(b, t)),
            kind: s.kind,
            name: text(b, s.name),
            start_unix_nano: s.start_unix_nano,
            end_unix_nano: s.end_unix_nano,
            status: match s.status {
                wit::Status::Unset => Status::Unset,
                wit::Status::Ok => Status::Ok,
                wit::Status::Error(m) => Status::Error(text(b, m)),
            },
            attributes: attributes(b, s.attributes),
            resource: s.resource,
        })
        .collect();
    (spans, resources)
}

fn put(strings: &mut String, s: &str) -> wit::Text {
    let offset = strings.len() as u32;
    strings.push_str(s);
    wit::Text {
        offset,
        len: s.len() as u32,
    }
}

pub(crate) fn pack(verdicts: Vec<Verdict>) -> wit::Verdicts {
    let mut out = wit::Verdicts {
        strings: String::new(),
        edits: Vec::new(),
        verdicts: Vec::with_capacity(verdicts.len()),
    };
    for v in verdicts {
        let first = out.edits.len() as u32;
        for e in &v.edits {
            let s = &mut out.strings;
            out.edits.push(match e {
                Edit::Set(a) => wit::Edit::Set(wit::Attribute {
                    key: put(s, &a.key),
                    value: match &a.value {
                        Value::Str(v) => wit::Value::Str(put(s, v)),
                        Value::Int(i) => wit::Value::Int(*i),
                        Value::Float(x) => wit::Value::Float(*x),
                        Value::Boolean(x) => wit::Value::Boolean(*x),
                    },
                }),
                Edit::Remove(k) => wit::Edit::Remove(put(s, k)),
                Edit::Rename(n) => wit::Edit::Rename(put(s, n)),
            });
        }
        out.verdicts.push(wit::Verdict {
            span: v.span,
            keep: v.keep,
            edits: wit::Rows {
                first,
                len: out.edits.len() as u32 - first,
            },
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FailurePolicy, SpanKind};

    fn t(offset: u32, len: u32) -> wit::Text {
        wit::Text { offset, len }
    }

    #[test]
    fn a_packed_batch_unpacks_into_plugin_types() {
        let b = wit::Batch {
            strings: "url.path/a/1GETk=vboom".into(),
            attributes: vec![
                wit::Attribute {
                    key: t(0, 8),
                    value: wit::Value::Str(t(8, 4)),
                },
                wit::Attribute {
                    key: t(0, 3),
                    value: wit::Value::Int(7),
                },
            ],
            resources: vec![wit::Resource {
                attributes: wit::Rows { first: 1, len: 1 },
            }],
            spans: vec![wit::Span {
                trace_id: (1, 2),
                span_id: 3,
                parent_span_id: Some(4),
                trace_flags: 1,
                trace_state: Some(t(15, 3)),
                kind: SpanKind::Client,
                name: t(12, 3),
                start_unix_nano: 5,
                end_unix_nano: 6,
                status: wit::Status::Error(t(18, 4)),
                attributes: wit::Rows { first: 0, len: 1 },
                resource: 0,
            }],
        };
        let (spans, resources) = unpack(&b);
        let s = &spans[0];
        assert_eq!(s.str_attr("url.path"), Some("/a/1"));
        assert_eq!(s.attributes.len(), 1);
        assert_eq!((s.name.as_str(), s.trace_state()), ("GET", Some("k=v")));
        assert!(s.sampled() && s.is_error() && s.parent_span_id == Some(4));
        assert_eq!(resources[0].attr("url"), Some(&Value::Int(7)));
    }

    #[test]
    fn verdicts_pack_into_one_buffer() {
        let v = pack(vec![
            Verdict {
                span: 0,
                keep: false,
                edits: Vec::new(),
            },
            Verdict {
                span: 2,
                keep: true,
                edits: vec![
                    Edit::Set(Attribute {
                        key: "k".into(),
                        value: Value::Str("vé".into()),
                    }),
                    Edit::Rename("n".into()),
                ],
            },
        ]);
        assert_eq!(v.strings, "kvén");
        assert_eq!(v.verdicts.len(), 2);
        assert_eq!((v.verdicts[0].edits.first, v.verdicts[0].edits.len), (0, 0));
        assert_eq!((v.verdicts[1].edits.first, v.verdicts[1].edits.len), (0, 2));
        assert!(matches!(
            v.edits[..],
            [
                wit::Edit::Set(wit::Attribute {
                    key: wit::Text { offset: 0, len: 1 },
                    value: wit::Value::Str(wit::Text { offset: 1, len: 3 }),
                }),
                wit::Edit::Rename(wit::Text { offset: 4, len: 1 }),
            ]
        ));
    }

    #[test]
    fn the_failure_policy_reaches_the_host() {
        let i = interest(
            Interest::none()
                .on_failure(FailurePolicy::Drop)
                .trace_state(),
        );
        assert_eq!(i.on_failure, FailurePolicy::Drop);
        assert!(i.trace_state);
    }
}
