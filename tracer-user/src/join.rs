//! Joins spans into traces, with no header injected: the SERVER span of a request is the
//! child of the CLIENT span that sent it when both ends of the connection are on this node,
//! and a CLIENT call is the child of the SERVER request its thread was serving.
//!
//! Ids are given when a request begins ([`Joiner::open`]), so a span's parent is known before
//! either span ends. A span then waits (bounded by [`JoinOptions::hold_ns`]) until its link is
//! decided and its trace's local root has ended, so a trace leaves as one group, parents first.
//! A link is made only when it cannot be wrong; otherwise the span stays a root, counted.
use std::{collections::VecDeque, net::SocketAddr};

use rustc_hash::{FxHashMap, FxHashSet};

use crate::{
    context::{SAMPLED, TraceContext, Written},
    decode::{RequestKey, Role},
    events::ConnId,
    metrics::{Counter, Gauge, Registry},
    span::Span,
};

/// How long a span may wait for its join by default.
pub const DEFAULT_HOLD_MS: u64 = 250;
/// Open requests and recently ended ones the joiner tracks; past this, requests go unjoined.
const MAX_NODES: usize = 262_144;
/// Ended server requests remembered per thread, to tell whether it served others meanwhile.
const THREAD_HISTORY: usize = 8;
/// How far two CPUs' monotonic clocks may disagree.
const CLOCK_SLACK_NS: u64 = 1_000_000;

/// What the joiner did and holds.
#[derive(Debug)]
pub struct JoinMetrics {
    pub links_connection: Counter,
    pub links_thread: Counter,
    pub links_ambiguous: Counter,
    pub links_timed_out: Counter,
    pub links_conflicting: Counter,
    pub join_table_full: Counter,
    pub spans_held: Gauge,
    pub requests_tracked: Gauge,
}

impl JoinMetrics {
    pub fn new(reg: &Registry) -> Self {
        JoinMetrics {
            links_connection: reg.counter("links_connection", "SERVER spans joined to the CLIENT span of the same request at the other end of a connection on this node"),
            links_thread: reg.counter("links_thread", "CLIENT spans joined to the SERVER request their thread was serving"),
            links_ambiguous: reg.counter("links_ambiguous", "CLIENT spans left unjoined because their thread served several requests at once, or its process answers requests from other threads than the ones that read them"),
            links_conflicting: reg.counter("links_conflicting", "Links not made because they would contradict a trace context already written into a request (--propagate)"),
            links_timed_out: reg.counter("links_timed_out", "Spans exported before their join was decided (they waited longer than --join-hold)"),
            join_table_full: reg.counter("join_table_full", "Requests not joined because the join table was full"),
            spans_held: reg.gauge("join_spans_held", "Finished spans waiting to be joined into their trace (at most --join-hold-ms)"),
            requests_tracked: reg.gauge("join_requests_tracked", "Requests the trace joiner remembers: running, or ended within two holds"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinOptions {
    /// How long a finished span waits for its parent's decision and its trace's root.
    pub hold_ns: u64,
}

impl Default for JoinOptions {
    fn default() -> Self {
        JoinOptions {
            hold_ns: DEFAULT_HOLD_MS * 1_000_000,
        }
    }
}

/// Who the client of a connection is, as both ends see it: its address and port (a server
/// behind DNAT still sees them) and, for loopback, the network namespace (loopback addresses
/// repeat in every pod). With the request's number on the connection, one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerKey {
    pub client: SocketAddr,
    pub netns: u64,
    pub request: RequestKey,
}

/// A request that began (its head was decoded).
#[derive(Clone, Debug)]
pub struct Begin {
    pub conn: ConnId,
    pub request: RequestKey,
    pub role: Role,
    pub tid: u32,
    /// Monotonic ns.
    pub ts: u64,
    pub context: Option<TraceContext>,
    /// The ids the probes wrote into this (CLIENT) request: the span must have them.
    pub written: Option<Written>,
    /// None when the request cannot be matched to the other end (its number on the
    /// connection is not certain, or the addresses are unknown).
    pub peer: Option<PeerKey>,
    /// The request is served by a thread that may make client calls for it (HTTP/1 servers).
    pub serves_on_thread: bool,
}

/// A request that ended, with its span (None when a filter dropped it: its node still links).
pub struct End {
    pub conn: ConnId,
    pub request: RequestKey,
    /// Monotonic ns.
    pub ts_end: u64,
    /// The thread that began the response (HTTP/1).
    pub response_tid: Option<u32>,
    pub span: Option<Span>,
}

type NodeId = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Parent {
    None,
    /// An upstream span named by the request's headers.
    Upstream([u8; 8]),
    /// A span of this node.
    Local(NodeId, [u8; 8]),
}

struct Node {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Parent,
    flags: u8,
    trace_state: Option<String>,
    /// Its parent is decided for good (a SERVER request may still learn its CLIENT end).
    decided: bool,
    children: Vec<NodeId>,
    pid: u32,
    /// Monotonic ns when its head began.
    opened_at: u64,
    /// The thread log this server request is in.
    thread: Option<u32>,
    /// Where the CLIENT end registered this request.
    client_key: Option<PeerKey>,
    waiting_key: Option<PeerKey>,
    ended: bool,
    /// The finished span, waiting to leave.
    held: Option<Span>,
    /// Its ids were written into the request (--propagate): they cannot change.
    written: bool,
}

/// A server request a thread served: from its head to its response's end.
#[derive(Clone, Copy)]
struct Served {
    node: NodeId,
    open: u64,
    close: Option<u64>,
}

#[derive(Default)]
struct ThreadLog {
    served: Vec<Served>,
    /// Ended requests forgotten from `served` ended by then: overlaps before it are unknown.
    forgotten_until: u64,
}

#[derive(Clone, Copy)]
enum Due {
    /// A waiting SERVER request stops waiting for its CLIENT end.
    Decide(NodeId),
    /// A finished span leaves, joined or not.
    Release(NodeId),
    /// An ended request is forgotten (late children had their chance).
    Forget(NodeId),
}

pub struct Joiner {
    opts: JoinOptions,
    nodes: FxHashMap<NodeId, Node>,
    next_id: NodeId,
    /// The running requests of each connection (usually one; HTTP/2: its open streams), so
    /// a connection's end finds its own without a scan of the whole table.
    by_conn: FxHashMap<ConnId, Vec<(RequestKey, NodeId)>>,
    clients: FxHashMap<PeerKey, NodeId>,
    waiting: FxHashMap<PeerKey, NodeId>,
    threads: FxHashMap<(u32, u32), ThreadLog>,
    /// Processes seen answering a request from another thread than the one that read it:
    /// their threads do not identify requests (Go, async runtimes), so no thread links.
    hopping: FxHashSet<u32>,
    due: VecDeque<(u64, Due)>,
    /// Local roots whose trees may leave.
    ready: Vec<NodeId>,
    /// Finished spans waiting to leave.
    held: usize,
    /// Scratch stack of the tree walks.
    walk: Vec<NodeId>,
    now: u64,
}

fn random<const N: usize>() -> [u8; N] {
    loop {
        let id: [u8; N] = rand::random();
        if id != [0; N] {
            return id;
        }
    }
}

impl Joiner {
    pub fn new(opts: JoinOptions) -> Self {
        Joiner {
            opts,
            nodes: FxHashMap::default(),
            next_id: 0,
            by_conn: FxHashMap::default(),
            clients: FxHashMap::default(),
            waiting: FxHashMap::default(),
            threads: FxHashMap::default(),
            hopping: FxHashSet::default(),
            due: VecDeque::new(),
            ready: Vec::new(),
            held: 0,
            walk: Vec::new(),
            now: 0,
        }
    }

    pub fn set_options(&mut self, opts: JoinOptions) {
        self.opts = opts;
    }

    /// Spans waiting to leave.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Requests tracked (open, or ended and still remembered).
    pub fn tracked(&self) -> usize {
        self.nodes.len()
    }

    /// `what` happens once the hold has passed from now.
    fn schedule(&mut self, what: Due) {
        self.due
            .push_back((self.now.saturating_add(self.opts.hold_ns), what));
    }

    /// A request began: it gets its ids now, and its parent when that can be decided.
    pub fn open(&mut self, b: Begin, m: &JoinMetrics) {
        self.now = self.now.max(b.ts);
        if self.nodes.len() >= MAX_NODES {
            m.join_table_full.inc();
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        let upstream = b.context.as_ref().and_then(|c| c.ids);
        let mut node = Node {
            trace_id: upstream.map_or_else(random, |u| u.trace_id),
            span_id: random(),
            parent: upstream.map_or(Parent::None, |u| Parent::Upstream(u.parent_id)),
            flags: b.context.as_ref().map_or(SAMPLED, TraceContext::flags),
            trace_state: b.context.and_then(|c| c.state),
            decided: true,
            children: Vec::new(),
            pid: b.conn.pid,
            opened_at: b.ts,
            thread: None,
            client_key: None,
            waiting_key: None,
            ended: false,
            held: None,
            written: false,
        };
        let running = self.by_conn.entry(b.conn).or_default();
        match running.iter_mut().find(|(k, _)| *k == b.request) {
            Some(slot) => {
                // The same request number again on this fd: the old connection's end was
                // missed.
                let old = std::mem::replace(&mut slot.1, id);
                self.abandon(old, m);
            }
            None => running.push((b.request, id)),
        }
        match b.role {
            Role::Client => {
                if let Some(w) = b.written {
                    self.written_parent(&mut node, id, (b.conn.pid, b.tid, b.ts), w, m);
                } else if upstream.is_none() {
                    self.thread_parent(&mut node, id, b.conn.pid, b.tid, b.ts, m);
                }
                if let Some(k) = b.peer {
                    node.client_key = Some(k);
                    if let Some(old) = self.clients.insert(k, id)
                        && let Some(o) = self.nodes.get_mut(&old)
                    {
                        o.client_key = None;
                    }
                    // Its server end was seen first (the two ends' records raced): one that
                    // read the request after this end began writing it (an older one is
                    // another connection's).
                    let srv = self.waiting.get(&k).copied().filter(|s| {
                        self.nodes
                            .get(s)
                            .is_some_and(|n| n.opened_at.saturating_add(CLOCK_SLACK_NS) >= b.ts)
                    });
                    if let Some(srv) = srv {
                        self.nodes.insert(id, node);
                        return self.link_server(srv, id, m);
                    }
                }
            }
            Role::Server => {
                if b.serves_on_thread && !self.hopping.contains(&b.conn.pid) {
                    let log = self.threads.entry((b.conn.pid, b.tid)).or_default();
                    log.served.push(Served {
                        node: id,
                        open: b.ts,
                        close: None,
                    });
                    node.thread = Some(b.tid);
                }
                if upstream.is_none()
                    && let Some(k) = b.peer
                {
                    // The CLIENT end wrote the request before this end read it, and is still
                    // waiting for the answer: anything else is an older connection's.
                    let client = self.clients.get(&k).copied().filter(|c| {
                        self.nodes
                            .get(c)
                            .is_some_and(|n| !n.ended && n.opened_at <= b.ts + CLOCK_SLACK_NS)
                    });
                    match client {
                        Some(c) => {
                            self.nodes.insert(id, node);
                            self.link_server(id, c, m);
                            return;
                        }
                        _ => {
                            // Wait a while for the CLIENT end's record.
                            node.decided = false;
                            node.waiting_key = Some(k);
                            if let Some(old) = self.waiting.insert(k, id) {
                                self.decide(old);
                            }
                            self.schedule(Due::Decide(id));
                        }
                    }
                }
            }
        }
        self.nodes.insert(id, node);
    }

    /// The SERVER request the thread of a CLIENT call is serving, when there is exactly one
    /// and the thread served no other since it began.
    fn thread_parent(
        &mut self,
        node: &mut Node,
        id: NodeId,
        pid: u32,
        tid: u32,
        ts: u64,
        m: &JoinMetrics,
    ) {
        if let Some(parent) = self.thread_serving(pid, tid, ts, m) {
            self.link_thread(node, id, parent, m);
        }
    }

    /// The one SERVER request the thread is serving at `ts` (see [`Joiner::thread_parent`]).
    fn thread_serving(&self, pid: u32, tid: u32, ts: u64, m: &JoinMetrics) -> Option<NodeId> {
        let log = self.threads.get(&(pid, tid))?;
        let serving = |s: &&Served| s.open <= ts && s.close.is_none_or(|c| c >= ts);
        let mut cands = log.served.iter().filter(serving);
        let s = match (cands.next(), cands.next()) {
            // Serving nothing right now: a call of its own.
            (None, _) => return None,
            (Some(s), None) => s,
            (Some(_), Some(_)) => {
                m.links_ambiguous.inc();
                return None;
            }
        };
        let others = log
            .served
            .iter()
            .any(|o| o.node != s.node && o.open <= ts && o.close.is_none_or(|c| c > s.open));
        if others || log.forgotten_until > s.open || self.hopping.contains(&pid) {
            m.links_ambiguous.inc();
            return None;
        }
        Some(s.node)
    }

    /// Makes `node` (a CLIENT call, not yet in the table) the child of `parent_id`.
    fn link_thread(&mut self, node: &mut Node, id: NodeId, parent_id: NodeId, m: &JoinMetrics) {
        let Some(p) = self.nodes.get_mut(&parent_id) else {
            return;
        };
        node.trace_id = p.trace_id;
        node.parent = Parent::Local(parent_id, p.span_id);
        node.flags = p.flags;
        node.trace_state.clone_from(&p.trace_state);
        p.children.push(id);
        m.links_thread.inc();
    }

    /// A CLIENT request the probes wrote `w` into: it has those ids whatever else is known.
    /// It is the child of its thread's server request when that one is in the same trace;
    /// the probes took the thread's trace from that request's head, or chose one when it had
    /// none, and then the local tree the request is in takes the probes' trace (nothing of it
    /// has left yet: its root is still open). Where that would rewrite a trace decided
    /// upstream or already written elsewhere, the call stays a root of its own trace.
    fn written_parent(
        &mut self,
        node: &mut Node,
        id: NodeId,
        (pid, tid, ts): (u32, u32, u64),
        w: Written,
        m: &JoinMetrics,
    ) {
        node.span_id = w.span_id;
        node.written = true;
        node.trace_id = w.trace_id;
        node.flags = w.flags;
        let Some(p) = self.thread_serving(pid, tid, ts, m) else {
            return;
        };
        let same = self
            .nodes
            .get(&p)
            .is_some_and(|pn| pn.trace_id == w.trace_id);
        let root = self.local_root(p);
        let retrace = !same
            && w.from_thread
            && self
                .nodes
                .get(&root)
                .is_some_and(|r| r.parent == Parent::None && !self.has_written(root));
        if retrace {
            let (flags, state) = self
                .nodes
                .get(&root)
                .map(|r| (r.flags, r.trace_state.clone()))
                .unwrap_or((w.flags, None));
            self.inherit(root, w.trace_id, flags, state);
        }
        if same || retrace {
            self.link_thread(node, id, p, m);
        } else {
            m.links_conflicting.inc();
        }
    }

    /// Whether a node of the tree under `root` had its ids written into a request.
    fn has_written(&self, root: NodeId) -> bool {
        let mut stack = vec![root];
        while let Some(n) = stack.pop() {
            if let Some(node) = self.nodes.get(&n) {
                if node.written {
                    return true;
                }
                stack.extend(node.children.iter().copied());
            }
        }
        false
    }

    /// Makes `srv` the child of the CLIENT request `client` (the same request, other end).
    fn link_server(&mut self, srv: NodeId, client: NodeId, m: &JoinMetrics) {
        if self.has_written(srv)
            && self.nodes.get(&client).map(|c| c.trace_id)
                != self.nodes.get(&srv).map(|s| s.trace_id)
        {
            // Its tree's trace is already on the wire: it stays a root of that trace.
            if let Some(s) = self.nodes.get_mut(&srv) {
                s.decided = true;
                if let Some(k) = s.waiting_key.take() {
                    self.waiting.remove(&k);
                }
            }
            m.links_conflicting.inc();
            self.try_release(srv, m);
            return;
        }
        let Some(c) = self.nodes.get_mut(&client) else {
            return;
        };
        let (trace, span, flags, state) = (c.trace_id, c.span_id, c.flags, c.trace_state.clone());
        // One request has one server end.
        if let Some(k) = c.client_key.take() {
            self.clients.remove(&k);
        }
        c.children.push(srv);
        let Some(s) = self.nodes.get_mut(&srv) else {
            return;
        };
        s.parent = Parent::Local(client, span);
        s.decided = true;
        if let Some(k) = s.waiting_key.take() {
            self.waiting.remove(&k);
        }
        m.links_connection.inc();
        self.inherit(srv, trace, flags, state);
        self.try_release(srv, m);
    }

    /// Gives a subtree its (new) root's trace.
    fn inherit(&mut self, root: NodeId, trace: [u8; 16], flags: u8, state: Option<String>) {
        let mut stack = vec![root];
        while let Some(n) = stack.pop() {
            if let Some(node) = self.nodes.get_mut(&n) {
                node.trace_id = trace;
                node.flags = flags;
                node.trace_state.clone_from(&state);
                stack.extend(node.children.iter().copied());
            }
        }
    }

    /// A waiting SERVER request stops waiting: it is a root.
    fn decide(&mut self, id: NodeId) {
        if let Some(n) = self.nodes.get_mut(&id)
            && !n.decided
        {
            n.decided = true;
            if let Some(k) = n.waiting_key.take() {
                self.waiting.remove(&k);
            }
        }
    }

    /// A request of a connection that ended without its end being decoded (its records were
    /// lost): it will have no span, so its children take its parent, never a missing span.
    fn abandon(&mut self, id: NodeId, m: &JoinMetrics) {
        self.close_served(id, self.now, None);
        self.decide(id);
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        n.ended = true;
        let (parent, children) = (n.parent, std::mem::take(&mut n.children));
        for &c in &children {
            if let Some(child) = self.nodes.get_mut(&c) {
                child.parent = parent;
            }
        }
        if let Parent::Local(p, _) = parent
            && let Some(p) = self.nodes.get_mut(&p)
        {
            p.children.retain(|c| *c != id);
            p.children.extend(&children);
        }
        for c in children {
            self.try_release(c, m);
        }
        self.schedule(Due::Forget(id));
    }

    /// Ends the thread interval of a server request.
    fn close_served(&mut self, id: NodeId, ts: u64, response_tid: Option<u32>) {
        let Some(n) = self.nodes.get(&id) else {
            return;
        };
        let (pid, Some(tid)) = (n.pid, n.thread) else {
            return;
        };
        if response_tid.is_some_and(|t| t != tid) {
            // Answered by another thread: this process moves requests between threads.
            self.hopping.insert(pid);
        }
        let Some(log) = self.threads.get_mut(&(pid, tid)) else {
            return;
        };
        if let Some(s) = log.served.iter_mut().find(|s| s.node == id) {
            s.close = Some(ts);
        }
        // Forget the oldest ended ones past the history; none left open: the whole log.
        while log.served.iter().filter(|s| s.close.is_some()).count() > THREAD_HISTORY {
            let i = log
                .served
                .iter()
                .position(|s| s.close.is_some())
                .unwrap_or_default();
            let gone = log.served.remove(i);
            log.forgotten_until = log.forgotten_until.max(gone.close.unwrap_or_default());
        }
        if log.served.iter().all(|s| s.close.is_some()) {
            self.threads.remove(&(pid, tid));
        }
    }

    /// A request ended: its span takes the ids given at its start and waits to leave.
    pub fn end(&mut self, e: End, m: &JoinMetrics, out: &mut Vec<Span>) {
        self.now = self.now.max(e.ts_end);
        let Some(id) = self.take_running(e.conn, e.request) else {
            // Not seen beginning (or the table was full): a span of its own.
            out.extend(e.span);
            return;
        };
        self.close_served(id, e.ts_end, e.response_tid);
        let Some(n) = self.nodes.get_mut(&id) else {
            out.extend(e.span);
            return;
        };
        n.ended = true;
        self.held += usize::from(e.span.is_some());
        n.held = e.span;
        self.schedule(Due::Release(id));
        self.try_release(id, m);
        self.release_ready(out);
    }

    /// The node of a running request, which stops running.
    fn take_running(&mut self, conn: ConnId, request: RequestKey) -> Option<NodeId> {
        let running = self.by_conn.get_mut(&conn)?;
        let i = running.iter().position(|(k, _)| *k == request)?;
        let (_, id) = running.swap_remove(i);
        if running.is_empty() {
            self.by_conn.remove(&conn);
        }
        Some(id)
    }

    /// Forgets the requests of a connection that ended (their ends were not decoded).
    pub fn close_conn(&mut self, conn: ConnId, m: &JoinMetrics) {
        for (_, id) in self.by_conn.remove(&conn).unwrap_or_default() {
            self.abandon(id, m);
        }
    }

    fn settled(&self, mut id: NodeId) -> bool {
        loop {
            let Some(n) = self.nodes.get(&id) else {
                return true;
            };
            if !n.decided {
                return false;
            }
            match n.parent {
                Parent::Local(p, _) => id = p,
                _ => return true,
            }
        }
    }

    fn local_root(&self, mut id: NodeId) -> NodeId {
        while let Some(Parent::Local(p, _)) = self.nodes.get(&id).map(|n| n.parent) {
            if !self.nodes.contains_key(&p) {
                break;
            }
            id = p;
        }
        id
    }

    /// Marks what can leave now: when the link of `id` is decided and its local root ended,
    /// the root's whole finished tree.
    fn try_release(&mut self, id: NodeId, _m: &JoinMetrics) {
        if !self.settled(id) {
            return;
        }
        let root = self.local_root(id);
        if self.nodes.get(&root).is_some_and(|r| r.ended) {
            self.ready.push(root);
        }
    }

    fn release_ready(&mut self, out: &mut Vec<Span>) {
        while let Some(root) = self.ready.pop() {
            self.release_tree(root, out);
        }
    }

    /// Sends every finished span of the tree under `root` whose link is decided, parents first.
    fn release_tree(&mut self, root: NodeId, out: &mut Vec<Span>) {
        // The walk's stack is kept between calls: most trees are one span, released per span.
        let mut stack = std::mem::take(&mut self.walk);
        stack.push(root);
        while let Some(id) = stack.pop() {
            let Some(n) = self.nodes.get(&id) else {
                continue;
            };
            if !n.decided {
                continue;
            }
            // Below a request still running: they leave when it ends.
            if n.ended {
                stack.extend(n.children.iter().rev().copied());
            }
            if n.held.is_some() {
                self.release(id, out);
            }
        }
        self.walk = stack;
    }

    /// The span of `id` leaves with its final ids.
    fn release(&mut self, id: NodeId, out: &mut Vec<Span>) {
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        let Some(mut sp) = n.held.take() else {
            return;
        };
        self.held -= 1;
        sp.trace_id = n.trace_id;
        sp.span_id = n.span_id;
        sp.parent_span_id = match n.parent {
            Parent::None => None,
            Parent::Upstream(p) | Parent::Local(_, p) => Some(p),
        };
        sp.flags = n.flags;
        sp.trace_state.clone_from(&n.trace_state);
        // Unsampled or not, it is a request: the plugin stage counts it in the request
        // metrics before deciding about its export.
        out.push(sp);
        self.schedule(Due::Forget(id));
    }

    /// Time passed (monotonic ns): what waited long enough leaves, joined or not.
    pub fn tick(&mut self, now: u64, m: &JoinMetrics, out: &mut Vec<Span>) {
        self.now = self.now.max(now);
        while let Some(&(at, what)) = self.due.front() {
            if at > self.now {
                break;
            }
            self.due.pop_front();
            self.expire(what, m, out);
            // A decision may free a whole tree: it leaves before what is due next.
            self.release_ready(out);
        }
        self.release_ready(out);
    }

    fn expire(&mut self, what: Due, m: &JoinMetrics, out: &mut Vec<Span>) {
        match what {
            Due::Decide(id) => {
                self.decide(id);
                self.try_release(id, m);
            }
            Due::Release(id) => {
                if self.nodes.get(&id).is_none_or(|n| n.held.is_none()) {
                    // Filtered, or it left with its tree.
                    return self.schedule(Due::Forget(id));
                }
                if !self.settled(id) {
                    // Its link was not decided in time: it leaves as it is, for good.
                    m.links_timed_out.inc();
                    self.freeze(id);
                }
                self.release(id, out);
            }
            Due::Forget(id) => self.forget(id),
        }
    }

    /// Decides every undecided link above `id` as it stands: no later link may change the
    /// trace of a span already sent.
    fn freeze(&mut self, mut id: NodeId) {
        loop {
            self.decide(id);
            match self.nodes.get(&id).map(|n| n.parent) {
                Some(Parent::Local(p, _)) => id = p,
                _ => return,
            }
        }
    }

    fn forget(&mut self, id: NodeId) {
        let Some(n) = self.nodes.get(&id) else {
            return;
        };
        if n.held.is_some() || !n.ended {
            return; // rescheduled by its release or its end
        }
        let n = self.nodes.remove(&id).expect("present");
        if let Some(k) = n.client_key
            && self.clients.get(&k) == Some(&id)
        {
            self.clients.remove(&k);
        }
        if let Some(k) = n.waiting_key
            && self.waiting.get(&k) == Some(&id)
        {
            self.waiting.remove(&k);
        }
        if let Parent::Local(p, _) = n.parent
            && let Some(p) = self.nodes.get_mut(&p)
        {
            p.children.retain(|c| *c != id);
        }
    }

    /// Everything held leaves now (the end of a replay, or shutdown).
    pub fn flush(&mut self, m: &JoinMetrics, out: &mut Vec<Span>) {
        // What has not ended by now never will.
        let open: Vec<NodeId> = self
            .by_conn
            .drain()
            .flat_map(|(_, running)| running.into_iter().map(|(_, id)| id))
            .collect();
        for id in open {
            self.abandon(id, m);
        }
        self.tick(u64::MAX, m, out);
    }

    /// Processes that exited: their thread logs go.
    pub fn forget_processes(&mut self, alive: impl Fn(u32) -> bool) {
        self.threads.retain(|(pid, _), _| alive(*pid));
        self.hopping.retain(|pid| alive(*pid));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        context::Ids,
        span::{Resource, SpanKind, Status},
    };

    const MS: u64 = 1_000_000;

    struct Run {
        j: Joiner,
        m: JoinMetrics,
        out: Vec<Span>,
        next_fd: u32,
        /// Given to the next request opened: the ids the probes wrote into it.
        written: Option<Written>,
    }

    /// One request as one end saw it.
    #[derive(Clone, Copy)]
    struct Req {
        conn: ConnId,
        request: RequestKey,
        kind: SpanKind,
        tid: u32,
    }

    impl Run {
        fn new() -> Self {
            Run {
                j: Joiner::new(JoinOptions::default()),
                m: JoinMetrics::new(&Registry::default()),
                out: Vec::new(),
                next_fd: 3,
                written: None,
            }
        }

        /// A request on a new connection of `pid` (thread `tid`), whose client end is `client`.
        fn open(&mut self, kind: SpanKind, pid: u32, tid: u32, client: &str, ts: u64) -> Req {
            self.open_with(kind, pid, tid, client, ts, None)
        }

        fn open_with(
            &mut self,
            kind: SpanKind,
            pid: u32,
            tid: u32,
            client: &str,
            ts: u64,
            context: Option<TraceContext>,
        ) -> Req {
            self.next_fd += 1;
            let r = Req {
                conn: ConnId {
                    pid,
                    fd: self.next_fd,
                },
                request: RequestKey::Http1(0),
                kind,
                tid,
            };
            self.open_again(r, client, ts, context);
            r
        }

        fn open_again(&mut self, r: Req, client: &str, ts: u64, context: Option<TraceContext>) {
            let role = match r.kind {
                SpanKind::Server => Role::Server,
                SpanKind::Client | SpanKind::Internal => Role::Client,
            };
            self.j.open(
                Begin {
                    conn: r.conn,
                    request: r.request,
                    role,
                    tid: r.tid,
                    ts,
                    context,
                    written: self.written.take(),
                    peer: Some(PeerKey {
                        client: client.parse().unwrap(),
                        netns: 1,
                        request: r.request,
                    }),
                    serves_on_thread: role == Role::Server,
                },
                &self.m,
            );
        }

        fn end(&mut self, r: Req, name: &str, ts: u64) {
            self.end_on(r, name, ts, r.tid);
        }

        fn end_on(&mut self, r: Req, name: &str, ts: u64, response_tid: u32) {
            let span = Span {
                trace_id: [0; 16],
                span_id: [0; 8],
                parent_span_id: None,
                flags: 1,
                trace_state: None,
                kind: r.kind,
                name: name.into(),
                start_unix_ns: 0,
                end_unix_ns: ts,
                status: Status::Unset,
                attributes: vec![],
                resource: Arc::new(Resource {
                    pid: r.conn.pid,
                    service_name: String::new(),
                    attributes: vec![],
                }),
            };
            self.j.end(
                End {
                    conn: r.conn,
                    request: r.request,
                    ts_end: ts,
                    response_tid: Some(response_tid),
                    span: Some(span),
                },
                &self.m,
                &mut self.out,
            );
        }

        fn tick(&mut self, now: u64) {
            self.j.tick(now, &self.m, &mut self.out);
        }

        fn get(&self, name: &str) -> &Span {
            self.out
                .iter()
                .find(|s| s.name == name)
                .unwrap_or_else(|| panic!("{name} not out: {:?}", self.names()))
        }

        fn names(&self) -> Vec<&str> {
            self.out.iter().map(|s| s.name.as_str()).collect()
        }

        /// `child`'s parent is `parent`, in its trace.
        fn child_of(&self, child: &str, parent: &str) -> bool {
            let (c, p) = (self.get(child), self.get(parent));
            c.parent_span_id == Some(p.span_id) && c.trace_id == p.trace_id
        }

        fn count(&self, c: &Counter) -> u64 {
            c.get()
        }
    }

    /// curl -> frontend (a thread per request) -> backend: one trace of four spans.
    #[test]
    fn a_request_through_three_processes_is_one_trace() {
        let mut r = Run::new();
        let curl = r.open(SpanKind::Client, 10, 10, "127.0.0.1:40000", MS);
        let front = r.open(SpanKind::Server, 20, 21, "127.0.0.1:40000", MS + 10);
        let call = r.open(SpanKind::Client, 20, 21, "127.0.0.1:50000", 2 * MS);
        let back = r.open(SpanKind::Server, 30, 30, "127.0.0.1:50000", 2 * MS + 10);
        r.end(back, "back", 3 * MS);
        r.end(call, "call", 3 * MS + 10);
        r.end(front, "front", 4 * MS);
        assert!(r.out.is_empty(), "they wait for the trace's root");
        r.end(curl, "curl", 4 * MS + 10);
        assert_eq!(
            r.names(),
            ["curl", "front", "call", "back"],
            "parents first"
        );
        assert_eq!(r.get("curl").parent_span_id, None);
        assert!(r.child_of("front", "curl"));
        assert!(r.child_of("call", "front"));
        assert!(r.child_of("back", "call"));
        assert_eq!(r.count(&r.m.links_connection), 2);
        assert_eq!(r.count(&r.m.links_thread), 1);
        assert_eq!(r.count(&r.m.links_ambiguous), 0);
        // Forgotten once the hold has passed (twice at most: once to leave, once for late
        // children).
        r.tick(10 * MS + DEFAULT_HOLD_MS * MS);
        r.tick(10 * MS + 2 * DEFAULT_HOLD_MS * MS);
        assert_eq!((r.j.tracked(), r.j.held()), (0, 0));
    }

    fn written(trace: u8, span: u8, from_thread: bool) -> Option<Written> {
        Some(Written {
            trace_id: [trace; 16],
            span_id: [span; 8],
            flags: SAMPLED,
            from_thread,
        })
    }

    #[test]
    fn a_call_whose_context_was_written_keeps_those_ids_and_its_server_takes_that_trace() {
        let mut r = Run::new();
        // front's trace was chosen here; the probes chose another for its thread and wrote it.
        let front = r.open(SpanKind::Server, 20, 21, "192.0.2.1:40000", MS);
        r.tick(MS + DEFAULT_HOLD_MS * MS);
        r.written = written(7, 9, true);
        let call = r.open(SpanKind::Client, 20, 21, "127.0.0.1:50000", 2 * MS);
        r.end(call, "call", 3 * MS);
        r.end(front, "front", 4 * MS);
        let c = r.get("call");
        assert_eq!(
            (c.trace_id, c.span_id),
            ([7; 16], [9; 8]),
            "what the server got"
        );
        assert_eq!(
            r.get("front").trace_id,
            [7; 16],
            "the local tree follows the wire"
        );
        assert!(r.child_of("call", "front"));
        assert_eq!(r.count(&r.m.links_thread), 1);
        assert_eq!(r.count(&r.m.links_conflicting), 0);
    }

    #[test]
    fn a_written_context_never_moves_a_trace_decided_upstream() {
        // A server request continuing upstream trace `trace`, and a call of its thread the
        // probes wrote trace 7 into.
        let run = |trace: u8| {
            let mut r = Run::new();
            let upstream = TraceContext {
                ids: Some(Ids {
                    trace_id: [trace; 16],
                    parent_id: [2; 8],
                }),
                sampled: true,
                state: None,
            };
            let front = r.open_with(
                SpanKind::Server,
                20,
                21,
                "192.0.2.1:40000",
                MS,
                Some(upstream),
            );
            r.written = written(7, 9, true);
            let call = r.open(SpanKind::Client, 20, 21, "127.0.0.1:50000", 2 * MS);
            r.end(call, "call", 3 * MS);
            r.end(front, "front", 4 * MS);
            r.tick(10 * MS + DEFAULT_HOLD_MS * MS);
            r
        };
        // The probes could not read the upstream context (say it was past their head scan).
        let r = run(1);
        assert_eq!(r.get("front").trace_id, [1; 16]);
        let c = r.get("call");
        assert_eq!(
            (c.trace_id, c.span_id, c.parent_span_id),
            ([7; 16], [9; 8], None)
        );
        assert_eq!(r.count(&r.m.links_conflicting), 1);
        // Same trace: an ordinary child.
        let r = run(7);
        assert!(r.child_of("call", "front"));
        assert_eq!(r.get("call").span_id, [9; 8]);
    }

    #[test]
    fn a_server_whose_tree_was_written_is_not_relinked_to_another_trace() {
        let mut r = Run::new();
        let srv = r.open(SpanKind::Server, 20, 21, "10.0.0.1:40000", MS);
        r.written = written(7, 9, true);
        let call = r.open(SpanKind::Client, 20, 21, "127.0.0.1:50000", 2 * MS);
        // Its client end, on this node, wrote nothing (say it connected before the tracer).
        let cli = r.open(SpanKind::Client, 10, 10, "10.0.0.1:40000", MS + 5);
        r.end(call, "call", 3 * MS);
        r.end(srv, "srv", 4 * MS);
        r.end(cli, "cli", 4 * MS + 5);
        r.tick(10 * MS + DEFAULT_HOLD_MS * MS);
        assert_eq!(r.get("srv").trace_id, [7; 16]);
        assert_eq!(r.get("srv").parent_span_id, None);
        assert!(r.child_of("call", "srv"));
        assert_eq!(r.count(&r.m.links_conflicting), 1);
    }

    #[test]
    fn the_server_end_may_be_seen_before_the_client_end() {
        let mut r = Run::new();
        let srv = r.open(SpanKind::Server, 20, 20, "10.0.0.1:40000", MS);
        let cli = r.open(SpanKind::Client, 10, 10, "10.0.0.1:40000", MS + 5);
        r.end(srv, "srv", 2 * MS);
        r.end(cli, "cli", 2 * MS + 5);
        assert!(r.child_of("srv", "cli"));
        // The other order of ends too.
        let mut r = Run::new();
        let srv = r.open(SpanKind::Server, 20, 20, "10.0.0.1:40000", MS);
        r.end(srv, "srv", 2 * MS);
        let cli = r.open(SpanKind::Client, 10, 10, "10.0.0.1:40000", MS + 5);
        r.end(cli, "cli", 2 * MS + 5);
        assert!(r.child_of("srv", "cli"));
    }

    #[test]
    fn a_server_with_no_client_on_this_node_leaves_after_the_hold_as_a_root() {
        let mut r = Run::new();
        let srv = r.open(SpanKind::Server, 20, 20, "192.0.2.1:40000", MS);
        r.end(srv, "srv", 2 * MS);
        r.tick(100 * MS);
        assert!(r.out.is_empty(), "a client record may still come");
        r.tick(MS + DEFAULT_HOLD_MS * MS);
        assert_eq!(r.names(), ["srv"]);
        assert_eq!(r.get("srv").parent_span_id, None);
        assert_eq!(r.count(&r.m.links_timed_out), 0, "decided, not late");
        // A client end seen after that is too late: no link, and nothing changes.
        let cli = r.open(SpanKind::Client, 10, 10, "192.0.2.1:40000", 300 * MS);
        r.end(cli, "cli", 301 * MS);
        assert_eq!(r.get("cli").parent_span_id, None);
    }

    #[test]
    fn a_tree_whose_root_waited_for_its_client_still_leaves_parents_first() {
        let mut r = Run::new();
        let srv = r.open(SpanKind::Server, 20, 20, "192.0.2.1:40000", MS);
        let call = r.open(SpanKind::Client, 20, 20, "127.0.0.1:50000", 2 * MS);
        r.end(call, "call", 3 * MS);
        r.end(srv, "srv", 4 * MS);
        r.tick(10 * MS + DEFAULT_HOLD_MS * MS);
        assert_eq!(r.names(), ["srv", "call"]);
        assert!(r.child_of("call", "srv"));
    }

    #[test]
    fn a_call_after_the_thread_answered_is_a_root_and_not_ambiguous() {
        let mut r = Run::new();
        let srv = r.open(SpanKind::Server, 20, 20, "192.0.2.1:1", MS);
        r.end(srv, "srv", 2 * MS);
        let call = r.open(SpanKind::Client, 20, 20, "10.0.0.2:3", 3 * MS);
        r.end(call, "call", 4 * MS);
        r.flush();
        assert_eq!(r.get("call").parent_span_id, None);
        assert_eq!(r.count(&r.m.links_ambiguous), 0);
    }

    #[test]
    fn a_server_end_that_read_before_the_client_wrote_is_not_its_end() {
        let mut r = Run::new();
        // A server whose client is not traced, still waiting, from an earlier connection
        // of the same client port.
        let old = r.open(SpanKind::Server, 20, 20, "10.0.0.1:40000", MS);
        let cli = r.open(SpanKind::Client, 10, 10, "10.0.0.1:40000", 100 * MS);
        r.end(old, "old", 101 * MS);
        r.end(cli, "cli", 102 * MS);
        r.flush();
        assert_eq!(r.get("old").parent_span_id, None);
        assert_eq!(r.count(&r.m.links_connection), 0);
    }

    #[test]
    fn an_older_connection_from_the_same_port_is_not_a_parent() {
        let mut r = Run::new();
        let old = r.open(SpanKind::Client, 10, 10, "10.0.0.1:40000", MS);
        r.end(old, "old", 2 * MS);
        // A server whose client end is not traced, reusing the port before `old` is forgotten.
        let srv = r.open(SpanKind::Server, 20, 20, "10.0.0.1:40000", 3 * MS);
        r.end(srv, "srv", 4 * MS);
        r.flush();
        assert_eq!(r.get("srv").parent_span_id, None);
        assert_eq!(r.count(&r.m.links_connection), 0);
    }

    #[test]
    fn an_event_loop_serving_two_requests_at_once_links_nothing() {
        let mut r = Run::new();
        let a = r.open(SpanKind::Server, 20, 20, "192.0.2.1:1", MS);
        let b = r.open(SpanKind::Server, 20, 20, "192.0.2.1:2", 2 * MS);
        let call = r.open(SpanKind::Client, 20, 20, "10.0.0.2:3", 3 * MS);
        r.end(call, "call", 4 * MS);
        r.end(a, "a", 5 * MS);
        r.end(b, "b", 6 * MS);
        r.flush();
        assert_eq!(r.get("call").parent_span_id, None);
        assert_eq!(r.count(&r.m.links_ambiguous), 1);
        // One request served, but another one came and went since it began: the call may be
        // that one's (fire and forget): no link either.
        let mut r = Run::new();
        let a = r.open(SpanKind::Server, 20, 20, "192.0.2.1:1", MS);
        let b = r.open(SpanKind::Server, 20, 20, "192.0.2.1:2", 2 * MS);
        r.end(b, "b", 3 * MS);
        let call = r.open(SpanKind::Client, 20, 20, "10.0.0.2:3", 4 * MS);
        r.end(call, "call", 5 * MS);
        r.end(a, "a", 6 * MS);
        r.flush();
        assert_eq!(r.get("call").parent_span_id, None);
        assert_eq!(r.count(&r.m.links_ambiguous), 1);
        // Requests one after the other on the same thread: each call is its request's.
        let mut r = Run::new();
        for i in 0..3u64 {
            let t = (10 * i + 1) * MS;
            let s = r.open(SpanKind::Server, 20, 20, &format!("192.0.2.1:{}", i + 1), t);
            let c = r.open(
                SpanKind::Client,
                20,
                20,
                &format!("10.0.0.2:{}", i + 1),
                t + MS,
            );
            r.end(c, &format!("call{i}"), t + 2 * MS);
            r.end(s, &format!("req{i}"), t + 3 * MS);
        }
        r.flush();
        for i in 0..3 {
            assert!(r.child_of(&format!("call{i}"), &format!("req{i}")));
        }
        assert_eq!(r.count(&r.m.links_ambiguous), 0);
    }

    #[test]
    fn a_process_answering_from_other_threads_gets_no_thread_links() {
        let mut r = Run::new();
        // Read on thread 21, answered from thread 22: requests move between threads here.
        let a = r.open(SpanKind::Server, 20, 21, "192.0.2.1:1", MS);
        r.end_on(a, "a", 2 * MS, 22);
        let b = r.open(SpanKind::Server, 20, 21, "192.0.2.1:2", 3 * MS);
        let call = r.open(SpanKind::Client, 20, 21, "10.0.0.2:3", 4 * MS);
        r.end(call, "call", 5 * MS);
        r.end(b, "b", 6 * MS);
        r.flush();
        assert_eq!(r.get("call").parent_span_id, None);
        assert_eq!(r.count(&r.m.links_thread), 0);
    }

    fn upstream(sampled: bool) -> TraceContext {
        TraceContext {
            ids: Some(Ids {
                trace_id: [7; 16],
                parent_id: [8; 8],
            }),
            sampled,
            state: Some("vendor=1".into()),
        }
    }

    #[test]
    fn an_incoming_traceparent_wins_and_its_trace_state_is_kept() {
        let mut r = Run::new();
        let cli = r.open(SpanKind::Client, 10, 10, "127.0.0.1:40000", MS);
        let srv = r.open_with(
            SpanKind::Server,
            20,
            20,
            "127.0.0.1:40000",
            MS + 5,
            Some(upstream(true)),
        );
        let call = r.open(SpanKind::Client, 20, 20, "127.0.0.1:50000", 2 * MS);
        r.end(call, "call", 3 * MS);
        r.end(srv, "srv", 4 * MS);
        r.end(cli, "cli", 5 * MS);
        let s = r.get("srv");
        assert_eq!((s.trace_id, s.parent_span_id), ([7; 16], Some([8; 8])));
        assert_eq!(s.trace_state.as_deref(), Some("vendor=1"));
        assert!(r.child_of("call", "srv"));
        assert_eq!(r.get("call").trace_state.as_deref(), Some("vendor=1"));
        assert_eq!(r.get("cli").parent_span_id, None);
    }

    #[test]
    fn an_unsampled_upstream_leaves_its_flags_on_the_whole_trace() {
        let mut r = Run::new();
        let srv = r.open_with(
            SpanKind::Server,
            20,
            20,
            "192.0.2.1:1",
            MS,
            Some(upstream(false)),
        );
        let call = r.open(SpanKind::Client, 20, 20, "127.0.0.1:50000", 2 * MS);
        let back = r.open(SpanKind::Server, 30, 30, "127.0.0.1:50000", 2 * MS + 5);
        r.end(back, "back", 3 * MS);
        r.end(call, "call", 3 * MS + 5);
        r.end(srv, "srv", 4 * MS);
        r.flush();
        assert_eq!(r.names(), ["srv", "call", "back"]);
        assert!(r.out.iter().all(|s| s.flags & SAMPLED == 0));
    }

    #[test]
    fn a_span_waits_at_most_the_hold() {
        let mut r = Run::new();
        let srv = r.open(SpanKind::Server, 20, 20, "192.0.2.1:1", MS);
        let call = r.open(SpanKind::Client, 20, 20, "10.0.0.2:3", 2 * MS);
        r.end(call, "call", 3 * MS);
        // The request the call belongs to runs long: the call leaves after the hold, linked.
        r.tick(3 * MS + DEFAULT_HOLD_MS * MS);
        assert_eq!(r.names(), ["call"]);
        r.end(srv, "srv", 2_000 * MS);
        r.tick(2_000 * MS + DEFAULT_HOLD_MS * MS);
        assert!(r.child_of("call", "srv"));
        assert_eq!(r.count(&r.m.links_timed_out), 0);
    }

    #[test]
    fn a_lost_parent_hands_its_children_to_its_own_parent() {
        let mut r = Run::new();
        let front = r.open(SpanKind::Server, 20, 20, "192.0.2.1:1", MS);
        let call = r.open(SpanKind::Client, 20, 20, "127.0.0.1:50000", 2 * MS);
        let back = r.open(SpanKind::Server, 30, 30, "127.0.0.1:50000", 2 * MS + 5);
        r.end(back, "back", 3 * MS);
        // The call's end was lost; its connection closed.
        r.j.close_conn(call.conn, &r.m);
        r.end(front, "front", 4 * MS);
        r.flush();
        assert!(
            r.child_of("back", "front"),
            "never a parent that is not exported"
        );
    }

    #[test]
    fn replayed_http2_streams_join_by_stream_id() {
        let mut r = Run::new();
        let mut cli = r.open(SpanKind::Client, 10, 10, "127.0.0.1:40000", MS);
        let mut srv = r.open(SpanKind::Server, 20, 20, "127.0.0.1:40000", MS + 5);
        for (i, sid) in [1u32, 3, 5].into_iter().enumerate() {
            cli.request = RequestKey::Http2(sid);
            srv.request = RequestKey::Http2(sid);
            let t = (i as u64 + 2) * MS;
            r.open_again(cli, "127.0.0.1:40000", t, None);
            r.open_again(srv, "127.0.0.1:40000", t + 5, None);
        }
        // Streams end in any order.
        for sid in [5u32, 1, 3] {
            srv.request = RequestKey::Http2(sid);
            cli.request = RequestKey::Http2(sid);
            r.end(srv, &format!("srv{sid}"), 10 * MS);
            r.end(cli, &format!("cli{sid}"), 10 * MS + 5);
        }
        for sid in [1, 3, 5] {
            assert!(r.child_of(&format!("srv{sid}"), &format!("cli{sid}")));
        }
    }

    impl Run {
        fn flush(&mut self) {
            self.j.flush(&self.m, &mut self.out);
        }
    }
}
