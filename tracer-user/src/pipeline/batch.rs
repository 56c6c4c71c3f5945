//! Record batches: the reader copies ring-buffer records into one buffer per batch, framed
//! like a recording (a `u32` little-endian length, then the record), so a batch is handed on
//! in one piece and written to a recording as it is.

/// Bytes of framed records per batch: the reader hands a batch on when the next record would
/// not fit (or when the ring buffer is empty).
pub const BATCH_BYTES: usize = 256 << 10;

pub struct Batch {
    buf: Vec<u8>,
    records: usize,
}

impl Batch {
    pub fn new() -> Self {
        Self::reuse(Vec::with_capacity(BATCH_BYTES))
    }

    /// An empty batch in a buffer that held one before (no allocation).
    pub fn reuse(mut buf: Vec<u8>) -> Self {
        buf.clear();
        Batch { buf, records: 0 }
    }

    /// Appends a record unless the buffer would have to grow; an empty batch takes any record.
    pub fn push(&mut self, rec: &[u8]) -> bool {
        if self.records > 0 && self.buf.len() + 4 + rec.len() > self.buf.capacity() {
            return false;
        }
        self.buf
            .extend_from_slice(&(rec.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(rec);
        self.records += 1;
        true
    }

    /// Records in the batch.
    pub fn len(&self) -> usize {
        self.records
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// The framed records, as a recording stores them.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    pub fn records(&self) -> Records<'_> {
        Records::new(&self.buf)
    }

    /// The buffer, for the next batch.
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

/// The records of framed bytes: a batch, or a whole recording.
pub struct Records<'a> {
    rest: &'a [u8],
}

impl<'a> Records<'a> {
    pub fn new(framed: &'a [u8]) -> Self {
        Records { rest: framed }
    }

    /// What is left that is not a whole record (a recording cut short).
    pub fn remainder(&self) -> &'a [u8] {
        self.rest
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let (len, rest) = self.rest.split_first_chunk::<4>()?;
        let n = u32::from_le_bytes(*len) as usize;
        let rec = rest.get(..n)?;
        self.rest = &rest[n..];
        Some(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_fills_its_buffer_without_growing_it() {
        let mut b = Batch::reuse(Vec::with_capacity(20));
        assert!(b.push(b"0123456789"));
        assert!(!b.push(b"0123456789"), "14 + 14 bytes do not fit in 20");
        assert!(b.push(b"ab"));
        assert_eq!(b.len(), 2);
        assert_eq!(b.records().collect::<Vec<_>>(), [&b"0123456789"[..], b"ab"]);
        let cap = b.bytes().len();
        let mut again = Batch::reuse(b.into_buffer());
        assert!(again.is_empty());
        // An empty batch takes a record bigger than its buffer: no record is ever refused.
        assert!(again.push(&[7; 64]));
        assert!(again.bytes().len() > cap);
    }

    #[test]
    fn a_cut_record_is_left_over() {
        let mut b = Batch::new();
        b.push(b"whole");
        b.push(b"cut short");
        let cut = &b.bytes()[..b.bytes().len() - 3];
        let mut r = Records::new(cut);
        assert_eq!(r.by_ref().collect::<Vec<_>>(), [b"whole"]);
        assert_eq!(r.remainder().len(), 4 + 9 - 3);
    }
}
