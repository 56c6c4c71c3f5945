//! The plugin directory: `NN-name.wasm` files run in file-name order, `NN-name.toml` beside one
//! is its config. Hidden entries (kubelet's `..data` and timestamped dirs of a ConfigMap mount)
//! are ignored; symlinks are followed, so a ConfigMap update shows up as changed files.
//! `name.example.toml` files (the example configs shipped beside the plugins) are never a
//! config and never trigger a reload.
use std::{
    fs::Metadata,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use super::PluginError;

/// One plugin file and its optional config, as found in the directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// File name without `.wasm`.
    pub name: String,
    pub wasm: PathBuf,
    pub config: Option<PathBuf>,
}

/// What a file looked like at a scan: enough to notice any write, rename or swap.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    name: String,
    len: u64,
    mtime_ns: i64,
    ino: u64,
    mode: u32,
    uid: u32,
}

/// The directory's state at one scan; equal fingerprints mean nothing changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fingerprint(Option<Vec<Seen>>);

/// How the example config shipped beside `name.wasm` is named: `name.example.toml`.
pub const EXAMPLE_SUFFIX: &str = ".example.toml";

fn relevant(name: &str) -> bool {
    !name.starts_with('.')
        && (name.ends_with(".wasm") || (name.ends_with(".toml") && !name.ends_with(EXAMPLE_SUFFIX)))
}

/// The example config shipped beside the plugin file `wasm`: `name.example.toml` for
/// `name.wasm`, or for `NN-name.wasm` once installed under an order prefix.
pub fn example_beside(wasm: &Path) -> Option<PathBuf> {
    let stem = wasm.file_stem()?.to_str()?;
    let unprefixed = stem
        .split_once('-')
        .filter(|(n, rest)| {
            !n.is_empty() && !rest.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
        })
        .map(|(_, rest)| rest);
    std::iter::once(stem)
        .chain(unprefixed)
        .map(|n| wasm.with_file_name(format!("{n}{EXAMPLE_SUFFIX}")))
        .find(|p| p.is_file())
}

pub fn fingerprint(dir: &Path) -> Fingerprint {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Fingerprint(None);
    };
    let mut seen: Vec<Seen> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if !relevant(&name) {
                return None;
            }
            let m = std::fs::metadata(e.path()).ok()?;
            Some(Seen {
                name,
                len: m.len(),
                mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
                ino: m.ino(),
                mode: m.mode(),
                uid: m.uid(),
            })
        })
        .collect();
    seen.sort_by(|a, b| a.name.cmp(&b.name));
    Fingerprint(Some(seen))
}

/// The plugins in `dir`, in the order they run. A missing directory has none.
pub fn scan(dir: &Path) -> std::io::Result<Vec<Entry>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out: Vec<Entry> = rd
        .flatten()
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            let name = file.strip_suffix(".wasm")?;
            if file.starts_with('.') || !e.path().is_file() {
                return None;
            }
            let config = dir.join(format!("{name}.toml"));
            // Not for `x.example.wasm`: `x.example.toml` is an example.
            let is_config = !format!("{name}.toml").ends_with(EXAMPLE_SUFFIX) && config.is_file();
            Some(Entry {
                name: name.to_owned(),
                wasm: e.path(),
                config: is_config.then_some(config),
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// A plugin runs inside a privileged daemon: only root (or the daemon's own user) may be able
/// to change what it runs.
pub fn check_writers(path: &Path, meta: &Metadata, allow: bool) -> Result<(), PluginError> {
    if allow {
        return Ok(());
    }
    let mode = meta.mode();
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if mode & 0o022 != 0 {
        return Err(PluginError::Writable {
            path: path.to_owned(),
            writers: if mode & 0o002 != 0 {
                "everyone"
            } else {
                "its group"
            },
            mode: mode & 0o777,
        });
    }
    if meta.uid() != 0 && meta.uid() != me {
        return Err(PluginError::Owner {
            path: path.to_owned(),
            uid: meta.uid(),
        });
    }
    Ok(())
}

/// The file's metadata, for [`check_writers`].
pub fn metadata(path: &Path) -> Result<Metadata, PluginError> {
    std::fs::metadata(path).map_err(|error| PluginError::Read {
        path: path.to_owned(),
        error,
    })
}

/// Reads a file whole, refusing one that changed while it was read (a copy in progress:
/// [`PluginError::Changing`]).
pub fn read_settled(path: &Path, allow_writable: bool) -> Result<Vec<u8>, PluginError> {
    let before = metadata(path)?;
    check_writers(path, &before, allow_writable)?;
    let bytes = std::fs::read(path).map_err(|error| PluginError::Read {
        path: path.to_owned(),
        error,
    })?;
    let after = metadata(path)?;
    if before.len() != after.len()
        || before.mtime_nsec() != after.mtime_nsec()
        || before.mtime() != after.mtime()
        || bytes.len() as u64 != after.len()
    {
        return Err(PluginError::Changing {
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tracer-plugdir-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn scans_in_name_order_with_configs_and_ignores_hidden_entries() {
        let d = tmp("scan");
        for f in [
            "20-b.wasm",
            "10-a.wasm",
            "10-a.toml",
            ".hidden.wasm",
            "notes.txt",
            "30-c.toml",
        ] {
            std::fs::write(d.join(f), b"x").unwrap();
        }
        std::fs::create_dir(d.join("..data")).unwrap();
        let e = scan(&d).unwrap();
        let names: Vec<_> = e.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["10-a", "20-b"]);
        assert_eq!(e[0].config.as_deref(), Some(d.join("10-a.toml").as_path()));
        assert_eq!(e[1].config, None);
        assert!(scan(&d.join("missing")).unwrap().is_empty());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_example_config_is_never_a_config_nor_a_change() {
        let d = tmp("example");
        for f in ["10-a.wasm", "b.wasm", "c.example.wasm"] {
            std::fs::write(d.join(f), b"x").unwrap();
        }
        let before = fingerprint(&d);
        for f in [
            "10-a.example.toml",
            "a.example.toml",
            "b.example.toml",
            "c.example.toml",
        ] {
            std::fs::write(d.join(f), b"k = 1").unwrap();
        }
        assert_eq!(
            before,
            fingerprint(&d),
            "an example is not a change to reload"
        );
        let e = scan(&d).unwrap();
        let names: Vec<_> = e.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["10-a", "b", "c.example"]);
        assert!(e.iter().all(|e| e.config.is_none()), "{e:?}");
        assert_eq!(
            example_beside(&d.join("10-a.wasm")),
            Some(d.join("10-a.example.toml"))
        );
        std::fs::remove_file(d.join("10-a.example.toml")).unwrap();
        assert_eq!(
            example_beside(&d.join("10-a.wasm")),
            Some(d.join("a.example.toml")),
            "the example of the plugin installed under an order prefix"
        );
        assert_eq!(
            example_beside(&d.join("b.wasm")),
            Some(d.join("b.example.toml"))
        );
        assert_eq!(example_beside(&d.join("20-z.wasm")), None);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn fingerprint_changes_with_content_and_config() {
        let d = tmp("fp");
        let a = fingerprint(&d);
        assert_eq!(a, fingerprint(&d));
        std::fs::write(d.join("10-a.wasm"), b"one").unwrap();
        let b = fingerprint(&d);
        assert_ne!(a, b);
        std::fs::write(d.join("10-a.toml"), b"k = 1").unwrap();
        let c = fingerprint(&d);
        assert_ne!(b, c);
        std::fs::write(d.join("notes.txt"), b"irrelevant").unwrap();
        assert_eq!(c, fingerprint(&d));
        assert_eq!(fingerprint(&d.join("missing")), Fingerprint(None));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn files_others_can_write_are_refused_unless_allowed() {
        let d = tmp("perm");
        let f = d.join("10-a.wasm");
        std::fs::write(&f, b"bytes").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(read_settled(&f, false).unwrap(), b"bytes");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
        match read_settled(&f, false) {
            Err(e @ PluginError::Writable { mode: 0o666, .. }) => {
                let m = e.to_string();
                assert!(
                    m.contains("writable by everyone") && m.contains("chmod go-w"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o664)).unwrap();
        assert!(matches!(
            read_settled(&f, false),
            Err(e @ PluginError::Writable { .. }) if e.to_string().contains("its group")
        ));
        assert!(matches!(
            read_settled(&d.join("missing.wasm"), false),
            Err(e @ PluginError::Read { .. }) if e.to_string().starts_with("cannot read ")
        ));
        assert_eq!(read_settled(&f, true).unwrap(), b"bytes");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
