//! Benchmarks live in `benches/` (criterion) and `load.py` (wrk, traced vs untraced).
