//! Helpers shared by the unit tests.
use std::{
    io::Write,
    sync::{Arc, Mutex},
};

/// A writer whose bytes the test reads back, or one that always fails.
#[derive(Clone, Default)]
pub struct SharedBuf {
    bytes: Arc<Mutex<Vec<u8>>>,
    fail: bool,
}

impl SharedBuf {
    pub fn failing() -> Self {
        SharedBuf {
            fail: true,
            ..Default::default()
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.bytes.lock().unwrap().clone()
    }

    pub fn lines(&self) -> usize {
        self.bytes().split(|&b| b == b'\n').count() - 1
    }
}

impl Write for SharedBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.fail {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        self.bytes.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An environment (for the `OTEL_*` readers) holding only `pairs`.
pub fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let m: std::collections::HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| m.get(k).cloned()
}

/// The value of one sample of the registry's /metrics text (`name` with its labels), 0 when
/// it is not there.
pub fn sample(reg: &crate::metrics::Registry, name: &str) -> u64 {
    reg.prometheus()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// A connection table that knows no process: spans are named by the records' comm.
pub fn table(reg: &crate::metrics::Registry) -> crate::conntrack::ConnTable {
    let root = std::env::temp_dir().join("tracer-unit-test-no-proc");
    crate::conntrack::ConnTable::new(
        crate::process::Processes::new(&root, vec![]),
        &root,
        crate::span::Clock { offset_ns: 0 },
        Default::default(),
        reg,
    )
}

/// Records of `conns` keep-alive connections to a server, one after the other, with
/// `per_conn` exchanges each (a browser-like request: query, user agent, traceparent), then
/// closed: one SERVER span per exchange.
pub fn traffic(conns: u32, per_conn: u32) -> Vec<Vec<u8>> {
    use crate::events::{ConnId, Dir, Role, encode};
    const REQ: &[u8] = b"GET /api/v1/users/12345/orders?limit=20&page=3 HTTP/1.1\r\n\
        Host: checkout.internal:8080\r\n\
        User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36\r\n\
        traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\
        Accept: */*\r\n\r\n";
    const RESP: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
    let mut out = vec![];
    for c in 0..conns {
        let id = ConnId {
            pid: 4242,
            fd: 10 + c,
        };
        let t0 = 1_000_000 * (u64::from(c) + 1);
        let peer = format!("10.0.0.7:{}", 40000 + c % 20000).parse().unwrap();
        out.push(encode::conn(id, t0, Role::Accepted, Some(peer), "checkout"));
        for i in 0..per_conn {
            let t = t0 + 100 * (u64::from(i) + 1);
            let len = |b: &[u8]| b.len() as u64;
            out.push(encode::data(
                id,
                i,
                Dir::Ingress,
                (t, t + 10),
                len(REQ),
                REQ,
                "checkout",
            ));
            out.push(encode::data(
                id,
                i,
                Dir::Egress,
                (t + 20, t + 30),
                len(RESP),
                RESP,
                "checkout",
            ));
        }
        out.push(encode::close(id, t0 + 100 * (u64::from(per_conn) + 1)));
    }
    out
}

/// An admin endpoint's state with no plugins and no reloads (`--config` not given).
pub fn admin_state() -> crate::admin::State {
    let registry = crate::metrics::Registry::default();
    crate::admin::State {
        health: Arc::new(crate::metrics::Health::new(&registry)),
        plugins: Arc::new(
            crate::plugins::PluginHost::new(crate::plugins::Settings::default(), &registry)
                .unwrap(),
        ),
        requests: Arc::new(crate::spanmetrics::SpanMetrics::new(10, &registry)),
        registry,
        reload: tokio::sync::mpsc::channel(1).0,
        token: None,
    }
}
