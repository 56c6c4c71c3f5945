//! Frames as the decoder reads them: where frames start (to re-lock after lost bytes), the
//! captured payload of the frame being read, and a header block gathered from HEADERS or
//! PUSH_PROMISE and its CONTINUATION frames. The frame header rules are
//! [`tracer_common::h2`]'s, shared with the probes.
use tracer_common::h2::{FrameHeader, PREFACE, Rules};

/// Header block buffer cap; larger blocks are decoded up to here (incomplete).
pub(super) const MAX_BLOCK: usize = 256 * 1024;

/// Whether `data` plausibly starts at an HTTP/2 frame boundary (or with the
/// client preface). Checks up to four consecutive frame headers when the
/// captured bytes contain them.
pub(super) fn looks_like_h2_frames(data: &[u8]) -> bool {
    if data.len() >= 4 && PREFACE.starts_with(&data[..data.len().min(PREFACE.len())]) {
        return true;
    }
    if data.starts_with(PREFACE) {
        return true;
    }
    let mut off = 0usize;
    let mut checked = 0;
    loop {
        let Some(rest) = data.get(off..) else {
            return checked > 0;
        };
        let Some(h) = rest.first_chunk().map(FrameHeader::parse) else {
            return checked > 0;
        };
        if !h.follows(Rules::RESYNC) {
            return false;
        }
        checked += 1;
        if checked >= 4 {
            return true;
        }
        match off.checked_add(9 + h.len as usize) {
            Some(n) if n < data.len() => off = n,
            _ => return true,
        }
    }
}

#[derive(Debug)]
pub(super) struct Frame {
    pub(super) ty: u8,
    pub(super) flags: u8,
    pub(super) sid: u32,
    pub(super) len: u32,
    pub(super) done: u32,
    /// Captured prefix of the payload, at most `cap` bytes.
    pub(super) buf: Vec<u8>,
    pub(super) cap: usize,
    /// A payload byte was not captured: stop buffering to keep `buf` a prefix.
    pub(super) gap: bool,
    pub(super) ts_start: u64,
}

#[derive(Debug)]
pub(super) struct Block {
    pub(super) sid: u32,
    pub(super) end_stream: bool,
    pub(super) push: bool,
    pub(super) buf: Vec<u8>,
    pub(super) cut: bool,
    pub(super) ts_start: u64,
}

impl Block {
    pub(super) fn append(&mut self, frag: &[u8], cut: bool) {
        if self.cut {
            return;
        }
        let room = MAX_BLOCK.saturating_sub(self.buf.len());
        let take = frag.len().min(room);
        self.buf.extend_from_slice(&frag[..take]);
        if cut || take < frag.len() {
            self.cut = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::testkit::{data, frame, get_req, settings};
    use tracer_common::h2::frame_type::{DATA, PING, SETTINGS, WINDOW_UPDATE};

    #[test]
    fn looks_like_frames() {
        assert!(looks_like_h2_frames(&settings(&[(3, 100)])));
        assert!(looks_like_h2_frames(PREFACE));
        assert!(looks_like_h2_frames(&PREFACE[..10]));
        assert!(looks_like_h2_frames(
            &[get_req(1, "/"), data(1, true, 3)].concat()
        ));
        assert!(looks_like_h2_frames(&frame(
            WINDOW_UPDATE,
            0,
            0,
            &[0, 0, 1, 0]
        )));
        assert!(!looks_like_h2_frames(b"GET / HTTP/1.1\r\n"));
        assert!(!looks_like_h2_frames(&frame(SETTINGS, 0, 1, &[])));
        assert!(!looks_like_h2_frames(&frame(PING, 0, 0, &[0; 7])));
        assert!(!looks_like_h2_frames(&frame(DATA, 0, 0, &[0; 7])));
        assert!(!looks_like_h2_frames(&frame(0x0a, 0, 0, &[])));
        assert!(!looks_like_h2_frames(&frame(DATA, 0x40, 1, &[])));
        assert!(!looks_like_h2_frames(&[0, 0, 0, 4]));
        // second frame header broken
        assert!(!looks_like_h2_frames(
            &[settings(&[]), frame(PING, 0, 3, &[0; 8])].concat()
        ));
    }
}
