//! The tracer daemon as a library: the `tracer` binary, the tests and the benches use it.
//!
//! Data flows one way, one module per stage:
//! [`probes`] (kernel side, loaded and attached) -> [`events`] (ring-buffer records) ->
//! [`conntrack`] (per-connection state) -> [`decode`] (protocols) -> [`span`] (OTel spans,
//! with [`process`] metadata) -> [`plugins`] (Wasm sampling and enrichment) -> [`export`]
//! (OTLP, terminal); [`spanmetrics`] takes every span as it leaves the plugins, exported or
//! not (RED metrics, service graph). [`pipeline`] wires them, one thread per stage, with [`queue`]s bounded
//! by memory between the span stages;
//! [`tls`] finds TLS libraries as processes load them and has the probes attached to each;
//! [`conntrack`] hands each span to [`join`], which puts it in its trace ([`context`]: the
//! upstream's trace context). [`metrics`] counts everything; [`check`] explains what a host
//! lacks; [`semconv`] names the attributes; [`config`] and [`reload`] are the settings and
//! their live changes, [`changes`] tells about each one; [`cli`] holds the subcommands.
pub mod admin;
pub mod btf;
pub mod changes;
pub mod check;
pub mod cli;
pub mod config;
pub mod conntrack;
pub mod context;
pub mod decode;
pub mod events;
pub mod export;
pub mod join;
pub mod kernel_log;
pub mod metadata;
pub mod metrics;
pub mod own_connections;
pub mod pipeline;
pub mod plugins;
pub mod probes;
pub mod process;
pub mod queue;
pub mod reload;
pub mod semconv;
pub mod span;
pub mod spanmetrics;
#[cfg(test)]
mod testing;
pub mod tls;
