//! A stand-in Kubernetes API server on 127.0.0.1 that serves recorded responses, so the real
//! kube client and watcher can be tested without a cluster.
//!
//! - `GET /api/v1/pods` (list): the queued PodLists in order; the last one repeats.
//! - `GET /api/v1/pods?watch=true`: each watch request takes the next queued [`Feed`]
//!   (waiting until the test queues one), sends its lines as chunks and ends the stream
//!   cleanly or by dropping the connection, as the test says.
//! - Any other GET: the object stored for that path, else a 404 Status like the API server's.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

pub fn fixture(rel: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/k8s/fixtures")
        .join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap()
}

/// A pod fixture with the given resourceVersion.
pub fn pod(name: &str, rv: u64) -> Value {
    let mut p = fixture(&format!("pods/{name}.json"));
    p["metadata"]["resourceVersion"] = json!(rv.to_string());
    p
}

pub fn pod_list(rv: u64, pods: Vec<Value>) -> Value {
    json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": { "resourceVersion": rv.to_string() },
        "items": pods,
    })
}

pub enum FeedMsg {
    Line(String),
    /// Terminating chunk: the server ended the watch (as on its timeoutSeconds).
    End,
    /// Connection dropped mid-stream (node reboot, LB reset).
    Abort,
}

/// The test's end of one watch response.
pub struct Feed(mpsc::UnboundedSender<FeedMsg>);

impl Feed {
    pub fn event(&self, kind: &str, object: Value) {
        let line = json!({ "type": kind, "object": object }).to_string();
        let _ = self.0.send(FeedMsg::Line(line));
    }
    /// The API server's answer to a watch from an expired resourceVersion.
    pub fn gone(&self) {
        self.event(
            "ERROR",
            json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure",
                "message": "too old resource version: 1001 (1850)",
                "reason": "Expired", "code": 410
            }),
        );
    }
    pub fn end(&self) {
        let _ = self.0.send(FeedMsg::End);
    }
    pub fn abort(&self) {
        let _ = self.0.send(FeedMsg::Abort);
    }
}

#[derive(Clone)]
pub struct MockApi {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    feed_tx: mpsc::UnboundedSender<mpsc::UnboundedReceiver<FeedMsg>>,
}

struct Inner {
    /// Request targets ("path?query"), percent-decoded, in arrival order.
    requests: Mutex<Vec<String>>,
    lists: Mutex<VecDeque<String>>,
    objects: Mutex<HashMap<String, String>>,
    feeds: tokio::sync::Mutex<mpsc::UnboundedReceiver<mpsc::UnboundedReceiver<FeedMsg>>>,
}

impl MockApi {
    pub async fn start(lists: Vec<Value>, objects: Vec<Value>) -> MockApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (feed_tx, feed_rx) = mpsc::unbounded_channel();
        let objects = objects
            .into_iter()
            .map(|o| (object_path(&o), o.to_string()))
            .collect();
        let inner = Arc::new(Inner {
            requests: Mutex::new(Vec::new()),
            lists: Mutex::new(lists.iter().map(Value::to_string).collect()),
            objects: Mutex::new(objects),
            feeds: tokio::sync::Mutex::new(feed_rx),
        });
        let server = inner.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(server.clone(), stream));
            }
        });
        MockApi {
            addr,
            inner,
            feed_tx,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues the response to the next watch request.
    pub fn feed(&self) -> Feed {
        let (tx, rx) = mpsc::unbounded_channel();
        self.feed_tx.send(rx).unwrap();
        Feed(tx)
    }

    pub fn requests(&self) -> Vec<String> {
        self.inner.requests.lock().unwrap().clone()
    }

    pub fn pod_requests(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|r| r.starts_with("/api/v1/pods"))
            .collect()
    }
}

fn object_path(o: &Value) -> String {
    let api = o["apiVersion"].as_str().unwrap();
    let resource = match o["kind"].as_str().unwrap() {
        "ReplicaSet" => "replicasets",
        "Job" => "jobs",
        other => panic!("no path for kind {other}"),
    };
    let ns = o["metadata"]["namespace"].as_str().unwrap();
    let name = o["metadata"]["name"].as_str().unwrap();
    format!("/apis/{api}/namespaces/{ns}/{resource}/{name}")
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn serve(inner: Arc<Inner>, stream: TcpStream) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    // Keep-alive: the client reuses connections for GETs.
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).await.unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).await.unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" {
                break;
            }
        }
        let target = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_owned();
        let target = percent_decode(&target);
        inner.requests.lock().unwrap().push(target.clone());
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let is_watch = query.split('&').any(|p| p == "watch=true");

        if path == "/api/v1/pods" && is_watch {
            serve_watch(&inner, write).await;
            return;
        }
        let (status, body) = if path == "/api/v1/pods" {
            let mut lists = inner.lists.lock().unwrap();
            let body = if lists.len() > 1 {
                lists.pop_front().unwrap()
            } else {
                lists.front().cloned().expect("no PodList queued")
            };
            ("200 OK", body)
        } else if let Some(body) = inner.objects.lock().unwrap().get(path).cloned() {
            ("200 OK", body)
        } else {
            let name = path.rsplit('/').next().unwrap_or_default();
            let body = json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": format!("\"{name}\" not found"),
                "reason": "NotFound", "details": { "name": name }, "code": 404
            });
            ("404 Not Found", body.to_string())
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        if write.write_all(head.as_bytes()).await.is_err()
            || write.write_all(body.as_bytes()).await.is_err()
        {
            return;
        }
    }
}

async fn serve_watch(inner: &Inner, mut write: tokio::net::tcp::OwnedWriteHalf) {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    if write.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let Some(mut feed) = inner.feeds.lock().await.recv().await else {
        return;
    };
    while let Some(msg) = feed.recv().await {
        match msg {
            FeedMsg::Line(line) => {
                let chunk = format!("{:x}\r\n{line}\n\r\n", line.len() + 1);
                if write.write_all(chunk.as_bytes()).await.is_err() {
                    return;
                }
            }
            FeedMsg::End => {
                let _ = write.write_all(b"0\r\n\r\n").await;
                return;
            }
            FeedMsg::Abort => return,
        }
    }
    // The test dropped the Feed: hold the stream open like an idle watch.
    std::future::pending::<()>().await;
}
