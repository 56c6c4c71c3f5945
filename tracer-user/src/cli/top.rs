//! `tracer top`: a live view of the local daemon's request metrics (`GET /requests`), one row
//! per service and kind (or per route, `r`), with the rate, error share and p50/p99 of the
//! last interval, hottest first. `--once` prints the same table as text and exits.
use std::{
    collections::BTreeMap,
    io::Write,
    time::{Duration, Instant},
};

use ratatui::{
    Terminal,
    backend::CrosstermBackend,
    crossterm::{
        event::{self, Event, KeyCode, KeyEventKind},
        execute,
        terminal::{EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode},
    },
    layout::Constraint,
    style::{Modifier, Style},
    widgets::{Block, Borders, Cell, Row, Table},
};

use super::{CliError, admin_client};
use crate::{semconv, spanmetrics::view::Requests};

/// One line of the table: a service's server or client side, or one of its routes.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    pub service: String,
    pub kind: &'static str,
    /// `http.route`, or `rpc.service/rpc.method`, when routes are shown.
    pub route: Option<String>,
    pub rate: f64,
    pub errors: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub total: u64,
}

/// What a series adds to its line over the interval.
#[derive(Clone, Default)]
struct Acc {
    count: u64,
    errors: u64,
    total: u64,
    /// Per bucket, in ms upper bounds (None: above the last bound).
    buckets: BTreeMap<u64, u64>,
    overflow: u64,
    last_bound_ms: f64,
}

fn kind(instrument: &str) -> &'static str {
    match instrument {
        "http.server.request.duration" => "http server",
        "http.client.request.duration" => "http client",
        "rpc.server.duration" => "rpc server",
        _ => "rpc client",
    }
}

fn route(attrs: &BTreeMap<String, String>) -> String {
    if let Some(r) = attrs.get(semconv::HTTP_ROUTE) {
        return r.clone();
    }
    match (
        attrs.get(semconv::RPC_SERVICE),
        attrs.get(semconv::RPC_METHOD),
    ) {
        (Some(s), Some(m)) => format!("{s}/{m}"),
        _ => match attrs.get(semconv::SERVER_ADDRESS) {
            Some(a) => format!("-> {a}"),
            None => "(no route)".into(),
        },
    }
}

/// The `q` quantile from per-bucket counts keyed by upper bound (linear inside a bucket).
fn quantile(acc: &Acc, q: f64) -> Option<f64> {
    let n = acc.count;
    if n == 0 {
        return None;
    }
    let rank = q * n as f64;
    let (mut seen, mut lower) = (0u64, 0.0);
    for (&upper_us, &c) in &acc.buckets {
        let upper = upper_us as f64 / 1000.0;
        if c > 0 && (seen + c) as f64 >= rank {
            // Past the last bound: at least that much.
            if upper_us == u64::MAX {
                return Some(acc.last_bound_ms);
            }
            let into = (rank - seen as f64) / c as f64;
            return Some(lower + (upper - lower) * into);
        }
        seen += c;
        lower = upper;
    }
    Some(acc.last_bound_ms)
}

/// The lines from the previous snapshot to this one, hottest first (by rate, then total).
pub fn lines(prev: Option<&Requests>, now: &Requests, by_route: bool) -> Vec<Line> {
    let secs = prev
        .map(|p| now.unix_ns.saturating_sub(p.unix_ns) as f64 / 1e9)
        .filter(|s| *s > 0.0);
    let mut before: BTreeMap<(String, &str, String), (u64, Vec<u64>)> = BTreeMap::new();
    if let Some(p) = prev {
        for svc in &p.services {
            for s in &svc.series {
                let key = (
                    svc.service.clone(),
                    s.instrument.as_str(),
                    series_id(&s.attributes),
                );
                before.insert(key, (s.count, s.buckets.clone()));
            }
        }
    }
    let mut acc: BTreeMap<(String, &'static str, Option<String>), Acc> = BTreeMap::new();
    for svc in &now.services {
        for s in &svc.series {
            let key = (
                svc.service.clone(),
                s.instrument.as_str(),
                series_id(&s.attributes),
            );
            // A series new since the last snapshot (or reset) counts from zero.
            let (c0, b0) = before
                .get(&key)
                .filter(|(c, _)| *c <= s.count)
                .cloned()
                .unwrap_or((0, vec![0; s.buckets.len()]));
            let line = (
                svc.service.clone(),
                kind(&s.instrument),
                by_route.then(|| route(&s.attributes)),
            );
            let a = acc.entry(line).or_default();
            let to_ms = if s.unit == "s" { 1000.0 } else { 1.0 };
            let delta = if secs.is_some() { s.count - c0 } else { 0 };
            a.count += delta;
            a.total += s.count;
            if s.attributes.contains_key(semconv::ERROR_TYPE) {
                a.errors += delta;
            }
            a.last_bound_ms = s.bounds.last().copied().unwrap_or(0.0) * to_ms;
            for (i, (&b, &b0)) in s
                .buckets
                .iter()
                .zip(b0.iter().chain(std::iter::repeat(&0)))
                .enumerate()
            {
                let d = if secs.is_some() {
                    b.saturating_sub(b0)
                } else {
                    0
                };
                match s.bounds.get(i) {
                    // Keyed in microseconds: bounds of both units in one ordered map.
                    Some(&ub) => {
                        *a.buckets
                            .entry((ub * to_ms * 1000.0).round() as u64)
                            .or_default() += d
                    }
                    None => a.overflow += d,
                }
            }
        }
    }
    let mut out: Vec<Line> = acc
        .into_iter()
        .map(|((service, kind, route), mut a)| {
            // The overflow bucket sorts last.
            *a.buckets.entry(u64::MAX).or_default() += a.overflow;
            let p = |q| quantile(&a, q);
            Line {
                service,
                kind,
                route,
                rate: secs.map_or(0.0, |s| a.count as f64 / s),
                errors: if a.count == 0 {
                    0.0
                } else {
                    a.errors as f64 / a.count as f64
                },
                p50_ms: p(0.5),
                p99_ms: p(0.99),
                total: a.total,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        b.rate
            .total_cmp(&a.rate)
            .then(b.total.cmp(&a.total))
            .then(a.service.cmp(&b.service))
    });
    out
}

fn series_id(attrs: &BTreeMap<String, String>) -> String {
    attrs.iter().map(|(k, v)| format!("{k}={v};")).collect()
}

fn ms(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v >= 1000.0 => format!("{:.2}s", v / 1000.0),
        Some(v) => format!("{v:.1}ms"),
    }
}

const HEADER: [&str; 8] = [
    "SERVICE", "KIND", "ROUTE", "REQ/S", "ERR%", "P50", "P99", "TOTAL",
];

fn cells(l: &Line) -> [String; 8] {
    [
        l.service.clone(),
        l.kind.into(),
        l.route.clone().unwrap_or_default(),
        format!("{:.1}", l.rate),
        format!("{:.1}", l.errors * 100.0),
        ms(l.p50_ms),
        ms(l.p99_ms),
        l.total.to_string(),
    ]
}

/// The table as plain text (`--once`).
pub fn text(lines: &[Line], by_route: bool) -> String {
    let keep = |i: usize| by_route || i != 2;
    let rows: Vec<[String; 8]> = std::iter::once(HEADER.map(String::from))
        .chain(lines.iter().map(cells))
        .collect();
    let widths: Vec<usize> = (0..8)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let cols: Vec<String> = (0..8)
            .filter(|&i| keep(i))
            .map(|i| format!("{:<w$}", r[i], w = widths[i]))
            .collect();
        out.push_str(cols.join("  ").trim_end());
        out.push('\n');
    }
    out
}

async fn fetch(addr: &str) -> Result<Requests, CliError> {
    let body = admin_client::get(addr, "/requests").await?;
    serde_json::from_str(&body).map_err(|e| CliError::AdminAnswer {
        addr: addr.to_owned(),
        status: reqwest::StatusCode::OK,
        source: Some(e),
    })
}

/// `tracer top`.
pub async fn top(addr: &str, every: Duration, by_route: bool, once: bool) -> Result<(), CliError> {
    let mut prev = fetch(addr).await?;
    if once {
        tokio::time::sleep(every).await;
        let now = fetch(addr).await?;
        return super::print(&text(&lines(Some(&prev), &now, by_route), by_route));
    }
    enable_raw_mode()?;
    let mut out = std::io::stdout();
    execute!(out, EnterAlternateScreen)?;
    let result = live(addr, every, by_route, &mut prev).await;
    disable_raw_mode()?;
    execute!(std::io::stdout(), LeaveAlternateScreen)?;
    result
}

async fn live(
    addr: &str,
    every: Duration,
    mut by_route: bool,
    prev: &mut Requests,
) -> Result<(), CliError> {
    let mut term = Terminal::new(CrosstermBackend::new(std::io::stdout()))?;
    let mut shown: Vec<Line> = lines(None, prev, by_route);
    let mut status = String::new();
    let mut next = Instant::now() + every;
    loop {
        term.draw(|f| {
            let widths = [
                Constraint::Min(16),
                Constraint::Length(11),
                Constraint::Min(if by_route { 20 } else { 0 }),
                Constraint::Length(9),
                Constraint::Length(6),
                Constraint::Length(9),
                Constraint::Length(9),
                Constraint::Length(10),
            ];
            let rows = shown.iter().map(|l| Row::new(cells(l).map(Cell::from)));
            let title = format!(
                " tracer top: {addr}, every {every:?} | r: routes {} | q: quit {status}",
                if by_route { "off" } else { "on" }
            );
            let table = Table::new(rows, widths)
                .header(Row::new(HEADER).style(Style::default().add_modifier(Modifier::BOLD)))
                .block(Block::default().borders(Borders::ALL).title(title));
            f.render_widget(table, f.area());
        })?;
        let wait = next.saturating_duration_since(Instant::now());
        if event::poll(wait)? {
            if let Event::Key(k) = event::read()?
                && k.kind == KeyEventKind::Press
            {
                match k.code {
                    KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                    KeyCode::Char('r') => by_route = !by_route,
                    _ => {}
                }
            }
            continue;
        }
        next = Instant::now() + every;
        match fetch(addr).await {
            Ok(now) => {
                shown = lines(Some(prev), &now, by_route);
                *prev = now;
                status.clear();
            }
            Err(e) => status = format!("| {e}"),
        }
        let _ = std::io::stdout().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spanmetrics::view::{Series, Service};

    fn series(instrument: &str, route: &str, err: bool, count: u64, buckets: Vec<u64>) -> Series {
        let mut attributes = BTreeMap::from([(semconv::HTTP_ROUTE.to_string(), route.to_string())]);
        if err {
            attributes.insert(semconv::ERROR_TYPE.into(), "500".into());
        }
        Series {
            instrument: instrument.into(),
            unit: "s".into(),
            attributes,
            count,
            sum: 0.0,
            bounds: vec![0.01, 0.1, 1.0],
            buckets,
        }
    }

    fn snap(t_s: u64, series: Vec<Series>) -> Requests {
        Requests {
            unix_ns: t_s * 1_000_000_000,
            services: vec![Service {
                service: "shop".into(),
                resource: BTreeMap::new(),
                series,
            }],
            edges: vec![],
        }
    }

    #[test]
    fn rates_errors_and_percentiles_come_from_the_interval() {
        let http = "http.server.request.duration";
        let before = snap(10, vec![series(http, "/a", false, 100, vec![100, 0, 0, 0])]);
        let after = snap(
            12,
            vec![
                series(http, "/a", false, 118, vec![100, 18, 0, 0]),
                series(http, "/b", true, 2, vec![0, 0, 1, 1]),
            ],
        );
        let all = lines(Some(&before), &after, false);
        assert_eq!(all.len(), 1);
        let l = &all[0];
        assert_eq!((l.rate, l.total), (10.0, 120));
        assert!((l.errors - 0.1).abs() < 1e-9);
        // 18 of 20 between 10 and 100 ms: the median is inside that bucket.
        let p50 = l.p50_ms.unwrap();
        assert!(p50 > 10.0 && p50 < 100.0, "{p50}");
        // The slowest is past the last bound: shown as that bound.
        assert_eq!(l.p99_ms, Some(1000.0));
        let by_route = lines(Some(&before), &after, true);
        assert_eq!(by_route[0].route.as_deref(), Some("/a"), "hottest first");
        assert_eq!(by_route[1].errors, 1.0);
        let t = text(&by_route, true);
        assert!(t.starts_with("SERVICE"), "{t}");
        assert!(t.lines().nth(1).unwrap().contains("/a"));
    }

    #[test]
    fn the_first_snapshot_shows_totals_without_rates() {
        let now = snap(
            5,
            vec![series(
                "rpc.client.duration",
                "/x",
                false,
                7,
                vec![7, 0, 0, 0],
            )],
        );
        let l = &lines(None, &now, false)[0];
        assert_eq!(
            (l.rate, l.total, l.p50_ms, l.kind),
            (0.0, 7, None, "rpc client")
        );
    }
}
