//! `tracer replay`: a recording made with `run --record` through the same pipeline code as live
//! records, its spans printed.
use std::{io::Write, path::Path};

use super::{CliError, conn_table, stdout_ok};
use crate::{
    config::RunOptions,
    export::{Format, Printer},
    metrics::Registry,
    pipeline,
};

/// Prints the spans of the recording at `file` to `out` (stdout: a reader that goes away
/// ends the output quietly).
pub fn replay(
    file: &Path,
    format: Format,
    keep_query_values: bool,
    out: Box<dyn Write + Send>,
) -> Result<(), CliError> {
    let f = std::fs::File::open(file).map_err(|source| CliError::Open {
        path: file.to_owned(),
        source,
    })?;
    let (records, truncated) = pipeline::read_recording(f).map_err(|source| CliError::Read {
        path: file.to_owned(),
        source,
    })?;
    if truncated {
        tracing::warn!(
            "{} ends with a partial record (cut short while recording): ignored it",
            file.display()
        );
    }
    let registry = Registry::default();
    let opts = RunOptions {
        keep_query_values,
        ..Default::default()
    };
    let mut t = conn_table(opts.table_options(), None, &registry);
    let spans = pipeline::replay(&records, &mut t);
    stdout_ok(Printer { format, out }.write(&spans))?;
    tracing::info!("counters: {}", registry.summary());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORDING: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/python_curl.bin"
    );
    const GOLDEN: &str = include_str!("../../tests/fixtures/python_curl.golden");

    #[test]
    fn prints_one_json_line_per_recorded_span() {
        let out = std::env::temp_dir().join(format!("tracer-replay-{}.json", std::process::id()));
        let f = std::fs::File::create(&out).unwrap();
        replay(Path::new(RECORDING), Format::Json, false, Box::new(f)).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        let spans: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            spans.len(),
            GOLDEN.lines().filter(|l| !l.is_empty()).count()
        );
        std::fs::remove_file(&out).unwrap();
        assert!(matches!(
            replay(
                Path::new("/nonexistent.bin"),
                Format::Text,
                false,
                Box::new(std::io::sink())
            ),
            Err(CliError::Open { .. })
        ));
    }
}
