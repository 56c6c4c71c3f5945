//! Wires the stages together: ring buffer -> events -> connection table (decoders, spans) ->
//! plugin chain -> exporters. One task owns the hot path; nothing in it blocks.
use std::{
    io::{Read, Write},
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, oneshot},
};
use tracer_common::counter;

use crate::{
    conntrack::{ConnTable, TableOptions},
    events::Event,
    export::Exporters,
    metrics::Metrics,
    plugins::PluginHost,
    probes::{ProbeOptions, Probes},
    span::{Span, clock_ns},
};

/// Writes raw records as `u32 little-endian length` + bytes: the fixture format that
/// [`replay`] and the unit tests read.
pub struct Recorder(pub Box<dyn Write + Send>);

impl Recorder {
    pub fn record(&mut self, rec: &[u8]) -> std::io::Result<()> {
        self.0.write_all(&(rec.len() as u32).to_le_bytes())?;
        self.0.write_all(rec)
    }
}

/// Splits a recording into records; a truncated tail is reported, not guessed at.
pub fn read_recording(mut r: impl Read) -> std::io::Result<(Vec<Vec<u8>>, bool)> {
    let mut buf = Vec::new();
    r.read_to_end(&mut buf)?;
    let mut out = Vec::new();
    let mut rest = &buf[..];
    while rest.len() >= 4 {
        let n = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if rest.len() - 4 < n {
            return Ok((out, true));
        }
        out.push(rest[4..4 + n].to_vec());
        rest = &rest[4 + n..];
    }
    Ok((out, !rest.is_empty()))
}

/// Feeds one raw record through the table: the single code path for live and replayed events.
pub fn process(rec: &[u8], table: &mut ConnTable, metrics: &Metrics, spans: &mut Vec<Span>) {
    Metrics::add(&metrics.events_read_total, 1);
    match Event::parse(rec) {
        Ok(ev) => table.handle(ev, spans),
        Err(e) => {
            if metrics.events_invalid_total.fetch_add(1, Relaxed) == 0 {
                tracing::warn!("skipping invalid record: {e} (counted in events_invalid_total)");
            }
        }
    }
}

/// What the live reader owns: the kernel side and the daemon's side-channels.
pub struct Live {
    pub probes: Probes,
    pub ring: RingBuf<MapData>,
    /// Config reloads to apply.
    pub control: mpsc::Receiver<Update>,
    /// Where to copy raw records (`--record`).
    pub recorder: Option<Recorder>,
    /// Log the counters this often.
    pub stats_every: Option<Duration>,
}

/// Settings changed by a config reload, applied between two batches.
pub struct Update {
    pub table: TableOptions,
    pub probes: ProbeOptions,
    pub applied: oneshot::Sender<Result<(), String>>,
}

/// Records handled before the reader yields to timers, signals and exporters.
const DRAIN_BATCH: usize = 4096;

/// Runs until `shutdown` resolves, then drains what the kernel already wrote.
pub async fn run(
    live: Live,
    mut table: ConnTable,
    plugins: &PluginHost,
    exporters: &Exporters,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let Live {
        mut probes,
        ring,
        mut control,
        mut recorder,
        stats_every,
    } = live;
    metrics.health.probes_attached.store(true, Relaxed);
    // SAFETY: the ring buffer owns its fd and is moved into the AsyncFd, which outlives every use.
    let mut ring = unsafe { AsyncFd::register(ring) }.map_err(|e| e.into_parts().1)?;
    // The probes only ask for a wake-up past a fill threshold; this timer bounds the latency.
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut housekeeping = tokio::time::interval(Duration::from_secs(10));
    let mut stats = stats_every.map(tokio::time::interval);
    tokio::pin!(shutdown);
    let mut spans = Vec::new();
    let mut more = false;
    let mut stop = false;
    loop {
        tokio::select! {
            // Shutdown and housekeeping first: under sustained load the ring never empties.
            biased;
            _ = &mut shutdown, if !stop => stop = true,
            _ = housekeeping.tick() => table.maintain(clock_ns(libc::CLOCK_MONOTONIC), false),
            _ = async { match stats.as_mut() { Some(s) => { s.tick().await; } None => std::future::pending().await } } => {
                tracing::info!("counters: {}", metrics.summary());
            }
            Some(u) = control.recv() => {
                table.set_options(u.table);
                let _ = u.applied.send(probes.configure(&u.probes).map_err(|e| e.to_string()));
            }
            _ = std::future::ready(()), if more || stop => {}
            guard = ring.readable_mut() => { if let Ok(mut g) = guard { g.clear_ready(); } }
            _ = tick.tick() => {}
        }
        metrics
            .health
            .reader_alive_s
            .store(clock_ns(libc::CLOCK_MONOTONIC) / 1_000_000_000, Relaxed);
        // A bounded batch per turn, so the branches above always get their turn.
        let mut n = 0;
        let rb = ring.get_mut();
        while n < DRAIN_BATCH {
            let Some(item) = rb.next() else { break };
            n += 1;
            if let Some(r) = recorder.as_mut()
                && let Err(e) = r.record(&item)
            {
                tracing::warn!("recording stopped: {e}");
                recorder = None;
            }
            process(&item, &mut table, &metrics, &mut spans);
        }
        more = n == DRAIN_BATCH;
        if !spans.is_empty() {
            // One chain version for the whole batch (a swap in between takes the next one).
            plugins.process(&mut spans, &metrics);
            exporters.submit(std::mem::take(&mut spans));
        }
        if !more || stop {
            sync_kernel_counters(&probes, &metrics);
        }
        if stop && !more {
            break;
        }
        if more {
            // Let the exporter tasks run between batches.
            tokio::task::yield_now().await;
        }
    }
    if let Some(mut r) = recorder {
        r.0.flush()?;
    }
    Ok(())
}

fn sync_kernel_counters(probes: &Probes, m: &Metrics) {
    let k = probes.kernel_counters();
    m.events_lost_total
        .store(k[counter::RINGBUF_FULL as usize], Relaxed);
    m.kernel_conn_map_full_total
        .store(k[counter::CONN_MAP_FULL as usize], Relaxed);
    m.kernel_read_failed_total
        .store(k[counter::READ_USER_FAILED as usize], Relaxed);
    m.kernel_h2_frames_lost_total
        .store(k[counter::H2_FRAMES_LOST as usize], Relaxed);
}

/// Runs a recording through the same table, returning the spans (and whether its tail was cut).
pub fn replay(records: &[Vec<u8>], table: &mut ConnTable, metrics: &Metrics) -> Vec<Span> {
    let mut spans = Vec::new();
    for rec in records {
        process(rec, table, metrics, &mut spans);
    }
    spans
}
