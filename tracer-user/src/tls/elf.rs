//! Which TLS library (or dynamic linker) an ELF file is, and where the functions to probe
//! start in it (file offsets, what a uprobe is attached at).
use std::{fs::File, path::Path};

use object::{Object, ObjectSection, ObjectSymbol, read::ReadCache};

/// What a file gives the probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// OpenSSL's API (OpenSSL 1.1 and 3, BoringSSL, LibreSSL): a shared libssl, or a binary
    /// that links one in (node).
    OpenSsl,
    /// The dynamic linker (or a static binary's copy of it): calls `_dl_debug_state` after it
    /// loads libraries.
    DynamicLinker,
}

impl Kind {
    pub fn describe(self) -> &'static str {
        match self {
            Kind::OpenSsl => "OpenSSL API",
            Kind::DynamicLinker => "dynamic linker",
        }
    }
}

/// One probe to attach: an eBPF program at a file offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub program: &'static str,
    pub offset: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Library {
    pub kind: Kind,
    pub targets: Vec<Target>,
}

#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not an ELF file this tracer reads: {source}")]
    Parse { path: String, source: object::Error },
}

/// Each probed symbol and its programs: an entry probe, and the shared return probe for the
/// data calls (`ssl_return` reads their result).
const OPENSSL: &[(&str, &[&str])] = &[
    ("SSL_read", &["ssl_read", "ssl_return"]),
    ("SSL_write", &["ssl_write", "ssl_return"]),
    ("SSL_read_ex", &["ssl_read_ex", "ssl_return"]),
    ("SSL_write_ex", &["ssl_write_ex", "ssl_return"]),
    ("SSL_set_fd", &["ssl_set_fd"]),
];
const LINKER: &[(&str, &[&str])] = &[("_dl_debug_state", &["dl_debug_state"])];

/// What `path` gives the probes, or `None` when it has nothing to probe.
pub fn inspect(path: &Path) -> Result<Option<Library>, ElfError> {
    let shown = || path.display().to_string();
    let file = File::open(path).map_err(|source| ElfError::Open {
        path: shown(),
        source,
    })?;
    // Read on demand: node is a 100 MB file of which only the symbol tables are needed.
    let cache = ReadCache::new(file);
    let obj = object::File::parse(&cache).map_err(|source| ElfError::Parse {
        path: shown(),
        source,
    })?;
    let offset_of = |name: &str| symbol_offset(&obj, name);
    let has_openssl = offset_of("SSL_read").is_some() && offset_of("SSL_write").is_some();
    let (kind, table) = if has_openssl {
        (Kind::OpenSsl, OPENSSL)
    } else if offset_of("_dl_debug_state").is_some() {
        (Kind::DynamicLinker, LINKER)
    } else {
        return Ok(None);
    };
    let targets = table
        .iter()
        .filter_map(|(sym, progs)| offset_of(sym).map(|off| (off, *progs)))
        .flat_map(|(offset, progs)| progs.iter().map(move |&program| Target { program, offset }))
        .collect();
    Ok(Some(Library { kind, targets }))
}

/// Whether `path` is a Go program (it has Go's build-info section).
pub fn is_go(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    let cache = ReadCache::new(file);
    object::File::parse(&cache).is_ok_and(|obj| obj.section_by_name(".go.buildinfo").is_some())
}

/// File offset of the function `name` defines (dynamic symbols first: a stripped library
/// keeps only those).
fn symbol_offset<'d, R: object::ReadRef<'d>>(obj: &object::File<'d, R>, name: &str) -> Option<u64> {
    let sym = obj.dynamic_symbols().chain(obj.symbols()).find(|s| {
        s.name() == Ok(name) && s.is_definition() && s.kind() == object::SymbolKind::Text
    })?;
    let section = obj.section_by_index(sym.section_index()?).ok()?;
    let (file_start, _) = section.file_range()?;
    sym.address()
        .checked_sub(section.address())
        .map(|d| d + file_start)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The system's libssl, when this machine has one (CI does: python's ssl module needs it).
    fn system_libssl() -> Option<&'static Path> {
        [
            "/usr/lib/x86_64-linux-gnu/libssl.so.3",
            "/usr/lib/x86_64-linux-gnu/libssl.so.1.1",
        ]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
    }

    #[test]
    fn finds_the_openssl_calls_in_libssl() {
        let Some(path) = system_libssl() else {
            assert!(std::env::var("CI").is_err(), "CI machines have libssl");
            eprintln!("skipped: no libssl on this machine");
            return;
        };
        let lib = inspect(path).unwrap().expect("libssl has the OpenSSL API");
        assert_eq!(lib.kind, Kind::OpenSsl);
        let progs: Vec<_> = lib.targets.iter().map(|t| t.program).collect();
        for p in ["ssl_read", "ssl_write", "ssl_return", "ssl_set_fd"] {
            assert!(progs.contains(&p), "{p} missing from {progs:?}");
        }
        // Distinct functions, inside the file.
        let size = std::fs::metadata(path).unwrap().len();
        assert!(lib.targets.iter().all(|t| t.offset > 0 && t.offset < size));
        let read = lib
            .targets
            .iter()
            .find(|t| t.program == "ssl_read")
            .unwrap();
        let write = lib
            .targets
            .iter()
            .find(|t| t.program == "ssl_write")
            .unwrap();
        assert_ne!(read.offset, write.offset);
    }

    #[test]
    fn a_plain_binary_has_nothing_to_probe() {
        // This test binary defines neither OpenSSL's calls nor the linker's hook.
        let me = std::env::current_exe().unwrap();
        assert_eq!(inspect(&me).unwrap(), None);
    }

    #[test]
    fn not_an_elf_file_is_an_error_not_a_panic() {
        let dir = std::env::temp_dir().join(format!("tracer-elf-{}", std::process::id()));
        std::fs::write(&dir, b"#!/bin/sh\necho hi\n").unwrap();
        assert!(matches!(inspect(&dir), Err(ElfError::Parse { .. })));
        std::fs::remove_file(&dir).unwrap();
    }
}
