//! What one decoded header block says: pseudo-headers, gRPC status, the kept headers.
use std::borrow::Cow;

use super::{
    Header,
    grpc::percent_decode,
    headers::{self, CONTENT_LENGTH, CONTENT_TYPE},
};

const MAX_KEPT_HEADERS: usize = 64;
const MAX_KEPT_BYTES: usize = 64 * 1024;

/// Fields of one decoded header block that we care about.
#[derive(Default)]
pub(super) struct Fields {
    pub(super) method: Option<String>,
    pub(super) path: Option<String>,
    pub(super) authority: Option<String>,
    pub(super) scheme: Option<String>,
    pub(super) status: Option<u16>,
    pub(super) kept: Vec<Header>,
    pub(super) kept_bytes: usize,
    pub(super) overflow: bool,
    pub(super) grpc: bool,
    pub(super) grpc_status: Option<u32>,
    pub(super) grpc_message: Option<String>,
    pub(super) content_length: Option<u64>,
}

fn set_once(slot: &mut Option<String>, v: &str) {
    // A duplicated pseudo-header is malformed; keep the first.
    if slot.is_none() {
        *slot = Some(v.to_owned());
    }
}

impl Fields {
    pub(super) fn add(&mut self, name: &str, value: &str) {
        match name {
            ":method" => set_once(&mut self.method, value),
            ":path" => set_once(&mut self.path, value),
            ":authority" => set_once(&mut self.authority, value),
            ":scheme" => set_once(&mut self.scheme, value),
            ":status" => {
                if self.status.is_none()
                    && value.len() == 3
                    && value.bytes().all(|c| c.is_ascii_digit())
                {
                    self.status = value.parse().ok();
                }
            }
            "grpc-status" => {
                if self.grpc_status.is_none() {
                    self.grpc_status = value.parse().ok();
                }
            }
            CONTENT_LENGTH => {
                if self.content_length.is_none() {
                    self.content_length = value.trim().parse().ok();
                }
            }
            "grpc-message" => {
                if self.grpc_message.is_none() {
                    self.grpc_message = Some(percent_decode(value));
                }
            }
            _ => {
                if name == CONTENT_TYPE && value.starts_with("application/grpc") {
                    self.grpc = true;
                }
                if let Some(&name) = headers::HTTP2.iter().find(|&&k| k == name) {
                    let add = name.len() + value.len();
                    if self.kept.len() >= MAX_KEPT_HEADERS || self.kept_bytes + add > MAX_KEPT_BYTES
                    {
                        self.overflow = true;
                    } else {
                        self.kept_bytes += add;
                        self.kept.push((Cow::Borrowed(name), value.to_owned()));
                    }
                }
            }
        }
    }
}
