//! HTTP/2 framing rules (RFC 9113 sections 4 and 6) that the probes and the decoder both apply.
//!
//! Nothing here crosses the kernel boundary as data: both sides compile these functions. They
//! are `const fn`s without loops, slicing or panics, so the verifier accepts them inlined into
//! the probes. Where the two sides judge frame headers differently (the probes guess where a
//! conversation stands, the decoder follows one it is locked on), the difference is a [`Rules`]
//! value, not a second copy of the rules.

/// What a client sends first (section 3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// SETTINGS_MAX_FRAME_SIZE until a peer raises it (section 6.5.2).
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 16384;

/// Frame types (section 6).
pub mod frame_type {
    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const PRIORITY: u8 = 2;
    pub const RST_STREAM: u8 = 3;
    pub const SETTINGS: u8 = 4;
    pub const PUSH_PROMISE: u8 = 5;
    pub const PING: u8 = 6;
    pub const GOAWAY: u8 = 7;
    pub const WINDOW_UPDATE: u8 = 8;
    pub const CONTINUATION: u8 = 9;
    /// The last registered extension type (PRIORITY_UPDATE, RFC 9218).
    pub const PRIORITY_UPDATE: u8 = 0x10;
}

/// Frame flags (section 6); each is defined for some types only.
pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

use flag::{ACK, END_HEADERS, END_STREAM, PADDED};
use frame_type::*;

/// The 9 bytes before every frame payload (section 4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Payload length (24 bits).
    pub len: u32,
    pub ty: u8,
    pub flags: u8,
    /// Stream id, without the reserved bit.
    pub stream: u32,
    /// The reserved bit, which senders leave clear and receivers ignore.
    pub reserved: bool,
}

/// Which frame headers a check accepts. A receiver must only reject what breaks the rules of
/// section 6 (stream ids, lengths); a header that senders never produce (undefined flags, the
/// reserved bit, an unknown type) is evidence against being at a frame boundary at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    /// Longest payload.
    pub max_len: u32,
    /// The reserved bit must be clear.
    pub reserved_clear: bool,
    /// Types whose flags must all be defined ones (bit n: type n).
    pub defined_flags: u16,
    /// Known types accepted (bit n: type n).
    pub known: u16,
    /// The payload holds the pad length, priority fields and promised stream id that the flags
    /// announce.
    pub payload_fits: bool,
    /// A SETTINGS frame with ACK is empty.
    pub empty_ack: bool,
    /// A HEADERS frame carries some header block.
    pub headers_nonempty: bool,
    /// Unknown types (extensions, section 5.5) accepted: none, or up to a type and a length.
    pub extensions: Extensions,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extensions {
    None,
    UpTo { last_type: u8, max_len: u32 },
}

/// Bit n set for every known type n.
const ALL_KNOWN: u16 = (1 << (CONTINUATION + 1)) - 1;
/// Longer than any frame (the length has 24 bits).
const ANY_LEN: u32 = u32::MAX;

impl Rules {
    /// The probes, at the first bytes of a connection that was open before they attached: a
    /// frame from the middle of a conversation, within the default maximum frame size, with
    /// everything a sender sets right. PUSH_PROMISE never comes unprompted.
    pub const FIRST_FRAME: Rules = Rules {
        max_len: DEFAULT_MAX_FRAME_SIZE,
        reserved_clear: true,
        defined_flags: ALL_KNOWN,
        known: ALL_KNOWN & !(1 << PUSH_PROMISE),
        payload_fits: false,
        empty_ack: true,
        headers_nonempty: true,
        extensions: Extensions::None,
    };

    /// The probes, at the first bytes a server writes: its SETTINGS (the server preface), at
    /// most ten settings.
    pub const SERVER_PREFACE: Rules = Rules {
        max_len: 60,
        known: 1 << SETTINGS,
        empty_ack: false,
        headers_nonempty: false,
        ..Rules::FIRST_FRAME
    };

    /// The probes' frame walk, at each frame header it meets: any length, the flags checked
    /// only where they move bytes (DATA, HEADERS, CONTINUATION), registered extensions allowed.
    /// Garbage stops the walk quickly.
    pub const WALK: Rules = Rules {
        max_len: ANY_LEN,
        reserved_clear: true,
        defined_flags: 1 << DATA | 1 << HEADERS | 1 << CONTINUATION,
        known: ALL_KNOWN,
        payload_fits: false,
        empty_ack: false,
        headers_nonempty: false,
        extensions: Extensions::UpTo {
            last_type: PRIORITY_UPDATE,
            max_len: ANY_LEN,
        },
    };

    /// The decoder, re-locking onto a capture that may start at a frame: everything a sender
    /// sets right, no unknown types.
    pub const RESYNC: Rules = Rules {
        max_len: ANY_LEN,
        reserved_clear: true,
        defined_flags: ALL_KNOWN,
        known: ALL_KNOWN,
        payload_fits: true,
        empty_ack: true,
        headers_nonempty: false,
        extensions: Extensions::None,
    };

    /// The decoder, locked on the frames: what a receiver must tolerate (the reserved bit,
    /// undefined flags, small extension frames). A huge unknown frame means garbage.
    pub const IN_SYNC: Rules = Rules {
        reserved_clear: false,
        defined_flags: 0,
        extensions: Extensions::UpTo {
            last_type: u8::MAX,
            max_len: DEFAULT_MAX_FRAME_SIZE,
        },
        ..Rules::RESYNC
    };

    #[inline(always)]
    const fn knows(self, ty: u8) -> bool {
        self.known & (1 << ty) != 0
    }
}

impl FrameHeader {
    #[inline(always)]
    pub const fn parse(b: &[u8; 9]) -> FrameHeader {
        FrameHeader {
            len: (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32,
            ty: b[3],
            flags: b[4],
            stream: ((b[5] & 0x7f) as u32) << 24
                | (b[6] as u32) << 16
                | (b[7] as u32) << 8
                | b[8] as u32,
            reserved: b[5] & 0x80 != 0,
        }
    }

    /// Whether this header follows `r`. Each arm names its type as a constant, so that with
    /// `r` a constant too the check folds to the comparisons it needs.
    #[inline(always)]
    pub const fn follows(&self, r: Rules) -> bool {
        if (r.reserved_clear && self.reserved) || self.len > r.max_len {
            return false;
        }
        let len = self.len;
        let stream = self.stream != 0;
        let pad = if self.flags & PADDED != 0 { 1 } else { 0 };
        match self.ty {
            DATA => {
                r.knows(DATA)
                    && stream
                    && self.only(r, DATA, END_STREAM | PADDED)
                    && (!r.payload_fits || len >= pad)
            }
            HEADERS => {
                let prio = if self.flags & flag::PRIORITY != 0 {
                    5
                } else {
                    0
                };
                r.knows(HEADERS)
                    && stream
                    && self.only(
                        r,
                        HEADERS,
                        END_STREAM | END_HEADERS | PADDED | flag::PRIORITY,
                    )
                    && (!r.payload_fits || len >= pad + prio)
                    && (!r.headers_nonempty || len > 0)
            }
            PRIORITY => r.knows(PRIORITY) && stream && self.only(r, PRIORITY, 0) && len == 5,
            RST_STREAM => r.knows(RST_STREAM) && stream && self.only(r, RST_STREAM, 0) && len == 4,
            SETTINGS => {
                r.knows(SETTINGS)
                    && !stream
                    && self.only(r, SETTINGS, ACK)
                    && len.is_multiple_of(6)
                    && (!r.empty_ack || self.flags & ACK == 0 || len == 0)
            }
            PUSH_PROMISE => {
                r.knows(PUSH_PROMISE)
                    && stream
                    && self.only(r, PUSH_PROMISE, END_HEADERS | PADDED)
                    && (!r.payload_fits || len >= 4 + pad)
            }
            PING => r.knows(PING) && !stream && self.only(r, PING, ACK) && len == 8,
            GOAWAY => r.knows(GOAWAY) && !stream && self.only(r, GOAWAY, 0) && len >= 8,
            WINDOW_UPDATE => r.knows(WINDOW_UPDATE) && self.only(r, WINDOW_UPDATE, 0) && len == 4,
            CONTINUATION => {
                r.knows(CONTINUATION) && stream && self.only(r, CONTINUATION, END_HEADERS)
            }
            _ => match r.extensions {
                Extensions::None => false,
                Extensions::UpTo { last_type, max_len } => self.ty <= last_type && len <= max_len,
            },
        }
    }

    /// No flag but `defined` is set, if `r` checks the flags of type `ty`.
    #[inline(always)]
    const fn only(&self, r: Rules, ty: u8, defined: u8) -> bool {
        r.defined_flags & (1 << ty) == 0 || self.flags & !defined == 0
    }
}

/// How many payload bytes of an HTTP/2 frame the frame walk copies: all of them but for DATA,
/// of which only the pad length (first byte) of a padded frame. The probes and the decoder
/// both follow this rule, so the decoder knows which bytes a
/// [`crate::data_flags::H2_FRAMES`] payload holds.
#[inline(always)]
pub const fn copied_len(ty: u8, flags: u8, len: u32) -> u32 {
    if ty != DATA {
        len
    } else if flags & PADDED != 0 && len > 0 {
        1
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(len: u32, ty: u8, flags: u8, stream: u32) -> [u8; 9] {
        let l = len.to_be_bytes();
        let s = stream.to_be_bytes();
        [l[1], l[2], l[3], ty, flags, s[0], s[1], s[2], s[3]]
    }

    fn ok(r: Rules, len: u32, ty: u8, flags: u8, stream: u32) -> bool {
        FrameHeader::parse(&hdr(len, ty, flags, stream)).follows(r)
    }

    #[test]
    fn parse_splits_the_fields() {
        let h = FrameHeader::parse(&[0x01, 0x02, 0x03, 4, 0x25, 0x80, 0, 1, 2]);
        assert_eq!(
            h,
            FrameHeader {
                len: 0x010203,
                ty: 4,
                flags: 0x25,
                stream: 0x0102,
                reserved: true,
            }
        );
    }

    /// Rules every check shares: stream ids and fixed lengths of section 6.
    #[test]
    fn stream_ids_and_fixed_lengths() {
        let all = [
            Rules::FIRST_FRAME,
            Rules::WALK,
            Rules::RESYNC,
            Rules::IN_SYNC,
        ];
        for r in all {
            assert!(ok(r, 10, DATA, 0, 1) && !ok(r, 10, DATA, 0, 0));
            assert!(ok(r, 5, PRIORITY, 0, 1) && !ok(r, 4, PRIORITY, 0, 1));
            assert!(!ok(r, 5, PRIORITY, 0, 0));
            assert!(ok(r, 4, RST_STREAM, 0, 1) && !ok(r, 8, RST_STREAM, 0, 1));
            assert!(ok(r, 12, SETTINGS, 0, 0) && !ok(r, 7, SETTINGS, 0, 0));
            assert!(!ok(r, 6, SETTINGS, 0, 3));
            assert!(ok(r, 8, PING, 0, 0) && !ok(r, 7, PING, 0, 0) && !ok(r, 8, PING, 0, 1));
            assert!(ok(r, 8, GOAWAY, 0, 0) && ok(r, 20, GOAWAY, 0, 0));
            assert!(!ok(r, 7, GOAWAY, 0, 0) && !ok(r, 8, GOAWAY, 0, 1));
            assert!(ok(r, 4, WINDOW_UPDATE, 0, 0) && ok(r, 4, WINDOW_UPDATE, 0, 7));
            assert!(!ok(r, 5, WINDOW_UPDATE, 0, 0));
            assert!(ok(r, 3, CONTINUATION, 0, 1) && !ok(r, 3, CONTINUATION, 0, 0));
        }
    }

    #[test]
    fn first_frame_of_a_connection_met_mid_conversation() {
        let r = Rules::FIRST_FRAME;
        assert!(ok(r, 16384, DATA, END_STREAM | PADDED, 1));
        assert!(!ok(r, 16385, DATA, 0, 1));
        assert!(!ok(r, 10, DATA, 0x40, 1));
        assert!(!ok(r, 0, HEADERS, END_HEADERS, 1));
        assert!(ok(r, 1, HEADERS, 0x2d, 1));
        // Padding is not checked against the length.
        assert!(ok(r, 0, DATA, PADDED, 1));
        assert!(!ok(r, 5, PRIORITY, 1, 1));
        assert!(ok(r, 0, SETTINGS, ACK, 0) && !ok(r, 6, SETTINGS, ACK, 0));
        assert!(!ok(r, 0, SETTINGS, 2, 0));
        assert!(ok(r, 8, PING, ACK, 0) && !ok(r, 8, PING, 2, 0));
        assert!(!ok(r, 8, PUSH_PROMISE, END_HEADERS, 1));
        assert!(!ok(r, 4, 0x0a, 0, 0) && !ok(r, 4, 0xff, 0, 0));
        let mut reserved = hdr(10, DATA, 0, 1);
        reserved[5] |= 0x80;
        assert!(!FrameHeader::parse(&reserved).follows(r));
    }

    #[test]
    fn server_preface_is_a_small_settings_frame() {
        let r = Rules::SERVER_PREFACE;
        assert!(ok(r, 0, SETTINGS, 0, 0) && ok(r, 60, SETTINGS, 0, 0));
        assert!(!ok(r, 66, SETTINGS, 0, 0) && !ok(r, 8, SETTINGS, 0, 0));
        // ACK is allowed, and not checked to be empty.
        assert!(ok(r, 6, SETTINGS, ACK, 0));
        assert!(!ok(r, 6, SETTINGS, 2, 0) && !ok(r, 6, SETTINGS, 0, 1));
        assert!(!ok(r, 8, PING, 0, 0) && !ok(r, 4, WINDOW_UPDATE, 0, 0));
    }

    #[test]
    fn walk_follows_any_length_and_registered_extensions() {
        let r = Rules::WALK;
        assert!(ok(r, 0xff_ffff, DATA, 0, 1) && !ok(r, 1, DATA, 0x40, 1));
        assert!(ok(r, 0, HEADERS, END_HEADERS, 1) && !ok(r, 9, HEADERS, 0x02, 1));
        assert!(ok(r, 3, CONTINUATION, END_HEADERS, 1) && !ok(r, 3, CONTINUATION, 1, 1));
        // Other types' flags are not checked, nor padding, nor an ACK's length.
        assert!(ok(r, 5, PRIORITY, 0xff, 1) && ok(r, 8, PING, 0xff, 0));
        assert!(ok(r, 0, DATA, PADDED, 1) && ok(r, 6, SETTINGS, ACK, 0));
        assert!(ok(r, 0, PUSH_PROMISE, 0xff, 1) && !ok(r, 4, PUSH_PROMISE, 0, 0));
        assert!(ok(r, 1 << 20, 0x0a, 0xff, 0) && ok(r, 4, PRIORITY_UPDATE, 0, 0));
        assert!(!ok(r, 4, 0x11, 0, 0));
        let mut reserved = hdr(10, 0x0a, 0, 1);
        reserved[5] |= 0x80;
        assert!(!FrameHeader::parse(&reserved).follows(r));
    }

    #[test]
    fn decoder_in_sync_and_resyncing() {
        let (strict, lenient) = (Rules::RESYNC, Rules::IN_SYNC);
        for r in [strict, lenient] {
            assert!(ok(r, 1 << 20, DATA, 0, 1));
            // The payload must hold what the flags announce.
            assert!(!ok(r, 0, DATA, PADDED, 1) && ok(r, 1, DATA, PADDED, 1));
            assert!(ok(r, 0, HEADERS, END_HEADERS, 1));
            assert!(!ok(r, 5, HEADERS, PADDED | flag::PRIORITY, 1));
            assert!(ok(r, 6, HEADERS, PADDED | flag::PRIORITY, 1));
            assert!(!ok(r, 4, PUSH_PROMISE, PADDED, 1) && ok(r, 5, PUSH_PROMISE, PADDED, 1));
            assert!(ok(r, 0, SETTINGS, ACK, 0) && !ok(r, 6, SETTINGS, ACK, 0));
        }
        // Only the strict rules reject what senders never set.
        assert!(!ok(strict, 1, DATA, 0x40, 1) && ok(lenient, 1, DATA, 0x40, 1));
        assert!(!ok(strict, 5, PRIORITY, 1, 1) && ok(lenient, 5, PRIORITY, 1, 1));
        let mut reserved = hdr(10, DATA, 0, 1);
        reserved[5] |= 0x80;
        let reserved = FrameHeader::parse(&reserved);
        assert!(!reserved.follows(strict) && reserved.follows(lenient));
        // Unknown types: small ones tolerated in sync, none when re-locking.
        assert!(!ok(strict, 3, 0x42, 0, 0));
        assert!(ok(lenient, 16384, 0xff, 0xff, 9) && !ok(lenient, 16385, 0x42, 0, 0));
    }

    #[test]
    fn copied_len_leaves_data_payloads_out() {
        assert_eq!(copied_len(HEADERS, 0, 300), 300);
        assert_eq!(copied_len(DATA, 0, 300), 0);
        assert_eq!(copied_len(DATA, PADDED, 300), 1);
        assert_eq!(copied_len(DATA, PADDED, 0), 0);
        assert_eq!(copied_len(0x42, 0, 7), 7);
    }
}
