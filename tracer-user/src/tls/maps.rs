//! The executable files a process has mapped, from `/proc/PID/maps`.
use std::collections::HashSet;

/// A file, by what the kernel attaches uprobes to: its device and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    /// `major:minor` of the device, as /proc prints it (hex), packed.
    pub dev: u64,
    pub inode: u64,
}

/// One executable file mapped by a process, by the path the process sees it at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub file: FileId,
    pub path: String,
}

/// The executable file mappings in the text of a `/proc/PID/maps`, one per file.
/// Anonymous memory, deleted files and non-executable mappings are left out.
pub fn executable_files(maps: &str) -> Vec<Mapping> {
    let mut seen = HashSet::new();
    maps.lines()
        .filter_map(parse_line)
        .filter(|m| seen.insert(m.file))
        .collect()
}

/// `start-end perms offset major:minor inode path` (the path may hold spaces).
fn parse_line(line: &str) -> Option<Mapping> {
    let mut rest = line;
    let mut field = || {
        let t = rest.trim_start();
        let end = t.find(' ').unwrap_or(t.len());
        let (f, r) = t.split_at(end);
        rest = r;
        f
    };
    let _range = field();
    let perms = field();
    let _offset = field();
    let dev = field();
    let inode: u64 = field().parse().ok()?;
    let path = rest.trim_start();
    if perms.as_bytes().get(2) != Some(&b'x') || inode == 0 || !path.starts_with('/') {
        return None;
    }
    if path.ends_with(" (deleted)") {
        return None;
    }
    let (major, minor) = dev.split_once(':')?;
    let dev = (u64::from_str_radix(major, 16).ok()? << 32) | u64::from_str_radix(minor, 16).ok()?;
    Some(Mapping {
        file: FileId { dev, inode },
        path: path.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_executable_files_once_each() {
        let maps = "\
55d0c0a00000-55d0c0a27000 r--p 00000000 fd:01 1053 /usr/bin/curl
55d0c0a27000-55d0c0a90000 r-xp 00027000 fd:01 1053 /usr/bin/curl
7f10aa000000-7f10aa021000 rw-p 00000000 00:00 0
7f10ab1a0000-7f10ab1fc000 r-xp 0002b000 fd:01 2201 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f10ab300000-7f10ab301000 r-xp 00000000 fd:01 2202 /opt/my lib/libx.so
7f10ab400000-7f10ab401000 r-xp 00000000 fd:01 2203 /tmp/old.so (deleted)
7ffd5a1c2000-7ffd5a1c4000 r-xp 00000000 00:00 0 [vdso]
";
        let files = executable_files(maps);
        let paths: Vec<_> = files.iter().map(|m| m.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/usr/bin/curl",
                "/usr/lib/x86_64-linux-gnu/libssl.so.3",
                "/opt/my lib/libx.so"
            ]
        );
        assert_eq!(
            files[1].file,
            FileId {
                dev: (0xfd << 32) | 1,
                inode: 2201
            }
        );
    }

    #[test]
    fn malformed_lines_are_skipped() {
        assert!(
            executable_files("garbage\n1-2 r-xp 0 zz 12 /x\n1-2 r-xp 0 fd:01 x /y\n").is_empty()
        );
    }
}
