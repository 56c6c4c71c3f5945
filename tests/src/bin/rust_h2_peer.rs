//! A Rust HTTP/2 peer (h2c with prior knowledge) on hyper, for the end-to-end tests: a
//! different HPACK encoder and frame scheduler than nghttp2's or grpcio's.
//!
//!     rust_h2_peer server PORT       GET /items/N answers 200 with N bytes, anything else 404
//!     rust_h2_peer client PORT N M   N GETs of /items/{(i % 7) * 1000}, at most M in flight, then
//!                                    GET /missing, all on ONE connection; prints
//!                                    `ok <requests> <body bytes>` (exit 1 on any failure)
use std::{convert::Infallible, sync::Arc};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    task::JoinSet,
};

type Error = Box<dyn std::error::Error + Send + Sync>;

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let n = req
        .uri()
        .path()
        .strip_prefix("/items/")
        .and_then(|n| n.parse::<usize>().ok());
    Ok(match n {
        Some(n) => Response::new(Full::new(Bytes::from(vec![b'x'; n]))),
        None => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"no such item\n")));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    })
}

async fn server(port: u16) -> Result<(), Error> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service_fn(handle))
                .await;
        });
    }
}

async fn client(port: u16, n: usize, in_flight: usize) -> Result<(), Error> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let limit = Arc::new(Semaphore::new(in_flight));
    let mut calls = JoinSet::new();
    for i in 0..=n {
        let permit = limit.clone().acquire_owned().await?;
        let mut sender = sender.clone();
        let path = if i == n {
            "/missing".to_string()
        } else {
            format!("/items/{}", (i % 7) * 1000)
        };
        calls.spawn(async move {
            let req = Request::get(format!("http://127.0.0.1:{port}{path}"))
                .body(Empty::<Bytes>::new())?;
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            drop(permit);
            Ok::<_, Error>((status, body.len()))
        });
    }
    let (mut done, mut bytes) = (0, 0);
    while let Some(r) = calls.join_next().await {
        let (status, len) = r??;
        if status != StatusCode::OK && status != StatusCode::NOT_FOUND {
            return Err(format!("unexpected status {status}").into());
        }
        done += 1;
        bytes += len;
    }
    println!("ok {done} {bytes}");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let num = |i: usize| -> Result<usize, Error> {
        Ok(args
            .get(i)
            .ok_or("usage: rust_h2_peer server PORT | client PORT N M")?
            .parse()?)
    };
    match args.get(1).map(String::as_str) {
        Some("server") => server(num(2)? as u16).await,
        Some("client") => client(num(2)? as u16, num(3)?, num(4)?).await,
        _ => Err("usage: rust_h2_peer server PORT | client PORT N M".into()),
    }
}
