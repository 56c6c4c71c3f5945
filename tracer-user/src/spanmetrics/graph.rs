//! The service graph: an edge per client service -> server service, with requests, failed
//! requests and both ends' durations, named as Tempo and the Collector's servicegraph
//! connector name theirs (`traces_service_graph_request_total`, `..._failed_total`,
//! `..._server_seconds`, `..._client_seconds`).
//!
//! The two ends are paired by the link the joiner made: the SERVER span's parent is the
//! CLIENT span's id when both ends are on this node. A half that finds no partner within
//! [`PAIR_WAIT_NS`] still counts, against a virtual node: a client's server is its
//! `server.address:port`, a server's client is `user` (Tempo's conventions).
use std::{collections::VecDeque, sync::Arc};

use rustc_hash::FxHashMap;

use super::Histogram;
use crate::{
    metrics::{Counter, Registry},
    semconv,
    span::{Span, SpanKind, Status},
};

/// How long one end of a call waits for the other.
pub const PAIR_WAIT_NS: u64 = 2_000_000_000;
/// Ends waiting at once, per side; past it a new one counts as unpaired right away.
const MAX_PENDING: usize = 65_536;
/// Edges kept; past it new ones go to one overflow edge.
pub const MAX_EDGES: usize = 10_000;
/// The client of a request no traced process sent.
pub const USER: &str = "user";
pub const VIRTUAL_NODE: &str = "virtual_node";

/// Durations of the graph's histograms, in seconds (the servicegraph connector's defaults).
pub const BOUNDS: &[f64] = &[
    0.002, 0.004, 0.006, 0.008, 0.01, 0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.4, 2.0, 5.0, 10.0, 15.0,
];

/// One end of a call, waiting for the other.
struct Half {
    service: Arc<str>,
    /// A client's server as it named it; unused for servers.
    peer: Option<String>,
    seconds: f64,
    failed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct EdgeKey {
    client: Arc<str>,
    server: Arc<str>,
    virtual_node: bool,
}

/// A count each edge has, named as the Collector's servicegraph connector names it (OTLP name,
/// `_total` included, which is also the Prometheus sample name).
pub struct EdgeCount {
    pub name: &'static str,
    pub help: &'static str,
    pub value: fn(&Edge) -> u64,
}

/// A duration histogram each edge has.
pub struct EdgeDurations {
    pub name: &'static str,
    pub help: &'static str,
    pub value: fn(&Edge) -> &Histogram,
}

pub const COUNTS: [EdgeCount; 2] = [
    EdgeCount {
        name: "traces_service_graph_request_total",
        help: "Requests from a client service to a server service",
        value: |e| e.requests,
    },
    EdgeCount {
        name: "traces_service_graph_request_failed_total",
        help: "Requests from a client service to a server service that failed at either end",
        value: |e| e.failed,
    },
];

pub const DURATIONS: [EdgeDurations; 2] = [
    EdgeDurations {
        name: "traces_service_graph_request_server_seconds",
        help: "Duration of the requests of an edge as the server saw them",
        value: |e| &e.server_seconds,
    },
    EdgeDurations {
        name: "traces_service_graph_request_client_seconds",
        help: "Duration of the requests of an edge as the client saw them",
        value: |e| &e.client_seconds,
    },
];

#[derive(Clone, Debug)]
pub struct Edge {
    pub client: Arc<str>,
    pub server: Arc<str>,
    /// `virtual_node` when one end was not seen.
    pub connection_type: Option<&'static str>,
    /// Stands for the edges past [`MAX_EDGES`].
    pub overflow: bool,
    pub requests: u64,
    pub failed: u64,
    pub server_seconds: Histogram,
    pub client_seconds: Histogram,
    pub start_unix_ns: u64,
    pub last_unix_ns: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

pub struct Graph {
    clients: FxHashMap<[u8; 8], Half>,
    servers: FxHashMap<[u8; 8], Half>,
    /// When each waiting half gives up, oldest first.
    due: VecDeque<(u64, Side, [u8; 8])>,
    edges: FxHashMap<EdgeKey, Edge>,
    unpaired: Counter,
}

fn failed(sp: &Span) -> bool {
    matches!(sp.status, Status::Error(_))
}

/// Where a client said it was going: `server.address:port`, or the peer's address.
fn peer(sp: &Span) -> String {
    let addr = sp
        .attr(semconv::SERVER_ADDRESS)
        .or_else(|| sp.attr(semconv::NETWORK_PEER_ADDRESS));
    let port = sp
        .attr(semconv::SERVER_PORT)
        .or_else(|| sp.attr(semconv::NETWORK_PEER_PORT));
    match (addr, port) {
        (Some(a), Some(p)) => format!("{a}:{p}"),
        (Some(a), None) => a.to_string(),
        _ => "unknown".into(),
    }
}

impl Graph {
    pub fn new(reg: &Registry) -> Self {
        Graph {
            clients: FxHashMap::default(),
            servers: FxHashMap::default(),
            due: VecDeque::new(),
            edges: FxHashMap::default(),
            unpaired: reg.counter(
                "service_graph_unpaired_spans",
                "Spans whose other end was not seen within 2 s: counted against a virtual node (user, or the server's address)",
            ),
        }
    }

    /// Takes one end of a call; pairs it when the other end is waiting.
    pub fn record(&mut self, sp: &Span, now: u64) {
        let half = |peer| Half {
            service: sp.resource.service_name.as_str().into(),
            peer,
            seconds: super::duration_s(sp),
            failed: failed(sp),
        };
        match sp.kind {
            SpanKind::Client => {
                let c = half(Some(peer(sp)));
                match self.servers.remove(&sp.span_id) {
                    Some(s) => self.pair(c, s, now),
                    None => self.wait(Side::Client, sp.span_id, c, now),
                }
            }
            SpanKind::Server => {
                let s = half(None);
                let Some(parent) = sp.parent_span_id else {
                    return self.unpaired_server(s, now);
                };
                match self.clients.remove(&parent) {
                    Some(c) => self.pair(c, s, now),
                    None => self.wait(Side::Server, parent, s, now),
                }
            }
            SpanKind::Internal => {}
        }
    }

    fn wait(&mut self, side: Side, id: [u8; 8], h: Half, now: u64) {
        let map = match side {
            Side::Client => &mut self.clients,
            Side::Server => &mut self.servers,
        };
        if map.len() >= MAX_PENDING {
            return self.unpaired(side, h, now);
        }
        if let Some(old) = map.insert(id, h) {
            // Two ends claiming one id: the older one stops waiting.
            self.unpaired(side, old, now);
        }
        self.due.push_back((now + PAIR_WAIT_NS, side, id));
    }

    fn unpaired(&mut self, side: Side, h: Half, now: u64) {
        match side {
            Side::Client => self.unpaired_client(h, now),
            Side::Server => self.unpaired_server(h, now),
        }
    }

    fn unpaired_client(&mut self, c: Half, now: u64) {
        self.unpaired.inc();
        let server: Arc<str> = c.peer.as_deref().unwrap_or("unknown").into();
        let e = self.edge(c.service.clone(), server, true, now);
        e.requests += 1;
        e.failed += u64::from(c.failed);
        e.client_seconds.record(c.seconds, BOUNDS);
    }

    fn unpaired_server(&mut self, s: Half, now: u64) {
        self.unpaired.inc();
        let e = self.edge(USER.into(), s.service.clone(), true, now);
        e.requests += 1;
        e.failed += u64::from(s.failed);
        e.server_seconds.record(s.seconds, BOUNDS);
    }

    fn pair(&mut self, c: Half, s: Half, now: u64) {
        let e = self.edge(c.service.clone(), s.service.clone(), false, now);
        e.requests += 1;
        e.failed += u64::from(c.failed || s.failed);
        e.client_seconds.record(c.seconds, BOUNDS);
        e.server_seconds.record(s.seconds, BOUNDS);
    }

    fn edge(
        &mut self,
        client: Arc<str>,
        server: Arc<str>,
        virtual_node: bool,
        now: u64,
    ) -> &mut Edge {
        let mut key = EdgeKey {
            client,
            server,
            virtual_node,
        };
        let overflow = !self.edges.contains_key(&key) && self.edges.len() >= MAX_EDGES;
        if overflow {
            key = EdgeKey {
                client: "".into(),
                server: "".into(),
                virtual_node: false,
            };
        }
        let e = self.edges.entry(key.clone()).or_insert_with(|| Edge {
            client: key.client.clone(),
            server: key.server.clone(),
            connection_type: key.virtual_node.then_some(VIRTUAL_NODE),
            overflow,
            requests: 0,
            failed: 0,
            server_seconds: Histogram::new(BOUNDS),
            client_seconds: Histogram::new(BOUNDS),
            start_unix_ns: now,
            last_unix_ns: now,
        });
        e.last_unix_ns = now;
        e
    }

    /// The halves whose wait is over count as unpaired.
    pub fn expire(&mut self, now: u64) {
        while let Some(&(at, side, id)) = self.due.front() {
            if at > now {
                break;
            }
            self.due.pop_front();
            let h = match side {
                Side::Client => self.clients.remove(&id),
                Side::Server => self.servers.remove(&id),
            };
            // Gone already: paired, or replaced by a newer end with its own deadline.
            if let Some(h) = h {
                self.unpaired(side, h, now);
            }
        }
    }

    pub fn sweep(&mut self, now: u64, idle_ns: u64) {
        self.expire(now);
        self.edges
            .retain(|_, e| now.saturating_sub(e.last_unix_ns) <= idle_ns);
    }

    pub fn edges(&self) -> Vec<Edge> {
        let mut v: Vec<Edge> = self.edges.values().cloned().collect();
        v.sort_by(|a, b| (&a.client, &a.server).cmp(&(&b.client, &b.server)));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        span::{Value, kv},
        spanmetrics::tests::{resource, server},
    };

    fn client(res: &Arc<crate::span::Resource>, id: u8, ms: u64, status: Status) -> Span {
        let mut s = server(res, 200, ms, None);
        s.kind = SpanKind::Client;
        s.span_id = [id; 8];
        s.status = status;
        s.attributes
            .push(kv(semconv::SERVER_ADDRESS, Value::Str("127.0.0.1".into())));
        s.attributes
            .push(kv(semconv::SERVER_PORT, Value::Int(8080)));
        s
    }

    fn find<'a>(edges: &'a [Edge], c: &str, s: &str) -> &'a Edge {
        edges
            .iter()
            .find(|e| &*e.client == c && &*e.server == s)
            .unwrap_or_else(|| panic!("no edge {c} -> {s} in {edges:#?}"))
    }

    #[test]
    fn linked_ends_pair_in_either_order_and_lone_ends_meet_virtual_nodes() {
        let mut g = Graph::new(&Registry::default());
        let (front, back) = (resource(1, "frontend"), resource(2, "backend"));
        // Client first, then its server; then a server first, then its client.
        g.record(&client(&front, 1, 10, Status::Unset), 0);
        let mut s1 = server(&back, 200, 8, None);
        s1.parent_span_id = Some([1; 8]);
        g.record(&s1, 1);
        let mut s2 = server(&back, 500, 3, None);
        s2.status = Status::Error("500".into());
        s2.parent_span_id = Some([2; 8]);
        g.record(&s2, 2);
        g.record(&client(&front, 2, 4, Status::Error("500".into())), 3);
        // A root server span (the frontend's own ingress) and a client nobody answered.
        g.record(&server(&front, 200, 20, None), 4);
        g.record(&client(&front, 3, 1, Status::Unset), 5);
        g.expire(5 + PAIR_WAIT_NS);
        let edges = g.edges();
        assert_eq!(edges.len(), 3, "{edges:#?}");
        let e = find(&edges, "frontend", "backend");
        assert_eq!((e.requests, e.failed, e.connection_type), (2, 1, None));
        assert_eq!(e.server_seconds.count, 2);
        assert!((e.client_seconds.sum - 0.014).abs() < 1e-9);
        let u = find(&edges, USER, "frontend");
        assert_eq!((u.requests, u.connection_type), (1, Some(VIRTUAL_NODE)));
        let v = find(&edges, "frontend", "127.0.0.1:8080");
        assert_eq!((v.requests, v.client_seconds.count), (1, 1));
        assert_eq!(g.unpaired.get(), 2);
    }

    #[test]
    fn a_server_whose_parent_is_elsewhere_waits_then_counts_from_user() {
        let mut g = Graph::new(&Registry::default());
        let mut s = server(&resource(2, "backend"), 200, 8, None);
        s.parent_span_id = Some([9; 8]);
        g.record(&s, 0);
        g.expire(PAIR_WAIT_NS - 1);
        assert!(g.edges().is_empty(), "still waiting");
        g.expire(PAIR_WAIT_NS);
        assert_eq!(find(&g.edges(), USER, "backend").requests, 1);
    }
}
