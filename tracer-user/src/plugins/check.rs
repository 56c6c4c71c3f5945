//! `tracer plugins check`: a plugin file validated the way the daemon would load it (the
//! permissions of the file and its config, the contract, `init` with that config, the self-test
//! batch), and what it does to the sample spans, or to the author's own spans (JSON lines as
//! `tracer run --output json` prints them). Needs no daemon and no root.
use std::{
    fmt,
    path::{Path, PathBuf},
};

use super::{CHAIN_ATTRIBUTE, PluginError, PluginHost, Settings, dir, samples};
use crate::{
    export::printer::{JsonLineError, from_json_lines, to_line},
    metrics::Registry,
    span::Span,
};

/// Why the check could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// The cause is part of the message, which is all a report shows.
    #[error("{}: {error} (one span per line, as `tracer run --output json` prints them)", path.display())]
    Spans { path: PathBuf, error: JsonLineError },
}

/// What the check found.
pub struct CheckReport {
    pub file: String,
    /// Why the daemon would refuse the file or its config as they are installed here.
    pub warnings: Vec<PluginError>,
    /// The plugin as loaded, or why it was refused.
    pub verdict: Result<Accepted, PluginError>,
    /// For a config `init` refused: the example config shipped beside the file.
    pub example: Option<PathBuf>,
    /// Where the spans shown came from: None for the built-in samples.
    pub spans_from: Option<String>,
}

/// A plugin that passed validation.
pub struct Accepted {
    /// `name@hash`, as spans would name it.
    pub id: String,
    /// The contract version it was built for.
    pub contract: &'static str,
    pub attributes: Vec<String>,
    pub resource_attributes: Vec<String>,
    pub span_name: bool,
    /// Each span, and what came out of the plugin for it (None: dropped).
    pub samples: Vec<(Span, Option<Span>)>,
}

/// Loads `file` (with the config at `config`, if any) in a host of its own and runs the spans
/// of the file `spans` through it, or the built-in samples. Err: a file cannot be read or is
/// not spans, or the runtime does not start.
pub fn check(
    file: &Path,
    config: Option<&Path>,
    spans: Option<&Path>,
) -> Result<CheckReport, CheckError> {
    let read_error = |path: &Path| {
        let path = path.to_owned();
        move |error| PluginError::Read { path, error }
    };
    let wasm = std::fs::read(file).map_err(read_error(file))?;
    let cfg = match config {
        Some(c) => std::fs::read_to_string(c).map_err(read_error(c))?,
        None => String::new(),
    };
    let input = match spans {
        Some(p) => from_json_lines(&std::fs::read_to_string(p).map_err(read_error(p))?).map_err(
            |error| CheckError::Spans {
                path: p.to_owned(),
                error,
            },
        )?,
        None => samples(),
    };
    let warnings = std::iter::once(file)
        .chain(config)
        .filter_map(|p| {
            dir::metadata(p)
                .and_then(|m| dir::check_writers(p, &m, false))
                .err()
        })
        .collect();
    let name = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plugin".into());
    // The check counts for nobody: a registry of its own.
    let host = PluginHost::new(Settings::default(), &Registry::default())?;
    let verdict = host.load(&name, file, &wasm, &cfg).map(|p| {
        let (attributes, resource_attributes, span_name) = p.interest();
        let id = p.id();
        let contract = p.contract;
        host.install(vec![p]);
        let mut after = input.clone();
        host.process(&mut after);
        // The chain keeps the order of the spans it keeps, and no span is there twice.
        let mut out = after.into_iter().peekable();
        let samples = input
            .into_iter()
            .map(|b| {
                let a = out.next_if(|a| (a.trace_id, a.span_id) == (b.trace_id, b.span_id));
                (b, a)
            })
            .collect();
        Accepted {
            id,
            contract,
            attributes,
            resource_attributes,
            span_name,
            samples,
        }
    });
    let example = match &verdict {
        Err(PluginError::ConfigRefused(_)) => dir::example_beside(file),
        _ => None,
    };
    Ok(CheckReport {
        file: file.display().to_string(),
        warnings,
        verdict,
        example,
        spans_from: spans.map(|p| p.display().to_string()),
    })
}

/// How `after` differs from `before`: a rename, then attributes changed or added (`+`), then
/// removed (`-`). The chain attribute the host adds is left out.
pub fn changes(before: &Span, after: &Span) -> Vec<String> {
    let mut changes = Vec::new();
    if after.name != before.name {
        changes.push(format!("renamed {:?} -> {:?}", before.name, after.name));
    }
    for kv in &after.attributes {
        if kv.key == CHAIN_ATTRIBUTE {
            continue;
        }
        match before.attr(&kv.key) {
            Some(old) if *old == kv.value => {}
            Some(old) => changes.push(format!("{}: {old} -> {}", kv.key, kv.value)),
            None => changes.push(format!("+{}={}", kv.key, kv.value)),
        }
    }
    for kv in &before.attributes {
        if after.attr(&kv.key).is_none() {
            changes.push(format!("-{}", kv.key));
        }
    }
    changes
}

/// The text `tracer plugins check` prints.
impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for why in &self.warnings {
            writeln!(f, "WARNING: the daemon would refuse this file: {why}")?;
        }
        let p = match &self.verdict {
            Ok(p) => p,
            Err(why) => {
                writeln!(f, "REFUSED {}: {why}", self.file)?;
                if let Some(e) = &self.example {
                    writeln!(
                        f,
                        "  see {e} beside it, a config it accepts: `tracer plugins check {} --config {e}`",
                        self.file,
                        e = e.display()
                    )?;
                }
                return Ok(());
            }
        };
        writeln!(
            f,
            "OK {}: implements {}; sees span attributes {:?}, resource attributes {:?}{}",
            p.id,
            p.contract,
            p.attributes,
            p.resource_attributes,
            if p.span_name { ", span names" } else { "" }
        )?;
        match &self.spans_from {
            Some(file) => writeln!(f, "\non {} spans from {file}:", p.samples.len())?,
            None => writeln!(f, "\non {} sample spans:", p.samples.len())?,
        }
        for (before, after) in &p.samples {
            writeln!(f, "  in:   {}", to_line(before))?;
            match after.as_ref().map(|a| changes(before, a)) {
                None => writeln!(f, "  out:  DROPPED")?,
                Some(c) if c.is_empty() => writeln!(f, "  out:  kept, unchanged")?,
                Some(c) => writeln!(f, "  out:  kept, {}", c.join(", "))?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::span::{Value, kv};

    #[test]
    fn changes_name_renames_edits_additions_and_removals_but_not_the_chain() {
        let before = samples().remove(0);
        assert!(changes(&before, &before).is_empty());
        let mut after = before.clone();
        after.name = "GET /users/{id}".into();
        after.attributes.retain(|a| a.key != "url.query");
        for a in &mut after.attributes {
            if a.key == "url.path" {
                a.value = Value::Str("/users/{id}".into());
            }
        }
        after.attributes.push(kv("team", Value::Str("shop".into())));
        after
            .attributes
            .push(kv(CHAIN_ATTRIBUTE, Value::Str("p@1".into())));
        assert_eq!(
            changes(&before, &after),
            [
                "renamed \"GET\" -> \"GET /users/{id}\"",
                "url.path: /users/123/orders/9f8e7d6c-1a2b-4c3d-8e9f-0a1b2c3d4e5f -> /users/{id}",
                "+team=shop",
                "-url.query",
            ]
        );
    }

    fn tmp(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("tracer-check-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_refused_file_says_why_and_warns_about_permissions() {
        let d = tmp("refused");
        let f = d.join("10-x.wasm");
        std::fs::write(&f, b"not wasm").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let r = check(&f, None, None).unwrap();
        assert!(r.warnings.is_empty());
        assert!(matches!(r.verdict, Err(PluginError::NotWasm)));
        assert_eq!(
            r.to_string(),
            format!(
                "REFUSED {}: not a WebAssembly file (no \\0asm header)\n",
                f.display()
            )
        );
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
        let text = check(&f, None, None).unwrap().to_string();
        assert!(
            text.starts_with("WARNING: the daemon would refuse this file: ")
                && text.contains("writable by everyone")
                && text.contains("\nREFUSED "),
            "{text}"
        );
        assert!(matches!(
            check(&d.join("missing.wasm"), None, None),
            Err(CheckError::Plugin(PluginError::Read { .. }))
        ));
        assert!(matches!(
            check(&f, Some(&d.join("missing.toml")), None),
            Err(CheckError::Plugin(PluginError::Read { .. }))
        ));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
