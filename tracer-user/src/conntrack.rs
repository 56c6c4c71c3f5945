//! Connection table: routes each event to the decoder of its connection, notices lost records
//! (sequence gaps), and turns decoded exchanges into spans.
use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustc_hash::FxHashMap;
use tracer_common::protocol;

use crate::{
    context::Written,
    decode::{
        self, Chunk, Direction, Opened, RequestKey,
        http1::{Exchange, Http1Conn},
        http2::{H2Conn, Stream},
    },
    events::{ConnId, Data, Dir, Event, Role, comm_str},
    join::{Begin, End, JoinMetrics, JoinOptions, Joiner, PeerKey},
    metrics::{Counter, Registry},
    own_connections::OWN,
    process::{FdKind, Processes, SocketEnds, inspect_fd, socket_ends},
    span::{self, Clock, ConnInfo, Head, Resource, Span, SpanKind, SpanOptions},
};

/// The protocol decoder of one connection (the probes classify it by its first bytes).
enum Decoder {
    Http1(Http1Conn),
    Http2(H2Conn),
}

/// Decoder counters, whatever the protocol.
#[derive(Clone, Default)]
struct Counts {
    malformed: u64,
    resyncs: u64,
    orphans: u64,
    lost: u64,
    truncated: u64,
}

impl Decoder {
    fn feed(&mut self, c: Chunk<'_>, done: &mut Done) {
        match self {
            Decoder::Http1(d) => {
                d.feed(c, &mut done.exchanges);
                if let Some(up) = d.take_h2c() {
                    // `Upgrade: h2c` answered by 101: HTTP/2 from right after the 101's head.
                    *self = Decoder::Http2(H2Conn::upgraded_in(&up, c, &mut done.streams));
                }
            }
            Decoder::Http2(d) => d.feed(c, &mut done.streams),
        }
    }

    fn take_opened(&mut self, out: &mut Vec<Opened>) {
        match self {
            Decoder::Http1(d) => d.take_opened(out),
            Decoder::Http2(d) => d.take_opened(out),
        }
    }

    fn gap(&mut self, dir: Direction) {
        match self {
            Decoder::Http1(d) => d.gap(dir),
            Decoder::Http2(d) => d.gap(dir),
        }
    }

    fn close(&mut self, ts: u64, done: &mut Done) {
        match self {
            Decoder::Http1(d) => d.close(ts, &mut done.exchanges),
            Decoder::Http2(d) => d.close(ts, &mut done.streams),
        }
    }

    fn counts(&self) -> Counts {
        match self {
            Decoder::Http1(d) => {
                let s = d.stats();
                Counts {
                    malformed: s.malformed,
                    resyncs: s.resyncs,
                    orphans: s.orphan_responses,
                    lost: s.lost_exchanges,
                    truncated: s.truncated_headers,
                }
            }
            Decoder::Http2(d) => {
                let s = d.stats();
                Counts {
                    malformed: s.malformed + s.hpack_errors,
                    resyncs: s.resyncs,
                    orphans: 0,
                    lost: s.lost_streams,
                    truncated: s.incomplete_headers,
                }
            }
        }
    }
}

/// What the decoders finished and spans are still to be built from.
#[derive(Default)]
struct Done {
    opened: Vec<Opened>,
    exchanges: Vec<Exchange>,
    streams: Vec<Stream>,
}

struct Entry {
    decoder: Decoder,
    info: ConnInfo,
    comm: String,
    /// Next DATA record expected in each direction (ingress, egress).
    next_seq: [Option<u32>; 2],
    /// Decoder counters already added to the metrics.
    reported: Counts,
    /// Not traced further (not a socket, or a protocol this build does not decode).
    ignored: bool,
    /// Seen from its start (accepted or connected, or its first bytes seen by the socket
    /// hooks): its first record is the conversation's start.
    seen_setup: bool,
    /// Local port (from the socket, or from /proc for a connection set up before the probes):
    /// a server span may have no Host or :authority to match the port filter with.
    local_port: Option<u16>,
    /// A record went missing: the numbers of its HTTP/1 requests are not certain any more.
    gapped: bool,
    /// The socket's network namespace, when the probes read it.
    netns: Option<u32>,
    last_ts: u64,
    /// Ids the probes wrote into the request of the egress record with this sequence number.
    written: Option<(u32, Written)>,
}

impl Entry {
    fn new(info: ConnInfo, comm: String, ts: u64) -> Self {
        Entry {
            decoder: Decoder::Http1(Http1Conn::new()),
            info,
            comm,
            next_seq: [None; 2],
            reported: Counts::default(),
            ignored: false,
            seen_setup: false,
            local_port: None,
            gapped: false,
            netns: None,
            last_ts: ts,
            written: None,
        }
    }
}

/// What the decode stage counts: records, connections, decoder trouble and spans.
#[derive(Clone, Debug)]
pub struct DecodeMetrics {
    pub events_read: Counter,
    pub events_invalid: Counter,
    pub connections_opened: Counter,
    pub peer_unknown: Counter,
    pub non_socket_streams: Counter,
    pub sequence_gaps: Counter,
    pub decode_malformed: Counter,
    pub decode_resyncs: Counter,
    pub decode_orphan_responses: Counter,
    pub decode_lost_exchanges: Counter,
    pub decode_truncated_headers: Counter,
    pub spans_built: Counter,
    pub spans_filtered: Counter,
    pub context_unmatched: Counter,
}

impl DecodeMetrics {
    pub fn new(reg: &Registry) -> Self {
        let c = |name, help| reg.counter(name, help);
        DecodeMetrics {
            events_read: c(
                "events_read",
                "Ring-buffer records read and decoded (records the daemon had to drop are records_dropped_total)",
            ),
            events_invalid: c(
                "events_invalid",
                "Records that could not be parsed (wrong version, kind or size)",
            ),
            connections_opened: c("connections_opened", "HTTP connections seen"),
            peer_unknown: c(
                "peer_unknown",
                "Connections set up before the probes whose peer /proc no longer knew (closed at once)",
            ),
            non_socket_streams: c(
                "non_socket_streams",
                "Streams that looked like HTTP but were not sockets (files, pipes)",
            ),
            sequence_gaps: c(
                "sequence_gaps",
                "Gaps in a connection direction's records (records went missing)",
            ),
            decode_malformed: c(
                "decode_malformed",
                "Byte runs that should have been HTTP but were not",
            ),
            decode_resyncs: c(
                "decode_resyncs",
                "Times a decoder lost framing and waited for the next message start",
            ),
            decode_orphan_responses: c(
                "decode_orphan_responses",
                "Responses without a request (attached mid-exchange or lost)",
            ),
            decode_lost_exchanges: c(
                "decode_lost_exchanges",
                "Requests (HTTP/2: streams) discarded because records were lost",
            ),
            decode_truncated_headers: c(
                "decode_truncated_headers",
                "Header blocks longer than the capture size (HTTP/2: not fully decodable)",
            ),
            spans_built: c("spans_built", "Spans built from decoded exchanges"),
            spans_filtered: c(
                "spans_filtered",
                "Spans dropped by filters (--port; OTLP exports received by a traced collector)",
            ),
            context_unmatched: c(
                "trace_context_unmatched",
                "Trace contexts the probes wrote (--propagate) that no decoded request took: the server got them, no CLIENT span carries them",
            ),
        }
    }
}

/// What filters and span options the table applies.
#[derive(Clone, Debug, Default)]
pub struct TableOptions {
    pub spans: SpanOptions,
    /// When not empty, only spans whose server port or peer port is listed are kept.
    pub ports: Vec<u16>,
    /// Keep a traced collector's spans of the tracer's own OTLP exports. Off by default: each
    /// batch the collector receives would make spans for the next one, forever.
    pub trace_own_exports: bool,
    pub join: JoinOptions,
}

pub struct ConnTable {
    /// Keyed by pid and fd, which nobody outside the host picks: no need for SipHash.
    conns: FxHashMap<ConnId, Entry>,
    procs: Processes,
    proc_root: PathBuf,
    clock: Clock,
    opts: TableOptions,
    metrics: DecodeMetrics,
    join_metrics: JoinMetrics,
    done: Done,
    /// Ends of the sockets that were open when the probes attached.
    preexisting: HashMap<(u32, u32), SocketEnds>,
    join: Joiner,
    /// Network namespace of each process that talked over loopback.
    netns: FxHashMap<u32, u64>,
}

/// Connections idle this long whose fd is gone are forgotten (their process exited without
/// close(2), or the close record was lost).
const IDLE_NS: u64 = 120_000_000_000;
const MAX_CONNS: usize = 262_144;

impl ConnTable {
    pub fn new(
        procs: Processes,
        proc_root: impl Into<PathBuf>,
        clock: Clock,
        opts: TableOptions,
        reg: &Registry,
    ) -> Self {
        ConnTable {
            conns: FxHashMap::default(),
            procs,
            proc_root: proc_root.into(),
            clock,
            join: Joiner::new(opts.join.clone()),
            netns: FxHashMap::default(),
            opts,
            metrics: DecodeMetrics::new(reg),
            join_metrics: JoinMetrics::new(reg),
            done: Done::default(),
            preexisting: HashMap::new(),
        }
    }

    /// New filters and span options (a config reload); connections keep their state.
    pub fn set_options(&mut self, opts: TableOptions) {
        self.join.set_options(opts.join.clone());
        self.opts = opts;
    }

    /// Time passed (monotonic ns): spans that waited long enough for their join leave.
    pub fn tick(&mut self, now: u64, out: &mut Vec<Span>) {
        let m = &self.join_metrics;
        self.join.tick(now, m, out);
        m.spans_held.set(self.join.held() as i64);
        m.requests_tracked.set(self.join.tracked() as i64);
    }

    /// The decode stage's counters.
    pub fn metrics(&self) -> &DecodeMetrics {
        &self.metrics
    }

    /// The joiner's counters.
    pub fn join_metrics(&self) -> &JoinMetrics {
        &self.join_metrics
    }

    /// Every span still waiting for its join leaves (end of a replay, shutdown).
    pub fn flush(&mut self, out: &mut Vec<Span>) {
        self.join.flush(&self.join_metrics, out);
    }

    /// Gives the table the ends of the sockets open when the probes attached.
    pub fn set_preexisting(&mut self, snapshot: HashMap<(u32, u32), SocketEnds>) {
        self.preexisting = snapshot;
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Handles one event; spans it completes are appended to `out`.
    pub fn handle(&mut self, ev: Event<'_>, out: &mut Vec<Span>) {
        match ev {
            Event::Conn(c) => {
                self.metrics.connections_opened.inc();
                // A reused fd: whatever the old connection had pending ends here.
                self.finish(c.id, c.ts_ns, out);
                if self.conns.len() >= MAX_CONNS {
                    self.maintain(c.ts_ns, true);
                }
                let mut entry = Entry::new(
                    ConnInfo {
                        peer: c.peer,
                        local: c.local,
                        tls: c.tls,
                    },
                    c.comm,
                    c.ts_ns,
                );
                entry.seen_setup = c.role != Role::Unknown;
                entry.local_port = c.local.map(|l| l.port());
                entry.netns = c.netns;
                if c.role != Role::Unknown && (c.local.is_none() || c.peer.is_none()) {
                    // The syscall hooks see the peer in accept/connect (when the caller asks
                    // for it: libuv does not), never the local end.
                    let ends = socket_ends(&self.proc_root, c.id.pid, c.id.fd);
                    if entry.info.local.is_none() {
                        entry.info.local = ends.map(|e| e.local);
                        entry.local_port = entry.info.local.map(|l| l.port());
                    }
                    if entry.info.peer.is_none() {
                        entry.info.peer = ends.map(|e| e.peer);
                    }
                }
                if c.role == Role::Unknown {
                    // Not seen being accepted/connected: set up before the probes attached (the
                    // snapshot taken then knows it), or not a socket at all (/proc tells).
                    let (kind, local) = match self.preexisting.remove(&(c.id.pid, c.id.fd)) {
                        Some(ends) => (
                            FdKind::Socket {
                                peer: Some(ends.peer),
                            },
                            Some(ends.local),
                        ),
                        None => (inspect_fd(&self.proc_root, c.id.pid, c.id.fd), None),
                    };
                    tracing::debug!("connection {:?} set up before the probes: {kind:?}", c.id);
                    match kind {
                        FdKind::NotSocket => {
                            self.metrics.non_socket_streams.inc();
                            entry.ignored = true;
                        }
                        FdKind::Socket { peer } => {
                            entry.info.peer = peer;
                            // From the snapshot when it has it: by now the fd may be closed.
                            // The local end gives the port filter its port, and the spans
                            // their server.* when no Host or :authority was seen.
                            entry.info.local = local.or_else(|| {
                                socket_ends(&self.proc_root, c.id.pid, c.id.fd).map(|e| e.local)
                            });
                            entry.local_port = entry.info.local.map(|l| l.port());
                        }
                        FdKind::Gone => {
                            self.metrics.peer_unknown.inc();
                        }
                    }
                }
                self.conns.insert(c.id, entry);
            }
            Event::Data(d) => self.data(d, out),
            Event::Context { id, seq, written } => match self.conns.get_mut(&id) {
                Some(entry) => entry.written = Some((seq, written)),
                None => {
                    self.metrics.context_unmatched.inc();
                }
            },
            Event::Close { id, ts_ns } => self.finish(id, ts_ns, out),
        }
    }

    fn data(&mut self, d: Data<'_>, out: &mut Vec<Span>) {
        let entry = self.conns.entry(d.id).or_insert_with(|| {
            // The CONN record was lost: treat it like a connection we joined mid-stream.
            Entry::new(ConnInfo::default(), comm_str(&d.comm), d.ts_exit_ns)
        });
        entry.last_ts = d.ts_exit_ns;
        if entry.ignored {
            return;
        }
        if entry.next_seq == [None; 2] && d.protocol == protocol::HTTP2 {
            // From its start when the probes saw it set up, or its first bytes are the client
            // preface; otherwise it was open before the probes attached and they classified it
            // by a frame header: HPACK state unknown, frames only from a plausible boundary.
            let from_start =
                (entry.seen_setup && d.seq == 0) || d.payload.starts_with(b"PRI * HTTP/2.0");
            entry.decoder = Decoder::Http2(if from_start {
                H2Conn::new()
            } else {
                H2Conn::mid_stream()
            });
        }
        let (dir, ts_start, di) = match d.dir {
            // A read's bytes exist from when it returned; a write's from when it began.
            Dir::Ingress => (Direction::Ingress, d.ts_exit_ns, 0),
            Dir::Egress => (Direction::Egress, d.ts_enter_ns, 1),
        };
        if let Some(expected) = entry.next_seq[di]
            && d.seq != expected
        {
            self.metrics.sequence_gaps.inc();
            entry.decoder.gap(dir);
            entry.gapped = true;
        }
        entry.next_seq[di] = Some(d.seq.wrapping_add(1));
        let written = match entry.written.take() {
            Some((seq, w)) if d.dir == Dir::Egress && seq == d.seq => Some(w),
            Some(stale) if d.dir == Dir::Ingress => {
                entry.written = Some(stale);
                None
            }
            Some(_) => {
                self.metrics.context_unmatched.inc();
                None
            }
            None => None,
        };
        let chunk = Chunk {
            tid: d.tid,
            dir,
            len: d.len,
            data: d.payload,
            layout: d.layout,
            ts_start,
            ts_end: d.ts_exit_ns,
        };
        entry.decoder.feed(chunk, &mut self.done);
        let before = self.done.opened.len();
        entry.decoder.take_opened(&mut self.done.opened);
        if let Some(w) = written {
            // The request whose head starts with these bytes is the one the probes wrote into.
            match self.done.opened[before..]
                .iter_mut()
                .find(|o| o.role == decode::Role::Client && o.ts == ts_start)
            {
                Some(o) => o.written = Some(w),
                None => {
                    self.metrics.context_unmatched.inc();
                }
            }
        }
        self.begin(d.id);
        self.emit(d.id, out);
    }

    /// Tells the joiner of the requests the last chunk began.
    fn begin(&mut self, id: ConnId) {
        if self.done.opened.is_empty() {
            return;
        }
        let Some(entry) = self.conns.get(&id) else {
            self.done.opened.clear();
            return;
        };
        // HTTP/1 requests are matched by their number on the connection: only certain when
        // the decoder saw every byte from the start.
        let c = entry.decoder.counts();
        let numbered = entry.seen_setup
            && !entry.gapped
            && c.malformed == 0
            && c.resyncs == 0
            && c.orphans == 0
            && c.lost == 0;
        for o in self.done.opened.drain(..) {
            let client = match o.role {
                decode::Role::Client => entry.info.local,
                decode::Role::Server => entry.info.peer,
            };
            let certain = numbered || matches!(o.key, RequestKey::Http2(_));
            let peer = client.filter(|_| certain).map(|a| {
                let client = SocketAddr::new(a.ip().to_canonical(), a.port());
                PeerKey {
                    client,
                    // From the socket; the process's, read from /proc, when the probes could
                    // not tell (a short-lived process may be gone by then: no match).
                    netns: match (client.ip().is_loopback(), entry.netns) {
                        (false, _) => 0,
                        (true, Some(ns)) => u64::from(ns),
                        (true, None) => net_ns(&mut self.netns, &self.proc_root, id.pid),
                    },
                    request: o.key,
                }
            });
            self.join.open(
                Begin {
                    conn: id,
                    request: o.key,
                    role: o.role,
                    tid: o.tid,
                    ts: o.ts,
                    context: o.context,
                    written: o.written,
                    peer,
                    serves_on_thread: o.role == decode::Role::Server
                        && matches!(o.key, RequestKey::Http1(_)),
                },
                &self.join_metrics,
            );
        }
    }

    /// Ends a connection: flushes its decoder and forgets it.
    fn finish(&mut self, id: ConnId, ts: u64, out: &mut Vec<Span>) {
        if let Some(entry) = self.conns.get_mut(&id) {
            if !entry.ignored {
                entry.decoder.close(ts, &mut self.done);
            }
            self.emit(id, out);
            self.conns.remove(&id);
            self.join.close_conn(id, &self.join_metrics);
        }
    }

    /// Turns the exchanges the decoder of `id` completed into spans, and reports its counters.
    fn emit(&mut self, id: ConnId, out: &mut Vec<Span>) {
        let Some(entry) = self.conns.get_mut(&id) else {
            return;
        };
        let m = &self.metrics;
        let now = entry.decoder.counts();
        let was = std::mem::replace(&mut entry.reported, now.clone());
        for (counter, now, was) in [
            (&m.decode_malformed, now.malformed, was.malformed),
            (&m.decode_resyncs, now.resyncs, was.resyncs),
            (&m.decode_orphan_responses, now.orphans, was.orphans),
            (&m.decode_lost_exchanges, now.lost, was.lost),
            (&m.decode_truncated_headers, now.truncated, was.truncated),
        ] {
            counter.inc_by(now.saturating_sub(was));
        }
        if self.done.exchanges.is_empty() && self.done.streams.is_empty() {
            return;
        }
        // The process is looked up for the first span kept only: filtered exchanges cost no
        // /proc read and no span.
        let mut resource = None;
        let clock = self.clock;
        let exchanges = self.done.exchanges.drain(..).map(Finished::Http1);
        let streams = self.done.streams.drain(..).map(Finished::Http2);
        for f in exchanges.chain(streams) {
            let head = f.head(&entry.info);
            let (ts_end, filtered) = (head.ts_end, self.opts.filters(&head, entry));
            let (request, response_tid) = f.key();
            let span = if filtered {
                m.spans_filtered.inc();
                None
            } else {
                m.spans_built.inc();
                let res = resource.get_or_insert_with(|| self.procs.resource(id.pid, &entry.comm));
                Some(f.build(&entry.info, res, clock, &self.opts.spans))
            };
            let end = End {
                conn: id,
                request,
                ts_end,
                response_tid,
                // A filtered exchange still joins what it links.
                span,
            };
            self.join.end(end, &self.join_metrics, out);
        }
    }

    /// Periodic housekeeping: forget idle connections whose fd is gone and processes that exited.
    pub fn maintain(&mut self, now_mono_ns: u64, force: bool) {
        let root = self.proc_root.clone();
        let stale: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(id, e)| {
                (force || now_mono_ns.saturating_sub(e.last_ts) > IDLE_NS)
                    && !root.join(format!("{}/fd/{}", id.pid, id.fd)).exists()
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            self.conns.remove(&id);
            self.join.close_conn(id, &self.join_metrics);
        }
        self.procs.sweep();
        let alive = |pid: u32| root.join(pid.to_string()).exists();
        self.netns.retain(|pid, _| alive(*pid));
        self.join.forget_processes(alive);
    }
}

/// The network namespace of `pid` (its inode), read once per process.
fn net_ns(cache: &mut FxHashMap<u32, u64>, proc_root: &Path, pid: u32) -> u64 {
    *cache.entry(pid).or_insert_with(|| {
        // `net:[4026531840]`; 0 (unknown) when the process is gone.
        std::fs::read_link(proc_root.join(format!("{pid}/ns/net")))
            .ok()
            .and_then(|l| {
                let l = l.to_string_lossy();
                l.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
            })
            .unwrap_or(0)
    })
}

/// An exchange or stream the decoders finished.
enum Finished {
    Http1(Exchange),
    Http2(Stream),
}

impl Finished {
    fn head(&self, conn: &ConnInfo) -> Head<'_> {
        match self {
            Finished::Http1(ex) => Head::http1(ex, conn),
            Finished::Http2(st) => Head::h2(st, conn),
        }
    }

    /// Which request of its connection it is, and the thread that answered it (HTTP/1).
    fn key(&self) -> (RequestKey, Option<u32>) {
        match self {
            Finished::Http1(ex) => (
                RequestKey::Http1(ex.request.seq),
                ex.response.as_ref().map(|r| r.tid),
            ),
            Finished::Http2(st) => (RequestKey::Http2(st.stream_id), None),
        }
    }

    fn build(self, conn: &ConnInfo, res: &Arc<Resource>, clock: Clock, opts: &SpanOptions) -> Span {
        match self {
            Finished::Http1(ex) => span::build(ex, conn, res, clock, opts),
            Finished::Http2(st) => span::build_h2(st, conn, res, clock, opts),
        }
    }
}

impl TableOptions {
    /// Whether the filters drop an exchange, decided before its span is built: `--port`
    /// keeps it when the server port it names, its connection's peer port or (a server's)
    /// local port is listed; a server's exchanges on a connection the tracer opened (its own
    /// OTLP exports) are dropped unless kept.
    fn filters(&self, head: &Head<'_>, conn: &Entry) -> bool {
        let listed = |p: u16| self.ports.contains(&p);
        let server = head.kind == SpanKind::Server;
        let port_kept = self.ports.is_empty()
            || (server && conn.local_port.is_some_and(listed))
            || head.server_port.is_some_and(listed)
            || conn.info.peer.is_some_and(|a| listed(a.port()));
        let own_export = server
            && !self.trace_own_exports
            && matches!((conn.info.local, conn.info.peer), (Some(l), Some(p)) if OWN.is_own(l, p));
        !port_kept || own_export
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::testkit::{H, block, frame, grpc_msg, headers, settings};
    use crate::events::encode;
    use crate::span::Value;
    use tracer_common::h2::{
        PREFACE, flag,
        frame_type::{DATA, SETTINGS},
    };

    fn table(ports: Vec<u16>) -> (ConnTable, DecodeMetrics) {
        let root = std::env::temp_dir().join("tracer-no-such-proc");
        let procs = Processes::new(&root, vec![]);
        let opts = TableOptions {
            ports,
            ..Default::default()
        };
        let t = ConnTable::new(
            procs,
            &root,
            Clock { offset_ns: 0 },
            opts,
            &Registry::default(),
        );
        let m = t.metrics().clone();
        (t, m)
    }

    fn replay(t: &mut ConnTable, records: &[Vec<u8>]) -> Vec<Span> {
        let mut out = vec![];
        for r in records {
            t.handle(Event::parse(r).unwrap(), &mut out);
        }
        t.flush(&mut out);
        out
    }

    const ID: ConnId = ConnId { pid: 4242, fd: 5 };
    const REQ: &[u8] = b"GET /a HTTP/1.1\r\nHost: localhost:8000\r\n\r\n";
    const RESP: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

    fn server_exchange(seq: u32, t0: u64) -> Vec<Vec<u8>> {
        vec![
            encode::data(
                ID,
                seq,
                Dir::Ingress,
                (t0, t0 + 10),
                REQ.len() as u64,
                REQ,
                "python3",
            ),
            encode::data(
                ID,
                seq,
                Dir::Egress,
                (t0 + 20, t0 + 30),
                RESP.len() as u64,
                RESP,
                "python3",
            ),
        ]
    }

    #[test]
    fn keep_alive_connection_gives_one_span_per_exchange() {
        let (mut t, m) = table(vec![]);
        let mut recs = vec![encode::conn(
            ID,
            1,
            Role::Accepted,
            Some("127.0.0.1:5555".parse().unwrap()),
            "python3",
        )];
        recs.extend(server_exchange(0, 100));
        recs.extend(server_exchange(1, 200));
        recs.push(encode::close(ID, 300));
        let spans = replay(&mut t, &recs);
        assert_eq!(spans.len(), 2);
        assert!(spans.iter().all(|s| s.kind == SpanKind::Server));
        assert_eq!((spans[0].start_unix_ns, spans[0].end_unix_ns), (110, 130));
        assert_eq!(spans[1].attr("network.peer.port"), Some(&Value::Int(5555)));
        assert_eq!(spans[0].resource.service_name, "python3");
        assert!(t.is_empty());
        assert_eq!(m.spans_built.get(), 2);
    }

    #[test]
    fn a_written_context_gives_the_client_span_its_ids() {
        let w = Written {
            trace_id: [7; 16],
            span_id: [9; 8],
            flags: 1,
            from_thread: false,
        };
        let client = |t0: u64| {
            vec![
                encode::data(
                    ID,
                    (t0 / 100 - 1) as u32,
                    Dir::Egress,
                    (t0, t0 + 5),
                    REQ.len() as u64,
                    REQ,
                    "curl",
                ),
                encode::data(
                    ID,
                    (t0 / 100 - 1) as u32,
                    Dir::Ingress,
                    (t0 + 20, t0 + 30),
                    RESP.len() as u64,
                    RESP,
                    "curl",
                ),
            ]
        };
        let (mut t, m) = table(vec![]);
        let mut recs = vec![encode::conn(ID, 1, Role::Connected, None, "curl")];
        recs.push(encode::context(ID, 0, &w));
        recs.extend(client(100));
        // The next request wrote nothing: ids of its own.
        recs.extend(client(200));
        // Ids for a record that is not the next one (that one was lost): nobody takes them.
        recs.push(encode::context(ID, 5, &w));
        recs.extend(client(300));
        recs.push(encode::close(ID, 400));
        let spans = replay(&mut t, &recs);
        assert_eq!(spans.len(), 3);
        assert_eq!((spans[0].trace_id, spans[0].span_id), ([7; 16], [9; 8]));
        assert!(
            spans[1..]
                .iter()
                .all(|s| s.span_id != [9; 8] && s.trace_id != [7; 16])
        );
        assert_eq!(m.context_unmatched.get(), 1);
    }

    #[test]
    fn sequence_gap_discards_the_broken_exchange_only() {
        let (mut t, m) = table(vec![]);
        let mut recs = vec![encode::conn(ID, 1, Role::Accepted, None, "python3")];
        recs.extend(server_exchange(0, 100));
        // Ingress seq 1 (a request) was lost; its response arrives as egress seq 1.
        recs.push(encode::data(
            ID,
            1,
            Dir::Egress,
            (220, 230),
            RESP.len() as u64,
            RESP,
            "python3",
        ));
        recs.extend(server_exchange(2, 300));
        let spans = replay(&mut t, &recs);
        assert_eq!(
            spans.len(),
            2,
            "the orphan response must not pair with anything"
        );
        assert_eq!(spans[1].start_unix_ns, 310);
        assert_eq!(m.sequence_gaps.get(), 1);
    }

    #[test]
    fn port_filter_keeps_matching_spans_only() {
        let (mut t, m) = table(vec![9999]);
        let mut recs = vec![encode::conn(ID, 1, Role::Accepted, None, "python3")];
        recs.extend(server_exchange(0, 100));
        let spans = replay(&mut t, &recs);
        assert!(spans.is_empty());
        assert_eq!(m.spans_filtered.get(), 1);
        assert_eq!(m.spans_built.get(), 0, "decided before a span is built");
        let (mut t, m) = table(vec![8000]);
        assert_eq!(replay(&mut t, &recs).len(), 1);
        assert_eq!((m.spans_built.get(), m.spans_filtered.get()), (1, 0));
    }

    /// A traced collector's exchanges on a connection the tracer opened are dropped; the same
    /// export from anyone else is a span like any other.
    #[test]
    fn a_collector_s_spans_of_the_tracer_s_own_exports_are_dropped_by_socket() {
        let req = b"POST /v1/traces HTTP/1.1\r\nHost: c:4318\r\nContent-Length: 3\r\n\r\nabc";
        // An open connection, so registering never prunes it.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (ours, collector) = (ours.local_addr().unwrap(), ours.peer_addr().unwrap());
        OWN.register(ours, collector);
        let other: SocketAddr = "127.0.0.1:1".parse().unwrap();
        for (peer, keep_own, spans) in [(ours, false, 0), (other, false, 1), (ours, true, 1)] {
            let (mut t, m) = table(vec![]);
            t.opts.trace_own_exports = keep_own;
            let accepted = encode::conn(ID, 1, Role::Accepted, Some(peer), "otelcol");
            let recs = vec![
                encode::with_local(accepted, collector),
                encode::data(
                    ID,
                    0,
                    Dir::Ingress,
                    (10, 10),
                    req.len() as u64,
                    req,
                    "otelcol",
                ),
                encode::data(
                    ID,
                    1,
                    Dir::Egress,
                    (20, 30),
                    RESP.len() as u64,
                    RESP,
                    "otelcol",
                ),
            ];
            assert_eq!(
                replay(&mut t, &recs).len(),
                spans,
                "peer {peer}, kept {keep_own}"
            );
            assert_eq!(
                (m.spans_built.get(), m.spans_filtered.get()),
                (spans as u64, 1 - spans as u64)
            );
        }
    }

    /// Of the two ends of one request, `--port` keeps the one whose ports it lists, decided
    /// from the connection and the request head: the other is never built, and the kept one
    /// still joins it (its parent is the filtered client's span id, as without the filter).
    #[test]
    fn filtered_exchanges_never_reach_the_span_builder() {
        for (ports, built) in [(vec![45000], 1), (vec![1], 0), (vec![], 2)] {
            let (mut t, m) = table(ports.clone());
            let spans = replay(&mut t, &two_ends(false));
            assert_eq!(spans.len() as u64, built, "{ports:?}: {spans:?}");
            assert_eq!(m.spans_built.get(), built, "{ports:?}");
            assert_eq!(m.spans_filtered.get(), 2 - built, "{ports:?}");
            assert_eq!(t.join_metrics().links_connection.get(), 1, "{ports:?}");
        }
    }

    /// The middle of a gRPC conversation: one call on stream 5, its header blocks only
    /// static-table references and literals (no dynamic table needed).
    /// A client (pid 7) and a server (pid 8) on one node, over loopback, one request; in
    /// `order` the records reach the daemon either as they happened or with the server's end
    /// first (the two ends' records race through the ring buffer).
    fn two_ends(server_first: bool) -> Vec<Vec<u8>> {
        let (cli, srv) = (ConnId { pid: 7, fd: 3 }, ConnId { pid: 8, fd: 4 });
        let (c_addr, s_addr) = (
            "127.0.0.1:45000".parse().unwrap(),
            "127.0.0.1:8000".parse().unwrap(),
        );
        let conn = |id, role, peer, local, comm| {
            encode::with_local(encode::conn(id, 1, role, Some(peer), comm), local)
        };
        let len = |b: &[u8]| b.len() as u64;
        let client = vec![
            conn(cli, Role::Connected, s_addr, c_addr, "curl"),
            encode::data(cli, 0, Dir::Egress, (100, 110), len(REQ), REQ, "curl"),
        ];
        let server = vec![
            conn(srv, Role::Accepted, c_addr, s_addr, "python3"),
            encode::data(srv, 0, Dir::Ingress, (111, 120), len(REQ), REQ, "python3"),
            encode::data(srv, 0, Dir::Egress, (130, 140), len(RESP), RESP, "python3"),
        ];
        let answer = encode::data(cli, 0, Dir::Ingress, (141, 150), len(RESP), RESP, "curl");
        let (first, second) = if server_first {
            (server, client)
        } else {
            (client, server)
        };
        let mut v: Vec<Vec<u8>> = first.into_iter().chain(second).collect();
        v.push(answer);
        v
    }

    #[test]
    fn the_two_ends_of_a_connection_join_whichever_records_come_first() {
        for server_first in [false, true] {
            let (mut t, _) = table(vec![]);
            let spans = replay(&mut t, &two_ends(server_first));
            assert_eq!(spans.len(), 2, "{spans:?}");
            let (c, s) = (&spans[0], &spans[1]);
            assert_eq!(
                (c.kind, s.kind),
                (SpanKind::Client, SpanKind::Server),
                "parents first"
            );
            assert_eq!(
                s.parent_span_id,
                Some(c.span_id),
                "server_first={server_first}"
            );
            assert_eq!(s.trace_id, c.trace_id);
            assert_eq!(c.parent_span_id, None);
            assert_eq!(t.join_metrics().links_connection.get(), 1);
        }
    }

    fn h2_call_mid_stream() -> Vec<Vec<u8>> {
        // :method POST, :scheme http, :path, content-type
        let req = [
            H::Idx(3),
            H::Idx(6),
            H::NoN(4, "/a.B/C"),
            H::NoN(31, "application/grpc"),
        ];
        let req = block(&req, false);
        let trailers = block(&[H::No("grpc-status", "5")], false);
        let recs = [
            (Dir::Ingress, headers(5, false, &req)),
            (Dir::Ingress, grpc_msg(5, true, 0)),
            (Dir::Egress, headers(5, false, &block(&[H::Idx(8)], false))),
            (Dir::Egress, headers(5, true, &trailers)),
        ];
        // Sequence numbers count per direction.
        let seqs = [0, 1, 0, 1];
        recs.into_iter()
            .enumerate()
            .map(|(i, (dir, b))| {
                let t = 100 + 10 * i as u64;
                encode::data_as(
                    protocol::HTTP2,
                    encode::data(ID, seqs[i], dir, (t, t + 5), b.len() as u64, &b, "srv"),
                )
            })
            .collect()
    }

    /// A connection open before the probes attached, classified by a frame header: decoded
    /// from that frame on, and only what needs no HPACK history is reported.
    #[test]
    fn h2_connection_open_before_the_probes_is_decoded_mid_stream() {
        let (mut t, _) = table(vec![]);
        let mut recs = vec![encode::conn(ID, 1, Role::Unknown, None, "srv")];
        recs.extend(h2_call_mid_stream());
        let spans = replay(&mut t, &recs);
        assert_eq!(spans.len(), 1);
        let sp = &spans[0];
        assert_eq!(sp.kind, SpanKind::Server);
        assert_eq!(sp.name, "a.B/C");
        assert_eq!(sp.attr("url.path"), Some(&Value::Str("/a.B/C".into())));
        assert_eq!(sp.attr("rpc.grpc.status_code"), Some(&Value::Int(5)));
        assert_eq!(sp.attr("tracer.http.headers_incomplete"), None);

        // The same bytes on a connection seen being accepted are not an h2c start (no
        // preface): nothing is made up from them.
        let (mut t, m) = table(vec![]);
        let mut recs = vec![encode::conn(ID, 1, Role::Accepted, None, "srv")];
        recs.extend(h2_call_mid_stream());
        assert!(replay(&mut t, &recs).is_empty());
        assert!(m.decode_malformed.get() > 0);
    }

    /// A server connection open before the probes, whose fd is already closed when its first
    /// record is read: the port filter still knows its local port, from the snapshot taken when
    /// the probes attached (the h2 call names no :authority to match it by).
    #[test]
    fn port_filter_matches_a_closed_preexisting_server_socket_by_its_snapshot() {
        let (mut t, m) = table(vec![50051]);
        t.set_preexisting(HashMap::from([(
            (ID.pid, ID.fd),
            SocketEnds {
                local: "127.0.0.1:50051".parse().unwrap(),
                peer: "127.0.0.1:40000".parse().unwrap(),
            },
        )]));
        let mut recs = vec![encode::conn(ID, 1, Role::Unknown, None, "srv")];
        recs.extend(h2_call_mid_stream());
        let spans = replay(&mut t, &recs);
        assert_eq!(spans.len(), 1, "{spans:?}");
        assert_eq!(spans[0].kind, SpanKind::Server);
        assert_eq!(spans[0].attr("network.peer.port"), Some(&Value::Int(40000)));
        assert_eq!(m.spans_filtered.get(), 0);
    }

    /// HTTP/1.1 `Upgrade: h2c`: the upgrade request is HTTP/2 stream 1, answered in frames
    /// that share the 101's write; later streams follow on the same connection.
    #[test]
    fn h2c_upgrade_continues_as_http2() {
        let (mut t, _) = table(vec![]);
        let up = b"GET /up HTTP/1.1\r\nHost: a:8080\r\nConnection: Upgrade, HTTP2-Settings\r\n\
                   Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n";
        let switch = [
            &b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"[..],
            &settings(&[]),
            &headers(1, false, &block(&[H::Idx(8)], false)), // :status 200
            &frame(DATA, flag::END_STREAM, 1, b"hello"),
        ]
        .concat();
        let mut client = PREFACE.to_vec();
        client.extend(settings(&[]));
        client.extend(frame(SETTINGS, flag::ACK, 0, &[]));
        // GET http / , :authority a:8080
        let req = block(
            &[H::Idx(2), H::Idx(6), H::Idx(4), H::NoN(1, "a:8080")],
            false,
        );
        client.extend(headers(3, true, &req));
        let not_found = headers(3, true, &block(&[H::Idx(13)], false)); // :status 404
        let mut recs = vec![encode::conn(ID, 1, Role::Accepted, None, "srv")];
        for (i, (dir, b)) in [
            (Dir::Ingress, up.to_vec()),
            (Dir::Egress, switch),
            (Dir::Ingress, client),
            (Dir::Egress, not_found),
        ]
        .into_iter()
        .enumerate()
        {
            let ts = 100 * (i as u64 + 1);
            recs.push(encode::data(
                ID,
                i as u32 / 2,
                dir,
                (ts, ts + 10),
                b.len() as u64,
                &b,
                "srv",
            ));
        }
        let spans = replay(&mut t, &recs);
        assert_eq!(spans.len(), 2, "{spans:?}");
        let (s1, s3) = (&spans[0], &spans[1]);
        for sp in [s1, s3] {
            assert_eq!(sp.kind, SpanKind::Server);
            assert_eq!(sp.name, "GET");
            assert_eq!(
                sp.attr("network.protocol.version"),
                Some(&Value::Str("2".into()))
            );
            assert_eq!(sp.attr("server.port"), Some(&Value::Int(8080)));
            assert_eq!(sp.attr("tracer.http.headers_incomplete"), None);
        }
        assert_eq!(s1.attr("url.path"), Some(&Value::Str("/up".into())));
        assert_eq!(s1.attr("http.response.status_code"), Some(&Value::Int(200)));
        assert_eq!(s1.attr("http.response.body.size"), Some(&Value::Int(5)));
        // From the upgrade request's first byte to stream 1's last.
        assert_eq!((s1.start_unix_ns, s1.end_unix_ns), (110, 210));
        assert_eq!(s3.attr("url.path"), Some(&Value::Str("/".into())));
        assert_eq!(s3.attr("http.response.status_code"), Some(&Value::Int(404)));
    }
}
