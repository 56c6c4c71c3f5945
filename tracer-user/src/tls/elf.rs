//! Which TLS library (or dynamic linker) an ELF file is, and where to probe it: the file
//! offsets of the functions' entries (and, for Go, of their RET instructions).
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
    /// A Go program (1.17+) with `crypto/tls` in it.
    GoTls,
}

impl Kind {
    pub fn describe(self) -> &'static str {
        match self {
            Kind::OpenSsl => "OpenSSL API",
            Kind::DynamicLinker => "dynamic linker",
            Kind::GoTls => "Go crypto/tls",
        }
    }
}

/// One probe to attach: an eBPF program at a file offset, with a value it reads back
/// (`bpf_get_attach_cookie`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub program: &'static str,
    pub offset: u64,
    pub cookie: Option<u64>,
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
    #[error("{path}: {why}")]
    Go { path: String, why: String },
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
    if obj.section_by_name(".go.buildinfo").is_some() {
        return go_tls(&obj).map_err(|why| ElfError::Go { path: shown(), why });
    }
    let offset_of = |name: &str| symbol_offset(&obj, name).map(|(off, _)| off);
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
        .flat_map(|(offset, progs)| {
            progs.iter().map(move |&program| Target {
                program,
                offset,
                cookie: None,
            })
        })
        .collect();
    Ok(Some(Library { kind, targets }))
}

/// The Go TLS probes of a Go program: an entry probe at `crypto/tls.(*Conn).Read` and `Write`
/// with the hash of `*net.TCPConn` as cookie, and a probe at every RET of `Read`. `Ok(None)`:
/// the program has no `crypto/tls`; `Err`: it has, but cannot be probed (and why).
fn go_tls<'d, R: object::ReadRef<'d>>(
    obj: &object::File<'d, R>,
) -> Result<Option<Library>, String> {
    let (Some(read), Some(write)) = (
        symbol_offset(obj, "crypto/tls.(*Conn).Read"),
        symbol_offset(obj, "crypto/tls.(*Conn).Write"),
    ) else {
        return Ok(None);
    };
    let version = go_version(obj).ok_or("Go build info without a version")?;
    let minor = version
        .strip_prefix("go1.")
        .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|v| v.parse::<u32>().ok())
        .ok_or_else(|| format!("Go version {version:?} not understood"))?;
    if minor < 17 {
        return Err(format!(
            "{version}: Go before 1.17 passes arguments on the stack, not probed"
        ));
    }
    // Go 1.20 renamed the itab symbols from `go.itab.` to `go:itab.`.
    let hash = [
        "go:itab.*net.TCPConn,net.Conn",
        "go.itab.*net.TCPConn,net.Conn",
    ]
    .into_iter()
    .find_map(|name| itab_hash(obj, name))
    .ok_or("no itab of *net.TCPConn as net.Conn (no TCP connections under its TLS)")?;
    let cookie = Some(u64::from(hash));
    // Writes are taken at their entry (all of the buffer), reads at each RET of `Read`.
    let mut targets = vec![
        Target {
            program: "go_tls_read",
            offset: read.0,
            cookie,
        },
        Target {
            program: "go_tls_write",
            offset: write.0,
            cookie,
        },
    ];
    let rets =
        ret_offsets(obj, read.0, read.1).ok_or("cannot read crypto/tls.(*Conn).Read's code")?;
    if rets.is_empty() {
        return Err("no RET found in crypto/tls.(*Conn).Read".into());
    }
    targets.extend(rets.into_iter().map(|offset| Target {
        program: "go_tls_return",
        offset,
        cookie: None,
    }));
    Ok(Some(Library {
        kind: Kind::GoTls,
        targets,
    }))
}

/// The Go version in `.go.buildinfo` (Go 1.18+ layout: a 32-byte header, then the version as
/// a length-prefixed string).
fn go_version<'d, R: object::ReadRef<'d>>(obj: &object::File<'d, R>) -> Option<String> {
    let data = obj.section_by_name(".go.buildinfo")?.data().ok()?;
    if !data.starts_with(b"\xff Go buildinf:") || data.get(15)? & 2 == 0 {
        return None;
    }
    let (len, n) = uvarint(data.get(32..)?)?;
    let s = data.get(32 + n..32 + n + len as usize)?;
    String::from_utf8(s.to_vec()).ok()
}

fn uvarint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// The type hash an itab holds at offset 16 (`inter`, `_type`, then `hash uint32`): a
/// constant of the build, so it can be checked without knowing where the binary is loaded.
fn itab_hash<'d, R: object::ReadRef<'d>>(obj: &object::File<'d, R>, name: &str) -> Option<u32> {
    let sym = obj.symbols().find(|s| s.name() == Ok(name))?;
    let section = obj.section_by_index(sym.section_index()?).ok()?;
    let data = section.data().ok()?;
    let at = usize::try_from(sym.address().checked_sub(section.address())? + 16).ok()?;
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

/// File offsets of the RET instructions of the function at file offset `start`, `size` bytes
/// long, decoded instruction by instruction (a 0xC3 byte inside another instruction is not one).
fn ret_offsets<'d, R: object::ReadRef<'d>>(
    obj: &object::File<'d, R>,
    start: u64,
    size: u64,
) -> Option<Vec<u64>> {
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};
    let section = obj.sections().find(|s| {
        s.file_range()
            .is_some_and(|(off, len)| start >= off && start + size <= off + len)
    })?;
    let (sec_off, _) = section.file_range()?;
    let data = section.data().ok()?;
    let from = usize::try_from(start - sec_off).ok()?;
    let code = data.get(from..from + usize::try_from(size).ok()?)?;
    let mut decoder = Decoder::with_ip(64, code, start, DecoderOptions::NONE);
    let mut rets = Vec::new();
    while decoder.can_decode() {
        let insn = decoder.decode();
        if insn.is_invalid() {
            return None;
        }
        if insn.mnemonic() == Mnemonic::Ret {
            rets.push(insn.ip());
        }
    }
    Some(rets)
}

/// File offset and size of the function `name` defines (dynamic symbols first: a stripped
/// library keeps only those).
fn symbol_offset<'d, R: object::ReadRef<'d>>(
    obj: &object::File<'d, R>,
    name: &str,
) -> Option<(u64, u64)> {
    let sym = obj.dynamic_symbols().chain(obj.symbols()).find(|s| {
        s.name() == Ok(name) && s.is_definition() && s.kind() == object::SymbolKind::Text
    })?;
    let section = obj.section_by_index(sym.section_index()?).ok()?;
    let (file_start, _) = section.file_range()?;
    sym.address()
        .checked_sub(section.address())
        .map(|d| (d + file_start, sym.size()))
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
