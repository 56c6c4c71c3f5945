//! `tracer:plugin@0.2.0`: the packed batch. All strings of a batch go over as one buffer and all
//! attributes as one table, so lowering a batch costs the guest a handful of allocations
//! whatever its size; the answer comes back packed the same way and every reference in it is
//! checked before use.
use wasmtime::Store;

use super::{Answer, HostEdit, HostVerdict, Interest, KeyMatcher, Resources, View, matching};
use crate::{
    plugins::{chain::OnFailure, runtime::HostState},
    span::{KeyValue, Span, SpanKind, Status, Value},
};

wasmtime::component::bindgen!({
    path: "../plugins/wit",
    world: "span-plugin",
});

use tracer::plugin::types::{
    Attribute, Batch, Edit, FailurePolicy, Resource as WitResource, Rows, Span as WitSpan,
    SpanKind as WitKind, Status as WitStatus, Text, Value as WitValue, Verdicts,
};

pub const CONTRACT: &str = "tracer:plugin@0.2.0";

impl tracer::plugin::types::Host for HostState {}

/// The batch an instance was last sent: its buffers are reused for the next one.
pub struct Scratch(Batch);

impl Default for Scratch {
    fn default() -> Self {
        Self(Batch {
            strings: String::new(),
            attributes: Vec::new(),
            resources: Vec::new(),
            spans: Vec::new(),
        })
    }
}

pub(super) fn init(b: &SpanPlugin, store: &mut Store<HostState>, config: &str) -> Answer<Interest> {
    Ok(b.tracer_plugin_plugin()
        .call_init(store, config)?
        .map(|i| Interest {
            attributes: i.attributes,
            resource_attributes: i.resource_attributes,
            span_name: i.span_name,
            trace_state: i.trace_state,
            on_failure: match i.on_failure {
                FailurePolicy::HostDefault => None,
                FailurePolicy::Pass => Some(OnFailure::Pass),
                FailurePolicy::Drop => Some(OnFailure::Drop),
            },
        }))
}

pub(super) fn process(
    b: &SpanPlugin,
    scratch: &mut Scratch,
    store: &mut Store<HostState>,
    batch: &[Span],
    view: &View,
) -> Answer<Vec<HostVerdict>> {
    pack(batch, view, &mut scratch.0);
    let verdicts = b
        .tracer_plugin_plugin()
        .call_process_batch(store, &scratch.0)?;
    Ok(unpack(&verdicts))
}

const NO_TEXT: Text = Text { offset: 0, len: 0 };

fn text(strings: &mut String, s: &str) -> Text {
    let offset = strings.len() as u32;
    strings.push_str(s);
    Text {
        offset,
        len: s.len() as u32,
    }
}

/// Appends the attributes `m` lets through to the batch's table.
fn rows(b: &mut Batch, attrs: &[KeyValue], m: &KeyMatcher) -> Rows {
    let first = b.attributes.len() as u32;
    for (k, v) in matching(attrs, m) {
        let key = text(&mut b.strings, k);
        let value = match v {
            Value::Str(s) => WitValue::Str(text(&mut b.strings, s)),
            Value::Int(i) => WitValue::Int(*i),
            Value::Float(x) => WitValue::Float(*x),
            Value::Bool(x) => WitValue::Boolean(*x),
        };
        b.attributes.push(Attribute { key, value });
    }
    Rows {
        first,
        len: b.attributes.len() as u32 - first,
    }
}

/// The batch as the plugin sees it: resources once each, only what it asked for.
fn pack(batch: &[Span], view: &View, b: &mut Batch) {
    b.strings.clear();
    b.attributes.clear();
    b.resources.clear();
    b.spans.clear();
    let mut seen = Resources::default();
    for s in batch {
        let (idx, new) = seen.index(&s.resource);
        if new {
            let attributes = rows(b, &s.resource.attributes, &view.resource_attributes);
            b.resources.push(WitResource { attributes });
        }
        let attributes = rows(b, &s.attributes, &view.attributes);
        let name = if view.span_name {
            text(&mut b.strings, &s.name)
        } else {
            NO_TEXT
        };
        let trace_state = match &s.trace_state {
            Some(t) if view.trace_state => Some(text(&mut b.strings, t)),
            _ => None,
        };
        let status = match &s.status {
            Status::Unset => WitStatus::Unset,
            Status::Error(m) => WitStatus::Error(text(&mut b.strings, m)),
        };
        b.spans.push(WitSpan {
            trace_id: super::trace_id_halves(&s.trace_id),
            span_id: u64::from_be_bytes(s.span_id),
            parent_span_id: s.parent_span_id.map(u64::from_be_bytes),
            trace_flags: s.flags,
            trace_state,
            kind: match s.kind {
                SpanKind::Server => WitKind::Server,
                SpanKind::Client => WitKind::Client,
                SpanKind::Internal => WitKind::Internal,
            },
            name,
            start_unix_nano: s.start_unix_ns,
            end_unix_nano: s.end_unix_ns,
            status,
            attributes,
            resource: idx,
        });
    }
}

/// The answer in host types; Err names the first reference that points outside it.
fn unpack(v: &Verdicts) -> Result<Vec<HostVerdict>, String> {
    let text = |t: &Text| {
        let start = t.offset as usize;
        v.strings
            .get(start..start.saturating_add(t.len as usize))
            .map(str::to_owned)
            .ok_or_else(|| {
                format!(
                    "text of {} bytes at {start} is outside the {} bytes of strings or splits a character",
                    t.len,
                    v.strings.len()
                )
            })
    };
    v.verdicts
        .iter()
        .map(|verdict| {
            let Rows { first, len } = verdict.edits;
            let edits = v
                .edits
                .get(first as usize..(first as usize).saturating_add(len as usize))
                .ok_or_else(|| {
                    format!(
                        "edit rows {first}..+{len} of span {} are outside the {} edits",
                        verdict.span,
                        v.edits.len()
                    )
                })?;
            let edits = edits
                .iter()
                .map(|e| {
                    Ok(match e {
                        Edit::Set(a) => HostEdit::Set(
                            text(&a.key)?,
                            match &a.value {
                                WitValue::Str(s) => Value::Str(text(s)?),
                                WitValue::Int(i) => Value::Int(*i),
                                WitValue::Float(x) => Value::Float(*x),
                                WitValue::Boolean(b) => Value::Bool(*b),
                            },
                        ),
                        Edit::Remove(k) => HostEdit::Remove(text(k)?),
                        Edit::Rename(n) => HostEdit::Rename(text(n)?),
                    })
                })
                .collect::<Result<_, String>>()?;
            Ok(HostVerdict {
                span: verdict.span,
                keep: verdict.keep,
                edits,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{super::tests::*, *};
    use tracer::plugin::types::Verdict;

    fn str_at<'a>(b: &'a Batch, t: &Text) -> &'a str {
        &b.strings[t.offset as usize..][..t.len as usize]
    }

    #[test]
    fn packing_sends_only_what_was_asked() {
        let batch = batch();
        let (none, all) = views();
        let mut b = Scratch::default().0;
        pack(&batch, &none, &mut b);
        assert!(b.strings.is_empty() && b.attributes.is_empty());
        assert_eq!(b.resources.len(), 2, "two distinct resources");
        let s = &b.spans;
        assert_eq!((s[0].resource, s[1].resource, s[2].resource), (0, 1, 1));
        assert_eq!(s[0].trace_id, (0x0101010101010101, 0x0101010101010101));
        assert!(
            s.iter()
                .all(|s| s.trace_state.is_none() && s.trace_flags == 1)
        );
        // The buffers are reused: a second batch replaces the first.
        pack(&batch, &all, &mut b);
        assert_eq!(b.spans.len(), 3);
        let s = &b.spans[2];
        // Rows: resource 0, span 0, resource 1, span 1, span 2.
        assert_eq!((s.attributes.first, s.attributes.len), (4, 1));
        let a = &b.attributes[s.attributes.first as usize];
        assert_eq!(str_at(&b, &a.key), "url.path");
        assert!(matches!(&a.value, WitValue::Str(v) if str_at(&b, v) == "/u/3"));
        assert_eq!(str_at(&b, &s.name), "GET");
        assert_eq!(str_at(&b, s.trace_state.as_ref().unwrap()), "k=v");
        let r = &b.resources[1].attributes;
        assert_eq!(r.len, 1);
        assert_eq!(
            str_at(&b, &b.attributes[r.first as usize].key),
            "service.name"
        );
    }

    fn t(offset: u32, len: u32) -> Text {
        Text { offset, len }
    }

    fn answer(edits: Vec<Edit>, rows: Rows) -> Verdicts {
        Verdicts {
            strings: "http.route/u/{id}é".into(),
            edits,
            verdicts: vec![Verdict {
                span: 1,
                keep: true,
                edits: rows,
            }],
        }
    }

    #[test]
    fn answers_are_unpacked_and_bad_references_refused() {
        let edits = vec![
            Edit::Set(Attribute {
                key: t(0, 10),
                value: WitValue::Str(t(10, 7)),
            }),
            Edit::Remove(t(0, 4)),
            Edit::Rename(t(17, 2)),
        ];
        let v = unpack(&answer(edits.clone(), Rows { first: 0, len: 3 })).unwrap();
        assert_eq!(
            v,
            [HostVerdict {
                span: 1,
                keep: true,
                edits: vec![
                    HostEdit::Set("http.route".into(), Value::Str("/u/{id}".into())),
                    HostEdit::Remove("http".into()),
                    HostEdit::Rename("é".into()),
                ],
            }]
        );
        for (edits, rows, why) in [
            (
                edits.clone(),
                Rows { first: 1, len: 3 },
                "outside the 3 edits",
            ),
            (
                edits.clone(),
                Rows {
                    first: u32::MAX,
                    len: u32::MAX,
                },
                "outside the 3 edits",
            ),
            (
                vec![Edit::Remove(t(15, 5))],
                Rows { first: 0, len: 1 },
                "outside the 19 bytes",
            ),
            (
                vec![Edit::Rename(t(17, 1))],
                Rows { first: 0, len: 1 },
                "splits a character",
            ),
            (
                vec![Edit::Rename(t(u32::MAX, u32::MAX))],
                Rows { first: 0, len: 1 },
                "outside",
            ),
        ] {
            let e = unpack(&answer(edits, rows)).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }
}
