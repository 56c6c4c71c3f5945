//! Protocol decoders: byte streams of one connection -> request/response exchanges.
pub mod http1;
