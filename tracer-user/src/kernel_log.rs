//! The probes' own log (aya-log), for when something is not traced and the counters do not
//! say enough: `--kernel-log debug` shows each failure as it happens, with its pid and fd.
//! Off by default, and then free: the level is fixed before the programs load, so the verifier
//! removes the logging code.
use std::{os::fd::AsRawFd, time::Duration};

use aya::Ebpf;

/// `--kernel-log`: which of the probes' messages to show.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Deserialize,
    serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum KernelLog {
    #[default]
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl KernelLog {
    /// The value of aya-log's `AYA_LOG_LEVEL` global.
    pub fn level(self) -> u8 {
        match self {
            KernelLog::Off => 0,
            KernelLog::Error => aya_log::Level::Error as u8,
            KernelLog::Warn => aya_log::Level::Warn as u8,
            KernelLog::Info => aya_log::Level::Info as u8,
            KernelLog::Debug => aya_log::Level::Debug as u8,
            KernelLog::Trace => aya_log::Level::Trace as u8,
        }
    }
}

/// Writes the probes' messages to the daemon's log, at its own levels: the user asked for them
/// with `--kernel-log`, so the `--log` filter does not hide them.
struct Forward;

impl log::Log for Forward {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, r: &log::Record<'_>) {
        match r.level() {
            log::Level::Error => tracing::error!(target: "kernel", "{}", r.args()),
            log::Level::Warn => tracing::warn!(target: "kernel", "{}", r.args()),
            _ => tracing::info!(target: "kernel", "{}", r.args()),
        }
    }

    fn flush(&self) {}
}

#[derive(Debug, thiserror::Error)]
pub enum KernelLogError {
    #[error("the probes' log map: {0}")]
    Map(#[from] aya_log::Error),
    #[error("starting its reader thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Reads the probes' log on a thread of its own, for the daemon's lifetime.
pub fn start(ebpf: &mut Ebpf) -> Result<(), KernelLogError> {
    let mut logger = aya_log::EbpfLogger::init_with_logger(ebpf, Forward)?;
    std::thread::Builder::new()
        .name("kernel-log".into())
        .spawn(move || {
            loop {
                let mut pfd = libc::pollfd {
                    fd: logger.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd, alive for the call.
                unsafe { libc::poll(&mut pfd, 1, Duration::from_secs(1).as_millis() as i32) };
                logger.flush();
            }
        })
        .map(drop)
        .map_err(KernelLogError::from)
}
