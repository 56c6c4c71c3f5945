//! The exporters' connections: each one's ends go into [`own_connections`] as soon as it is
//! connected (TLS or not), before the first request is written on it, so a traced collector's
//! spans of it are dropped from the first one.
use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use hyper_util::client::legacy::connect::{Connection, HttpConnector, HttpInfo};

use crate::own_connections::OWN;

/// A connector service (or, as a layer, around one) that registers each connection it makes.
#[derive(Clone)]
pub struct Registered<S>(S);

/// The gRPC exporter's TCP connector (tonic adds TLS on top), set as tonic sets its own.
pub fn grpc_connector(timeout: Duration) -> Registered<HttpConnector> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(timeout));
    Registered(http)
}

/// Wraps the HTTP client's connectors (`reqwest::ClientBuilder::connector_layer`).
#[derive(Clone)]
pub struct RegisterLayer;

impl<S> tower_layer::Layer<S> for RegisterLayer {
    type Service = Registered<S>;
    fn layer(&self, inner: S) -> Registered<S> {
        Registered(inner)
    }
}

impl<S, R> tower_service::Service<R> for Registered<S>
where
    S: tower_service::Service<R>,
    S::Response: Connection,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let connecting = self.0.call(req);
        Box::pin(async move {
            let conn = connecting.await?;
            let mut ext = http::Extensions::new();
            conn.connected().get_extras(&mut ext);
            // A TCP connection always says its ends; a proxy's is the one registered.
            if let Some(info) = ext.get::<HttpInfo>() {
                OWN.register(info.local_addr(), info.remote_addr());
            }
            Ok(conn)
        })
    }
}
