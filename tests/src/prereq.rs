//! What a test needs from the machine: a missing tool or file makes it SKIP, or fail under
//! `CI=true`. Plain std only: the non-privileged tests outside this crate include this file
//! (`#[path]`) instead of depending on the crate and its HTTP/2 peer.
use std::{
    fs,
    path::{Path, PathBuf},
    thread,
};

fn test_name() -> String {
    thread::current().name().unwrap_or("?").to_string()
}

/// Check a prerequisite. Missing: with `CI=true` panic (a missing tool is a failure in CI,
/// never a silent skip); otherwise print `SKIP <test>: <why>` and return false, and the test
/// returns early.
pub fn require(what: &str, ok: bool) -> bool {
    if ok {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and a prerequisite is missing: {what}");
    }
    eprintln!("SKIP {}: {what}", test_name());
    false
}

/// The full path of an executable found in PATH.
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| is_executable(p))
}

pub fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The workspace root: the parent of the including crate's directory.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("a workspace member's directory has a parent")
        .to_path_buf()
}

/// The tracer binary: `$TRACER_BIN`, else `target/debug/tracer`, else `target/release/tracer`.
/// The tests do not depend on tracer-user, so `cargo build -p tracer-user` first.
pub fn tracer_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TRACER_BIN") {
        let p = PathBuf::from(p);
        return is_executable(&p).then_some(p);
    }
    ["debug", "release"]
        .iter()
        .map(|profile| workspace().join("target").join(profile).join("tracer"))
        .find(|p| is_executable(p))
}
