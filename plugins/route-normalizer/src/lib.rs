//! Sets `http.route` on server spans from `url.path`, with the variable parts replaced by
//! templates, so routes (and span names, and metrics keyed on them) have bounded cardinality.
//!
//! ```toml
//! # Tried first, in order; the first match is the route, verbatim. `{name}` matches one
//! # non-empty segment, a final `*` matches the rest of the path (zero or more segments).
//! patterns = ["/users/{id}/orders/{order}", "/static/*"]
//! placeholder = "{id}"   # what an id-like segment becomes (default "{id}")
//! rename = true          # name server spans "{http.request.method} {http.route}" (default true)
//! ```
//!
//! Without a matching pattern, each segment of the path that looks like an id becomes the
//! placeholder: all digits (`/users/123`), a UUID (`8-4-4-4-12` hex), or at least 8 hex digits
//! with at least one decimal digit (`/commits/3f2a9c1e`, not `/deadbeef` or `/facade`); an
//! extension is kept (`/img/12.png` -> `/img/{id}.png`). Anything else is kept as is: other
//! high-cardinality shapes (slugs, e-mail addresses, base64 tokens) need a pattern. The query
//! and fragment are never part of the route. Routes longer than 200 bytes are cut at a segment
//! boundary and end in `/*`.
//!
//! Only server spans are touched (`http.route` is a server attribute). A span that already has
//! `http.route` keeps it. The rename follows the HTTP semantic conventions: it applies only to
//! spans still named after their method (`GET`, or `HTTP`/`_OTHER` for unknown methods, which
//! become `HTTP {route}`), so gRPC spans (`package.Service/Method`) and spans another plugin has
//! renamed keep their names.
//!
//! Interest: `url.path`, `http.route` and the span name (the name is the method, so the method
//! attribute is not needed). A verdict is sent only for spans that change.
use tracer_plugin_sdk::{
    Attribute, Batch, Config, Edit, Interest, Plugin, Span, SpanKind, Value, Verdict, limits,
    serde::Deserialize,
};

const URL_PATH: &str = "url.path";
const HTTP_ROUTE: &str = "http.route";
/// Longer routes are cut (the host takes names up to 256 bytes; "OPTIONS " is 8).
const MAX_ROUTE: usize = 200;
/// The names the tracer gives HTTP spans before their route is known.
const METHODS: [&str; 11] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "HTTP",
    "_OTHER",
];

#[derive(Deserialize)]
#[serde(crate = "tracer_plugin_sdk::serde", default, deny_unknown_fields)]
struct Settings {
    patterns: Vec<String>,
    placeholder: String,
    rename: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            patterns: Vec::new(),
            placeholder: "{id}".into(),
            rename: true,
        }
    }
}

#[derive(Debug, PartialEq)]
enum Seg {
    Literal(String),
    /// `{name}`: one non-empty segment.
    Param,
    /// A final `*`: the rest of the path.
    Rest,
}

struct Pattern {
    text: String,
    segs: Vec<Seg>,
}

impl Pattern {
    fn parse(i: usize, text: String) -> Result<Self, String> {
        let bad = |why: &str| Err(format!("invalid config: patterns[{i}] = {text:?}: {why}"));
        let Some(rest) = text.strip_prefix('/') else {
            return bad("must start with '/'");
        };
        if text.len() > MAX_ROUTE {
            return bad(&format!("longer than {MAX_ROUTE} bytes"));
        }
        let parts: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        let mut segs = Vec::with_capacity(parts.len());
        for (n, part) in parts.iter().enumerate() {
            let seg = if *part == "*" {
                if n + 1 != parts.len() {
                    return bad("'*' must be the last segment");
                }
                Seg::Rest
            } else if part.starts_with('{') && part.ends_with('}') && part.len() > 2 {
                if part[1..part.len() - 1].contains(['{', '}', '*']) {
                    return bad("a {name} segment cannot contain '{', '}' or '*'");
                }
                Seg::Param
            } else if part.contains(['{', '}', '*']) {
                return bad("'{name}' and '*' must be whole segments (like /a/{id} or /a/*)");
            } else {
                Seg::Literal(part.to_string())
            };
            segs.push(seg);
        }
        Ok(Self { text, segs })
    }

    fn matches(&self, path: &str) -> bool {
        // One trailing slash does not matter: `/users/7/` matches `/users/{id}`.
        let path = match path.strip_suffix('/') {
            Some(p) if !p.is_empty() => p,
            _ => path,
        };
        let rest = &path[1..];
        let mut parts = (!rest.is_empty())
            .then(|| rest.split('/'))
            .into_iter()
            .flatten();
        for seg in &self.segs {
            match seg {
                Seg::Rest => return true,
                Seg::Param => match parts.next() {
                    Some(p) if !p.is_empty() => {}
                    _ => return false,
                },
                Seg::Literal(l) => {
                    if parts.next() != Some(l.as_str()) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

fn is_hex(b: &[u8]) -> bool {
    b.iter().all(u8::is_ascii_hexdigit)
}

/// Digits, a UUID, or 8+ hex digits including a decimal one.
fn is_id(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() {
        return false;
    }
    if b.iter().all(u8::is_ascii_digit) {
        return true;
    }
    if b.len() == 36
        && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-')
        && b.iter()
            .enumerate()
            .all(|(i, c)| matches!(i, 8 | 13 | 18 | 23) || c.is_ascii_hexdigit())
    {
        return true;
    }
    b.len() >= 8 && is_hex(b) && b.iter().any(u8::is_ascii_digit)
}

pub struct RouteNormalizer {
    patterns: Vec<Pattern>,
    placeholder: String,
    rename: bool,
}

impl RouteNormalizer {
    /// The route for a path, or None if the path is not an origin-form path.
    fn route(&self, path: &str) -> Option<String> {
        let end = path.find(['?', '#']).unwrap_or(path.len());
        let path = &path[..end];
        if !path.starts_with('/') {
            return None;
        }
        if let Some(p) = self.patterns.iter().find(|p| p.matches(path)) {
            return Some(p.text.clone());
        }
        let mut route = String::with_capacity(path.len().min(MAX_ROUTE + 2));
        for seg in path[1..].split('/') {
            let start = route.len();
            route.push('/');
            let (stem, ext) = match seg.rfind('.') {
                Some(i) if i > 0 => seg.split_at(i),
                _ => (seg, ""),
            };
            if is_id(stem) {
                route.push_str(&self.placeholder);
                route.push_str(ext);
            } else {
                route.push_str(seg);
            }
            if route.len() > MAX_ROUTE {
                route.truncate(start);
                route.push_str("/*");
                break;
            }
        }
        Some(route)
    }

    fn edits(&self, span: &Span) -> Vec<Edit> {
        if span.kind != SpanKind::Server {
            return Vec::new();
        }
        if let Some(known) = span.str_attr(HTTP_ROUTE) {
            return self
                .rename(span, known)
                .map(Edit::Rename)
                .into_iter()
                .collect();
        }
        let Some(route) = span.str_attr(URL_PATH).and_then(|p| self.route(p)) else {
            return Vec::new();
        };
        let rename = self.rename(span, &route);
        let mut edits = Vec::with_capacity(2);
        edits.push(Edit::Set(Attribute {
            key: HTTP_ROUTE.into(),
            value: Value::Str(route),
        }));
        edits.extend(rename.map(Edit::Rename));
        edits
    }

    /// "{method} {route}" for a span still named after its method (built by hand: this runs
    /// for every server span, and `format!` costs more than the pushes).
    fn rename(&self, span: &Span, route: &str) -> Option<String> {
        if !self.rename || !METHODS.contains(&span.name.as_str()) {
            return None;
        }
        let method = if span.name == "_OTHER" {
            "HTTP"
        } else {
            &span.name
        };
        let len = method.len() + 1 + route.len();
        (len <= limits::MAX_KEY).then(|| {
            let mut name = String::with_capacity(len);
            name.push_str(method);
            name.push(' ');
            name.push_str(route);
            name
        })
    }
}

impl Plugin for RouteNormalizer {
    fn init(config: &Config) -> Result<Self, String> {
        let s: Settings = config.parse()?;
        if s.placeholder.is_empty() || s.placeholder.contains('/') || s.placeholder.len() > 64 {
            return Err(format!(
                "invalid config: placeholder = {:?}: must be 1..=64 bytes without '/'",
                s.placeholder
            ));
        }
        Ok(Self {
            patterns: s
                .patterns
                .into_iter()
                .enumerate()
                .map(|(i, p)| Pattern::parse(i, p))
                .collect::<Result<_, _>>()?,
            placeholder: s.placeholder,
            rename: s.rename,
        })
    }

    fn interest(&self) -> Interest {
        let i = Interest::none().attributes([URL_PATH, HTTP_ROUTE]);
        if self.rename { i.span_name() } else { i }
    }

    fn on_batch(&mut self, batch: &Batch<'_>, out: &mut Vec<Verdict>) {
        for (i, span) in batch.spans.iter().enumerate() {
            let edits = self.edits(span);
            if !edits.is_empty() {
                out.push(Verdict {
                    span: i as u32,
                    keep: true,
                    edits,
                });
            }
        }
    }
}

tracer_plugin_sdk::export_plugin!(RouteNormalizer);

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_plugin_sdk::testing;

    fn plugin(config: &str) -> RouteNormalizer {
        RouteNormalizer::init(&Config::new(config)).unwrap()
    }

    fn route(config: &str, path: &str) -> Option<String> {
        plugin(config).route(path)
    }

    #[test]
    fn ids_uuids_and_hex_become_the_placeholder() {
        for (path, want) in [
            ("/users/123", "/users/{id}"),
            ("/users/123/orders/9", "/users/{id}/orders/{id}"),
            ("/", "/"),
            ("/users", "/users"),
            ("/users/", "/users/"),
            ("/v1/items", "/v1/items"),
            ("/o/550e8400-e29b-41d4-a716-446655440000/x", "/o/{id}/x"),
            ("/o/550E8400-E29B-41D4-A716-446655440000", "/o/{id}"),
            ("/commits/3f2a9c1e", "/commits/{id}"),
            ("/commits/3f2a9c1", "/commits/3f2a9c1"),
            ("/deadbeef", "/deadbeef"),
            ("/facade00", "/{id}"),
            ("/img/12.png", "/img/{id}.png"),
            ("/img/logo.png", "/img/logo.png"),
            ("/.well-known/x", "/.well-known/x"),
            ("/users/12?token=abc#frag", "/users/{id}"),
            ("/a/b-c-d/e", "/a/b-c-d/e"),
        ] {
            assert_eq!(route("", path).as_deref(), Some(want), "{path}");
        }
        assert_eq!(route("", "*"), None);
        assert_eq!(route("", "http://x/"), None);
        assert_eq!(
            route("placeholder = \":id\"", "/u/1").as_deref(),
            Some("/u/:id")
        );
    }

    #[test]
    fn patterns_come_first_and_are_returned_verbatim() {
        let cfg = r#"patterns = ["/users/{id}/orders/{order}", "/static/*", "/"]"#;
        for (path, want) in [
            ("/users/alice/orders/abc", "/users/{id}/orders/{order}"),
            ("/users/alice/orders/abc/", "/users/{id}/orders/{order}"),
            ("/users/alice/orders", "/users/alice/orders"),
            ("/users//orders/x", "/users//orders/x"),
            (
                "/users/alice/orders/abc/items",
                "/users/alice/orders/abc/items",
            ),
            ("/static/css/site.css", "/static/*"),
            ("/static", "/static/*"),
            ("/staticx/1", "/staticx/{id}"),
            ("/", "/"),
        ] {
            assert_eq!(route(cfg, path).as_deref(), Some(want), "{path}");
        }
    }

    #[test]
    fn long_routes_are_cut_at_a_segment() {
        let path = "/segment".repeat(40);
        let r = route("", &path).unwrap();
        assert!(r.len() <= MAX_ROUTE + 2, "{}", r.len());
        assert!(r.ends_with("/segment/*"), "{r}");
    }

    #[test]
    fn sets_route_and_renames_server_spans() {
        let spans = vec![
            testing::span().with(URL_PATH, "/users/42"),
            testing::span()
                .with_name("_OTHER")
                .with(URL_PATH, "/users/42"),
            testing::span()
                .with(URL_PATH, "/users/42")
                .with(HTTP_ROUTE, "/users/:uid"),
            testing::span()
                .with_kind(SpanKind::Client)
                .with(URL_PATH, "/users/42"),
            testing::span()
                .with_name("pkg.Svc/Call")
                .with(URL_PATH, "/pkg.Svc/Call"),
            testing::span(),
            testing::span()
                .with_name("GET /users/{id}")
                .with(HTTP_ROUTE, "/users/{id}"),
        ];
        let v = testing::run::<RouteNormalizer>("", spans.clone()).unwrap();
        // Verdicts only for the spans that change.
        assert_eq!(v.iter().map(|v| v.span).collect::<Vec<_>>(), [0, 1, 2, 4]);
        let out: Vec<_> = testing::apply(&spans, &v).into_iter().flatten().collect();
        let got: Vec<_> = out
            .iter()
            .map(|s| (s.str_attr(HTTP_ROUTE), s.name.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (Some("/users/{id}"), "GET /users/{id}"),
                (Some("/users/{id}"), "HTTP /users/{id}"),
                (Some("/users/:uid"), "GET /users/:uid"),
                (None, "GET"),
                (Some("/pkg.Svc/Call"), "pkg.Svc/Call"),
                (None, "GET"),
                (Some("/users/{id}"), "GET /users/{id}"),
            ]
        );
    }

    #[test]
    fn rename_can_be_turned_off() {
        let v = testing::run::<RouteNormalizer>(
            "rename = false",
            vec![testing::span().with(URL_PATH, "/a/1")],
        )
        .unwrap();
        assert_eq!(v.len(), 1);
        assert!(matches!(&v[0].edits[..], [Edit::Set(_)]));
        assert_eq!(
            testing::init::<RouteNormalizer>("rename = false").unwrap(),
            Interest::none().attributes([URL_PATH, HTTP_ROUTE])
        );
        assert_eq!(
            testing::init::<RouteNormalizer>("").unwrap(),
            Interest::none()
                .attributes([URL_PATH, HTTP_ROUTE])
                .span_name()
        );
    }

    #[test]
    fn config_errors_name_the_key() {
        for (cfg, words) in [
            (r#"patterns = ["users/{id}"]"#, "patterns[0]"),
            (r#"patterns = ["/a", "/*/b"]"#, "patterns[1]"),
            (r#"patterns = ["/a{id}"]"#, "whole segments"),
            (r#"patterns = ["/a/x*"]"#, "whole segments"),
            (r#"patterns = "/a""#, "patterns"),
            (r#"placeholder = "a/b""#, "placeholder"),
            (r#"placeholder = """#, "placeholder"),
            (r#"pattern = ["/a"]"#, "pattern"),
            (r#"rename = "yes""#, "rename"),
        ] {
            let e = testing::init::<RouteNormalizer>(cfg).unwrap_err();
            assert!(e.contains(words), "{cfg}: {e}");
        }
        assert!(testing::init::<RouteNormalizer>(r#"patterns = ["/a/{x}/*", "/"]"#).is_ok());
    }
}
