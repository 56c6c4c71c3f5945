//! The TCP connections the tracer opens itself: its OTLP exports of spans and metrics. A
//! collector on a traced host receives them, and without this every batch would come back as
//! the collector's spans, exported in the next batch, and so on. The exporters' connectors
//! register each connection by both ends as soon as it is connected, before a byte is sent on
//! it; the connection table drops a server's spans on exactly those connections. Matching the
//! socket, not the request path, keeps the collector's spans of other applications' exports.
//!
//! The set is one per process because the sockets are the process's: nothing else can add to
//! it, and a restart starts with neither sockets nor entries.
use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{LazyLock, PoisonError, RwLock},
};

use crate::process::tcp_sockets;

/// The process's own connections: the exporters register into it, the connection table asks.
pub static OWN: LazyLock<OwnConnections> = LazyLock::new(OwnConnections::default);

/// Connections as (local end, remote end).
#[derive(Default)]
pub struct OwnConnections(RwLock<HashSet<(SocketAddr, SocketAddr)>>);

/// Registering past this many entries first forgets the closed ones (the connectors cannot
/// see a connection close: the HTTP client hands them its own connection type).
const PRUNE_AT: usize = 64;

impl OwnConnections {
    /// Records a connection the tracer opened.
    pub fn register(&self, local: SocketAddr, remote: SocketAddr) {
        let mut own = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if own.len() >= PRUNE_AT
            && let Some(open) = open_connections()
        {
            own.retain(|c| open.contains(c));
        }
        own.insert((canonical(local), canonical(remote)));
    }

    /// Whether a server's connection (its own end `local`, its `peer`) is one the tracer
    /// opened to it.
    pub fn is_own(&self, local: SocketAddr, peer: SocketAddr) -> bool {
        let own = self.0.read().unwrap_or_else(PoisonError::into_inner);
        !own.is_empty() && own.contains(&(canonical(peer), canonical(local)))
    }
}

/// An IPv4 client of a dual-stack socket shows as `::ffff:a.b.c.d` on one side only.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// Every TCP connection of this network namespace (ours are among them while open).
fn open_connections() -> Option<HashSet<(SocketAddr, SocketAddr)>> {
    let mut open = HashSet::new();
    for t in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let table = std::fs::read_to_string(t).ok()?;
        open.extend(tcp_sockets(&table).map(|(_, e)| (canonical(e.local), canonical(e.peer))));
    }
    Some(open)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn a_server_end_matches_the_connection_registered_from_the_other_end() {
        let (ours, collector) = (
            "10.0.0.5:41000".parse().unwrap(),
            "10.0.0.9:4317".parse().unwrap(),
        );
        let own = OwnConnections::default();
        own.register(ours, collector);
        assert!(own.is_own(collector, ours));
        // Another client from the same address, or the same port to another server.
        assert!(!own.is_own(collector, "10.0.0.5:41001".parse().unwrap()));
        assert!(!own.is_own("10.0.0.8:4317".parse().unwrap(), ours));
        // The server sees an IPv4 peer of its dual-stack socket as IPv4-mapped.
        assert!(own.is_own(
            "[::ffff:10.0.0.9]:4317".parse().unwrap(),
            "[::ffff:10.0.0.5]:41000".parse().unwrap()
        ));
    }

    #[test]
    fn closed_connections_are_forgotten_and_open_ones_kept() {
        let own = OwnConnections::default();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let open = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let open_ends = (open.local_addr().unwrap(), open.peer_addr().unwrap());
        own.register(open_ends.0, open_ends.1);
        let closed = (
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        own.register(closed.0, closed.1);
        // Enough others that registering prunes.
        for p in 0..PRUNE_AT as u16 {
            own.register(
                SocketAddr::from(([127, 0, 0, 2], 1000 + p)),
                "127.0.0.1:3".parse().unwrap(),
            );
        }
        assert!(own.is_own(open_ends.1, open_ends.0));
        assert!(!own.is_own(closed.1, closed.0));
    }
}
