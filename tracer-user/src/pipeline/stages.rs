//! The stages after the reader, each on its own thread: decode (connection table, decoders,
//! span building with its /proc reads, the recording) and plugins (the Wasm chain, the
//! request metrics, then the exporters' queues). Each one only waits for its input; a full queue ahead drops what does
//! not fit, counted, except at shutdown, when nothing is dropped.
use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use futures::executor::block_on;

use super::{
    Recorder,
    batch::Batch,
    process,
    reader::{Handoff, ToDecode},
};
use crate::{
    changes::CONFIG_VERSION_ATTRIBUTE,
    conntrack::ConnTable,
    export::Submitter,
    metrics::{Busy, Health, RecordDrops, SpanDrop, SpanDrops},
    plugins::{PluginHost, chain::MAX_BATCH},
    queue::{Limits, SpanQueue},
    span::{Span, Value, clock_ns, kv},
    spanmetrics::SpanMetrics,
};

/// Batches of records the decode queue holds (each at most [`super::batch::BATCH_BYTES`]).
pub const DECODE_QUEUE_BATCHES: usize = 128;
/// Emptied batch buffers kept for the reader to reuse.
const POOL_BUFFERS: usize = 8;
/// Memory the spans waiting for the plugin stage may hold.
pub const PLUGIN_QUEUE_BYTES: usize = 32 << 20;
/// How often the decode stage forgets idle connections and exited processes.
const HOUSEKEEPING: Duration = Duration::from_secs(10);
/// How often the decode stage lets out the spans that waited long enough for their join.
const JOIN_TICK: Duration = Duration::from_millis(20);

pub type Thread = (&'static str, JoinHandle<io::Result<()>>);

/// The running decode and plugin stages.
pub struct Stages {
    /// Feeds the decode stage; dropping it stops the stages once what it sent went through.
    pub handoff: Handoff,
    pub threads: Vec<Thread>,
}

/// Where the spans the decode stage makes go: through the plugin chain, counted in the
/// request metrics, to the exporters.
pub struct Downstream {
    pub plugins: Arc<PluginHost>,
    pub requests: Arc<SpanMetrics>,
    pub export: Submitter,
}

/// Starts the decode and plugin stages. Once `stop` is set, they wait for room ahead instead
/// of dropping.
pub fn start(
    table: ConnTable,
    recorder: Option<Recorder>,
    down: Downstream,
    records_dropped: RecordDrops,
    health: Arc<Health>,
    stop: Arc<AtomicBool>,
) -> io::Result<Stages> {
    let Downstream {
        plugins,
        requests,
        export,
    } = down;
    let (tx, rx) = sync_channel(DECODE_QUEUE_BATCHES);
    let (pool_tx, pool_rx) = sync_channel(POOL_BUFFERS);
    let to_plugins = Arc::new(SpanQueue::new(Limits {
        max_bytes: PLUGIN_QUEUE_BYTES,
        max_spans: None,
    }));
    let decode = Decode {
        rx,
        pool: pool_tx,
        table,
        recorder,
        out: to_plugins.clone(),
        drops: export.span_drops(),
        health: health.clone(),
        stop,
    };
    let stage = PluginStage {
        input: to_plugins,
        host: plugins,
        requests,
        export,
        health,
    };
    let threads = vec![
        spawn("tracer-decode", move || decode.run())?,
        spawn("tracer-plugins", move || stage.run())?,
    ];
    Ok(Stages {
        handoff: Handoff::new(tx, pool_rx, records_dropped),
        threads,
    })
}

pub fn spawn(
    name: &'static str,
    f: impl FnOnce() -> io::Result<()> + Send + 'static,
) -> io::Result<Thread> {
    Ok((
        name,
        std::thread::Builder::new().name(name.into()).spawn(f)?,
    ))
}

/// Waits for every thread; the first error (or panic) is the result.
pub fn join(threads: Vec<Thread>) -> io::Result<()> {
    let mut result = Ok(());
    for (name, t) in threads {
        let r = t
            .join()
            .unwrap_or_else(|_| Err(io::Error::other(format!("the {name} thread panicked"))));
        if result.is_ok() {
            result = r;
        }
    }
    result
}

/// Closes a span queue when the stage holding it ends, however it ends: the stage on the
/// other side learns it (a consumer sees the end of its input, a producer its spans refused).
struct CloseOnDrop(Arc<SpanQueue>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

struct Decode {
    rx: Receiver<ToDecode>,
    /// Emptied buffers back to the reader.
    pool: SyncSender<Vec<u8>>,
    table: ConnTable,
    recorder: Option<Recorder>,
    out: Arc<SpanQueue>,
    drops: SpanDrops,
    health: Arc<Health>,
    stop: Arc<AtomicBool>,
}

impl Decode {
    fn run(mut self) -> io::Result<()> {
        let _close = CloseOnDrop(self.out.clone());
        let mut maintained = Instant::now();
        let mut spans = Vec::new();
        loop {
            match self.rx.recv_timeout(JOIN_TICK) {
                Ok(ToDecode::Records(batch)) => self.records(batch, &mut spans),
                Ok(ToDecode::Options(opts)) => self.table.set_options(opts),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = clock_ns(libc::CLOCK_MONOTONIC);
            self.table.tick(now, &mut spans);
            self.send(&mut spans)?;
            if maintained.elapsed() >= HOUSEKEEPING {
                self.table.maintain(now, false);
                maintained = Instant::now();
            }
        }
        self.table.flush(&mut spans);
        self.send(&mut spans)?;
        match self.recorder.take() {
            Some(mut r) => r.0.flush(),
            None => Ok(()),
        }
    }

    fn records(&mut self, batch: Batch, spans: &mut Vec<Span>) {
        let _busy = Busy::new(&self.health.decode_busy_since_s);
        if let Some(r) = self.recorder.as_mut()
            && let Err(e) = r.write(&batch)
        {
            tracing::warn!("recording stopped: {e}");
            self.recorder = None;
        }
        for rec in batch.records() {
            process(rec, &mut self.table, spans);
        }
        let _ = self.pool.try_send(batch.into_buffer());
    }

    /// Hands the spans that left the join to the plugin stage.
    fn send(&mut self, spans: &mut Vec<Span>) -> io::Result<()> {
        if spans.is_empty() {
            return Ok(());
        }
        let spans = std::mem::take(spans);
        let refused = if self.stop.load(Ordering::Acquire) {
            block_on(self.out.push_wait(spans))
        } else {
            self.out.push(spans)
        };
        self.drops.add(SpanDrop::PluginQueueFull, refused.full);
        self.drops.add(SpanDrop::Shutdown, refused.closed);
        if refused.closed > 0 {
            return Err(io::Error::other("the plugin stage stopped"));
        }
        Ok(())
    }
}

struct PluginStage {
    input: Arc<SpanQueue>,
    host: Arc<PluginHost>,
    /// Every span once, as it leaves the chain: exported or not, it was a request.
    requests: Arc<SpanMetrics>,
    export: Submitter,
    health: Arc<Health>,
}

impl PluginStage {
    fn run(self) -> io::Result<()> {
        let _close = CloseOnDrop(self.input.clone());
        let mut spans = Vec::with_capacity(MAX_BATCH);
        let mut dropped = Vec::new();
        while block_on(self.input.recv_many(&mut spans, MAX_BATCH)) > 0 {
            let _busy = Busy::new(&self.health.plugins_busy_since_s);
            // One chain version for the whole batch (a swap in between takes the next one).
            self.host.process_keeping_dropped(&mut spans, &mut dropped);
            self.requests.record(&dropped);
            dropped.clear();
            self.requests.record(&spans);
            let version = self.host.changes.version();
            if !version.is_empty() {
                for s in &mut spans {
                    s.attributes.push(kv(
                        CONFIG_VERSION_ATTRIBUTE,
                        Value::Str(version.to_string()),
                    ));
                }
            }
            self.export
                .submit(std::mem::replace(&mut spans, Vec::with_capacity(MAX_BATCH)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        conntrack::TableOptions,
        export::{BatchConfig, Exporters, Format, Printer, Sink},
        metrics::{Reason, Registry, SpanDrop},
        pipeline::{read_recording, replay},
        plugins::Settings,
        testing::{SharedBuf, sample, table, traffic},
    };

    struct Run {
        reg: Registry,
        printed: SharedBuf,
        recorded: SharedBuf,
    }

    /// Feeds `records` through the decode and plugin stages (options first, when given) into
    /// a printer, and stops them.
    async fn run_stages(records: &[Vec<u8>], per_batch: usize, opts: Option<TableOptions>) -> Run {
        let reg = Registry::default();
        let health = Arc::new(Health::new(&reg));
        let (printed, recorded) = (SharedBuf::default(), SharedBuf::default());
        let ex = Exporters::spawn(
            vec![Sink::Print(Printer {
                format: Format::Json,
                out: Box::new(printed.clone()),
            })],
            BatchConfig::default(),
            &reg,
            health.clone(),
        );
        let host = Arc::new(PluginHost::new(Settings::default(), &reg).unwrap());
        // As at shutdown: the stages wait for room instead of dropping.
        let stop = Arc::new(AtomicBool::new(true));
        let recorder = Recorder(Box::new(recorded.clone()));
        let mut stages = start(
            table(&reg),
            Some(recorder),
            Downstream {
                plugins: host,
                requests: Arc::new(SpanMetrics::new(100, &reg)),
                export: ex.submitter(),
            },
            RecordDrops::new(&reg),
            health,
            stop,
        )
        .unwrap();
        if let Some(o) = opts {
            stages.handoff.options(o);
        }
        // At most `per_batch` records per batch, fewer when its buffer is full.
        let h = &mut stages.handoff;
        for chunk in records.chunks(per_batch) {
            let mut b = h.batch();
            for r in chunk {
                if !b.push(r) {
                    let full = std::mem::replace(&mut b, h.batch());
                    h.send_wait(full).unwrap();
                    b.push(r);
                }
            }
            h.send_wait(b).unwrap();
        }
        drop(stages.handoff);
        let threads = stages.threads;
        tokio::task::spawn_blocking(move || join(threads))
            .await
            .unwrap()
            .unwrap();
        ex.shutdown(Duration::from_secs(60)).await;
        Run {
            reg,
            printed,
            recorded,
        }
    }

    fn nothing_dropped(reg: &Registry) {
        for r in SpanDrop::ALL {
            let name = format!("tracer_spans_dropped_total{{reason=\"{}\"}}", r.label());
            assert_eq!(sample(reg, &name), 0, "{name}");
        }
        assert_eq!(
            sample(
                reg,
                "tracer_records_dropped_total{reason=\"decode_queue_full\"}"
            ),
            0
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_record_goes_through_every_stage_and_into_the_recording() {
        let records = traffic(20, 30);
        let expected = replay(&records, &mut table(&Registry::default())).len() as u64;
        assert_eq!(expected, 600);
        for per_batch in [1, 7, records.len()] {
            let run = run_stages(&records, per_batch, None).await;
            let m = &run.reg;
            assert_eq!(
                sample(m, "tracer_spans_exported_total"),
                expected,
                "{per_batch}"
            );
            assert_eq!(run.printed.lines() as u64, expected);
            nothing_dropped(m);
            let (again, cut) = read_recording(&run.recorded.bytes()[..]).unwrap();
            assert!(!cut);
            assert_eq!(again, records, "the recording replays as the original");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reloaded_options_apply_to_the_records_after_them() {
        let records = traffic(3, 10);
        let ports = TableOptions {
            ports: vec![1],
            ..Default::default()
        };
        let run = run_stages(&records, 5, Some(ports)).await;
        let m = &run.reg;
        assert!(
            sample(m, "tracer_spans_filtered_total") > 0,
            "no span is on port 1"
        );
        assert_eq!(sample(m, "tracer_spans_built_total"), 0);
        assert_eq!(sample(m, "tracer_spans_exported_total"), 0);
        nothing_dropped(m);
    }
}
