//! Keeps a fixed share of traces, the same ones on every node.
//!
//! ```toml
//! ratio = 0.25      # probability a trace is kept, 0..=1 (required)
//! record = false    # true: kept spans get `sampling.ratio` (a float: 1/ratio is their weight)
//! ```
//!
//! The decision depends on the trace id alone, following OpenTelemetry's consistent probability
//! sampling ("TraceState: Probability Sampling"): the randomness `R` is the low 56 bits of the
//! trace id (bytes 9..16, random by W3C Trace Context Level 2), the rejection threshold is
//! `T = 2^56 - round(ratio * 2^56)`, and a span is kept iff `R >= T`. So every tracer, OpenTelemetry
//! SDK or collector using that rule keeps the same traces, and a trace kept at one ratio is kept
//! at every larger ratio (a node sampling 10% keeps a subset of what a node sampling 50% keeps).
//! (Keeping `R < ratio * 2^56` would keep as many traces, but not the ones OpenTelemetry keeps.)
//!
//! Interest: nothing (ids only), so a span costs the least the boundary allows; verdicts are
//! sent only for dropped spans (and for kept ones when `record` is on).
use tracer_plugin_sdk::{
    Attribute, Batch, Config, Edit, Interest, Plugin, Value, Verdict, count, sampling::Threshold,
    serde::Deserialize,
};

#[derive(Deserialize)]
#[serde(crate = "tracer_plugin_sdk::serde", deny_unknown_fields)]
struct Settings {
    ratio: Option<f64>,
    #[serde(default)]
    record: bool,
}

pub struct RatioSampler {
    threshold: Threshold,
    /// Whether kept spans get `sampling.ratio`.
    record: bool,
}

impl Plugin for RatioSampler {
    fn init(config: &Config) -> Result<Self, String> {
        let s: Settings = config.parse()?;
        // How much to drop is the operator's call: no default.
        let ratio = s.ratio.ok_or(
            "no ratio: set `ratio`, the share of traces kept, 0..=1 (ratio = 0.1 keeps one in ten)",
        )?;
        let threshold = Threshold::new(ratio).map_err(|e| format!("invalid config: {e}"))?;
        Ok(Self {
            threshold,
            record: s.record,
        })
    }

    fn interest(&self) -> Interest {
        Interest::none()
    }

    fn on_batch(&mut self, batch: &Batch<'_>, out: &mut Vec<Verdict>) {
        let mut dropped = 0;
        for (i, span) in batch.spans.iter().enumerate() {
            let keep = self.threshold.keeps(span.trace_id);
            if !keep {
                dropped += 1;
                out.push(Verdict {
                    span: i as u32,
                    keep: false,
                    edits: Vec::new(),
                });
            } else if self.record {
                out.push(Verdict {
                    span: i as u32,
                    keep: true,
                    edits: vec![Edit::Set(Attribute {
                        key: "sampling.ratio".into(),
                        value: Value::Float(self.threshold.probability()),
                    })],
                });
            }
        }
        if dropped > 0 {
            count("sampled_out", dropped);
        }
    }
}

tracer_plugin_sdk::export_plugin!(RatioSampler);

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_plugin_sdk::testing;

    fn ids(n: usize) -> Vec<(u64, u64)> {
        (0..n)
            .map(|_| {
                (
                    tracer_plugin_sdk::random_u64(),
                    tracer_plugin_sdk::random_u64(),
                )
            })
            .collect()
    }

    fn kept(config: &str, ids: &[(u64, u64)]) -> usize {
        let spans = ids
            .iter()
            .map(|&t| testing::span().with_trace_id(t))
            .collect();
        let v = testing::run::<RatioSampler>(config, spans).unwrap();
        assert!(v.iter().all(|v| !v.keep && v.edits.is_empty()));
        ids.len() - v.len()
    }

    #[test]
    fn declares_no_interest() {
        let i = testing::init::<RatioSampler>("ratio = 0.5").unwrap();
        assert_eq!(i, Interest::none());
    }

    #[test]
    fn same_trace_same_decision() {
        let ids = ids(1000);
        let spans = || -> Vec<_> {
            ids.iter()
                .map(|&t| testing::span().with_trace_id(t))
                .collect()
        };
        let a = testing::run::<RatioSampler>("ratio = 0.3", spans()).unwrap();
        let b = testing::run::<RatioSampler>("ratio = 0.3", spans()).unwrap();
        assert_eq!(a, b);
        // Spans of one trace (different span ids, kinds, times) share the decision.
        for &t in &ids[..50] {
            let mut s2 = testing::span().with_trace_id(t);
            s2.span_id = 99;
            s2.start_unix_nano += 7;
            let v = testing::run::<RatioSampler>(
                "ratio = 0.3",
                vec![testing::span().with_trace_id(t), s2],
            )
            .unwrap();
            assert!(v.len().is_multiple_of(2), "{v:?}");
        }
    }

    #[test]
    fn kept_fraction_is_within_one_percent_of_the_ratio() {
        let ids = ids(100_000);
        for ratio in [0.01, 0.1, 0.25, 0.5, 0.9] {
            let k = kept(&format!("ratio = {ratio}"), &ids) as f64 / ids.len() as f64;
            assert!((k - ratio).abs() < 0.01, "ratio {ratio}: kept {k}");
        }
        assert_eq!(kept("ratio = 0", &ids), 0);
        assert_eq!(kept("ratio = 1", &ids), ids.len());
        assert_eq!(kept("ratio = 1.0", &ids), ids.len());
    }

    #[test]
    fn smaller_ratios_keep_subsets() {
        let ids = ids(10_000);
        let keeps = |ratio: f64| {
            let t = Threshold::new(ratio).unwrap();
            ids.iter().map(move |&i| t.keeps(i))
        };
        for (small, big) in keeps(0.1).zip(keeps(0.4)) {
            assert!(!small || big);
        }
    }

    #[test]
    fn matches_the_opentelemetry_threshold_rule() {
        // ratio 0.25: T = 0xc0000000000000; R = the low 56 bits of the trace id.
        let cfg = "ratio = 0.25";
        let at = |r: u64| {
            testing::run::<RatioSampler>(
                cfg,
                vec![testing::span().with_trace_id((u64::MAX, 0xab00_0000_0000_0000 | r))],
            )
            .unwrap()
            .is_empty()
        };
        assert!(at(0x00c0_0000_0000_0000));
        assert!(at(0x00ff_ffff_ffff_ffff));
        assert!(!at(0x00bf_ffff_ffff_ffff));
        assert!(!at(0));
    }

    #[test]
    fn record_marks_kept_spans_with_the_ratio() {
        let spans = vec![
            testing::span().with_trace_id((0, 0x00ff_ffff_ffff_ffff)),
            testing::span().with_trace_id((0, 0)),
        ];
        let v = testing::run::<RatioSampler>("ratio = 0.25\nrecord = true", spans).unwrap();
        assert_eq!(v.len(), 2);
        assert!(v[0].keep);
        testing::assert_set(&v[0], "sampling.ratio", 0.25);
        testing::assert_dropped(&v, 1);
        assert_eq!(
            testing::take_counts()
                .into_iter()
                .filter(|(n, _)| n == "sampled_out")
                .map(|(_, d)| d)
                .sum::<u64>(),
            1
        );
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = testing::init::<RatioSampler>("").unwrap_err();
        assert!(e.starts_with("no ratio: set `ratio`"), "{e}");
        let e = testing::init::<RatioSampler>("record = true").unwrap_err();
        assert!(e.starts_with("no ratio: set `ratio`"), "{e}");
        let e = testing::init::<RatioSampler>("ratio = 1.5").unwrap_err();
        assert!(e.contains("ratio") && e.contains("1.5"), "{e}");
        let e = testing::init::<RatioSampler>("ratio = -0.1").unwrap_err();
        assert!(e.contains("ratio"), "{e}");
        let e = testing::init::<RatioSampler>("ratio = 0.5\nratoi = 1").unwrap_err();
        assert!(e.contains("ratoi"), "{e}");
        let e = testing::init::<RatioSampler>("ratio = \"half\"").unwrap_err();
        assert!(e.contains("ratio"), "{e}");
    }
}
