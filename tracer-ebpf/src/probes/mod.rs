//! One file per syscall family; each probe is a thin wrapper over `capture`.
mod rw;
mod socket;
mod vectored;
