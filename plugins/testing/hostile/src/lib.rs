//! A test-only plugin that misbehaves on request, so the host's sandbox can be tested against a
//! real component. Built to `target/plugins/testing/hostile.wasm`; never ship it. The TOML config
//! picks the misbehaviour:
//!
//! ```toml
//! mode = "trap-every"   # required, one of the modes below
//! every = 3             # trap-every: panic on every 3rd batch of an instance (required there)
//! count = 1000000       # huge: how many verdicts (default 1_000_000)
//! string_len = 1048576  # huge: bytes of the string in the first verdict's edit (default 1 MiB)
//! ms = 50               # slow: how long each batch takes (default 50)
//! after = 1             # behave like `ok` for the first N batches of each instance (default 0):
//!                       # the host's load-time self-test passes, the live instance misbehaves
//! ```
//!
//! | mode          | what it does                                                                 |
//! |---------------|------------------------------------------------------------------------------|
//! | `ok`          | behaves: sets `hostile.ok = true` on every span, declares no interest         |
//! | `init-error`  | `init` returns `Err("refusing on purpose")`                                   |
//! | `loop-init`   | `init` never returns (a busy loop: only an epoch deadline stops it)           |
//! | `loop`        | `process-batch` never returns                                                 |
//! | `memory`      | `process-batch` allocates blocks of 1, 2, 4, 8... MiB without bound, writing every page and keeping them, until the memory cap makes an allocation fail (an abort: a trap); doubling keeps the number of `memory.grow` calls, and so the time to reach any cap, small |
//! | `trap`        | `process-batch` panics (a trap: the plugins are built with `panic = "abort"`) |
//! | `trap-every`  | like `ok`, but panics on batches `every`, 2 x `every`, ... of one instance (a new instance after a trap starts counting again) |
//! | `huge`        | returns `count` verdicts for indices from the batch length upward (all out of range), the first with a `set` edit whose key is `hostile.huge` and value `string_len` bytes |
//! | `bad-index`   | returns one drop verdict for index = batch length                             |
//! | `slow`        | like `ok`, but busy-waits `ms` milliseconds (on the host clock) per batch     |
//!
//! `after = N` delays the misbehaviour of the `process-batch` modes: the first N batches of an
//! instance are answered like `ok`. The count lives in the instance, so an instance the host
//! makes anew (after a trap or a timeout, which leave the old one unusable) behaves for N
//! batches again; `huge` and `bad-index` leave the instance usable, so their failures follow
//! one another.
use tracer_plugin_sdk::{
    Action, Attribute, Batch, Config, Edit, Interest, Plugin, Value, Verdict, now_unix_nano,
    serde::Deserialize,
};

#[derive(Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(crate = "tracer_plugin_sdk::serde", rename_all = "kebab-case")]
pub enum Mode {
    Ok,
    InitError,
    LoopInit,
    Loop,
    Memory,
    Trap,
    TrapEvery,
    Huge,
    BadIndex,
    Slow,
}

#[derive(Deserialize)]
#[serde(crate = "tracer_plugin_sdk::serde", deny_unknown_fields)]
struct Settings {
    mode: Mode,
    every: Option<u64>,
    #[serde(default = "default_count")]
    count: u32,
    #[serde(default = "default_string_len")]
    string_len: u32,
    #[serde(default = "default_ms")]
    ms: u64,
    #[serde(default)]
    after: u64,
}

fn default_count() -> u32 {
    1_000_000
}
fn default_string_len() -> u32 {
    1 << 20
}
fn default_ms() -> u64 {
    50
}

pub struct Hostile {
    mode: Mode,
    every: u64,
    count: u32,
    string_len: u32,
    ms: u64,
    after: u64,
    batches: u64,
}

/// Spins forever; `black_box` keeps the optimizer from reasoning the loop away.
fn spin() -> ! {
    let mut x = 0u64;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

/// Allocates and fills blocks of 1, 2, 4... MiB, keeping all of them, until an allocation fails.
fn exhaust_memory() -> ! {
    let mut kept: Vec<Vec<u8>> = Vec::with_capacity(64);
    let mut size = 1usize << 20;
    loop {
        let mut block = Vec::<u8>::with_capacity(size);
        block.resize(size, 0xa5);
        size = size.saturating_mul(2);
        for page in block.chunks_mut(4096) {
            page[0] = std::hint::black_box(page[0] ^ 0xff);
        }
        kept.push(std::hint::black_box(block));
    }
}

fn ok_verdicts(n: usize, out: &mut Vec<Verdict>) {
    for i in 0..n {
        Action::keep().set("hostile.ok", true).push_to(i, out);
    }
}

impl Plugin for Hostile {
    fn init(config: &Config) -> Result<Self, String> {
        let s: Settings = config.parse()?;
        let every = match (s.mode, s.every) {
            (Mode::TrapEvery, None) => {
                return Err("invalid config: mode = \"trap-every\" needs every = N".into());
            }
            (_, Some(0)) => return Err("invalid config: every must be at least 1".into()),
            (_, every) => every.unwrap_or(1),
        };
        match s.mode {
            Mode::InitError => return Err("refusing on purpose".into()),
            Mode::LoopInit => spin(),
            _ => {}
        }
        Ok(Self {
            mode: s.mode,
            every,
            count: s.count,
            string_len: s.string_len,
            ms: s.ms,
            after: s.after,
            batches: 0,
        })
    }

    fn interest(&self) -> Interest {
        Interest::none()
    }

    fn on_batch(&mut self, batch: &Batch<'_>, out: &mut Vec<Verdict>) {
        self.batches += 1;
        let n = batch.spans.len();
        if self.batches <= self.after {
            return ok_verdicts(n, out);
        }
        match self.mode {
            Mode::Ok | Mode::InitError | Mode::LoopInit => ok_verdicts(n, out),
            Mode::Loop => spin(),
            Mode::Memory => exhaust_memory(),
            Mode::Trap => panic!("trap on purpose"),
            Mode::TrapEvery => {
                if self.batches.is_multiple_of(self.every) {
                    panic!("trap on purpose (batch {})", self.batches);
                }
                ok_verdicts(n, out);
            }
            Mode::Huge => {
                out.reserve(self.count as usize);
                for i in 0..self.count {
                    let edits = if i == 0 {
                        vec![Edit::Set(Attribute {
                            key: "hostile.huge".into(),
                            value: Value::Str("x".repeat(self.string_len as usize)),
                        })]
                    } else {
                        Vec::new()
                    };
                    out.push(Verdict {
                        span: (n as u32).saturating_add(i),
                        keep: false,
                        edits,
                    });
                }
            }
            Mode::BadIndex => out.push(Verdict {
                span: n as u32,
                keep: false,
                edits: Vec::new(),
            }),
            Mode::Slow => {
                let until = now_unix_nano().saturating_add(self.ms.saturating_mul(1_000_000));
                while now_unix_nano() < until {
                    std::hint::spin_loop();
                }
                ok_verdicts(n, out);
            }
        }
    }
}

tracer_plugin_sdk::export_plugin!(Hostile);

#[cfg(test)]
mod tests {
    use super::*;
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use tracer_plugin_sdk::testing;

    fn spans(n: usize) -> Vec<tracer_plugin_sdk::Span> {
        (0..n).map(|_| testing::span()).collect()
    }

    fn panics(f: impl FnOnce() -> Vec<Verdict>) -> bool {
        catch_unwind(AssertUnwindSafe(f)).is_err()
    }

    #[test]
    fn ok_marks_every_span() {
        let v = testing::run::<Hostile>("mode = \"ok\"", spans(3)).unwrap();
        assert_eq!(v.len(), 3);
        for (i, v) in v.iter().enumerate() {
            assert_eq!(v.span, i as u32);
            assert!(v.keep);
            assert_eq!(v.edits, [Edit::set("hostile.ok", true)]);
        }
        assert_eq!(
            testing::init::<Hostile>("mode = \"ok\"").unwrap(),
            Interest::none()
        );
    }

    #[test]
    fn init_error_refuses() {
        assert_eq!(
            testing::init::<Hostile>("mode = \"init-error\"").unwrap_err(),
            "refusing on purpose"
        );
    }

    #[test]
    fn loop_and_memory_modes_init_fine() {
        // Their misbehaviour is only safe to run inside the sandbox (the host's tests do).
        for mode in ["loop", "memory"] {
            testing::init::<Hostile>(&format!("mode = \"{mode}\"")).unwrap();
        }
    }

    #[test]
    fn trap_panics_every_batch() {
        testing::init::<Hostile>("mode = \"trap\"").unwrap();
        assert!(panics(|| testing::process::<Hostile>(spans(1))));
        assert!(panics(|| testing::process::<Hostile>(spans(1))));
    }

    #[test]
    fn trap_every_panics_on_every_nth_batch() {
        testing::init::<Hostile>("mode = \"trap-every\"\nevery = 3").unwrap();
        let pattern: Vec<bool> = (0..7)
            .map(|_| panics(|| testing::process::<Hostile>(spans(2))))
            .collect();
        assert_eq!(pattern, [false, false, true, false, false, true, false]);
    }

    #[test]
    fn huge_returns_far_more_verdicts_than_spans() {
        let v = testing::run::<Hostile>(
            "mode = \"huge\"\ncount = 5000\nstring_len = 100000",
            spans(4),
        )
        .unwrap();
        assert_eq!(v.len(), 5000);
        assert!(v.iter().all(|v| v.span >= 4 && !v.keep));
        assert!(
            matches!(&v[0].edits[..], [Edit::Set(Attribute { value: Value::Str(s), .. })] if s.len() == 100_000)
        );
        // The defaults: a million verdicts and a 1 MiB string.
        let v = testing::run::<Hostile>("mode = \"huge\"", spans(1)).unwrap();
        assert_eq!(v.len(), 1_000_000);
    }

    #[test]
    fn after_delays_the_misbehaviour() {
        testing::init::<Hostile>("mode = \"trap\"\nafter = 2").unwrap();
        for _ in 0..2 {
            assert_eq!(testing::process::<Hostile>(spans(2)).len(), 2);
        }
        assert!(panics(|| testing::process::<Hostile>(spans(1))));
        let v = testing::run::<Hostile>("mode = \"bad-index\"\nafter = 1", spans(3)).unwrap();
        assert!(v.iter().all(|v| v.keep && v.span < 3));
        assert_eq!(testing::process::<Hostile>(spans(3))[0].span, 3);
    }

    #[test]
    fn bad_index_points_past_the_batch() {
        let v = testing::run::<Hostile>("mode = \"bad-index\"", spans(5)).unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].span, 5);
    }

    #[test]
    fn slow_takes_its_time() {
        let t = std::time::Instant::now();
        let v = testing::run::<Hostile>("mode = \"slow\"\nms = 20", spans(2)).unwrap();
        assert!(t.elapsed() >= std::time::Duration::from_millis(20));
        assert_eq!(v.len(), 2);
    }

    #[test]
    fn config_errors_are_clear() {
        for (cfg, word) in [
            ("", "mode"),
            ("mode = \"explode\"", "explode"),
            ("mode = \"trap-every\"", "every"),
            ("mode = \"trap-every\"\nevery = 0", "every"),
            ("mode = \"ok\"\nevry = 2", "evry"),
        ] {
            let e = testing::init::<Hostile>(cfg).unwrap_err();
            assert!(e.contains(word), "{cfg}: {e}");
        }
    }
}
