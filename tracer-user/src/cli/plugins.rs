//! `tracer plugins list` and `tracer plugins check`.
use std::path::Path;

use serde_json::Value;

use super::{CliError, admin_client, print};

/// `tracer plugins list`: the running tracer's chain, per-plugin counters and refused files,
/// from `GET /plugins` on its admin endpoint; `json` prints the endpoint's answer as is.
pub async fn list(addr: &str, json: bool) -> Result<(), CliError> {
    let body = admin_client::get(addr, "/plugins").await?;
    if json {
        return print(&body);
    }
    let v: Value = serde_json::from_str(&body).map_err(|e| CliError::AdminAnswer {
        addr: addr.to_owned(),
        status: reqwest::StatusCode::OK,
        source: Some(e),
    })?;
    print(&render_list(&v))
}

/// The table `tracer plugins list` prints for the JSON of `GET /plugins`
/// ([`crate::plugins::PluginHost::status`]).
pub fn render_list(v: &Value) -> String {
    let mut out = String::new();
    let mut line = |l: String| {
        out.push_str(&l);
        out.push('\n');
    };
    let dir = v["directory"].as_str().unwrap_or("(plugins off)");
    line(format!("plugin directory: {dir}"));
    line(format!(
        "chain v{}: {}",
        v["chain"]["version"],
        v["chain"]["label"]
            .as_str()
            .filter(|l| !l.is_empty())
            .unwrap_or("(empty: spans pass unchanged)")
    ));
    let empty = Vec::new();
    let plugins = v["plugins"].as_array().unwrap_or(&empty);
    if !plugins.is_empty() {
        line(format!(
            "{:<24} {:<12} {:<11} {:>9} {:>10} {:>9} {:>9} {:>8} {:>9} {:>8}",
            "PLUGIN",
            "VERSION",
            "ROLE",
            "CALLS",
            "SPANS IN",
            "DROPPED",
            "EDITED",
            "FAILED",
            "TIME",
            "US/SPAN"
        ));
    }
    for p in plugins {
        let c = &p["counters"];
        let n = |k: &str| c[k].as_u64().unwrap_or(0);
        let failed = n("traps_total")
            + n("timeouts_total")
            + n("memory_exceeded_total")
            + n("invalid_results_total");
        let role = match (p["role"].as_str(), p["canary_fraction"].as_f64()) {
            _ if p["state"] == "quarantined" => "QUARANTINED".to_string(),
            (Some("canary"), Some(f)) => format!("canary {:.0}%", f * 100.0),
            (r, _) => r.unwrap_or("stable").to_string(),
        };
        let seconds = p["call_seconds"].as_f64().unwrap_or(0.0);
        let per_span = match n("spans_in_total") {
            0 => "-".to_string(),
            spans => format!("{:.2}", seconds * 1e6 / spans as f64),
        };
        line(format!(
            "{:<24} {:<12} {:<11} {:>9} {:>10} {:>9} {:>9} {:>8} {:>8.3}s {:>8}",
            p["name"].as_str().unwrap_or("?"),
            p["hash"].as_str().unwrap_or("?"),
            role,
            n("calls_total"),
            n("spans_in_total"),
            n("spans_dropped_total"),
            n("spans_edited_total"),
            failed,
            seconds,
            per_span,
        ));
        if let Some(e) = p["last_error"].as_str() {
            line(format!("    last error: {e}"));
        }
    }
    for p in v["not_running"].as_array().unwrap_or(&empty) {
        line(format!(
            "{} is {}: {}",
            p["name"].as_str().unwrap_or("?"),
            p["state"].as_str().unwrap_or("?").to_uppercase(),
            p["error"].as_str().unwrap_or("")
        ));
    }
    if let Some(back) = v["rollback_to"].as_object() {
        for (name, id) in back {
            line(format!(
                "{name}: `tracer plugins rollback {name}` goes back to {}",
                id.as_str().unwrap_or("?")
            ));
        }
    }
    line(format!(
        "reloads: {}, refused files: {}",
        v["reloads"], v["reload_failures"]
    ));
    out
}

/// `tracer plugins check`: prints the report; Ok(false) when the plugin was refused.
pub fn check(file: &Path, config: Option<&Path>, spans: Option<&Path>) -> Result<bool, CliError> {
    let report = crate::plugins::check::check(file, config, spans)?;
    print(&report.to_string())?;
    Ok(report.verdict.is_ok())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{
        metrics::Registry,
        plugins::{PluginHost, Settings},
    };

    #[test]
    fn an_idle_host_lists_an_empty_chain() {
        let host = PluginHost::new(Settings::default(), &Registry::default()).unwrap();
        assert_eq!(
            render_list(&host.status()),
            "plugin directory: (plugins off)\n\
             chain v0: (empty: spans pass unchanged)\n\
             reloads: 0, refused files: 0\n"
        );
    }

    #[test]
    fn plugins_get_a_row_of_counters_and_refused_files_a_line() {
        let v = json!({
            "directory": "/etc/tracer/plugins",
            "chain": {"version": 3, "label": "10-s@abc"},
            "plugins": [{
                "name": "10-s", "hash": "abc", "call_seconds": 0.25, "role": "canary",
                "canary_fraction": 0.1,
                "last_error": "trapped: unreachable",
                "counters": {"calls_total": 7, "spans_in_total": 70, "spans_dropped_total": 35,
                             "spans_edited_total": 1, "traps_total": 1, "timeouts_total": 2},
            }],
            "not_running": [{"name": "20-x", "state": "rejected", "error": "not a WebAssembly file"}],
            "reloads": 3, "reload_failures": 1,
        });
        let text = render_list(&v);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[..2],
            [
                "plugin directory: /etc/tracer/plugins",
                "chain v3: 10-s@abc"
            ]
        );
        assert!(lines[2].starts_with("PLUGIN ") && lines[2].ends_with("US/SPAN"));
        let row: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(
            row,
            [
                "10-s", "abc", "canary", "10%", "7", "70", "35", "1", "3", "0.250s", "3571.43"
            ]
        );
        assert_eq!(
            lines[4..],
            [
                "    last error: trapped: unreachable",
                "20-x is REJECTED: not a WebAssembly file",
                "reloads: 3, refused files: 1",
            ]
        );
    }
}
