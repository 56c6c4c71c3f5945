//! One file per hook family; each probe is a thin wrapper over `capture`. The daemon attaches
//! either the socket hooks (`sock`) or, on kernels without them, the syscall hooks (`rw`,
//! `socket`, `vectored`); `tls`, `go_tls` and `code` follow TLS libraries, with either.
mod code;
mod go_tls;
mod propagate;
mod rw;
mod sock;
mod socket;
mod tls;
mod vectored;
