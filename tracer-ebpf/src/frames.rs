//! HTTP/2 frame walk: what the probes copy of an HTTP/2 connection.
//!
//! A prefix copy loses frames: a server that answers ten streams in one write puts most frame
//! headers past any prefix. So for each direction of an HTTP/2 connection the probes follow
//! the frames across syscalls (`H2Walk` in the connection map) and copy the byte stream with
//! the payload of DATA frames left out: frame headers and header blocks, however large the
//! bodies between them. The decoder knows from each frame header which bytes follow it
//! (`tracer_common::h2::copied_len`). A direction is walked from a syscall that starts at a
//! frame boundary (the client preface, or a plausible frame header) until bytes that are not a
//! frame header show up; then it is copied as a prefix again.
use aya_ebpf::helpers::generated;
use core::ffi::c_void;
use tracer_common::{
    H2Walk, MAX_IOV, NO_FRAME, counter, data_flags,
    h2::{self, FrameHeader, Rules},
    syscall,
};

use crate::{
    capture::{clamp, copy_user, first_buf, read_user},
    maps::{SCRATCH, SyscallArgs, WALK, count},
};

/// Steps one walk may take (a step: one frame header, one payload piece, or one iovec).
/// A syscall with more frames than half of this stops being walked.
const MAX_STEPS: u32 = 8192;

/// Where a walked syscall's payload stands: see `DataEvent`.
pub struct Placed {
    pub captured: u64,
    pub flags: u8,
    pub frame_at: u32,
    pub frame_at_captured: u32,
}

/// The walk of one syscall, shared with the `bpf_loop` callback. It lives in a per-CPU map,
/// not on the stack: the verifier does not follow values in map memory, so it checks the
/// callback once instead of once per combination of known field values.
#[repr(C)]
pub struct Walk {
    /// iovec array of a vectored syscall, 0 for a flat buffer (then all of it is in `seg`).
    iov: u64,
    iovcnt: u64,
    next_iov: u64,
    /// User address and length of what is left of the current buffer.
    seg: u64,
    seg_left: u64,
    /// Bytes of the syscall not walked yet, and walked so far.
    left: u64,
    walked: u64,
    /// Payload bytes copied, and the budget.
    captured: u64,
    want: u64,
    frame_at: u64,
    frame_at_captured: u64,
    /// The frame being walked (as in `H2Walk`).
    rem: u64,
    copy: u64,
    hdr_have: u64,
    /// Non-zero when bytes that are not a frame header stopped the walk.
    lost: u64,
    hdr: [u8; 16],
}

/// Copies `n` bytes at user address `src` into the payload, within the budget.
#[inline(always)]
fn put(w: &mut Walk, src: u64, n: u64) {
    if w.captured >= w.want {
        return;
    }
    let Some(rec) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch, not shared with a concurrent run on this CPU.
    let payload = unsafe { (*rec).payload.as_mut_ptr() };
    let m = clamp(n, w.want - w.captured);
    if copy_user(payload, w.captured, src, m) {
        w.captured += clamp(m, tracer_common::MAX_CAPTURE as u64);
    } else {
        // The rest would sit at the wrong offsets: stop copying.
        w.want = w.captured;
    }
}

#[inline(always)]
fn advance(w: &mut Walk, n: u64) {
    w.seg += n;
    w.seg_left -= n;
    w.left -= n;
    w.walked += n;
}

/// One step of the walk. Returns 1 to stop (done, or lost), 0 to go on.
#[inline(never)]
extern "C" fn step(_i: u64, _ctx: *mut c_void) -> i64 {
    let Some(w) = WALK.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU map value, used by one program run at a time on this CPU.
    let w = unsafe { &mut *w };
    if w.left == 0 {
        return 1;
    }
    if w.seg_left == 0 {
        // The next iovec (a flat buffer has none: the syscall said more bytes than it had).
        if w.iov == 0 || w.next_iov >= w.iovcnt || w.next_iov >= MAX_IOV as u64 {
            w.lost = 1;
            return 1;
        }
        let Some(v) = read_user::<[u64; 2]>(w.iov + w.next_iov * 16) else {
            w.lost = 1;
            return 1;
        };
        w.next_iov += 1;
        w.seg = v[0];
        w.seg_left = clamp(v[1], w.left);
        return 0;
    }
    if w.rem > 0 {
        let n = clamp(w.rem, w.seg_left);
        if w.copy > 0 {
            let c = clamp(n, w.copy);
            put(w, w.seg, c);
            w.copy -= c;
            advance(w, c);
            w.rem -= c;
        } else {
            advance(w, n);
            w.rem -= n;
        }
        return 0;
    }
    // A frame header, whole from one buffer, or byte by byte when it is split.
    if w.hdr_have == 0 && w.frame_at == NO_FRAME as u64 {
        w.frame_at = w.walked;
        w.frame_at_captured = w.captured;
    }
    let n = if w.hdr_have == 0 && w.seg_left >= 9 {
        let Some(h) = read_user::<[u8; 9]>(w.seg) else {
            w.lost = 1;
            return 1;
        };
        w.hdr[..9].copy_from_slice(&h);
        w.hdr_have = 9;
        9
    } else {
        let Some(b) = read_user::<u8>(w.seg) else {
            w.lost = 1;
            return 1;
        };
        let i = w.hdr_have as usize;
        if i >= 9 {
            w.lost = 1;
            return 1;
        }
        w.hdr[i & 15] = b;
        w.hdr_have += 1;
        1
    };
    if w.hdr_have == 9
        && !w
            .hdr
            .first_chunk()
            .is_some_and(|h| FrameHeader::parse(h).follows(Rules::WALK))
    {
        // Not frames after all: what was copied so far stands, the rest is not ours.
        w.lost = 1;
        return 1;
    }
    put(w, w.seg, n);
    advance(w, n);
    if w.hdr_have == 9 {
        w.hdr_have = 0;
        let len = (w.hdr[0] as u32) << 16 | (w.hdr[1] as u32) << 8 | w.hdr[2] as u32;
        w.rem = len as u64;
        w.copy = h2::copied_len(w.hdr[3], w.hdr[4], len) as u64;
    }
    0
}

/// Whether a syscall of a direction not walked yet starts at a frame boundary: with the client
/// preface (walked as 24 bytes to copy), or with a plausible frame header.
#[inline(always)]
fn sync(args: &SyscallArgs, len: u64, st: &mut H2Walk) -> bool {
    let Some((buf, n)) = first_buf(args, len) else {
        return false;
    };
    if n < 9 {
        return false;
    }
    let Some(h) = read_user::<[u8; 9]>(buf) else {
        return false;
    };
    *st = H2Walk::default();
    if h.starts_with(b"PRI * HT") {
        st.rem = 24;
        st.copy = 24;
    } else if !FrameHeader::parse(&h).follows(Rules::FIRST_FRAME) {
        return false;
    }
    st.synced = 1;
    true
}

/// Copies what the walk keeps of a syscall that moved `len` bytes into the scratch record's
/// payload (at most `want` bytes), and moves `st` along. `None`: this direction is not walked
/// (the caller copies a prefix).
#[inline(always)]
pub fn walk(args: &SyscallArgs, len: u64, want: u64, st: &mut H2Walk) -> Option<Placed> {
    if st.synced == 0 && !sync(args, len, st) {
        return None;
    }
    let w = WALK.get_ptr_mut(0)?;
    // SAFETY: per-CPU map value, used by one program run at a time on this CPU.
    let w = unsafe { &mut *w };
    *w = Walk {
        iov: 0,
        iovcnt: 0,
        next_iov: 0,
        seg: 0,
        seg_left: 0,
        left: len,
        walked: 0,
        captured: 0,
        want,
        frame_at: NO_FRAME as u64,
        frame_at_captured: NO_FRAME as u64,
        rem: st.rem as u64,
        copy: st.copy as u64,
        hdr_have: st.hdr_have as u64,
        lost: 0,
        hdr: [0; 16],
    };
    w.hdr[..9].copy_from_slice(&st.hdr);
    match args.syscall {
        syscall::READV | syscall::WRITEV | syscall::RECVMSG | syscall::SENDMSG => {
            w.iov = args.ptr;
            w.iovcnt = args.iovcnt;
        }
        syscall::SENDFILE => {
            // No user memory to read: only bytes inside a DATA payload can be walked.
            if w.hdr_have != 0 || w.copy != 0 || w.rem < len {
                w.lost = 1;
            } else {
                w.rem -= len;
                w.left = 0;
            }
        }
        _ => {
            w.seg = args.ptr;
            w.seg_left = len;
        }
    }
    if w.lost == 0 && w.left > 0 {
        let cb = step as extern "C" fn(u64, *mut c_void) -> i64;
        // SAFETY: the callback only touches per-CPU map values.
        unsafe {
            generated::bpf_loop(MAX_STEPS, cb as *mut c_void, core::ptr::null_mut(), 0);
        }
        if w.left > 0 {
            w.lost = 1;
        }
    }
    let mut flags = data_flags::H2_FRAMES;
    if w.lost != 0 {
        count(counter::H2_FRAMES_LOST);
        flags |= data_flags::H2_FRAMES_LOST;
        *st = H2Walk::default();
    } else {
        st.rem = w.rem as u32;
        st.copy = w.copy as u32;
        st.hdr_have = w.hdr_have as u8;
        st.hdr.copy_from_slice(&w.hdr[..9]);
    }
    let captured = clamp(w.captured, want);
    // A frame header the budget left out cannot be found in the payload.
    let (frame_at, frame_at_captured) = if w.frame_at_captured < captured {
        (w.frame_at as u32, w.frame_at_captured as u32)
    } else {
        (NO_FRAME, NO_FRAME)
    };
    Some(Placed {
        captured,
        flags,
        frame_at,
        frame_at_captured,
    })
}
