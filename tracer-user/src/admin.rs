//! Admin HTTP endpoint: /healthz, /readyz, /metrics (the tracer's own and the request
//! metrics, Prometheus text, or OpenMetrics when the scraper asks for it), /requests (the
//! request metrics as JSON, for `tracer top`), /plugins and /config (JSON), POST /reload, and
//! POST /plugins/NAME/rollback and /promote.
//! Deliberately tiny (a few fixed routes, one request per connection): it must not need a web
//! framework, and it binds to localhost unless the operator says otherwise.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
};

use crate::{
    changes::Trigger,
    metrics::{Health, Registry, monotonic_s},
    plugins::PluginHost,
    spanmetrics::{self, SpanMetrics, prometheus::Format, view},
};

/// A reload request: what asked for it, and where the answer goes (what was applied, or why
/// something was refused).
pub struct ReloadRequest {
    pub trigger: Trigger,
    pub reply: oneshot::Sender<Result<String, String>>,
}

/// A pipeline stage counts as alive if it made progress within this many seconds.
const STALL_S: u64 = 10;

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// What the routes read.
#[derive(Clone)]
pub struct State {
    pub registry: Registry,
    pub health: Arc<Health>,
    pub plugins: Arc<PluginHost>,
    pub requests: Arc<SpanMetrics>,
    pub reload: mpsc::Sender<ReloadRequest>,
    /// Lets a network peer that presents it do what this host may (`--admin-token-file`).
    pub token: Option<Token>,
}

/// The admin token, compared in constant time.
#[derive(Clone)]
pub struct Token(Arc<[u8]>);

/// Shorter tokens are refused: they could be guessed by trying.
const MIN_TOKEN_LEN: usize = 16;

impl Token {
    /// The token in `path` (surrounding whitespace trimmed). None, with a warning saying so,
    /// when it cannot be used: then the network gets no more than without a token file.
    pub fn read(path: &std::path::Path) -> Option<Token> {
        let refused = |why: String| {
            tracing::warn!(
                "--admin-token-file {}: {why}; state-changing admin calls stay for this host only",
                path.display()
            );
            None
        };
        match std::fs::read(path) {
            Err(e) => refused(format!("cannot read it: {e}")),
            Ok(b) if b.trim_ascii().len() < MIN_TOKEN_LEN => {
                refused(format!("a token needs {MIN_TOKEN_LEN} characters or more"))
            }
            Ok(b) => Some(Token(b.trim_ascii().into())),
        }
    }

    fn matches(&self, presented: &[u8]) -> bool {
        let t = &self.0;
        // Every byte compared whatever differs, so the time says nothing about the token.
        presented.len() == t.len()
            && presented
                .iter()
                .zip(t.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

pub async fn serve(listener: TcpListener, state: State) {
    let state = Arc::new(state);
    loop {
        let Ok((sock, peer)) = listener.accept().await else {
            continue;
        };
        let st = state.clone();
        let from = Origin::of(peer);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), handle(sock, st, from)).await;
        });
    }
}

/// Where a request comes from. Health and metrics are for anyone who can reach the port (the
/// kubelet, Prometheus); changing state and reading plugin details are for this host only, or
/// for a peer that presents the admin token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    ThisHost,
    WithToken,
    Network,
}

impl Origin {
    fn of(peer: std::net::SocketAddr) -> Self {
        let ip = match peer.ip() {
            std::net::IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
            ip => ip,
        };
        if ip.is_loopback() {
            Origin::ThisHost
        } else {
            Origin::Network
        }
    }
}

async fn handle(mut sock: TcpStream, st: Arc<State>, from: Origin) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    while n < buf.len() && !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
        let got = sock.read(&mut buf[n..]).await?;
        if got == 0 {
            break;
        }
        n += got;
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map_or("", |(_, v)| v.trim())
    };
    let from = authorize(from, st.token.as_ref(), header("authorization"));
    let (code, ctype, body) = route(method, path, header("accept"), &st, from).await;
    let reason = match code {
        200 => "OK",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        422 => "Unprocessable Entity",
        _ => "Service Unavailable",
    };
    let resp = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(resp.as_bytes()).await?;
    sock.shutdown().await
}

/// A network peer with the right `Authorization: Bearer` token counts as [`Origin::WithToken`].
fn authorize(from: Origin, token: Option<&Token>, authorization: &str) -> Origin {
    let bearer = authorization.strip_prefix("Bearer ").map(str::trim);
    match (from, token, bearer) {
        (Origin::Network, Some(t), Some(b)) if t.matches(b.as_bytes()) => Origin::WithToken,
        _ => from,
    }
}

async fn route(
    method: &str,
    path: &str,
    accept: &str,
    st: &State,
    from: Origin,
) -> (u16, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    let h = &st.health;
    match (method, path) {
        ("POST", _) | ("GET", "/plugins" | "/config") if from == Origin::Network => (
            403,
            TEXT,
            format!(
                "{method} {path} is answered on this host only (loopback), or with the token of \
                 --admin-token-file (`Authorization: Bearer TOKEN`): run `tracer plugins list`, \
                 or `kill -HUP` the daemon, on the node (in Kubernetes: kubectl exec)\n"
            ),
        ),
        ("GET", "/healthz") => match h.stalled(monotonic_s(), STALL_S) {
            None => (200, TEXT, "ok\n".into()),
            Some((stage, s)) => (
                503,
                TEXT,
                format!("the {stage} has not made progress for {s} s\n"),
            ),
        },
        ("GET", "/readyz") => {
            if !h.probes_attached.get() {
                (503, TEXT, "probes not attached yet\n".into())
            } else if h.export_failing.get() {
                let why = h
                    .last_export_error
                    .lock()
                    .map(|e| e.clone())
                    .unwrap_or_default();
                (503, TEXT, format!("exporting fails: {why}\n"))
            } else {
                (200, TEXT, "ready\n".into())
            }
        }
        // Prometheus asks for OpenMetrics first; curl and older scrapers get the classic text.
        // The tracer's own metrics, then the requests' (RED, service graph).
        ("GET", "/metrics") if accept.contains("application/openmetrics-text") => {
            let own = st.registry.openmetrics();
            let mut body = own.strip_suffix("# EOF\n").unwrap_or(&own).to_string();
            let snap = st.requests.snapshot();
            spanmetrics::prometheus::render(&snap, Format::OpenMetrics, &mut body);
            body.push_str("# EOF\n");
            (
                200,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                body,
            )
        }
        ("GET", "/metrics") => {
            let mut body = st.registry.prometheus();
            let snap = st.requests.snapshot();
            spanmetrics::prometheus::render(&snap, Format::Text, &mut body);
            (
                200,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                body,
            )
        }
        ("GET", "/requests") => (
            200,
            "application/json",
            serde_json::to_string(&view::Requests::from(&st.requests.snapshot()))
                .unwrap_or_default(),
        ),
        ("GET", "/plugins") => (
            200,
            "application/json",
            format!("{:#}\n", st.plugins.status()),
        ),
        ("GET", "/config") => {
            let c = &st.plugins.changes;
            let body = serde_json::json!({
                "effective": &*c.effective(),
                "plugin_chain": st.plugins.chain().label(),
                "recent_changes": c.recent(),
            });
            (200, "application/json", format!("{body:#}\n"))
        }
        ("POST", p) if p.starts_with("/plugins/") => {
            let (name, action) = p["/plugins/".len()..].rsplit_once('/').unwrap_or(("", ""));
            let host = st.plugins.clone();
            let name = name.to_owned();
            let result = match action {
                "rollback" => tokio::task::spawn_blocking(move || host.rollback(&name)).await,
                "promote" => tokio::task::spawn_blocking(move || host.promote(&name)).await,
                _ => {
                    return (
                        404,
                        TEXT,
                        "not found: POST /plugins/NAME/rollback or /plugins/NAME/promote\n".into(),
                    );
                }
            };
            match result {
                Ok(Ok(msg)) => (200, TEXT, format!("{msg}\n")),
                Ok(Err(msg)) => (422, TEXT, format!("{msg}\n")),
                Err(_) => (503, TEXT, "the plugin host stopped\n".into()),
            }
        }
        ("POST", "/reload") => {
            let (reply, rx) = oneshot::channel();
            let req = ReloadRequest {
                trigger: Trigger::admin,
                reply,
            };
            if st.reload.send(req).await.is_err() {
                return (
                    503,
                    TEXT,
                    "reloading is not available (no --config file)\n".into(),
                );
            }
            match rx.await {
                Ok(Ok(msg)) => (200, TEXT, format!("{msg}\n")),
                Ok(Err(msg)) => (422, TEXT, format!("{msg}\n")),
                Err(_) => (503, TEXT, "reload was dropped\n".into()),
            }
        }
        (
            _,
            "/healthz" | "/readyz" | "/metrics" | "/requests" | "/plugins" | "/config" | "/reload",
        ) => (405, TEXT, "method not allowed\n".into()),
        _ => (
            404,
            TEXT,
            "not found: try /healthz, /readyz, /metrics, /plugins, /config, POST /reload, \
             POST /plugins/NAME/rollback or POST /plugins/NAME/promote\n"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::admin_state as state;

    #[tokio::test]
    async fn a_network_peer_with_the_token_may_what_this_host_may() {
        let dir = std::env::temp_dir().join(format!("tracer-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (good, short) = (dir.join("good"), dir.join("short"));
        std::fs::write(&good, "s3cr3t-t0ken-0123456789\n").unwrap();
        std::fs::write(&short, "abc\n").unwrap();
        assert!(Token::read(&short).is_none(), "too short to be safe");
        assert!(Token::read(&dir.join("absent")).is_none());
        let token = Token::read(&good).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();

        let net = Origin::Network;
        let with = |auth: &str| authorize(net, Some(&token), auth);
        assert_eq!(with("Bearer s3cr3t-t0ken-0123456789"), Origin::WithToken);
        for wrong in [
            "Bearer s3cr3t-t0ken-012345678",
            "Bearer s3cr3t-t0ken-01234567890",
            "Bearer S3CR3T-T0KEN-0123456789",
            "Basic s3cr3t-t0ken-0123456789",
            "s3cr3t-t0ken-0123456789",
            "",
        ] {
            assert_eq!(with(wrong), Origin::Network, "{wrong:?}");
        }
        assert_eq!(
            authorize(net, None, "Bearer s3cr3t-t0ken-0123456789"),
            Origin::Network,
            "no token file: nothing unlocks"
        );
        let st = state();
        assert_eq!(
            route("GET", "/plugins", "", &st, Origin::WithToken).await.0,
            200
        );
        // Past the origin check: refused for having no --config, not for where it came from.
        assert_eq!(
            route("POST", "/reload", "", &st, Origin::WithToken).await.0,
            503
        );
    }

    /// One request to a fresh endpoint with the given Accept header: (head, body).
    async fn get_metrics(accept: &str) -> (String, String) {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = state();
        tokio::spawn(serve(listener, state));
        let mut sock = TcpStream::connect(addr).await.unwrap();
        let req = format!("GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\n\r\n");
        sock.write_all(req.as_bytes()).await.unwrap();
        let mut resp = String::new();
        sock.read_to_string(&mut resp).await.unwrap();
        let (head, body) = resp.split_once("\r\n\r\n").unwrap();
        (head.to_string(), body.to_string())
    }

    #[tokio::test]
    async fn state_changes_and_plugin_details_are_for_this_host_only() {
        let st = state();
        let net = Origin::of("10.1.2.3:5555".parse().unwrap());
        assert_eq!(net, Origin::Network);
        for (m, p) in [
            ("POST", "/reload"),
            ("GET", "/plugins"),
            ("GET", "/config"),
            ("POST", "/plugins/10-x/rollback"),
            ("POST", "/plugins/10-x/promote"),
        ] {
            let (code, _, body) = route(m, p, "", &st, net).await;
            assert_eq!(code, 403, "{m} {p}: {body}");
            assert!(body.contains("this host only"), "{body}");
        }
        // Health and metrics stay open to the network (the kubelet, Prometheus).
        assert_eq!(route("GET", "/metrics", "", &st, net).await.0, 200);
        assert_ne!(route("GET", "/healthz", "", &st, net).await.0, 403);
        // From this host, IPv4, IPv6 or IPv4 in IPv6: answered.
        for peer in ["127.0.0.1:1", "[::1]:1", "[::ffff:127.0.0.1]:1"] {
            let here = Origin::of(peer.parse().unwrap());
            assert_eq!(here, Origin::ThisHost, "{peer}");
            assert_eq!(route("GET", "/plugins", "", &st, here).await.0, 200);
            // No --config: a reload is refused for that reason, not for where it came from.
            assert_eq!(route("POST", "/reload", "", &st, here).await.0, 503);
            let (code, _, body) = route("POST", "/plugins/10-x/rollback", "", &st, here).await;
            assert_eq!(code, 422, "{body}");
            assert!(body.contains("no plugin \"10-x\" in the chain"), "{body}");
            let (code, _, body) = route("GET", "/config", "", &st, here).await;
            assert_eq!(code, 200, "{body}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(v["effective"]["pending_restart"].is_array(), "{v:#}");
        }
    }

    #[tokio::test]
    async fn metrics_are_prometheus_text_unless_the_scraper_asks_for_openmetrics() {
        let (head, body) = get_metrics("*/*").await;
        assert!(
            head.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"),
            "{head}"
        );
        assert!(body.contains(
            "# TYPE tracer_plugin_reloads_total counter\ntracer_plugin_reloads_total 0\n"
        ));
        assert!(body.contains("tracer_probes_attached 0\n"));
        // What Prometheus sends.
        let (head, body) = get_metrics(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        )
        .await;
        assert!(
            head.contains("Content-Type: application/openmetrics-text; version=1.0.0"),
            "{head}"
        );
        assert!(
            body.contains("# TYPE tracer_plugin_reloads counter\ntracer_plugin_reloads_total 0\n")
        );
        assert!(body.ends_with("# EOF\n"), "{body}");
    }
}
