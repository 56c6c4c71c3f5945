//! Member offsets of kernel structs from the kernel's BTF (`/sys/kernel/btf/vmlinux`). The
//! socket hooks read a few fields of `struct sock` whose place depends on the kernel's build
//! options; aya does not expose its BTF type lookup, and what we need is small: find a struct
//! by name and the byte offset of a member, looking through anonymous unions and structs.
use std::collections::HashMap;

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("not BTF data (bad magic or header)")]
    Header,
    #[error("BTF data is truncated at byte {0}")]
    Truncated(usize),
    #[error("BTF type kind {0} is not known to this reader")]
    Kind(u32),
}

const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

struct Member {
    name: u32,
    ty: u32,
    /// In bits; `None` for a bitfield (never what the probes read).
    bit_offset: Option<u32>,
    /// Bitfield size in bits, 0 for a whole member.
    bits: u32,
}

struct Type {
    name: u32,
    kind: u32,
    /// Size for structs and unions, the referenced type for typedefs and modifiers.
    size_or_type: u32,
    members: Vec<Member>,
}

/// The kernel's types, enough of them to look up struct members.
pub struct Btf {
    strings: Vec<u8>,
    /// Index = type id - 1.
    types: Vec<Type>,
    structs: HashMap<String, u32>,
}

/// Where a member is and how big its type is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, BtfError> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(BtfError::Truncated(at))
}

impl Btf {
    pub fn from_sys_fs() -> Result<Self, String> {
        let data = std::fs::read(VMLINUX).map_err(|e| format!("{VMLINUX}: {e}"))?;
        Btf::parse(&data).map_err(|e| format!("{VMLINUX}: {e}"))
    }

    /// Parses little-endian BTF (every kernel the probes load on is little-endian).
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if data.len() < 24 || data[0..2] != [0x9f, 0xeb] {
            return Err(BtfError::Header);
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let section = |off: usize, len: usize| {
            let start = hdr_len + off;
            data.get(start..start + len)
                .ok_or(BtfError::Truncated(start + len))
        };
        let tbytes = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?.to_vec();
        let mut types = Vec::new();
        let mut at = 0;
        while at < tbytes.len() {
            let (name, info, size_or_type) = (
                u32_at(tbytes, at)?,
                u32_at(tbytes, at + 4)?,
                u32_at(tbytes, at + 8)?,
            );
            at += 12;
            let (kind, vlen, kind_flag) = ((info >> 24) & 0x1f, info & 0xffff, info >> 31);
            let vlen = vlen as usize;
            let mut members = Vec::new();
            // Bytes that follow the common part, per kind (linux/btf.h).
            let extra = match kind {
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = at + i * 12;
                        let off = u32_at(tbytes, m + 8)?;
                        let (bit_offset, bits) = if kind_flag == 1 {
                            (off & 0xff_ffff, off >> 24)
                        } else {
                            (off, 0)
                        };
                        members.push(Member {
                            name: u32_at(tbytes, m)?,
                            ty: u32_at(tbytes, m + 4)?,
                            bit_offset: (bit_offset % 8 == 0).then_some(bit_offset),
                            bits,
                        });
                    }
                    vlen * 12
                }
                // INT, VAR, DECL_TAG: one u32.
                1 | 14 | 17 => 4,
                // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG.
                2 | 7..=12 | 16 | 18 => 0,
                // ARRAY
                3 => 12,
                // ENUM, FUNC_PROTO
                6 | 13 => vlen * 8,
                // DATASEC, ENUM64
                15 | 19 => vlen * 12,
                k => return Err(BtfError::Kind(k)),
            };
            at += extra;
            if at > tbytes.len() {
                return Err(BtfError::Truncated(hdr_len + type_off + at));
            }
            types.push(Type {
                name,
                kind,
                size_or_type,
                members,
            });
        }
        let mut btf = Btf {
            strings,
            types,
            structs: HashMap::new(),
        };
        for (i, t) in btf.types.iter().enumerate() {
            if t.kind == KIND_STRUCT && t.name != 0 {
                // The first definition wins; later ones are forward-compatible duplicates.
                let name = btf.name(t.name).to_string();
                btf.structs.entry(name).or_insert(i as u32 + 1);
            }
        }
        Ok(btf)
    }

    fn name(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    fn ty(&self, id: u32) -> Option<&Type> {
        self.types.get((id as usize).checked_sub(1)?)
    }

    /// Follows typedefs and qualifiers to the type itself.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let t = self.ty(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return Some(t),
            }
        }
        None
    }

    fn size_of(&self, id: u32) -> u32 {
        match self.resolve(id) {
            // INT, STRUCT, UNION, ENUM carry their size; a pointer is 8 bytes here.
            Some(t) if t.kind == 2 => 8,
            Some(t) if t.kind == 3 => 0,
            Some(t) => t.size_or_type,
            None => 0,
        }
    }

    /// Offset and size of `member` in struct `strukt`, through anonymous unions and structs.
    /// `None` when either is missing or the member is a bitfield.
    pub fn field(&self, strukt: &str, member: &str) -> Option<Field> {
        let id = *self.structs.get(strukt)?;
        self.find(self.ty(id)?, member, 0)
    }

    fn find(&self, t: &Type, member: &str, base: u32) -> Option<Field> {
        for m in &t.members {
            let name = self.name(m.name);
            if name == member {
                let off = m.bit_offset.filter(|_| m.bits == 0)?;
                return Some(Field {
                    offset: base + off / 8,
                    size: self.size_of(m.ty),
                });
            }
            if name.is_empty()
                && let (Some(inner), Some(off)) = (self.resolve(m.ty), m.bit_offset)
                && matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                && let Some(f) = self.find(inner, member, base + off / 8)
            {
                return Some(f);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob with `struct sock_common { u32 a; union { u32 b; struct { u16 c; u16 d; }; };
    /// int e:3; }` and `typedef` through a const, built the way the kernel lays it out.
    fn blob() -> Vec<u8> {
        let strings = b"\0sock_common\0a\0b\0c\0d\0e\0u32\0u16\0\0".to_vec();
        let s = |name: &str| {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut t: Vec<u8> = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                t.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: INT u32 (size 4), 2: INT u16 (size 2)
        push(&[s("u32"), 1 << 24, 4, 32]);
        push(&[s("u16"), 1 << 24, 2, 16]);
        // 3: anonymous struct { u16 c @0; u16 d @16 bits }
        push(&[0, (KIND_STRUCT << 24) | 2, 4, s("c"), 2, 0, s("d"), 2, 16]);
        // 4: anonymous union { u32 b; struct 3 }
        push(&[0, (KIND_UNION << 24) | 2, 4, s("b"), 1, 0, 0, 3, 0]);
        // 5: const -> 1
        push(&[0, KIND_CONST << 24, 1]);
        // 6: struct sock_common (kind_flag: bitfield offsets) { a @0; union @32; e:3 @64 }
        push(&[
            s("sock_common"),
            (1 << 31) | (KIND_STRUCT << 24) | 3,
            12,
            s("a"),
            5,
            0,
            0,
            4,
            32,
            s("e"),
            1,
            (3 << 24) | 64,
        ]);
        let mut out = vec![0x9f, 0xeb, 1, 0];
        for w in [
            24u32,
            0,
            t.len() as u32,
            t.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&t);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn finds_members_through_anonymous_unions() {
        let btf = Btf::parse(&blob()).unwrap();
        let f = |m| btf.field("sock_common", m);
        assert_eq!(f("a"), Some(Field { offset: 0, size: 4 }));
        assert_eq!(f("b"), Some(Field { offset: 4, size: 4 }));
        assert_eq!(f("c"), Some(Field { offset: 4, size: 2 }));
        assert_eq!(f("d"), Some(Field { offset: 6, size: 2 }));
        // A bitfield is never reported as a readable field.
        assert_eq!(f("e"), None);
        assert_eq!(f("nope"), None);
        assert_eq!(btf.field("sock", "a"), None);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert_eq!(Btf::parse(b"nope").err(), Some(BtfError::Header));
        let mut b = blob();
        b.truncate(b.len() - 20);
        assert!(Btf::parse(&b).is_err());
        for cut in 0..blob().len() {
            let _ = Btf::parse(&blob()[..cut]);
        }
    }

    /// On a machine with kernel BTF, the offsets the socket hooks need are found (and match
    /// the layout every 64-bit kernel with network namespaces has had for years).
    #[test]
    fn kernel_sock_offsets() {
        let Ok(btf) = Btf::from_sys_fs() else {
            eprintln!("skipped: no readable {VMLINUX}");
            return;
        };
        assert_eq!(
            btf.field("sock_common", "skc_family"),
            Some(Field {
                offset: tracer_common::sk::FAMILY as u32,
                size: 2
            })
        );
        assert_eq!(btf.field("sock_common", "skc_v6_daddr").unwrap().size, 16);
        assert_eq!(btf.field("sock", "sk_protocol").unwrap().size, 2);
    }
}
