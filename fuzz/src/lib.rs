//! What the fuzz targets share: a reader of the fuzz input, and the script that turns it into
//! the chunks a decoder sees (one per syscall, both directions, captured or not).
use tracer_user::decode::{Chunk, Direction, Layout};

/// Bytes taken from the front of the fuzz input.
pub struct Input<'a> {
    rest: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { rest: data }
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    pub fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(b)
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.rest.split_at(n.min(self.rest.len()));
        self.rest = b;
        a
    }

    pub fn u16(&mut self) -> u16 {
        let b = self.take(2);
        b.iter().rev().fold(0, |a, &x| a << 8 | u16::from(x))
    }

    /// A length: one byte below 0xF0, else 12 bits over two bytes (up to 4095).
    pub fn len(&mut self) -> usize {
        match self.byte() {
            None => 0,
            Some(b) if b < 0xF0 => b as usize,
            Some(b) => ((b as usize & 0x0F) << 8) | self.byte().unwrap_or(0) as usize,
        }
    }

    /// Bytes up to the next `sep` (not included) or the end.
    pub fn until(&mut self, sep: u8) -> &'a [u8] {
        match self.rest.iter().position(|&b| b == sep) {
            Some(i) => {
                let a = &self.rest[..i];
                self.rest = &self.rest[i + 1..];
                a
            }
            None => std::mem::take(&mut self.rest),
        }
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }
}

/// One step of a connection's life as the connection table drives a decoder.
pub enum Step<'a> {
    /// One syscall's bytes.
    Data(Chunk<'a>),
    /// Records were lost in this direction (a sequence gap).
    Gap(Direction),
    /// The connection closed; `fresh` asks for a new decoder afterwards (a reused fd).
    Close { ts: u64, fresh: bool },
}

/// Reads steps from the input. Each starts with a control byte:
/// - bit 0: direction (0 ingress, 1 egress);
/// - bits 1-2: 0 and 1 a captured chunk, 2 a chunk with uncaptured bytes past the capture
///   (a length byte follows), 3 a gap (bit 3 clear) or a close (bit 3 set; bit 4: new decoder);
/// - bits 3-4 (chunks): the thread; bit 5: an `H2Frames` layout (a layout byte and, when it
///   says so, two u16 offsets follow); bits 6-7: how far the clock moves.
///
/// then the captured length ([`Input::len`]) and the bytes.
pub struct Script<'a> {
    input: Input<'a>,
    ts: u64,
}

impl<'a> Script<'a> {
    pub fn new(input: Input<'a>) -> Self {
        Script { input, ts: 1 }
    }

    pub fn ts(&self) -> u64 {
        self.ts
    }
}

impl<'a> Iterator for Script<'a> {
    type Item = Step<'a>;

    fn next(&mut self) -> Option<Step<'a>> {
        let c = self.input.byte()?;
        let dir = if c & 1 == 0 {
            Direction::Ingress
        } else {
            Direction::Egress
        };
        self.ts += 1 + u64::from(c >> 6) * 1_000;
        let kind = (c >> 1) & 3;
        if kind == 3 {
            return Some(if c & 8 == 0 {
                Step::Gap(dir)
            } else {
                Step::Close {
                    ts: self.ts,
                    fresh: c & 16 != 0,
                }
            });
        }
        let extra = if kind == 2 {
            match self.input.byte().unwrap_or(0) {
                // The contract broken: fewer bytes moved than captured.
                0xFF => None,
                0xFE => Some(u64::MAX),
                0xFD => Some(u64::from(u32::MAX)),
                0xFC => Some(1 << 20),
                e if e >= 0xE0 => Some(u64::from(e & 0x1F) << 12),
                e => Some(u64::from(e)),
            }
        } else {
            Some(0)
        };
        let layout = if c & 32 != 0 {
            let l = self.input.byte().unwrap_or(0);
            let first = (l & 1 != 0).then(|| {
                let at = u64::from(self.input.u16());
                (at, usize::from(self.input.u16()))
            });
            Layout::H2Frames {
                first,
                lost: l & 2 != 0,
            }
        } else {
            Layout::Prefix
        };
        let n = self.input.len();
        let data = self.input.take(n);
        let len = match extra {
            Some(e) => (data.len() as u64).saturating_add(e),
            None => data.len() as u64 / 2,
        };
        let ts_start = self.ts;
        self.ts += u64::from(c >> 6);
        Some(Step::Data(Chunk {
            tid: u32::from((c >> 3) & 3),
            dir,
            len,
            data,
            layout,
            ts_start,
            ts_end: self.ts,
        }))
    }
}
