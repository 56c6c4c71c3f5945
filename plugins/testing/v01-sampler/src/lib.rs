//! A test-only plugin built for `tracer:plugin@0.1.0`, the contract before the packed batch, with
//! raw wit-bindgen rather than the SDK (which speaks 0.2.0). It stands for every plugin built
//! before 0.2.0 that the host must still load and run. Built to
//! `target/plugins/testing/v01-sampler.wasm`; never ship it.
//!
//! It drops client spans and sets `v01.name` to the span name on the others (so it declares
//! interest in the name).
wit_bindgen::generate!({
    path: "../../wit/v0.1",
    world: "span-plugin",
});

use exports::tracer::plugin::plugin::Guest;
use tracer::plugin::types::{Attribute, Edit, Interest, Resource, Span, SpanKind, Value, Verdict};

pub struct V01Sampler;

impl Guest for V01Sampler {
    fn init(_config: String) -> Result<Interest, String> {
        Ok(Interest {
            attributes: Vec::new(),
            resource_attributes: Vec::new(),
            span_name: true,
        })
    }

    fn process_batch(spans: Vec<Span>, _resources: Vec<Resource>) -> Vec<Verdict> {
        verdicts(&spans)
    }
}

fn verdicts(spans: &[Span]) -> Vec<Verdict> {
    spans
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let keep = s.kind != SpanKind::Client;
            Verdict {
                span: i as u32,
                keep,
                edits: vec![Edit::Set(Attribute {
                    key: "v01.name".into(),
                    value: Value::Str(s.name.clone()),
                })],
            }
        })
        .collect()
}

// Native builds (unit tests) export nothing: the names are not valid linker symbols.
#[cfg(target_arch = "wasm32")]
export!(V01Sampler);

#[cfg(test)]
mod tests {
    use super::*;
    use tracer::plugin::types::Status;

    fn span(kind: SpanKind) -> Span {
        Span {
            trace_id: (1, 2),
            span_id: 3,
            parent_span_id: None,
            kind,
            name: "GET".into(),
            start_unix_nano: 0,
            end_unix_nano: 1,
            status: Status::Unset,
            attributes: Vec::new(),
            resource: 0,
        }
    }

    #[test]
    fn drops_clients_and_names_the_rest() {
        let v = verdicts(&[span(SpanKind::Server), span(SpanKind::Client)]);
        assert!(v[0].keep && !v[1].keep);
        assert!(
            matches!(&v[0].edits[..], [Edit::Set(Attribute { key, value: Value::Str(n) })] if key == "v01.name" && n == "GET")
        );
    }
}
