//! Removes or masks attributes by key pattern, and masks the values of query parameters.
//!
//! ```toml
//! remove = ["http.request.header.authorization", "*token*"]  # attributes removed
//! mask = ["user.email", "client.address"]     # attributes whose value becomes `mask_with`
//! mask_with = "REDACTED"                      # default "REDACTED"
//! query_params = ["token", "key", "sig*"]     # query parameters whose values are masked
//! query_attributes = ["url.query", "url.full"]  # where query parameters are looked for (default)
//! userinfo = false                            # true: `https://u:p@host` in url.full becomes
//!                                             #   `https://REDACTED:REDACTED@host`
//! ```
//!
//! Without any of `remove`, `mask`, `query_params` and `userinfo` (an empty config), it masks
//! what looks like a credential: attributes whose keys match [`CREDENTIAL_KEYS`] (`*token*`,
//! `*password*`, `*authorization*`, `*cookie*`...), the values of query parameters whose names
//! match [`CREDENTIAL_PARAMS`] (`*token*`, `*key*`, `*sig*`, `*auth*`...) and userinfo in
//! `url.full`. Setting any of the four replaces these defaults with exactly what is set.
//!
//! Key patterns are the host's: `*` matches any run of characters (`*token*`, `http.request.header.*`),
//! case-sensitive (attribute keys are lower case by convention). Query parameter names are
//! matched the same way but ignoring ASCII case (`sig*` matches `Signature`); only the value of
//! a matching `name=value` pair is replaced, the rest of the URL is kept byte for byte, and an
//! empty value stays empty. A key matching `remove` is removed even if it also matches `mask`;
//! a key matching `mask` is masked whole (its query is not looked at).
//!
//! Results stay within the host's limits, so a redaction is never refused and the span sent on
//! as it was: a masked URL that would grow past 4096 bytes is masked whole, and a span needing
//! more than 64 edits (a `remove = ["*"]` on a very wide span) is dropped and counted
//! (`dropped_too_many_edits`).
//!
//! Interest: exactly the keys the plugin may touch: the `remove` and `mask` patterns, plus
//! `query_attributes` when `query_params` is set and `url.full` when `userinfo` is on. A verdict
//! is sent only for spans that change (a value already masked is left alone).
use tracer_plugin_sdk::{
    Attribute, Batch, Config, Edit, FailurePolicy, Interest, Plugin, Span, Value, Verdict, count,
    limits, pattern::Patterns, serde::Deserialize,
};

const URL_FULL: &str = "url.full";

/// Attribute keys masked by default: what names a credential (keys are lower case).
pub const CREDENTIAL_KEYS: [&str; 9] = [
    "*token*",
    "*password*",
    "*passwd*",
    "*secret*",
    "*api_key*",
    "*apikey*",
    "*authorization*",
    "*cookie*",
    "*credential*",
];
/// Query parameters whose values are masked by default (names matched ignoring case).
pub const CREDENTIAL_PARAMS: [&str; 9] = [
    "*token*",
    "*key*",
    "*secret*",
    "*password*",
    "*passwd*",
    "*sig*",
    "*auth*",
    "*session*",
    "*credential*",
];

#[derive(Deserialize)]
#[serde(crate = "tracer_plugin_sdk::serde", default, deny_unknown_fields)]
struct Settings {
    remove: Option<Vec<String>>,
    mask: Option<Vec<String>>,
    mask_with: String,
    query_params: Option<Vec<String>>,
    query_attributes: Vec<String>,
    userinfo: Option<bool>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            remove: None,
            mask: None,
            mask_with: "REDACTED".into(),
            query_params: None,
            query_attributes: vec!["url.query".into(), URL_FULL.into()],
            userinfo: None,
        }
    }
}

/// What to redact: `remove`, `mask`, `query_params`, `userinfo`.
type Rules = (Vec<String>, Vec<String>, Vec<String>, bool);

impl Settings {
    /// The rules set, or the credential defaults when none is.
    fn rules(&mut self) -> Rules {
        let (remove, mask, params, userinfo) = (
            self.remove.take(),
            self.mask.take(),
            self.query_params.take(),
            self.userinfo.take(),
        );
        if remove.is_none() && mask.is_none() && params.is_none() && userinfo.is_none() {
            let owned = |p: &[&str]| p.iter().map(|s| s.to_string()).collect();
            return (
                Vec::new(),
                owned(&CREDENTIAL_KEYS),
                owned(&CREDENTIAL_PARAMS),
                true,
            );
        }
        (
            remove.unwrap_or_default(),
            mask.unwrap_or_default(),
            params.unwrap_or_default(),
            userinfo.unwrap_or_default(),
        )
    }
}

pub struct Redactor {
    remove: Patterns,
    mask: Patterns,
    mask_with: String,
    query_params: Patterns,
    query_attributes: Patterns,
    userinfo: bool,
}

/// Where the query starts and ends in a value: the whole of `url.query`, or what follows `?` up
/// to `#` in a URL.
fn query_range(value: &str, is_query: bool) -> (usize, usize) {
    if is_query {
        return (0, value.len());
    }
    let end = value.find('#').unwrap_or(value.len());
    match value[..end].find('?') {
        Some(q) => (q + 1, end),
        None => (end, end),
    }
}

impl Redactor {
    /// `value` with the values of matching query parameters masked, or None if none matched.
    fn mask_query(&self, value: &str, is_query: bool) -> Option<String> {
        let (start, end) = query_range(value, is_query);
        let mut out: Option<String> = None;
        let mut copied = 0; // bytes of `value` already in `out`
        let mut pos = start;
        while pos < end {
            let pair_end = value[pos..end].find('&').map_or(end, |i| pos + i);
            let pair = &value[pos..pair_end];
            if let Some(eq) = pair.find('=') {
                let (name, v) = (&pair[..eq], &pair[eq + 1..]);
                if !v.is_empty()
                    && v != self.mask_with
                    && self.query_params.matches_ignore_case(name)
                {
                    let o = out.get_or_insert_with(|| String::with_capacity(value.len()));
                    let v_start = pos + eq + 1;
                    o.push_str(&value[copied..v_start]);
                    o.push_str(&self.mask_with);
                    copied = pair_end;
                }
            }
            pos = pair_end + 1;
        }
        out.map(|mut o| {
            o.push_str(&value[copied..]);
            o
        })
    }

    /// `url` with the password and user of its authority masked, or None if it has none.
    fn mask_userinfo(&self, url: &str) -> Option<String> {
        let scheme_end = url.find("://")? + 3;
        let auth_end = url[scheme_end..]
            .find(['/', '?', '#'])
            .map_or(url.len(), |i| scheme_end + i);
        let at = url[scheme_end..auth_end].rfind('@')? + scheme_end;
        let userinfo = &url[scheme_end..at];
        let masked = if userinfo.contains(':') {
            format!("{m}:{m}", m = self.mask_with)
        } else {
            self.mask_with.clone()
        };
        (userinfo != masked).then(|| format!("{}{masked}{}", &url[..scheme_end], &url[at..]))
    }

    fn edits(&self, span: &Span) -> Vec<Edit> {
        let mut edits = Vec::new();
        for a in &span.attributes {
            let key = a.key.as_str();
            if self.remove.matches(key) {
                edits.push(Edit::Remove(a.key.clone()));
                continue;
            }
            if self.mask.matches(key) {
                if !matches!(&a.value, Value::Str(s) if *s == self.mask_with) {
                    edits.push(self.set(key, self.mask_with.clone()));
                }
                continue;
            }
            let Value::Str(s) = &a.value else { continue };
            let mut new: Option<String> = None;
            if self.userinfo && key == URL_FULL {
                new = self.mask_userinfo(s);
            }
            if !self.query_params.is_empty() && self.query_attributes.matches(key) {
                let cur = new.as_deref().unwrap_or(s);
                // `url.query` holds only the query; anything else is a URL with `?`.
                if let Some(q) = self.mask_query(cur, key == "url.query") {
                    new = Some(q);
                }
            }
            if let Some(v) = new {
                // Past the host's limit the whole result would be refused (and the span sent
                // on unredacted): mask the whole value instead.
                let v = if v.len() > limits::MAX_VALUE {
                    self.mask_with.clone()
                } else {
                    v
                };
                edits.push(self.set(key, v));
            }
        }
        edits
    }

    fn set(&self, key: &str, value: String) -> Edit {
        Edit::Set(Attribute {
            key: key.to_string(),
            value: Value::Str(value),
        })
    }
}

impl Plugin for Redactor {
    fn init(config: &Config) -> Result<Self, String> {
        let mut s: Settings = config.parse()?;
        let (remove, mask, query_params, userinfo) = s.rules();
        let err = |e: String| format!("invalid config: {e}");
        if remove.is_empty() && mask.is_empty() && query_params.is_empty() && !userinfo {
            return Err(
                "nothing to redact: set remove, mask, query_params or userinfo = true \
                        (or none of them, for the credential defaults)"
                    .into(),
            );
        }
        if s.mask_with.len() > 256 {
            return Err("invalid config: mask_with is longer than 256 bytes".into());
        }
        if !query_params.is_empty() && s.mask_with.contains(['&', '#', '=']) {
            return Err(format!(
                "invalid config: mask_with = {:?} cannot contain '&', '=' or '#' when query_params is set",
                s.mask_with
            ));
        }
        if !query_params.is_empty() && s.query_attributes.is_empty() {
            return Err("invalid config: query_params is set but query_attributes is empty".into());
        }
        Ok(Self {
            remove: Patterns::new("remove", remove).map_err(err)?,
            mask: Patterns::new("mask", mask).map_err(err)?,
            mask_with: s.mask_with,
            query_params: Patterns::new("query_params", query_params).map_err(err)?,
            query_attributes: Patterns::new("query_attributes", s.query_attributes).map_err(err)?,
            userinfo,
        })
    }

    fn interest(&self) -> Interest {
        let mut keys: Vec<&str> = Vec::new();
        let queries = (!self.query_params.is_empty()).then_some(self.query_attributes.as_slice());
        let userinfo = self.userinfo.then_some(URL_FULL);
        let all = self.remove.as_slice().iter().chain(self.mask.as_slice());
        for k in all
            .chain(queries.into_iter().flatten())
            .map(String::as_str)
            .chain(userinfo)
        {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        // A span this plugin did not process must not leave unredacted.
        Interest::none()
            .attributes(keys)
            .on_failure(FailurePolicy::Drop)
    }

    fn on_batch(&mut self, batch: &Batch<'_>, out: &mut Vec<Verdict>) {
        let mut changed = 0;
        for (i, span) in batch.spans.iter().enumerate() {
            if span.attributes.is_empty() {
                continue;
            }
            let edits = self.edits(span);
            if edits.len() > limits::MAX_EDITS {
                // More edits than the host takes for one span: the result would be refused and
                // the batch sent on unredacted. Drop this span instead of leaking it.
                count("dropped_too_many_edits", 1);
                out.push(Verdict {
                    span: i as u32,
                    keep: false,
                    edits: Vec::new(),
                });
            } else if !edits.is_empty() {
                changed += 1;
                out.push(Verdict {
                    span: i as u32,
                    keep: true,
                    edits,
                });
            }
        }
        if changed > 0 {
            count("redacted_spans", changed);
        }
    }
}

tracer_plugin_sdk::export_plugin!(Redactor);

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_plugin_sdk::testing;

    fn plugin(config: &str) -> Redactor {
        Redactor::init(&Config::new(config)).unwrap()
    }

    #[test]
    fn removes_and_masks_by_key_pattern() {
        let cfg = r#"
remove = ["http.request.header.authorization", "*token*"]
mask = ["user.email", "*token*", "enduser.*"]
"#;
        let spans = vec![
            testing::span()
                .with("http.request.header.authorization", "Bearer x")
                .with("session.token.id", "abc")
                .with("user.email", "a@b.c")
                .with("enduser.id", 42i64),
            testing::span().with("user.email", "REDACTED"),
            testing::span(),
        ];
        let v = testing::run::<Redactor>(cfg, spans).unwrap();
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].span, 0);
        assert!(v[0].keep);
        assert_eq!(
            v[0].edits,
            vec![
                Edit::Remove("http.request.header.authorization".into()),
                Edit::Remove("session.token.id".into()),
                Edit::set("user.email", "REDACTED"),
                Edit::set("enduser.id", "REDACTED"),
            ]
        );
    }

    #[test]
    fn an_empty_config_masks_credentials() {
        let spans = vec![
            testing::span()
                .with("http.request.header.authorization", "Bearer x")
                .with("db.password", "hunter2")
                .with("x.api_key", "k")
                .with("url.query", "Access_Token=abc&page=2&sig=s")
                .with("url.full", "https://me:pw@h/p?apiKey=1&q=x")
                .with("user.id", "u1"),
            testing::span().with("url.query", "page=2"),
        ];
        let v = testing::run::<Redactor>("", spans).unwrap();
        let got: Vec<_> = v.iter().map(|v| (v.span, v.edits.clone())).collect();
        assert_eq!(
            got,
            vec![(
                0,
                vec![
                    Edit::set("http.request.header.authorization", "REDACTED"),
                    Edit::set("db.password", "REDACTED"),
                    Edit::set("x.api_key", "REDACTED"),
                    Edit::set("url.query", "Access_Token=REDACTED&page=2&sig=REDACTED"),
                    Edit::set(
                        "url.full",
                        "https://REDACTED:REDACTED@h/p?apiKey=REDACTED&q=x"
                    ),
                ]
            )]
        );
        // Any rule set replaces the defaults.
        let only = testing::run::<Redactor>(
            "mask = [\"user.id\"]",
            vec![
                testing::span()
                    .with("db.password", "p")
                    .with("user.id", "u"),
            ],
        )
        .unwrap();
        assert_eq!(only[0].edits, vec![Edit::set("user.id", "REDACTED")]);
        assert_eq!(
            testing::init::<Redactor>("mask_with = \"***\"").unwrap(),
            testing::init::<Redactor>("").unwrap(),
            "mask_with is not a rule: the defaults stay"
        );
    }

    #[test]
    fn interest_is_exactly_the_keys_it_may_touch() {
        let i = testing::init::<Redactor>(
            r#"remove = ["a", "*token*"]
mask = ["b", "a"]"#,
        )
        .unwrap();
        let drop = |i: Interest| i.on_failure(FailurePolicy::Drop);
        assert_eq!(i, drop(Interest::none().attributes(["a", "*token*", "b"])));
        let i = testing::init::<Redactor>(r#"query_params = ["token"]"#).unwrap();
        assert_eq!(
            i,
            drop(Interest::none().attributes(["url.query", "url.full"]))
        );
        let i = testing::init::<Redactor>(
            "query_params = [\"token\"]\nquery_attributes = [\"url.query\"]\nuserinfo = true",
        )
        .unwrap();
        assert_eq!(
            i,
            drop(Interest::none().attributes(["url.query", "url.full"]))
        );
        let i = testing::init::<Redactor>("userinfo = true").unwrap();
        assert_eq!(i, drop(Interest::none().attributes(["url.full"])));
        assert!(!i.span_name && i.resource_attributes.is_empty());
    }

    #[test]
    fn masks_query_values_by_name() {
        let p = plugin(r#"query_params = ["token", "key", "sig*"]"#);
        for (q, want) in [
            ("token=abc&x=1", Some("token=REDACTED&x=1")),
            ("x=1&TOKEN=abc", Some("x=1&TOKEN=REDACTED")),
            (
                "a=1&Signature=zz&sig=&key=k&keys=v",
                Some("a=1&Signature=REDACTED&sig=&key=REDACTED&keys=v"),
            ),
            ("token", None),
            ("token=", None),
            ("token=REDACTED", None),
            ("mytoken=1", None),
            ("", None),
            ("&&token=a&&", Some("&&token=REDACTED&&")),
            ("token=a=b", Some("token=REDACTED")),
        ] {
            assert_eq!(p.mask_query(q, true).as_deref(), want, "{q}");
        }
        for (url, want) in [
            (
                "http://h/p?token=abc&x=1#token=f",
                Some("http://h/p?token=REDACTED&x=1#token=f"),
            ),
            ("http://h/p?x=1", None),
            ("http://h/token=1", None),
            ("http://h/p#?token=1", None),
            ("http://h/p?key=1", Some("http://h/p?key=REDACTED")),
        ] {
            assert_eq!(p.mask_query(url, false).as_deref(), want, "{url}");
        }
    }

    #[test]
    fn masks_queries_in_spans_and_userinfo_when_asked() {
        let cfg = "query_params = [\"token\"]\nuserinfo = true\nmask_with = \"xxx\"";
        let spans = vec![
            testing::span()
                .with("url.query", "token=abc")
                .with("url.full", "https://me:pw@h:8/p?token=abc"),
            testing::span().with("url.full", "https://h/p?a=1"),
            testing::span().with("url.full", "https://xxx:xxx@h/p?token=xxx"),
            testing::span().with("url.full", "https://me@h/"),
        ];
        let v = testing::run::<Redactor>(cfg, spans).unwrap();
        let got: Vec<_> = v.iter().map(|v| (v.span, v.edits.clone())).collect();
        assert_eq!(
            got,
            vec![
                (
                    0,
                    vec![
                        Edit::set("url.query", "token=xxx"),
                        Edit::set("url.full", "https://xxx:xxx@h:8/p?token=xxx")
                    ]
                ),
                (3, vec![Edit::set("url.full", "https://xxx@h/")]),
            ]
        );
        let counts = testing::take_counts();
        assert!(
            counts.contains(&("redacted_spans".to_string(), 2)),
            "{counts:?}"
        );
    }

    #[test]
    fn never_returns_what_the_host_would_refuse() {
        let p = plugin("query_params = [\"t\"]\nmask_with = \"MASKED-VALUE-THAT-IS-LONG\"");
        let long = format!("http://h/?{}", "t=1&".repeat(900));
        let span = testing::span().with("url.full", long.as_str());
        assert_eq!(
            p.edits(&span),
            vec![Edit::set("url.full", "MASKED-VALUE-THAT-IS-LONG")]
        );
        let wide = (0..70).fold(testing::span(), |s, i| s.with(&format!("k{i}"), 1i64));
        let v = testing::run::<Redactor>(
            "remove = [\"*\"]",
            vec![wide, testing::span().with("k", 1i64)],
        )
        .unwrap();
        assert_eq!(v.len(), 2);
        assert!(!v[0].keep);
        assert_eq!(v[1].edits, vec![Edit::Remove("k".into())]);
    }

    #[test]
    fn config_errors_name_the_key() {
        for (cfg, word) in [
            ("remove = []", "nothing to redact"),
            ("userinfo = false", "nothing to redact"),
            (r#"remove = ["a", ""]"#, "remove[1]"),
            (r#"mask = [""]"#, "mask[0]"),
            (r#"query_params = ["token", ""]"#, "query_params[1]"),
            ("query_params = [\"t\"]\nmask_with = \"a&b\"", "mask_with"),
            (
                "query_params = [\"t\"]\nquery_attributes = []",
                "query_attributes",
            ),
            (r#"remove = "a""#, "remove"),
            (r#"remov = ["a"]"#, "remov"),
        ] {
            let e = testing::init::<Redactor>(cfg).unwrap_err();
            assert!(e.contains(word), "{cfg}: {e}");
        }
    }
}
