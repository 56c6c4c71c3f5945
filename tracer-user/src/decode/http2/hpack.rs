//! HPACK (RFC 7541) for a passive observer.
//!
//! * Own HPACK rather than a crate: a passive observer must keep decoding with a
//!   table it no longer trusts (static and literal fields only, dynamic references
//!   reported unknown) and must bound memory per connection; decoders written for
//!   endpoints (h2's is not public API) fail the connection instead.
//! * One HPACK decoder per direction; it is trusted only if it has seen every
//!   header block of its direction since the connection start. Once untrusted
//!   it stays untrusted for the rest of the connection: there is no in-band
//!   signal that proves a table is in sync again, and a stale table could
//!   produce *wrong* values, which is worse than missing ones. What an untrusted
//!   table still knows is its newest entries: those inserted, in order, since it
//!   became untrusted (or since a decoder joined a connection mid-stream). Index
//!   62 + j, for j below their number, is the j-th newest of them or, if the
//!   encoder's table evicted it, a reference no encoder sends; older indices
//!   stay unknown. An insert we could not follow (a literal whose name we do not
//!   know, a block cut short) forgets them all.
//! * `SETTINGS_HEADER_TABLE_SIZE` only bounds dynamic table size updates. We
//!   keep the largest value ever advertised as the bound, because the ordering
//!   of chunks across the two directions is not reliable enough to know when a
//!   lower value took effect. Tables larger than 64 KiB are capped in memory;
//!   references to entries we evicted early become "unknown", never wrong.
use std::{borrow::Cow, collections::VecDeque, sync::OnceLock};

/// Hard memory cap for one dynamic table.
const MAX_TABLE: usize = 64 * 1024;

/// Decoded name+value bytes one header block may produce. Indexed references
/// to big table entries could otherwise expand 256 KiB into gigabytes of
/// copying; real servers reject such header lists too.
const MAX_BLOCK_WORK: usize = 4 * 1024 * 1024;

/// RFC 7541 Appendix A.
const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// RFC 7541 Appendix B: (bit length, code right-aligned); index 256 is EOS.
#[rustfmt::skip]
pub(in crate::decode) const HUFFMAN: [(u8, u32); 257] = [
    (13, 0x1ff8), (23, 0x7fffd8), (28, 0xfffffe2), (28, 0xfffffe3),
    (28, 0xfffffe4), (28, 0xfffffe5), (28, 0xfffffe6), (28, 0xfffffe7),
    (28, 0xfffffe8), (24, 0xffffea), (30, 0x3ffffffc), (28, 0xfffffe9),
    (28, 0xfffffea), (30, 0x3ffffffd), (28, 0xfffffeb), (28, 0xfffffec),
    (28, 0xfffffed), (28, 0xfffffee), (28, 0xfffffef), (28, 0xffffff0),
    (28, 0xffffff1), (28, 0xffffff2), (30, 0x3ffffffe), (28, 0xffffff3),
    (28, 0xffffff4), (28, 0xffffff5), (28, 0xffffff6), (28, 0xffffff7),
    (28, 0xffffff8), (28, 0xffffff9), (28, 0xffffffa), (28, 0xffffffb),
    // 32 ' '
    (6, 0x14), (10, 0x3f8), (10, 0x3f9), (12, 0xffa),
    (13, 0x1ff9), (6, 0x15), (8, 0xf8), (11, 0x7fa),
    (10, 0x3fa), (10, 0x3fb), (8, 0xf9), (11, 0x7fb),
    (8, 0xfa), (6, 0x16), (6, 0x17), (6, 0x18),
    // 48 '0'
    (5, 0x0), (5, 0x1), (5, 0x2), (6, 0x19),
    (6, 0x1a), (6, 0x1b), (6, 0x1c), (6, 0x1d),
    (6, 0x1e), (6, 0x1f), (7, 0x5c), (8, 0xfb),
    (15, 0x7ffc), (6, 0x20), (12, 0xffb), (10, 0x3fc),
    // 64 '@'
    (13, 0x1ffa), (6, 0x21), (7, 0x5d), (7, 0x5e),
    (7, 0x5f), (7, 0x60), (7, 0x61), (7, 0x62),
    (7, 0x63), (7, 0x64), (7, 0x65), (7, 0x66),
    (7, 0x67), (7, 0x68), (7, 0x69), (7, 0x6a),
    // 80 'P'
    (7, 0x6b), (7, 0x6c), (7, 0x6d), (7, 0x6e),
    (7, 0x6f), (7, 0x70), (7, 0x71), (7, 0x72),
    (8, 0xfc), (7, 0x73), (8, 0xfd), (13, 0x1ffb),
    (19, 0x7fff0), (13, 0x1ffc), (14, 0x3ffc), (6, 0x22),
    // 96 '`'
    (15, 0x7ffd), (5, 0x3), (6, 0x23), (5, 0x4),
    (6, 0x24), (5, 0x5), (6, 0x25), (6, 0x26),
    (6, 0x27), (5, 0x6), (7, 0x74), (7, 0x75),
    (6, 0x28), (6, 0x29), (6, 0x2a), (5, 0x7),
    // 112 'p'
    (6, 0x2b), (7, 0x76), (6, 0x2c), (5, 0x8),
    (5, 0x9), (6, 0x2d), (7, 0x77), (7, 0x78),
    (7, 0x79), (7, 0x7a), (7, 0x7b), (15, 0x7ffe),
    (11, 0x7fc), (14, 0x3ffd), (13, 0x1ffd), (28, 0xffffffc),
    // 128
    (20, 0xfffe6), (22, 0x3fffd2), (20, 0xfffe7), (20, 0xfffe8),
    (22, 0x3fffd3), (22, 0x3fffd4), (22, 0x3fffd5), (23, 0x7fffd9),
    (22, 0x3fffd6), (23, 0x7fffda), (23, 0x7fffdb), (23, 0x7fffdc),
    (23, 0x7fffdd), (23, 0x7fffde), (24, 0xffffeb), (23, 0x7fffdf),
    // 144
    (24, 0xffffec), (24, 0xffffed), (22, 0x3fffd7), (23, 0x7fffe0),
    (24, 0xffffee), (23, 0x7fffe1), (23, 0x7fffe2), (23, 0x7fffe3),
    (23, 0x7fffe4), (21, 0x1fffdc), (22, 0x3fffd8), (23, 0x7fffe5),
    (22, 0x3fffd9), (23, 0x7fffe6), (23, 0x7fffe7), (24, 0xffffef),
    // 160
    (22, 0x3fffda), (21, 0x1fffdd), (20, 0xfffe9), (22, 0x3fffdb),
    (22, 0x3fffdc), (23, 0x7fffe8), (23, 0x7fffe9), (21, 0x1fffde),
    (23, 0x7fffea), (22, 0x3fffdd), (22, 0x3fffde), (24, 0xfffff0),
    (21, 0x1fffdf), (22, 0x3fffdf), (23, 0x7fffeb), (23, 0x7fffec),
    // 176
    (21, 0x1fffe0), (21, 0x1fffe1), (22, 0x3fffe0), (21, 0x1fffe2),
    (23, 0x7fffed), (22, 0x3fffe1), (23, 0x7fffee), (23, 0x7fffef),
    (20, 0xfffea), (22, 0x3fffe2), (22, 0x3fffe3), (22, 0x3fffe4),
    (23, 0x7ffff0), (22, 0x3fffe5), (22, 0x3fffe6), (23, 0x7ffff1),
    // 192
    (26, 0x3ffffe0), (26, 0x3ffffe1), (20, 0xfffeb), (19, 0x7fff1),
    (22, 0x3fffe7), (23, 0x7ffff2), (22, 0x3fffe8), (25, 0x1ffffec),
    (26, 0x3ffffe2), (26, 0x3ffffe3), (26, 0x3ffffe4), (27, 0x7ffffde),
    (27, 0x7ffffdf), (26, 0x3ffffe5), (24, 0xfffff1), (25, 0x1ffffed),
    // 208
    (19, 0x7fff2), (21, 0x1fffe3), (26, 0x3ffffe6), (27, 0x7ffffe0),
    (27, 0x7ffffe1), (26, 0x3ffffe7), (27, 0x7ffffe2), (24, 0xfffff2),
    (21, 0x1fffe4), (21, 0x1fffe5), (26, 0x3ffffe8), (26, 0x3ffffe9),
    (28, 0xffffffd), (27, 0x7ffffe3), (27, 0x7ffffe4), (27, 0x7ffffe5),
    // 224
    (20, 0xfffec), (24, 0xfffff3), (20, 0xfffed), (21, 0x1fffe6),
    (22, 0x3fffe9), (21, 0x1fffe7), (21, 0x1fffe8), (23, 0x7ffff3),
    (22, 0x3fffea), (22, 0x3fffeb), (25, 0x1ffffee), (25, 0x1ffffef),
    (24, 0xfffff4), (24, 0xfffff5), (26, 0x3ffffea), (23, 0x7ffff4),
    // 240
    (26, 0x3ffffeb), (27, 0x7ffffe6), (26, 0x3ffffec), (26, 0x3ffffed),
    (27, 0x7ffffe7), (27, 0x7ffffe8), (27, 0x7ffffe9), (27, 0x7ffffea),
    (27, 0x7ffffeb), (28, 0xffffffe), (27, 0x7ffffec), (27, 0x7ffffed),
    (27, 0x7ffffee), (27, 0x7ffffef), (27, 0x7fffff0), (26, 0x3ffffee),
    // 256 EOS
    (30, 0x3fffffff),
];

const LEAF: u32 = 1 << 31;

/// Binary decode tree built once from `HUFFMAN`. Child value 0 means "absent"
/// (the root is never a child); `LEAF | sym` marks a symbol.
fn huffman_tree() -> &'static [[u32; 2]] {
    static TREE: OnceLock<Vec<[u32; 2]>> = OnceLock::new();
    TREE.get_or_init(|| {
        let mut nodes: Vec<[u32; 2]> = vec![[0, 0]];
        for (sym, &(len, code)) in HUFFMAN.iter().enumerate() {
            let mut n = 0usize;
            for i in (0..u32::from(len)).rev() {
                let bit = ((code >> i) & 1) as usize;
                let child = nodes[n][bit];
                if i == 0 {
                    nodes[n][bit] = LEAF | sym as u32;
                } else if child == 0 {
                    nodes.push([0, 0]);
                    let new = (nodes.len() - 1) as u32;
                    nodes[n][bit] = new;
                    n = new as usize;
                } else if child & LEAF != 0 {
                    break; // would mean a broken table; the canonical-code test guards it
                } else {
                    n = child as usize;
                }
            }
        }
        nodes
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HErr {
    /// Ran out of bytes: fine if the block was cut short, an error otherwise.
    Truncated,
    Invalid,
}

fn huffman_decode(src: &[u8]) -> Result<Vec<u8>, HErr> {
    let tree = huffman_tree();
    let mut out = Vec::with_capacity(src.len().saturating_mul(8) / 5 + 1);
    let mut node = 0usize;
    let mut depth = 0u32;
    let mut all_ones = true;
    for &byte in src {
        for i in (0..8).rev() {
            let bit = (byte >> i) & 1;
            let next = tree.get(node).ok_or(HErr::Invalid)?[bit as usize];
            depth += 1;
            all_ones &= bit == 1;
            if next == 0 {
                return Err(HErr::Invalid);
            }
            if next & LEAF != 0 {
                let sym = next & !LEAF;
                if sym == 256 {
                    return Err(HErr::Invalid); // EOS inside a string is an error (5.2)
                }
                out.push(sym as u8);
                node = 0;
                depth = 0;
                all_ones = true;
            } else {
                node = next as usize;
            }
        }
    }
    // Padding must be a prefix of EOS (all ones) and shorter than a byte.
    if depth > 7 || !all_ones {
        return Err(HErr::Invalid);
    }
    Ok(out)
}

/// RFC 7541 5.1. Values above u32::MAX are rejected: no sane header needs them
/// and it bounds the loop.
fn decode_int(buf: &[u8], pos: &mut usize, prefix: u8) -> Result<u32, HErr> {
    let prefix = prefix.clamp(1, 8);
    let mask = ((1u16 << prefix) - 1) as u8;
    let first = *buf.get(*pos).ok_or(HErr::Truncated)?;
    let mut value = u64::from(first & mask);
    let mut p = pos.checked_add(1).ok_or(HErr::Invalid)?;
    if value < u64::from(mask) {
        *pos = p;
        return Ok(value as u32);
    }
    let mut shift = 0u32;
    loop {
        let b = *buf.get(p).ok_or(HErr::Truncated)?;
        p += 1;
        if shift > 28 {
            return Err(HErr::Invalid);
        }
        value += u64::from(b & 0x7f) << shift;
        if value > u64::from(u32::MAX) {
            return Err(HErr::Invalid);
        }
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    *pos = p;
    Ok(value as u32)
}

/// A string literal: borrowed from the block unless Huffman-coded.
fn decode_str<'a>(buf: &'a [u8], pos: &mut usize) -> Result<Cow<'a, str>, HErr> {
    let huff = buf.get(*pos).ok_or(HErr::Truncated)? & 0x80 != 0;
    let len = decode_int(buf, pos, 7)? as usize;
    let end = pos.checked_add(len).ok_or(HErr::Invalid)?;
    let raw = buf.get(*pos..end).ok_or(HErr::Truncated)?;
    *pos = end;
    // Non-UTF-8 octets (obs-text) become U+FFFD rather than failing the block.
    Ok(if huff {
        match String::from_utf8(huffman_decode(raw)?) {
            Ok(s) => Cow::Owned(s),
            Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
        }
    } else {
        match std::str::from_utf8(raw) {
            Ok(s) => Cow::Borrowed(s),
            Err(_) => String::from_utf8_lossy(raw),
        }
    })
}

enum Look<'a> {
    Known(&'a str, &'a str),
    /// A dynamic entry we cannot see (untrusted or capped table).
    Unknown,
    Invalid,
}

#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BlockRes {
    /// Some field was skipped or the block was cut: fields may be missing.
    pub(super) skipped: bool,
    pub(super) error: bool,
}

#[derive(Debug)]
pub(super) struct Hpack {
    /// Front is the newest entry (index 62).
    entries: VecDeque<(String, String)>,
    size: usize,
    max_size: usize,
    /// Largest SETTINGS_HEADER_TABLE_SIZE the decoding side ever advertised.
    bound: usize,
    pub(super) trusted: bool,
    /// Untrusted: how many of the front entries were inserted, in order, since the
    /// table became untrusted (see the module's notes).
    known: usize,
    /// The encoder's table is larger than we keep: missing entries are unknown.
    capped: bool,
    /// Decoded bytes in the current block (see `MAX_BLOCK_WORK`).
    work: usize,
}

impl Hpack {
    pub(super) fn new() -> Self {
        Hpack {
            entries: VecDeque::new(),
            size: 0,
            max_size: 4096,
            bound: 4096,
            trusted: true,
            known: 0,
            capped: false,
            work: 0,
        }
    }

    pub(super) fn untrusted() -> Self {
        let mut h = Hpack::new();
        h.distrust();
        // The peer may have raised the bound before we attached.
        h.bound = usize::MAX;
        h
    }

    /// From now on only entries inserted after this call are looked up.
    pub(super) fn distrust(&mut self) {
        self.trusted = false;
        self.known = 0;
    }

    pub(super) fn raise_bound(&mut self, v: usize) {
        self.bound = self.bound.max(v);
    }

    fn lookup(&self, idx: usize) -> Look<'_> {
        if idx == 0 {
            return Look::Invalid;
        }
        if let Some(&(n, v)) = STATIC_TABLE.get(idx - 1) {
            return Look::Known(n, v);
        }
        if !self.trusted {
            return match self.entries.get(idx - 62) {
                Some((n, v)) if idx - 62 < self.known => Look::Known(n, v),
                _ => Look::Unknown,
            };
        }
        match self.entries.get(idx - 62) {
            Some((n, v)) => Look::Known(n, v),
            None if self.capped => Look::Unknown,
            None => Look::Invalid,
        }
    }

    fn evict_to(&mut self, limit: usize) {
        while self.size > limit {
            match self.entries.pop_back() {
                Some((n, v)) => self.size = self.size.saturating_sub(n.len() + v.len() + 32),
                None => {
                    self.size = 0;
                    break;
                }
            }
        }
        self.known = self.known.min(self.entries.len());
    }

    fn insert(&mut self, name: String, value: String) {
        let sz = name.len().saturating_add(value.len()).saturating_add(32);
        if sz > self.max_size {
            // 4.4: an entry larger than the table empties it.
            self.entries.clear();
            self.size = 0;
            self.known = 0;
            return;
        }
        self.evict_to(self.max_size - sz);
        self.entries.push_front((name, value));
        self.size += sz;
        if !self.trusted {
            self.known += 1;
        }
    }

    fn set_max(&mut self, v: usize) -> Result<(), HErr> {
        if v > self.bound {
            return Err(HErr::Invalid);
        }
        if v > MAX_TABLE {
            self.capped = true;
        }
        self.max_size = v.min(MAX_TABLE);
        self.evict_to(self.max_size);
        Ok(())
    }

    /// Decode one header block. `cut` means the block is only a prefix of the
    /// real one; afterwards the table cannot be trusted.
    pub(super) fn decode_block(
        &mut self,
        b: &[u8],
        cut: bool,
        f: &mut dyn FnMut(&str, &str),
    ) -> BlockRes {
        let mut r = BlockRes::default();
        let mut pos = 0usize;
        self.work = 0;
        while pos < b.len() {
            if self.work > MAX_BLOCK_WORK {
                // Stop early: the rest of the block (and its inserts) is lost.
                r.skipped = true;
                self.distrust();
                break;
            }
            match self.one(b, &mut pos, f) {
                Ok(skipped) => r.skipped |= skipped,
                Err(HErr::Truncated) if cut => break,
                Err(_) => {
                    r.error = true;
                    break;
                }
            }
        }
        if cut {
            r.skipped = true;
        }
        if r.error || cut {
            self.distrust();
        }
        r
    }

    /// One representation; Ok(true) when the field had to be skipped.
    fn one(
        &mut self,
        b: &[u8],
        pos: &mut usize,
        f: &mut dyn FnMut(&str, &str),
    ) -> Result<bool, HErr> {
        let first = *b.get(*pos).ok_or(HErr::Truncated)?;
        if first & 0x80 != 0 {
            let i = decode_int(b, pos, 7)? as usize;
            let added = match self.lookup(i) {
                Look::Known(n, v) => {
                    f(n, v);
                    n.len() + v.len()
                }
                Look::Unknown => return Ok(true),
                Look::Invalid => return Err(HErr::Invalid),
            };
            self.work = self.work.saturating_add(added);
            Ok(false)
        } else if first & 0x40 != 0 {
            self.literal(b, pos, 6, true, f)
        } else if first & 0x20 != 0 {
            let v = decode_int(b, pos, 5)? as usize;
            self.set_max(v)?;
            Ok(false)
        } else {
            // 0000 (without indexing) and 0001 (never indexed) share a layout.
            self.literal(b, pos, 4, false, f)
        }
    }

    fn literal(
        &mut self,
        b: &[u8],
        pos: &mut usize,
        prefix: u8,
        index: bool,
        f: &mut dyn FnMut(&str, &str),
    ) -> Result<bool, HErr> {
        let i = decode_int(b, pos, prefix)? as usize;
        // Name and value are copied only when the field goes into the table.
        let name = if i == 0 {
            Some(decode_str(b, pos)?)
        } else {
            match self.lookup(i) {
                Look::Known(n, _) => Some(Cow::Borrowed(n)),
                Look::Unknown => None,
                Look::Invalid => return Err(HErr::Invalid),
            }
        };
        let value = decode_str(b, pos)?;
        let added = name.as_ref().map_or(0, |n| n.len()) + value.len();
        let Some(name) = name else {
            self.work = self.work.saturating_add(added);
            if index {
                // The encoder's table has a new front entry we cannot hold.
                self.known = 0;
            }
            return Ok(true);
        };
        f(&name, &value);
        // Untrusted tables keep inserting so memory accounting evolves,
        // but lookups never consult them again.
        let entry = index.then(|| (name.into_owned(), value.into_owned()));
        self.work = self.work.saturating_add(added);
        if let Some((n, v)) = entry {
            self.insert(n, v);
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::testkit::{H, block, enc_int, huff_enc};

    fn hex(s: &str) -> Vec<u8> {
        let c: Vec<u8> = s.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
        c.chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect()
    }

    fn hl(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn dec(h: &mut Hpack, b: &[u8]) -> Vec<(String, String)> {
        let mut v = Vec::new();
        let r = h.decode_block(b, false, &mut |n, x| v.push((n.to_string(), x.to_string())));
        assert_eq!(r, BlockRes::default());
        v
    }

    fn table(h: &Hpack) -> Vec<(String, String)> {
        h.entries.iter().cloned().collect()
    }

    #[test]
    fn huffman_table_is_canonical() {
        // RFC 7541's code is canonical: sorted by (length, symbol) the codes
        // are consecutive. This catches any transcription error in HUFFMAN.
        let mut syms: Vec<usize> = (0..257).collect();
        syms.sort_by_key(|&s| (HUFFMAN[s].0, s));
        let (mut code, mut len) = (0u64, HUFFMAN[syms[0]].0);
        assert_eq!(HUFFMAN[syms[0]], (5, 0));
        for &s in &syms[1..] {
            let (l, c) = HUFFMAN[s];
            code = (code + 1) << (l - len);
            len = l;
            assert_eq!(u64::from(c), code, "symbol {s}");
        }
        assert_eq!(HUFFMAN[256], (30, 0x3fff_ffff));
        // Round trip of every byte value.
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(huffman_decode(&huff_enc(&all)).unwrap(), all);
    }

    #[test]
    fn huffman_errors() {
        assert_eq!(huffman_decode(&[0x07]).unwrap(), b"0"); // '0' + 3 padding ones
        assert_eq!(huffman_decode(&[0x00]), Err(HErr::Invalid)); // zero padding
        assert_eq!(huffman_decode(&[0x07, 0xff]), Err(HErr::Invalid)); // 11 bits padding
        assert_eq!(
            huffman_decode(&[0xff, 0xff, 0xff, 0xff]),
            Err(HErr::Invalid)
        ); // EOS
        assert_eq!(huffman_decode(&[]).unwrap(), b"");
    }

    #[test]
    fn integer_edge_cases() {
        let d = |b: &[u8], p: u8| {
            let mut pos = 0;
            decode_int(b, &mut pos, p).map(|v| (v, pos))
        };
        // RFC 7541 C.1
        assert_eq!(d(&[0b0000_1010], 5), Ok((10, 1)));
        assert_eq!(d(&[0x1f, 0x9a, 0x0a], 5), Ok((1337, 3)));
        assert_eq!(d(&[42], 8), Ok((42, 1)));
        // prefix boundary: exactly 2^N-1 needs a zero continuation byte
        assert_eq!(d(&[0x1f, 0x00], 5), Ok((31, 2)));
        assert_eq!(d(&[0xff, 0x00], 8), Ok((255, 2)));
        assert_eq!(d(&[0x01, 0x00], 1), Ok((1, 2)));
        assert_eq!(d(&[0x00], 1), Ok((0, 1)));
        // flag bits above the prefix are ignored
        assert_eq!(d(&[0xe5], 5), Ok((5, 1)));
        // truncated
        assert_eq!(d(&[], 5), Err(HErr::Truncated));
        assert_eq!(d(&[0x1f], 5), Err(HErr::Truncated));
        assert_eq!(d(&[0x1f, 0x80, 0x80], 5), Err(HErr::Truncated));
        // u32::MAX is fine, one more overflows
        let mut b = Vec::new();
        enc_int(&mut b, 0, 7, u32::MAX as usize);
        assert_eq!(d(&b, 7), Ok((u32::MAX, b.len())));
        let mut b = Vec::new();
        enc_int(&mut b, 0, 7, u32::MAX as usize + 1);
        assert_eq!(d(&b, 7), Err(HErr::Invalid));
        // endless continuation
        assert_eq!(
            d(&[0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], 7),
            Err(HErr::Invalid)
        );
        // round trips for every prefix
        for p in 1..=8u8 {
            for v in [
                0usize,
                1,
                2,
                30,
                31,
                127,
                128,
                255,
                256,
                1337,
                65535,
                1 << 20,
            ] {
                let mut b = Vec::new();
                enc_int(&mut b, 0, p, v);
                assert_eq!(d(&b, p), Ok((v as u32, b.len())), "p={p} v={v}");
            }
        }
    }

    #[test]
    fn hpack_c2() {
        let mut h = Hpack::new();
        let b = hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572");
        assert_eq!(dec(&mut h, &b), hl(&[("custom-key", "custom-header")]));
        assert_eq!(h.size, 55);
        let mut h = Hpack::new();
        assert_eq!(
            dec(&mut h, &hex("040c 2f73 616d 706c 652f 7061 7468")),
            hl(&[(":path", "/sample/path")])
        );
        assert_eq!(h.size, 0);
        assert_eq!(
            dec(&mut h, &hex("1008 7061 7373 776f 7264 0673 6563 7265 74")),
            hl(&[("password", "secret")])
        );
        assert_eq!(h.size, 0);
        assert_eq!(dec(&mut h, &hex("82")), hl(&[(":method", "GET")]));
        assert_eq!(h.size, 0);
    }

    fn c3_c4(blocks: [&str; 3]) {
        let mut h = Hpack::new();
        let r1 = hl(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
        ]);
        assert_eq!(dec(&mut h, &hex(blocks[0])), r1);
        assert_eq!(h.size, 57);
        let mut r2 = r1.clone();
        r2.push(("cache-control".into(), "no-cache".into()));
        assert_eq!(dec(&mut h, &hex(blocks[1])), r2);
        assert_eq!(h.size, 110);
        let r3 = hl(&[
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/index.html"),
            (":authority", "www.example.com"),
            ("custom-key", "custom-value"),
        ]);
        assert_eq!(dec(&mut h, &hex(blocks[2])), r3);
        assert_eq!(h.size, 164);
        assert_eq!(
            table(&h),
            hl(&[
                ("custom-key", "custom-value"),
                ("cache-control", "no-cache"),
                (":authority", "www.example.com")
            ])
        );
    }

    #[test]
    fn hpack_c3_requests_plain() {
        c3_c4([
            "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
            "8286 84be 5808 6e6f 2d63 6163 6865",
            "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
        ]);
    }

    #[test]
    fn hpack_c4_requests_huffman() {
        c3_c4([
            "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
            "8286 84be 5886 a8eb 1064 9cbf",
            "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
        ]);
    }

    fn c5_c6(blocks: [&str; 3]) {
        let mut h = Hpack::new();
        h.max_size = 256;
        let date1 = "Mon, 21 Oct 2013 20:13:21 GMT";
        let loc = "https://www.example.com";
        let r1 = hl(&[
            (":status", "302"),
            ("cache-control", "private"),
            ("date", date1),
            ("location", loc),
        ]);
        assert_eq!(dec(&mut h, &hex(blocks[0])), r1);
        assert_eq!(h.size, 222);
        let r2 = hl(&[
            (":status", "307"),
            ("cache-control", "private"),
            ("date", date1),
            ("location", loc),
        ]);
        assert_eq!(dec(&mut h, &hex(blocks[1])), r2);
        assert_eq!(h.size, 222);
        assert_eq!(
            table(&h),
            hl(&[
                (":status", "307"),
                ("location", loc),
                ("date", date1),
                ("cache-control", "private")
            ])
        );
        let cookie = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";
        let date2 = "Mon, 21 Oct 2013 20:13:22 GMT";
        let r3 = hl(&[
            (":status", "200"),
            ("cache-control", "private"),
            ("date", date2),
            ("location", loc),
            ("content-encoding", "gzip"),
            ("set-cookie", cookie),
        ]);
        assert_eq!(dec(&mut h, &hex(blocks[2])), r3);
        assert_eq!(h.size, 215);
        assert_eq!(
            table(&h),
            hl(&[
                ("set-cookie", cookie),
                ("content-encoding", "gzip"),
                ("date", date2)
            ])
        );
    }

    #[test]
    fn hpack_c5_responses_plain_with_eviction() {
        c5_c6([
            "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
            "4803 3330 37c1 c0bf",
            "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d 54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31",
        ]);
    }

    #[test]
    fn hpack_c6_responses_huffman_with_eviction() {
        c5_c6([
            "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
            "4883 640e ffc1 c0bf",
            "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
        ]);
    }

    #[test]
    fn hpack_size_update_and_errors() {
        let mut h = Hpack::new();
        dec(&mut h, &block(&[H::Inc("a", "b")], false));
        assert_eq!(h.size, 34);
        // size update to 0 evicts everything; then back to 4096
        dec(
            &mut h,
            &block(&[H::Size(0), H::Size(4096), H::Idx(2)], false),
        );
        assert!(h.entries.is_empty());
        // above the SETTINGS bound: error, untrusted
        let r = h.decode_block(&block(&[H::Size(5000)], false), false, &mut |_, _| {});
        assert!(r.error && !h.trusted);
        // index past the table in trusted mode is an error
        let mut h = Hpack::new();
        let r = h.decode_block(&block(&[H::Idx(62)], false), false, &mut |_, _| {});
        assert!(r.error);
        // index 0 is an error
        let mut h = Hpack::new();
        assert!(h.decode_block(&[0x80], false, &mut |_, _| {}).error);
        // truncated without `cut` is an error; with `cut` it is just incomplete
        let mut h = Hpack::new();
        let b = block(&[H::Idx(2), H::IncN(4, "/long/path")], false);
        let mut got = Vec::new();
        let r = h.decode_block(&b[..5], true, &mut |n, v| {
            got.push((n.to_string(), v.to_string()))
        });
        assert_eq!(
            r,
            BlockRes {
                skipped: true,
                error: false
            }
        );
        assert_eq!(got, hl(&[(":method", "GET")]));
        let mut h = Hpack::new();
        assert!(h.decode_block(&b[..5], false, &mut |_, _| {}).error);
        // an entry larger than the table empties it
        let mut h = Hpack::new();
        h.max_size = 40;
        dec(
            &mut h,
            &block(&[H::Inc("a", "b"), H::Inc("big", "0123456789")], false),
        );
        assert!(h.entries.is_empty() && h.size == 0);
    }

    #[test]
    fn hpack_expansion_is_bounded() {
        let mut h = Hpack::new();
        h.max_size = MAX_TABLE;
        h.bound = MAX_TABLE;
        let big = "v".repeat(60_000);
        let mut b = block(&[H::Size(MAX_TABLE), H::Inc("x-big", &big)], false);
        b.extend(std::iter::repeat_n(0xbe, 200_000)); // index 62, 200k times
        let mut n = 0usize;
        let r = h.decode_block(&b, false, &mut |_, _| n += 1);
        assert_eq!(
            r,
            BlockRes {
                skipped: true,
                error: false
            }
        );
        assert!(n < 100 && !h.trusted);
    }

    #[test]
    fn hpack_untrusted_skips_dynamic_refs() {
        let mut h = Hpack::untrusted();
        let mut got = Vec::new();
        let b = block(
            &[
                H::Idx(2),
                H::Idx(62),
                H::NoN(63, "x"),
                H::IncN(4, "/p"),
                H::Inc("k", "v"),
                H::Idx(62),
            ],
            false,
        );
        let r = h.decode_block(&b, false, &mut |n, v| {
            got.push((n.to_string(), v.to_string()))
        });
        assert_eq!(
            r,
            BlockRes {
                skipped: true,
                error: false
            }
        );
        // The last reference is to the entry inserted just before it: known.
        assert_eq!(
            got,
            hl(&[(":method", "GET"), (":path", "/p"), ("k", "v"), ("k", "v")])
        );
    }

    /// Joined mid-stream: the entries inserted since are the newest of the encoder's table,
    /// so references to them decode; one index past them is older state, unknown.
    #[test]
    fn an_untrusted_table_knows_the_entries_inserted_since() {
        let mut h = Hpack::untrusted();
        let mut got = Vec::new();
        let run = |h: &mut Hpack, fields: &[H], got: &mut Vec<(String, String)>| {
            let b = block(fields, false);
            h.decode_block(&b, false, &mut |n, v| {
                got.push((n.to_string(), v.to_string()))
            })
        };
        let r = run(&mut h, &[H::Inc("x-a", "1"), H::IncN(4, "/two")], &mut got);
        assert!(!r.skipped && !r.error);
        // 62 is /two, 63 x-a, 64 from before the join.
        got.clear();
        let r = run(&mut h, &[H::Idx(62), H::Idx(63), H::Idx(64)], &mut got);
        assert_eq!(got, hl(&[(":path", "/two"), ("x-a", "1")]));
        assert!(r.skipped && !r.error, "64 is unknown, not invalid: {r:?}");
        // An insert whose name we cannot see shifts the encoder's table under ours.
        got.clear();
        run(&mut h, &[H::IncN(70, "v")], &mut got);
        let r = run(&mut h, &[H::Idx(62), H::Idx(63)], &mut got);
        assert!(got.is_empty() && r.skipped, "{got:?}");
        // Inserts after that are known again.
        run(&mut h, &[H::Inc("x-b", "2")], &mut got);
        got.clear();
        run(&mut h, &[H::Idx(62), H::Idx(63)], &mut got);
        assert_eq!(got, hl(&[("x-b", "2")]));
        // A block cut short may have lost inserts: nothing is known after it.
        run(&mut h, &[H::Inc("x-c", "3")], &mut got);
        let cut = block(&[H::Inc("x-d", "4"), H::Inc("x-e", "5")], false);
        h.decode_block(&cut[..cut.len() - 2], true, &mut |_, _| {});
        got.clear();
        run(&mut h, &[H::Idx(62)], &mut got);
        assert!(got.is_empty(), "{got:?}");
    }

    /// A table trusted from the start that loses its way keeps nothing from before.
    #[test]
    fn a_table_distrusted_later_forgets_its_old_entries() {
        let mut h = Hpack::new();
        dec(&mut h, &block(&[H::Inc("old", "1")], false));
        h.distrust();
        let mut got = Vec::new();
        let r = h.decode_block(&block(&[H::Idx(62)], false), false, &mut |n, v| {
            got.push((n.to_string(), v.to_string()))
        });
        assert!(got.is_empty() && r.skipped && !r.error, "{got:?}");
        let both = dec(&mut h, &block(&[H::Inc("new", "2"), H::Idx(62)], false));
        assert_eq!(both, hl(&[("new", "2"), ("new", "2")]));
    }
}
