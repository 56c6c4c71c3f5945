//! Span queues between the stages that hold spans (span builder -> plugins -> each exporter),
//! bounded by the memory their spans hold, estimated from their strings and attributes, and
//! optionally by a number of spans. A full queue refuses spans and says how many; the caller
//! counts them by reason. Producers never wait, except [`SpanQueue::push_wait`] (used at
//! shutdown, when nothing may be lost); the one consumer waits in [`SpanQueue::recv_many`],
//! from a tokio task or, through `futures::executor::block_on`, from a thread.
use std::{
    borrow::Cow,
    collections::VecDeque,
    pin::pin,
    sync::{Mutex, MutexGuard},
};

use tokio::sync::Notify;

use crate::span::{KeyValue, Span, Status, Value};

/// What a span holds in memory, estimated from its fields: the struct itself, its attribute
/// slots and the bytes of its strings. The resource is shared by the spans of a process (and
/// cached by the span builder), so it is not counted.
pub fn span_bytes(sp: &Span) -> usize {
    let kv_bytes = |kv: &KeyValue| {
        let key = match &kv.key {
            Cow::Owned(k) => k.len(),
            Cow::Borrowed(_) => 0,
        };
        let value = match &kv.value {
            Value::Str(s) => s.len(),
            Value::Int(_) | Value::Float(_) | Value::Bool(_) => 0,
        };
        key + value
    };
    let status = match &sp.status {
        Status::Unset => 0,
        Status::Error(e) => e.len(),
    };
    size_of::<Span>()
        + sp.name.len()
        + status
        + sp.attributes.len() * size_of::<KeyValue>()
        + sp.attributes.iter().map(kv_bytes).sum::<usize>()
}

/// How much a queue may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Sum of [`span_bytes`] of the queued spans.
    pub max_bytes: usize,
    /// Queued spans, when also capped by count.
    pub max_spans: Option<usize>,
}

/// What a push did not queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Refused {
    /// Spans that did not fit.
    pub full: u64,
    /// Spans offered after the queue was closed.
    pub closed: u64,
}

pub struct SpanQueue {
    limits: Limits,
    state: Mutex<State>,
    /// Spans (or the close) for the consumer.
    ready: Notify,
    /// Room for producers waiting in `push_wait`.
    room: Notify,
}

#[derive(Default)]
struct State {
    spans: VecDeque<(Span, usize)>,
    bytes: usize,
    closed: bool,
    /// Spans ever queued.
    accepted: u64,
}

enum Fit {
    Yes,
    NotNow,
    Never,
}

impl SpanQueue {
    pub fn new(limits: Limits) -> Self {
        SpanQueue {
            limits,
            state: Mutex::default(),
            ready: Notify::new(),
            room: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fits(&self, st: &State, size: usize) -> Fit {
        if size > self.limits.max_bytes || self.limits.max_spans == Some(0) {
            Fit::Never
        } else if st.bytes + size > self.limits.max_bytes
            || self.limits.max_spans.is_some_and(|m| st.spans.len() >= m)
        {
            Fit::NotNow
        } else {
            Fit::Yes
        }
    }

    fn enqueue(st: &mut State, sp: Span, size: usize) {
        st.bytes += size;
        st.accepted += 1;
        st.spans.push_back((sp, size));
    }

    /// Queues the spans that fit, in order; never waits.
    pub fn push(&self, spans: impl IntoIterator<Item = Span>) -> Refused {
        let mut refused = Refused::default();
        let mut st = self.lock();
        let before = st.accepted;
        for sp in spans {
            let size = span_bytes(&sp);
            if st.closed {
                refused.closed += 1;
            } else if let Fit::Yes = self.fits(&st, size) {
                Self::enqueue(&mut st, sp, size);
            } else {
                refused.full += 1;
            }
        }
        let queued = st.accepted > before;
        drop(st);
        if queued {
            self.ready.notify_one();
        }
        refused
    }

    /// Queues every span, waiting for room as the consumer takes spans. Refuses only spans
    /// larger than the whole queue and spans offered once it is closed.
    pub async fn push_wait(&self, spans: Vec<Span>) -> Refused {
        let mut refused = Refused::default();
        let mut rest: VecDeque<(Span, usize)> = spans
            .into_iter()
            .map(|sp| {
                let size = span_bytes(&sp);
                (sp, size)
            })
            .collect();
        loop {
            // Registered before looking, so room made in between is not missed.
            let mut room = pin!(self.room.notified());
            room.as_mut().enable();
            self.offer(&mut rest, &mut refused);
            if rest.is_empty() {
                return refused;
            }
            room.await;
        }
    }

    /// Queues spans from the front of `rest` as long as they fit; the others stay in `rest`.
    fn offer(&self, rest: &mut VecDeque<(Span, usize)>, refused: &mut Refused) {
        let mut st = self.lock();
        let before = st.accepted;
        while let Some((sp, size)) = rest.pop_front() {
            if st.closed {
                refused.closed += 1 + rest.len() as u64;
                rest.clear();
                break;
            }
            match self.fits(&st, size) {
                Fit::Yes => Self::enqueue(&mut st, sp, size),
                Fit::Never => refused.full += 1,
                Fit::NotNow => {
                    rest.push_front((sp, size));
                    break;
                }
            }
        }
        let queued = st.accepted > before;
        drop(st);
        if queued {
            self.ready.notify_one();
        }
    }

    /// Moves up to `max` spans into `out`, waiting until there is one; 0 once the queue is
    /// closed and empty.
    pub async fn recv_many(&self, out: &mut Vec<Span>, max: usize) -> usize {
        loop {
            // One consumer: a notification while it is not waiting is kept as a permit.
            let ready = self.ready.notified();
            {
                let mut st = self.lock();
                let n = max.min(st.spans.len());
                if n > 0 {
                    let State { spans, bytes, .. } = &mut *st;
                    for (sp, size) in spans.drain(..n) {
                        *bytes -= size;
                        out.push(sp);
                    }
                    drop(st);
                    self.room.notify_waiters();
                    return n;
                }
                if st.closed {
                    return 0;
                }
            }
            ready.await;
        }
    }

    /// Refuses further spans; the consumer still gets what is queued.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
        self.room.notify_waiters();
    }

    pub fn len(&self) -> usize {
        self.lock().spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Estimated bytes of the queued spans.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Spans ever queued.
    pub fn accepted(&self) -> u64 {
        self.lock().accepted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;

    fn span(i: u8, path_len: usize) -> Span {
        let mut sp = crate::plugins::samples().remove(0);
        sp.span_id = [i; 8];
        sp.attributes.push(crate::span::kv(
            "url.path",
            Value::Str("/".repeat(path_len)),
        ));
        sp
    }

    fn ids(spans: &[Span]) -> Vec<u8> {
        spans.iter().map(|s| s.span_id[0]).collect()
    }

    #[test]
    fn the_estimate_counts_strings_and_attribute_slots() {
        let a = span(1, 10);
        let b = span(1, 110);
        assert_eq!(span_bytes(&b) - span_bytes(&a), 100);
        let mut c = a.clone();
        c.attributes.push(crate::span::kv("k", Value::Int(1)));
        assert_eq!(span_bytes(&c) - span_bytes(&a), size_of::<KeyValue>());
        assert!(span_bytes(&a) > size_of::<Span>() + a.name.len());
    }

    #[test]
    fn a_memory_capped_queue_refuses_exactly_what_does_not_fit() {
        let one = span_bytes(&span(0, 100));
        // Room for three and a half spans.
        let q = SpanQueue::new(Limits {
            max_bytes: one * 7 / 2,
            max_spans: None,
        });
        let r = q.push((0..5).map(|i| span(i, 100)));
        assert_eq!(r, Refused { full: 2, closed: 0 });
        assert_eq!((q.len(), q.bytes(), q.accepted()), (3, 3 * one, 3));
        // A smaller span still fits in the half left.
        let mut small = span(9, 0);
        small.attributes.clear();
        assert!(span_bytes(&small) <= one / 2);
        assert_eq!(q.push([small]), Refused::default());
        // Taking spans makes room again, in order.
        let mut out = vec![];
        assert_eq!(block_on(q.recv_many(&mut out, 2)), 2);
        assert_eq!(ids(&out), [0, 1]);
        assert_eq!(q.push((5..8).map(|i| span(i, 100))).full, 1);
        out.clear();
        q.close();
        assert_eq!(
            q.push([span(10, 0)]),
            Refused { full: 0, closed: 1 },
            "closed"
        );
        while block_on(q.recv_many(&mut out, 100)) > 0 {}
        assert_eq!(ids(&out), [2, 9, 5, 6]);
        assert_eq!((q.bytes(), q.accepted()), (0, 6));
    }

    #[test]
    fn a_span_count_cap_applies_on_top_of_the_memory_cap() {
        let q = SpanQueue::new(Limits {
            max_bytes: usize::MAX,
            max_spans: Some(2),
        });
        assert_eq!(q.push((0..5).map(|i| span(i, 0))).full, 3);
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn push_wait_loses_nothing_and_refuses_only_what_can_never_fit() {
        let one = span_bytes(&span(0, 0));
        let q = std::sync::Arc::new(SpanQueue::new(Limits {
            max_bytes: one * 3,
            max_spans: None,
        }));
        let mut spans: Vec<Span> = (0..50).map(|i| span(i, 0)).collect();
        spans.insert(10, span(200, one * 3));
        let producer = {
            let q = q.clone();
            std::thread::spawn(move || {
                let r = block_on(q.push_wait(spans));
                q.close();
                r
            })
        };
        let mut out = vec![];
        while block_on(q.recv_many(&mut out, 2)) > 0 {}
        assert_eq!(producer.join().unwrap(), Refused { full: 1, closed: 0 });
        assert_eq!(ids(&out), (0..50).collect::<Vec<u8>>());
    }
}
