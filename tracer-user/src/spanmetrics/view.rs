//! The request metrics as `GET /requests` serves them (JSON), for `tracer top` and scripts:
//! per service its series with their histogram, and the service graph's edges.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Snapshot;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Requests {
    /// Unix time of the snapshot, in ns.
    pub unix_ns: u64,
    pub services: Vec<Service>,
    pub edges: Vec<Edge>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Service {
    pub service: String,
    pub resource: BTreeMap<String, String>,
    pub series: Vec<Series>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Series {
    /// `http.server.request.duration`...
    pub instrument: String,
    /// `s` or `ms`.
    pub unit: String,
    pub attributes: BTreeMap<String, String>,
    pub count: u64,
    pub sum: f64,
    pub bounds: Vec<f64>,
    /// Per bucket (not cumulative), one more than `bounds`.
    pub buckets: Vec<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Edge {
    pub client: String,
    pub server: String,
    pub connection_type: Option<String>,
    pub requests: u64,
    pub failed: u64,
}

impl From<&Snapshot> for Requests {
    fn from(s: &Snapshot) -> Self {
        Requests {
            unix_ns: s.unix_ns,
            services: s
                .services
                .iter()
                .map(|svc| Service {
                    service: svc.service_name().to_string(),
                    resource: svc
                        .attributes
                        .iter()
                        .map(|a| (a.key.to_string(), a.value.to_string()))
                        .collect(),
                    series: svc
                        .series
                        .iter()
                        .map(|(_, p)| Series {
                            instrument: p.instrument.name().into(),
                            unit: p.instrument.unit().into(),
                            attributes: p
                                .attributes
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.to_string()))
                                .collect(),
                            count: p.hist.count,
                            sum: p.hist.sum,
                            bounds: p.instrument.bounds().to_vec(),
                            buckets: p.hist.buckets.clone(),
                        })
                        .collect(),
                })
                .collect(),
            edges: s
                .edges
                .iter()
                .map(|e| Edge {
                    client: e.client.to_string(),
                    server: e.server.to_string(),
                    connection_type: e.connection_type.map(Into::into),
                    requests: e.requests,
                    failed: e.failed,
                })
                .collect(),
        }
    }
}
