//! Always keeps the spans worth looking at (errors, slow requests) and samples the rest.
//!
//! ```toml
//! ratio = 0.05               # probability the other traces are kept, 0..=1 (required)
//! slow_ms = 500              # keep spans lasting at least this many ms (absent: no latency rule)
//! http_status_min = 400      # keep spans with http.response.status_code >= this (absent: off)
//! grpc_nonzero = false       # keep spans with rpc.grpc.status_code != 0
//! record = false             # true: kept spans get `sampling.kept_by` = "error", "slow",
//!                            #   "http_status", "grpc_status" or "ratio"
//! ```
//!
//! The main signal is the span status: a span with status `error` is always kept. The tracer
//! already sets it per the OpenTelemetry conventions (server spans on 5xx, client spans on 4xx
//! and 5xx, gRPC server spans on UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE,
//! DATA_LOSS and client spans on any code but OK, and any span whose exchange failed), so
//! `http_status_min` and `grpc_nonzero` are only for keeping more than that (server 4xx, gRPC
//! NOT_FOUND...). Each of them adds one attribute to what the plugin is sent.
//!
//! The rest is sampled with the same consistent rule as `ratio-sampler` (OpenTelemetry's
//! threshold rule on the low 56 bits of the trace id), so the sampled part is the same set of
//! traces on every node. The kept errors and slow spans are kept span by span: the other spans
//! of their trace are only there if the ratio kept that trace too (this is head, not tail,
//! sampling).
//!
//! Interest: nothing, plus `http.response.status_code` / `rpc.grpc.status_code` when those rules
//! are on. Verdicts are sent only for dropped spans (and kept ones when `record` is on).
use tracer_plugin_sdk::{
    Attribute, Batch, Config, Edit, Interest, Plugin, Span, Value, Verdict, count,
    sampling::Threshold, serde::Deserialize,
};

const HTTP_STATUS: &str = "http.response.status_code";
const GRPC_STATUS: &str = "rpc.grpc.status_code";

#[derive(Deserialize)]
#[serde(crate = "tracer_plugin_sdk::serde", deny_unknown_fields)]
struct Settings {
    ratio: Option<f64>,
    slow_ms: Option<u64>,
    http_status_min: Option<i64>,
    #[serde(default)]
    grpc_nonzero: bool,
    #[serde(default)]
    record: bool,
}

pub struct KeepErrorsSampler {
    threshold: Threshold,
    slow_ns: Option<u64>,
    http_status_min: Option<i64>,
    grpc_nonzero: bool,
    record: bool,
}

/// Why a span is kept (names of the `sampling.kept_by` values and of the counters).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Reason {
    Error,
    Slow,
    HttpStatus,
    GrpcStatus,
    Ratio,
}

impl Reason {
    const ALL: [Reason; 5] = [
        Reason::Error,
        Reason::Slow,
        Reason::HttpStatus,
        Reason::GrpcStatus,
        Reason::Ratio,
    ];

    fn name(self) -> &'static str {
        match self {
            Reason::Error => "error",
            Reason::Slow => "slow",
            Reason::HttpStatus => "http_status",
            Reason::GrpcStatus => "grpc_status",
            Reason::Ratio => "ratio",
        }
    }
}

impl KeepErrorsSampler {
    fn reason(&self, span: &Span) -> Option<Reason> {
        if span.is_error() {
            return Some(Reason::Error);
        }
        if self.slow_ns.is_some_and(|t| span.duration_ns() >= t) {
            return Some(Reason::Slow);
        }
        if let Some(min) = self.http_status_min
            && span.int_attr(HTTP_STATUS).is_some_and(|c| c >= min)
        {
            return Some(Reason::HttpStatus);
        }
        if self.grpc_nonzero && span.int_attr(GRPC_STATUS).is_some_and(|c| c != 0) {
            return Some(Reason::GrpcStatus);
        }
        self.threshold.keeps(span.trace_id).then_some(Reason::Ratio)
    }
}

impl Plugin for KeepErrorsSampler {
    fn init(config: &Config) -> Result<Self, String> {
        let s: Settings = config.parse()?;
        // How much to drop is the operator's call: no default.
        let ratio = s.ratio.ok_or(
            "no ratio: set `ratio`, the share of the other traces kept, 0..=1 (errors and slow \
             spans are kept whatever it is; ratio = 0.1 keeps one other trace in ten)",
        )?;
        let threshold = Threshold::new(ratio).map_err(|e| format!("invalid config: {e}"))?;
        if let Some(c) = s.http_status_min
            && !(100..=599).contains(&c)
        {
            return Err(format!(
                "invalid config: http_status_min must be an HTTP status (100..=599), not {c}"
            ));
        }
        let slow_ns = match s.slow_ms {
            Some(ms) => Some(ms.checked_mul(1_000_000).ok_or_else(|| {
                format!("invalid config: slow_ms = {ms} is more than a human lifetime")
            })?),
            None => None,
        };
        Ok(Self {
            threshold,
            slow_ns,
            http_status_min: s.http_status_min,
            grpc_nonzero: s.grpc_nonzero,
            record: s.record,
        })
    }

    fn interest(&self) -> Interest {
        let mut keys = Vec::new();
        if self.http_status_min.is_some() {
            keys.push(HTTP_STATUS);
        }
        if self.grpc_nonzero {
            keys.push(GRPC_STATUS);
        }
        Interest::none().attributes(keys)
    }

    fn on_batch(&mut self, batch: &Batch<'_>, out: &mut Vec<Verdict>) {
        let mut kept = [0u64; Reason::ALL.len()];
        let mut dropped = 0;
        for (i, span) in batch.spans.iter().enumerate() {
            match self.reason(span) {
                None => {
                    dropped += 1;
                    out.push(Verdict {
                        span: i as u32,
                        keep: false,
                        edits: Vec::new(),
                    });
                }
                Some(r) => {
                    kept[r as usize] += 1;
                    if self.record {
                        out.push(Verdict {
                            span: i as u32,
                            keep: true,
                            edits: vec![Edit::Set(Attribute {
                                key: "sampling.kept_by".into(),
                                value: Value::Str(r.name().into()),
                            })],
                        });
                    }
                }
            }
        }
        for r in Reason::ALL {
            if r != Reason::Ratio && kept[r as usize] > 0 {
                count(&format!("kept_{}", r.name()), kept[r as usize]);
            }
        }
        if dropped > 0 {
            count("sampled_out", dropped);
        }
    }
}

tracer_plugin_sdk::export_plugin!(KeepErrorsSampler);

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_plugin_sdk::{Status, testing};

    /// Trace ids the ratio never keeps below 1 (randomness 0) and always keeps above 0.
    const UNLUCKY: (u64, u64) = (7, 0);
    const LUCKY: (u64, u64) = (7, u64::MAX);

    fn dropped(config: &str, spans: Vec<Span>) -> Vec<u32> {
        testing::run::<KeepErrorsSampler>(config, spans)
            .unwrap()
            .into_iter()
            .filter(|v| !v.keep)
            .map(|v| v.span)
            .collect()
    }

    fn plain() -> Span {
        testing::span().with_trace_id(UNLUCKY)
    }

    #[test]
    fn keeps_errors_whatever_the_ratio() {
        let spans = vec![
            plain().with_status(Status::Error("500".into())),
            plain().with_status(Status::Ok),
            plain(),
        ];
        assert_eq!(dropped("ratio = 0", spans), vec![1, 2]);
    }

    #[test]
    fn keeps_slow_spans() {
        let spans = vec![
            plain().with_duration_ms(499),
            plain().with_duration_ms(500),
            plain().with_duration_ms(10_000),
        ];
        assert_eq!(dropped("ratio = 0\nslow_ms = 500", spans.clone()), vec![0]);
        assert_eq!(dropped("ratio = 0", spans), vec![0, 1, 2]);
    }

    #[test]
    fn status_code_rules_are_opt_in_and_widen_the_interest() {
        let spans = || {
            vec![
                plain().with(HTTP_STATUS, 404i64),
                plain().with(HTTP_STATUS, 200i64),
                plain().with(GRPC_STATUS, 5i64),
                plain().with(GRPC_STATUS, 0i64),
            ]
        };
        assert_eq!(dropped("ratio = 0", spans()), vec![0, 1, 2, 3]);
        assert_eq!(
            dropped("ratio = 0\nhttp_status_min = 400", spans()),
            vec![1, 2, 3]
        );
        assert_eq!(
            dropped("ratio = 0\ngrpc_nonzero = true", spans()),
            vec![0, 1, 3]
        );
        assert_eq!(
            testing::init::<KeepErrorsSampler>("ratio = 0.1").unwrap(),
            Interest::none()
        );
        assert_eq!(
            testing::init::<KeepErrorsSampler>(
                "ratio = 0.1\nhttp_status_min = 500\ngrpc_nonzero = true\nslow_ms = 1"
            )
            .unwrap(),
            Interest::none().attributes([HTTP_STATUS, GRPC_STATUS])
        );
    }

    #[test]
    fn samples_the_rest_consistently_on_the_trace_id() {
        let spans = vec![
            testing::span().with_trace_id(LUCKY),
            testing::span().with_trace_id(UNLUCKY),
        ];
        assert_eq!(dropped("ratio = 0.5", spans.clone()), vec![1]);
        assert_eq!(dropped("ratio = 1", spans.clone()), Vec::<u32>::new());
        // The same decisions as the ratio sampler's rule, on many ids.
        let ids: Vec<_> = (0..20_000)
            .map(|_| {
                (
                    tracer_plugin_sdk::random_u64(),
                    tracer_plugin_sdk::random_u64(),
                )
            })
            .collect();
        let spans = ids
            .iter()
            .map(|&t| testing::span().with_trace_id(t))
            .collect();
        let d = dropped("ratio = 0.2", spans);
        let t = Threshold::new(0.2).unwrap();
        let expected: Vec<u32> = (0..ids.len() as u32)
            .filter(|&i| !t.keeps(ids[i as usize]))
            .collect();
        assert_eq!(d, expected);
        let kept = 1.0 - d.len() as f64 / ids.len() as f64;
        assert!((kept - 0.2).abs() < 0.01, "{kept}");
    }

    #[test]
    fn record_says_why_and_counters_count() {
        testing::take_counts();
        let spans = vec![
            plain().with_status(Status::Error("x".into())),
            plain().with_duration_ms(2000),
            testing::span().with_trace_id(LUCKY),
            plain(),
        ];
        let v =
            testing::run::<KeepErrorsSampler>("ratio = 0.5\nslow_ms = 1000\nrecord = true", spans)
                .unwrap();
        let reasons: Vec<_> = v
            .iter()
            .map(|v| match &v.edits[..] {
                [Edit::Set(a)] => a.value.to_string(),
                [] => format!("keep={}", v.keep),
                e => panic!("{e:?}"),
            })
            .collect();
        assert_eq!(reasons, ["error", "slow", "ratio", "keep=false"]);
        let mut counts = testing::take_counts();
        counts.sort();
        assert_eq!(
            counts,
            [
                ("kept_error".to_string(), 1),
                ("kept_slow".to_string(), 1),
                ("sampled_out".to_string(), 1)
            ]
        );
    }

    #[test]
    fn sends_no_verdict_for_kept_spans() {
        let v = testing::run::<KeepErrorsSampler>(
            "ratio = 1\nslow_ms = 1",
            vec![plain(), plain().with_duration_ms(5)],
        )
        .unwrap();
        assert!(v.is_empty());
    }

    #[test]
    fn config_errors_name_the_key() {
        for (cfg, word) in [
            ("", "no ratio: set `ratio`"),
            ("slow_ms = 500", "no ratio: set `ratio`"),
            ("ratio = 2", "ratio"),
            ("ratio = 0.1\nslow_ms = -5", "slow_ms"),
            ("ratio = 0.1\nslow_ms = \"1s\"", "slow_ms"),
            ("ratio = 0.1\nhttp_status_min = 1000", "http_status_min"),
            ("ratio = 0.1\nslow = 5", "slow"),
            ("ratio = 0.1\ngrpc_nonzero = 1", "grpc_nonzero"),
            ("ratio = 0.1\nslow_ms = 18446744073710", "slow_ms"),
        ] {
            let e = testing::init::<KeepErrorsSampler>(cfg).unwrap_err();
            assert!(e.contains(word), "{cfg:?}: {e}");
        }
    }
}
