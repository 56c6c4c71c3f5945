//! The contract versions the host speaks, behind one interface: the chain hands a plugin its
//! own spans and gets verdicts back in its own types, whichever version the plugin was built
//! for. Each version's module turns host spans into what its plugins read and their answers
//! into [`HostVerdict`]s; nothing else in the host knows the WIT types.
pub mod v1;
pub mod v2;

use std::sync::Arc;

use wasmtime::{
    Engine, Store,
    component::{HasSelf, InstancePre, Linker},
};

use super::{chain::OnFailure, runtime::HostState};
use crate::span::{Resource, Span, Value};

/// The versions implemented, newest first, as they appear in import and export names.
pub const CONTRACTS: [&str; 2] = [v2::CONTRACT, v1::CONTRACT];
/// [`CONTRACTS`] in a sentence, for messages.
pub const SUPPORTED: &str = "tracer:plugin@0.2.0 and tracer:plugin@0.1.0";

/// Attribute key patterns; `*` matches any run of characters.
#[derive(Clone, Debug, Default)]
pub struct KeyMatcher {
    all: bool,
    patterns: Vec<String>,
    /// The same patterns sorted by shape: every key of every span is tried against them, and
    /// most patterns are a plain key or a prefix.
    shapes: Vec<Shape>,
}

#[derive(Clone, Debug)]
enum Shape {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Glob(String),
}

impl Shape {
    fn of(p: &str) -> Self {
        let inner = p.trim_matches('*');
        let (lead, trail) = (p.starts_with('*'), p.ends_with('*'));
        if inner.contains('*') || inner.is_empty() {
            return Self::Glob(p.to_owned());
        }
        match (lead, trail) {
            (false, false) => Self::Exact(p.to_owned()),
            (false, true) if p.len() == inner.len() + 1 => Self::Prefix(inner.to_owned()),
            (true, false) if p.len() == inner.len() + 1 => Self::Suffix(inner.to_owned()),
            (true, true) if p.len() == inner.len() + 2 => Self::Contains(inner.to_owned()),
            _ => Self::Glob(p.to_owned()),
        }
    }

    fn matches(&self, key: &str) -> bool {
        match self {
            Self::Exact(p) => key == p,
            Self::Prefix(p) => key.starts_with(p.as_str()),
            Self::Suffix(p) => key.ends_with(p.as_str()),
            Self::Contains(p) => key.contains(p.as_str()),
            Self::Glob(p) => glob(p.as_bytes(), key.as_bytes()),
        }
    }
}

impl KeyMatcher {
    pub fn new(patterns: &[String]) -> Self {
        Self {
            all: patterns.iter().any(|p| p == "*"),
            patterns: patterns.to_vec(),
            shapes: patterns.iter().map(|p| Shape::of(p)).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.all && self.patterns.is_empty()
    }

    pub fn matches(&self, key: &str) -> bool {
        self.all || self.shapes.iter().any(|p| p.matches(key))
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    tracer_common::glob_match(p, s, |a, b| a == b)
}

/// What a plugin declared at init, in host terms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interest {
    pub attributes: Vec<String>,
    pub resource_attributes: Vec<String>,
    pub span_name: bool,
    pub trace_state: bool,
    /// None: the plugin leaves it to the host (and 0.1.0 plugins cannot say).
    pub on_failure: Option<OnFailure>,
}

/// What of a span a plugin is sent, from its [`Interest`].
#[derive(Clone, Debug, Default)]
pub struct View {
    pub attributes: KeyMatcher,
    pub resource_attributes: KeyMatcher,
    pub span_name: bool,
    pub trace_state: bool,
}

impl View {
    pub fn new(i: &Interest) -> Self {
        Self {
            attributes: KeyMatcher::new(&i.attributes),
            resource_attributes: KeyMatcher::new(&i.resource_attributes),
            span_name: i.span_name,
            trace_state: i.trace_state,
        }
    }
}

/// A plugin's decision for one span, whatever contract it came through.
#[derive(Clone, Debug, PartialEq)]
pub struct HostVerdict {
    /// Index of the span in the batch.
    pub span: u32,
    pub keep: bool,
    pub edits: Vec<HostEdit>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum HostEdit {
    Set(String, Value),
    Remove(String),
    Rename(String),
}

/// Numbers the distinct resources of a batch (by pointer) in order of first use.
#[derive(Default)]
struct Resources(Vec<*const Resource>);

impl Resources {
    /// The resource's index, and whether this is its first span.
    fn index(&mut self, r: &Arc<Resource>) -> (u32, bool) {
        let ptr = Arc::as_ptr(r);
        match self.0.iter().position(|&p| p == ptr) {
            Some(i) => (i as u32, false),
            None => {
                self.0.push(ptr);
                (self.0.len() as u32 - 1, true)
            }
        }
    }
}

/// The trace id as the contract sends it: two big-endian halves.
fn trace_id_halves(id: &[u8; 16]) -> (u64, u64) {
    let half = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap_or_default());
    (half(&id[..8]), half(&id[8..]))
}

/// The attributes of `attrs` a matcher lets through (none at all for an empty matcher).
fn matching<'a>(
    attrs: &'a [crate::span::KeyValue],
    m: &'a KeyMatcher,
) -> impl Iterator<Item = (&'a str, &'a Value)> {
    let none = m.is_empty();
    attrs
        .iter()
        .filter(move |a| !none && m.matches(&a.key))
        .map(|a| (&*a.key, &a.value))
}

/// Both versions' host functions.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    v1::SpanPlugin::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?;
    v2::SpanPlugin::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
}

/// A component linked and checked against one version, ready to instantiate.
#[derive(Clone)]
pub enum Compiled {
    V1(v1::SpanPluginPre<HostState>),
    V2(v2::SpanPluginPre<HostState>),
}

impl Compiled {
    /// `contract` is the version's entry of [`CONTRACTS`].
    pub fn new(contract: &str, pre: InstancePre<HostState>) -> wasmtime::Result<Self> {
        Ok(if contract == v1::CONTRACT {
            Self::V1(v1::SpanPluginPre::new(pre)?)
        } else {
            Self::V2(v2::SpanPluginPre::new(pre)?)
        })
    }

    pub fn contract(&self) -> &'static str {
        match self {
            Self::V1(_) => v1::CONTRACT,
            Self::V2(_) => v2::CONTRACT,
        }
    }

    pub fn engine(&self) -> &Engine {
        match self {
            Self::V1(p) => p.engine(),
            Self::V2(p) => p.engine(),
        }
    }

    pub fn instantiate(&self, store: &mut Store<HostState>) -> wasmtime::Result<Bindings> {
        Ok(match self {
            Self::V1(p) => Bindings::V1(p.instantiate(store)?),
            Self::V2(p) => Bindings::V2(p.instantiate(store)?, Box::default()),
        })
    }
}

/// A live instance's exports; 0.2.0 keeps its packed batch to reuse the buffers.
pub enum Bindings {
    V1(v1::SpanPlugin),
    V2(v2::SpanPlugin, Box<v2::Scratch>),
}

/// A call's outcome: Err(wasmtime) is a trap or deadline, Ok(Err(why)) an answer the contract
/// does not allow.
pub type Answer<T> = wasmtime::Result<Result<T, String>>;

impl Bindings {
    pub fn init(&self, store: &mut Store<HostState>, config: &str) -> Answer<Interest> {
        match self {
            Self::V1(b) => v1::init(b, store, config),
            Self::V2(b, _) => v2::init(b, store, config),
        }
    }

    pub fn process(
        &mut self,
        store: &mut Store<HostState>,
        batch: &[Span],
        view: &View,
    ) -> Answer<Vec<HostVerdict>> {
        match self {
            Self::V1(b) => v1::process(b, store, batch, view),
            Self::V2(b, scratch) => v2::process(b, scratch, store, batch, view),
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::span::{SpanKind, Status, kv};

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
            ("**", "", true),
            ("*a", "ba", true),
            ("*a", "ab", false),
            ("a*", "ab", true),
            ("*.id*", "user.id", true),
            ("*.id*", "userid", false),
            ("*a*b", "xaxb", true),
        ] {
            assert_eq!(glob(p.as_bytes(), k.as_bytes()), want, "{p} vs {k}");
            assert_eq!(Shape::of(p).matches(k), want, "{p} vs {k} by shape");
        }
        let m = KeyMatcher::new(&["url.*".into(), "http.route".into()]);
        assert!(m.matches("url.query") && m.matches("http.route") && !m.matches("http.method"));
        assert!(KeyMatcher::new(&[]).is_empty());
    }

    /// A server span `GET` with `url.path = /u/{i}`, trace-state `k=v`, its own resource.
    pub fn span(i: u8) -> Span {
        Span {
            trace_id: [i; 16],
            span_id: [i; 8],
            parent_span_id: None,
            flags: 1,
            trace_state: Some("k=v".into()),
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

    /// Three spans, the last two sharing a resource.
    pub fn batch() -> Vec<Span> {
        let shared = span(1).resource;
        let mut batch = vec![span(1), span(2), span(3)];
        batch[1].resource = shared.clone();
        batch[2].resource = shared;
        batch
    }

    /// Nothing asked, then `url.*`, `service.name`, names and trace-states.
    pub fn views() -> (View, View) {
        let all = Interest {
            attributes: vec!["url.*".into()],
            resource_attributes: vec!["service.name".into()],
            span_name: true,
            trace_state: true,
            on_failure: None,
        };
        (View::default(), View::new(&all))
    }
}
