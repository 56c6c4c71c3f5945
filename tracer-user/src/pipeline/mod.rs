//! Wires the stages together, each on its own thread, data flowing one way through bounded
//! queues: the ring-buffer reader (drain only, [`reader`]) -> decode: connection table,
//! decoders, spans ([`stages`]) -> plugins ([`stages`]) -> the exporters' tasks. No stage
//! waits for the one after it: what does not fit in a queue is dropped and counted by reason
//! (`records_dropped_total`, `spans_dropped_total`). At shutdown every stage waits instead,
//! so what the kernel wrote goes all the way through.
pub mod batch;
pub mod reader;
pub mod stages;

use std::{
    io::{Read, Write},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use tokio::sync::{mpsc, oneshot};

use crate::{
    conntrack::{ConnTable, TableOptions},
    events::Event,
    metrics::{Health, Registry},
    probes::{ProbeOptions, Probes},
    span::Span,
};
use batch::{Batch, Records};
use reader::Reader;
pub use stages::Downstream;

/// The reader drains at least this often: the probes wake it only past a fill threshold.
pub const TICK: Duration = Duration::from_millis(50);

/// Writes raw records as `u32 little-endian length` + bytes: the fixture format that
/// [`replay`] and the unit tests read, and the layout of a [`Batch`].
pub struct Recorder(pub Box<dyn Write + Send>);

impl Recorder {
    pub fn write(&mut self, batch: &Batch) -> std::io::Result<()> {
        self.0.write_all(batch.bytes())
    }
}

/// Splits a recording into records; a truncated tail is reported, not guessed at.
pub fn read_recording(mut r: impl Read) -> std::io::Result<(Vec<Vec<u8>>, bool)> {
    let mut buf = Vec::new();
    r.read_to_end(&mut buf)?;
    let mut records = Records::new(&buf);
    let out = records.by_ref().map(<[u8]>::to_vec).collect();
    Ok((out, !records.remainder().is_empty()))
}

/// Feeds one raw record through the table: the single code path for live and replayed events.
pub fn process(rec: &[u8], table: &mut ConnTable, spans: &mut Vec<Span>) {
    table.metrics().events_read.inc();
    match Event::parse(rec) {
        Ok(ev) => table.handle(ev, spans),
        Err(e) => {
            if table.metrics().events_invalid.inc() == 0 {
                tracing::warn!("skipping invalid record: {e} (counted in events_invalid_total)");
            }
        }
    }
}

/// What the live reader owns: the kernel side and the daemon's side-channels.
pub struct Live {
    /// Shared with the TLS library tracker; the reader holds the last reference and detaches.
    pub probes: Arc<Mutex<Probes>>,
    pub ring: RingBuf<MapData>,
    /// Config reloads to apply.
    pub control: mpsc::Receiver<Update>,
    /// Where to copy raw records (`--record`); written by the decode stage, so it holds what
    /// was decoded.
    pub recorder: Option<Recorder>,
    /// Log the counters this often.
    pub stats_every: Option<Duration>,
    pub metrics: reader::ReaderMetrics,
}

/// Settings changed by a config reload: the probes' right away, the table's before the next
/// record read after them.
pub struct Update {
    pub table: TableOptions,
    pub probes: ProbeOptions,
    pub applied: oneshot::Sender<Result<(), String>>,
}

/// Runs the stages until `shutdown` resolves (or a stage fails), then drains what the kernel
/// already wrote through all of them.
pub async fn run(
    live: Live,
    table: ConnTable,
    down: Downstream,
    reg: Registry,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let Live {
        probes,
        ring,
        control,
        recorder,
        stats_every,
        metrics,
    } = live;
    health.probes_attached.set(true);
    let stop = Arc::new(AtomicBool::new(false));
    let stages = stages::start(
        table,
        recorder,
        down,
        metrics.records_dropped,
        health.clone(),
        stop.clone(),
    )?;
    let reader = Reader {
        probes,
        ring,
        control,
        handoff: stages.handoff,
        health,
        kernel: metrics.kernel,
        stop: stop.clone(),
    };
    let mut threads = vec![stages::spawn("tracer-reader", move || reader.run())?];
    threads.extend(stages.threads);
    let stats = stats_every.map(|every| {
        tokio::spawn(async move {
            let mut t = tokio::time::interval(every);
            t.tick().await;
            loop {
                t.tick().await;
                tracing::info!("counters: {}", reg.summary());
            }
        })
    });
    let mut joined = tokio::task::spawn_blocking(move || stages::join(threads));
    let result = tokio::select! {
        _ = shutdown => {
            stop.store(true, Ordering::Release);
            (&mut joined).await
        }
        r = &mut joined => r,
    };
    if let Some(s) = stats {
        s.abort();
    }
    result.map_err(std::io::Error::other)?
}

/// Runs a recording through the same table, returning the spans (and whether its tail was cut).
pub fn replay(records: &[Vec<u8>], table: &mut ConnTable) -> Vec<Span> {
    let mut spans = Vec::new();
    for rec in records {
        process(rec, table, &mut spans);
    }
    // What still waits for its join leaves as it stands: the recording has no more to say.
    table.flush(&mut spans);
    spans
}
