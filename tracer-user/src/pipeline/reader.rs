//! The ring-buffer reader, on its own thread: drain only. It copies records into batches and
//! hands them to the decode stage without ever waiting for it (a full decode queue drops the
//! batch, counted); between drains it applies config reloads to the probes and syncs the
//! kernel's counters. Nothing it does reads /proc, runs a plugin or exports.
use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc::{Receiver, SyncSender, TrySendError},
    },
};

use aya::maps::{MapData, RingBuf};
use tokio::sync::mpsc;
use tracer_common::counter;

use super::{TICK, Update, batch::Batch};
use crate::{
    conntrack::TableOptions,
    metrics::{
        ContextOutcome, Counter, Health, RecordDrop, RecordDrops, Registry, context_outcomes,
        monotonic_s,
    },
    probes::Probes,
};

/// Batches drained per turn at most, so reloads, the tick and shutdown get their turn
/// under a load that never lets the ring buffer empty.
const TURN_BATCHES: usize = 16;

/// What the decode stage gets, in order.
pub enum ToDecode {
    Records(Batch),
    /// New filters and span options (a config reload): they apply to the records after them.
    Options(TableOptions),
}

/// The decode stage is gone (it stopped, or panicked).
#[derive(Debug, thiserror::Error)]
#[error("the decode stage stopped")]
pub struct Gone;

/// The reader's end of the decode queue.
pub struct Handoff {
    tx: SyncSender<ToDecode>,
    /// Emptied batch buffers coming back from the decode stage.
    pool: Receiver<Vec<u8>>,
    /// The buffer of a batch that was dropped, for the next one.
    spare: Option<Vec<u8>>,
    /// Reload options waiting for room in the queue: they go before any later record.
    options: Option<TableOptions>,
    drops: RecordDrops,
}

impl Handoff {
    pub fn new(tx: SyncSender<ToDecode>, pool: Receiver<Vec<u8>>, drops: RecordDrops) -> Self {
        Handoff {
            tx,
            pool,
            spare: None,
            options: None,
            drops,
        }
    }

    /// An empty batch, in a recycled buffer when there is one.
    pub fn batch(&mut self) -> Batch {
        match self.spare.take().or_else(|| self.pool.try_recv().ok()) {
            Some(buf) => Batch::reuse(buf),
            None => Batch::new(),
        }
    }

    /// Keeps the buffer of a batch that was not sent for the next one.
    pub fn recycle(&mut self, batch: Batch) {
        self.spare = Some(batch.into_buffer());
    }

    /// Queues reload options for the decode stage, ahead of every later batch.
    pub fn options(&mut self, opts: TableOptions) {
        self.options = Some(opts);
    }

    /// Sends pending options if there is room; true when none are left waiting.
    pub fn flush_options(&mut self) -> Result<bool, Gone> {
        let Some(opts) = self.options.take() else {
            return Ok(true);
        };
        match self.tx.try_send(ToDecode::Options(opts)) {
            Ok(()) => Ok(true),
            Err(TrySendError::Full(msg)) => {
                if let ToDecode::Options(o) = msg {
                    self.options = Some(o);
                }
                Ok(false)
            }
            Err(TrySendError::Disconnected(_)) => Err(Gone),
        }
    }

    /// Hands a batch on without waiting: when the queue is full, the batch is dropped and
    /// its records counted.
    pub fn send(&mut self, batch: Batch) -> Result<(), Gone> {
        let records = batch.len() as u64;
        let refused = if self.flush_options()? {
            match self.tx.try_send(ToDecode::Records(batch)) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(msg)) => msg,
                Err(TrySendError::Disconnected(_)) => return Err(Gone),
            }
        } else {
            ToDecode::Records(batch)
        };
        self.drops.add(RecordDrop::DecodeQueueFull, records);
        if let ToDecode::Records(b) = refused {
            self.recycle(b);
        }
        Ok(())
    }

    /// Hands a batch on, waiting for room: at shutdown, when waiting loses nothing.
    pub fn send_wait(&mut self, batch: Batch) -> Result<(), Gone> {
        if let Some(opts) = self.options.take() {
            self.tx.send(ToDecode::Options(opts)).map_err(|_| Gone)?;
        }
        self.tx.send(ToDecode::Records(batch)).map_err(|_| Gone)
    }
}

/// How a drain hands batches on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Live: never wait, drop what does not fit.
    Drop,
    /// Stopping: wait for room.
    Wait,
}

pub struct Reader {
    /// Shared with the TLS library tracker, which attaches uprobes as libraries appear.
    pub probes: Arc<Mutex<Probes>>,
    pub ring: RingBuf<MapData>,
    /// Config reloads to apply.
    pub control: mpsc::Receiver<Update>,
    pub handoff: Handoff,
    pub health: Arc<Health>,
    pub kernel: KernelMetrics,
    /// Set to stop: the reader then drains what the kernel wrote, waiting for the decode
    /// stage instead of dropping, detaches the probes, drains again and returns.
    pub stop: Arc<AtomicBool>,
}

impl Reader {
    pub fn run(self) -> io::Result<()> {
        let Reader {
            probes,
            mut ring,
            mut control,
            mut handoff,
            health,
            kernel,
            stop,
        } = self;
        let gone = |g: Gone| io::Error::other(g);
        let wakeups = Wakeups::new(&ring)?;
        let mut more = false;
        while !stop.load(Ordering::Acquire) {
            if !more {
                wakeups.wait()?;
            }
            health
                .reader_alive_s
                .store(monotonic_s(), Ordering::Relaxed);
            while let Ok(u) = control.try_recv() {
                handoff.options(u.table);
                let applied = lock(&probes).configure(&u.probes);
                let _ = u.applied.send(applied.map_err(|e| e.to_string()));
            }
            handoff.flush_options().map_err(gone)?;
            more = drain(&mut ring, &mut handoff, Mode::Drop).map_err(gone)?;
            if !more {
                kernel.sync(&lock(&probes));
            }
        }
        // What the kernel wrote until now, then what it writes until the probes are gone.
        while drain(&mut ring, &mut handoff, Mode::Wait).map_err(gone)? {}
        kernel.sync(&lock(&probes));
        // The last strong reference: the probes detach (the TLS tracker sees them gone).
        drop(probes);
        while drain(&mut ring, &mut handoff, Mode::Wait).map_err(gone)? {}
        Ok(())
    }
}

/// Copies up to [`TURN_BATCHES`] batches of records out of the ring buffer and hands them
/// on; true when records are left.
fn drain(ring: &mut RingBuf<MapData>, handoff: &mut Handoff, mode: Mode) -> Result<bool, Gone> {
    let send = |h: &mut Handoff, b: Batch| match mode {
        Mode::Drop => h.send(b),
        Mode::Wait => h.send_wait(b),
    };
    let mut batch = handoff.batch();
    let mut sent = 0;
    while sent < TURN_BATCHES {
        let Some(item) = ring.next() else { break };
        if !batch.push(&item) {
            let full = std::mem::replace(&mut batch, handoff.batch());
            send(handoff, full)?;
            sent += 1;
            batch.push(&item);
        }
    }
    if batch.is_empty() {
        handoff.recycle(batch);
    } else {
        send(handoff, batch)?;
    }
    Ok(sent == TURN_BATCHES)
}

/// The probes' wake-ups: edge-triggered, so the reader sleeps until the probes ask (past a
/// fill threshold, or a forced wake-up) or a tick passes, instead of turning for every
/// record and handing on batches of a few records.
struct Wakeups(OwnedFd);

impl Wakeups {
    fn new(ring: &RingBuf<MapData>) -> io::Result<Self> {
        // SAFETY: plain syscall; the fd it returns is owned right away.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd nobody else owns.
        let ep = Wakeups(unsafe { OwnedFd::from_raw_fd(fd) });
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: 0,
        };
        // SAFETY: both fds are open and `ev` outlives the call.
        if unsafe {
            libc::epoll_ctl(
                ep.0.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                ring.as_raw_fd(),
                &mut ev,
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(ep)
    }

    /// Waits for a wake-up or a tick.
    fn wait(&self) -> io::Result<()> {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: room for one event, alive for the whole call.
        let r = unsafe {
            libc::epoll_wait(
                self.0.as_raw_fd(),
                &mut ev,
                1,
                TICK.as_millis() as libc::c_int,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        Ok(())
    }
}

fn lock(p: &Mutex<Probes>) -> std::sync::MutexGuard<'_, Probes> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the reader counts: the kernel's counters it syncs, and the records its handoff drops.
/// Registered when the daemon starts, so they are on /metrics before the probes attach.
pub struct ReaderMetrics {
    pub kernel: KernelMetrics,
    pub records_dropped: RecordDrops,
}

impl ReaderMetrics {
    pub fn new(reg: &Registry) -> Self {
        ReaderMetrics {
            kernel: KernelMetrics::new(reg),
            records_dropped: RecordDrops::new(reg),
        }
    }
}

/// The kernel's own counters, summed from the probes' per-CPU array by the reader.
pub struct KernelMetrics(Vec<(Counter, u32)>);

impl KernelMetrics {
    pub fn new(reg: &Registry) -> Self {
        KernelMetrics(
            [
                ("events_lost", "Records the kernel could not put in the ring buffer (buffer full)", counter::RINGBUF_FULL),
                ("kernel_conn_map_full", "Connections the kernel could not track (map full)", counter::CONN_MAP_FULL),
                ("kernel_read_failed", "Payload copies from user memory that failed (byte counts still right)", counter::READ_USER_FAILED),
                ("kernel_h2_frames_lost", "Syscalls whose bytes the HTTP/2 frame walk could not follow as frames (copied as a prefix until a syscall starts at a frame)", counter::H2_FRAMES_LOST),
                ("kernel_unsupported_calls", "Socket I/O of traced processes not made by a read/write-family syscall (io_uring, sendmmsg, in-kernel users): not decoded", counter::UNSUPPORTED_CALL),
                ("kernel_fd_reused", "Connections ended because their fd was reused by a new socket before their close was seen", counter::FD_REUSED),
                ("kernel_tls_no_socket", "TLS calls whose plaintext was not traced because the library moved its encrypted bytes itself (a memory BIO), so their socket is unknown", counter::TLS_NO_SOCKET),
                ("kernel_probe_errors", "Syscalls and TLS calls a probe could not read the arguments of (not followed; --kernel-log debug names them)", counter::PROBE_ARGS),
                ("trace_context_sockets_busy", "Client sockets of traced processes that got no trace context because another socket-map program (a CNI's) owns them (--propagate)", counter::PROPAGATE_SOCKET_BUSY),
            ]
            .into_iter()
            .map(|(name, help, idx)| (reg.counter(name, help), idx))
            .chain(context_outcomes(reg).into_iter().map(|(o, c)| {
                let idx = match o {
                    ContextOutcome::Written => counter::PROPAGATE_WRITTEN,
                    ContextOutcome::HasContext => counter::PROPAGATE_HAS_CONTEXT,
                    ContextOutcome::HeadSplit => counter::PROPAGATE_SPLIT,
                    ContextOutcome::UnsafeFraming => counter::PROPAGATE_UNSAFE,
                    ContextOutcome::NoRoom => counter::PROPAGATE_NO_ROOM,
                };
                (c, idx)
            }))
            .collect(),
        )
    }

    /// Brings the counters up to the kernel's totals (which only grow).
    fn sync(&self, probes: &Probes) {
        let k = probes.kernel_counters();
        for (c, idx) in &self.0 {
            c.inc_by(k[*idx as usize].saturating_sub(c.get()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::sync_channel;

    fn batch_of(h: &mut Handoff, n: usize) -> Batch {
        let mut b = h.batch();
        for i in 0..n {
            assert!(b.push(&[i as u8; 10]));
        }
        b
    }

    #[test]
    fn a_full_decode_queue_drops_whole_batches_and_counts_their_records() {
        let m = RecordDrops::new(&Registry::default());
        let (tx, rx) = sync_channel(1);
        let (_pool_tx, pool) = sync_channel(1);
        let mut h = Handoff::new(tx, pool, m.clone());
        let b = batch_of(&mut h, 3);
        h.send(b).unwrap();
        let b = batch_of(&mut h, 5);
        h.send(b).unwrap();
        assert_eq!(m.get(RecordDrop::DecodeQueueFull), 5);
        // A reload while the queue is full waits, and batches behind it are dropped: no
        // record is decoded with the old options once the reload is answered.
        h.options(TableOptions {
            ports: vec![80],
            ..Default::default()
        });
        let b = batch_of(&mut h, 2);
        h.send(b).unwrap();
        assert_eq!(m.get(RecordDrop::DecodeQueueFull), 7);
        assert!(matches!(rx.try_recv(), Ok(ToDecode::Records(b)) if b.len() == 3));
        let b = batch_of(&mut h, 4);
        h.send(b).unwrap();
        assert!(matches!(rx.try_recv(), Ok(ToDecode::Options(o)) if o.ports == [80]));
        assert!(
            rx.try_recv().is_err(),
            "the batch behind the options found no room"
        );
        let b = batch_of(&mut h, 1);
        h.send(b).unwrap();
        assert!(matches!(rx.try_recv(), Ok(ToDecode::Records(b)) if b.len() == 1));
        assert_eq!(m.get(RecordDrop::DecodeQueueFull), 11);
        drop(rx);
        let b = batch_of(&mut h, 1);
        assert!(h.send(b).is_err(), "the decode stage is gone");
    }

    #[test]
    fn batches_reuse_the_buffers_the_decode_stage_hands_back() {
        let m = RecordDrops::new(&Registry::default());
        let (tx, _rx) = sync_channel(1);
        let (pool_tx, pool) = sync_channel(1);
        let mut h = Handoff::new(tx, pool, m);
        let buf = Vec::with_capacity(12345);
        let ptr = buf.as_ptr();
        pool_tx.send(buf).unwrap();
        let buf = h.batch().into_buffer();
        assert_eq!(buf.as_ptr(), ptr);
    }
}
