//! Live reloads (SIGHUP, `POST /reload`), applied one at a time: the config file first (what
//! can change live goes to the pipeline, the rest is named as needing a restart), then the
//! plugin directory.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Instant, SystemTime},
};

use tokio::sync::{mpsc, oneshot};

use crate::{
    admin::ReloadRequest,
    changes::{Effective, Outcome, Trigger},
    config::{self, RunOptions},
    metrics::{Counter, Registry},
    pipeline,
    plugins::{self, PluginHost},
};

const STOPPING: &str = "the tracer is stopping";

/// What a reload starts from and where it sends the result.
pub struct Reloader {
    /// `--config`: re-read at every reload.
    pub config: Option<PathBuf>,
    /// The command-line flags, which win over the file.
    pub flags: RunOptions,
    /// The settings the daemon started with: those read once at start stay in force.
    pub started: RunOptions,
    /// The settings last loaded.
    pub current: RunOptions,
    /// The pipeline's side of a live update.
    pub control: mpsc::Sender<pipeline::Update>,
    pub plugins: Arc<PluginHost>,
    pub metrics: ReloadMetrics,
}

/// Config reloads applied and refused.
pub struct ReloadMetrics {
    pub applied: Counter,
    pub failed: Counter,
}

impl ReloadMetrics {
    pub fn new(reg: &Registry) -> Self {
        ReloadMetrics {
            applied: reg.counter(
                "config_reloads",
                "Config reloads applied (SIGHUP or POST /reload)",
            ),
            failed: reg.counter(
                "config_reload_failures",
                "Config reloads rejected (the running config stayed)",
            ),
        }
    }
}

/// The settings in force, their version and what waits for a restart, for `GET /config`
/// and the `tracer.config.version` of every span.
pub fn effective(started: &RunOptions, current: &RunOptions, file: Option<&Path>) -> Effective {
    let pending = started
        .needs_restart(current)
        .into_iter()
        .map(String::from)
        .collect();
    Effective::new(
        serde_json::to_value(current.in_effect(started)).unwrap_or_default(),
        pending,
        file.map(|f| f.display().to_string()),
    )
}

impl Reloader {
    /// Answers reload requests until every sender is gone.
    pub async fn run(mut self, mut requests: mpsc::Receiver<ReloadRequest>) {
        while let Some(req) = requests.recv().await {
            let result = self.reload(req.trigger).await;
            // The requester may have gone (a signal does not wait): the outcome is logged.
            let _ = req.reply.send(result);
        }
    }

    /// One reload: what was applied, or why something was refused (the running settings and
    /// plugins stay then). Logged, counted and reported as a change here.
    pub async fn reload(&mut self, trigger: Trigger) -> Result<String, String> {
        let t0 = (SystemTime::now(), Instant::now());
        let with_plugins = self.plugins.settings.dir.is_some();
        let mut what = Vec::new();
        let result = match self.config.clone() {
            Some(path) => self.reload_config(&path, &mut what).await,
            None if with_plugins => Ok(String::new()),
            None => Err("no --config file and no plugin directory: nothing to reload".into()),
        };
        match &result {
            Ok(msg) if msg.is_empty() => {}
            Ok(msg) => tracing::info!("{msg}"),
            Err(msg) => {
                self.metrics.failed.inc();
                what.push(msg.clone());
                tracing::warn!("{msg}");
            }
        }
        let mut outcome = match &result {
            Err(_) => Outcome::rejected,
            Ok(_) if what.is_empty() => Outcome::unchanged,
            Ok(_) => Outcome::applied,
        };
        if !with_plugins {
            self.plugins.report(trigger, t0, what, outcome);
            return result;
        }
        let (report, msg) = plugins::reload(self.plugins.clone(), None).await;
        what.extend(report.changes());
        outcome = match (outcome, report.outcome()) {
            (Outcome::rejected, _) | (_, Outcome::rejected) => Outcome::rejected,
            (Outcome::applied, _) | (_, Outcome::applied) => Outcome::applied,
            _ => Outcome::unchanged,
        };
        self.plugins.report(trigger, t0, what, outcome);
        let join = |a: String| {
            if a.is_empty() {
                msg.clone()
            } else {
                format!("{a}\n{msg}")
            }
        };
        match result {
            Ok(a) if report.rejected.is_empty() => Ok(join(a)),
            Ok(a) | Err(a) => Err(join(a)),
        }
    }

    /// Applies the file when its settings differ from those in force (the same content is a
    /// no-op: nothing is sent to the pipeline, nothing counted).
    async fn reload_config(
        &mut self,
        path: &Path,
        what: &mut Vec<String>,
    ) -> Result<String, String> {
        let new = config::effective(Some(path), &self.flags)
            .map_err(|e| format!("config rejected, the running settings stay: {e}"))?;
        if new == self.current {
            return Ok(format!("{} unchanged", path.display()));
        }
        let (applied, done) = oneshot::channel();
        let update = pipeline::Update {
            table: new.table_options(),
            probes: new.probe_options(),
            applied,
        };
        self.control
            .send(update)
            .await
            .map_err(|_| STOPPING.to_string())?;
        done.await.unwrap_or_else(|_| Err(STOPPING.into()))?;
        self.plugins
            .export_unsampled
            .store(new.export_unsampled, std::sync::atomic::Ordering::Relaxed);
        self.current = new;
        self.metrics.applied.inc();
        let changes = &self.plugins.changes;
        let before = changes.version();
        let now = effective(&self.started, &self.current, Some(path));
        let restart = now.pending_restart.clone();
        changes.set_effective(now);
        what.push(format!(
            "settings {} -> {} from {}",
            before,
            changes.version(),
            path.display()
        ));
        // Pending until the restart, however many reloads come in between.
        Ok(if restart.is_empty() {
            format!("reloaded {}", path.display())
        } else {
            format!(
                "reloaded {}; changes to {} take effect after a restart",
                path.display(),
                restart.join(", ")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::{conntrack::TableOptions, plugins::Settings};

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tracer-reload-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A reloader whose pipeline side answers every update with `answer`, and hands the
    /// table options it got to the test.
    fn reloader(
        config: Option<PathBuf>,
        plugin_dir: Option<PathBuf>,
        answer: Result<(), String>,
    ) -> (Reloader, mpsc::UnboundedReceiver<TableOptions>) {
        let (control, mut updates) = mpsc::channel::<pipeline::Update>(1);
        let (seen_tx, seen) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(pipeline::Update { table, applied, .. }) = updates.recv().await {
                let _ = applied.send(answer.clone());
                let _ = seen_tx.send(table);
            }
        });
        let plugins = PluginHost::new(
            Settings {
                dir: plugin_dir,
                ..Default::default()
            },
            &Registry::default(),
        )
        .unwrap();
        let r = Reloader {
            config,
            flags: RunOptions::default(),
            started: RunOptions::default(),
            current: RunOptions::default(),
            control,
            plugins: Arc::new(plugins),
            metrics: ReloadMetrics::new(&Registry::default()),
        };
        (r, seen)
    }

    #[tokio::test]
    async fn nothing_to_reload_is_an_error() {
        let (mut r, _) = reloader(None, None, Ok(()));
        assert_eq!(
            r.reload(Trigger::admin).await,
            Err("no --config file and no plugin directory: nothing to reload".into())
        );
        assert_eq!(r.metrics.failed.get(), 1);
    }

    #[tokio::test]
    async fn a_changed_file_is_applied_live_and_names_what_needs_a_restart() {
        let d = tmp("live");
        let file = d.join("tracer.yaml");
        std::fs::write(&file, "port: [8080]\notlp-endpoint: http://c:4318\n").unwrap();
        let (mut r, mut updates) = reloader(Some(file.clone()), None, Ok(()));
        let msg = r.reload(Trigger::admin).await.unwrap();
        assert_eq!(
            msg,
            format!(
                "reloaded {}; changes to otlp-endpoint take effect after a restart",
                file.display()
            )
        );
        assert_eq!(updates.recv().await.unwrap().ports, [8080]);
        assert_eq!(r.current.port, [8080]);
        // Only a live option changes: the endpoint still waits for the restart.
        std::fs::write(&file, "port: [9090]\notlp-endpoint: http://c:4318\n").unwrap();
        assert_eq!(
            r.reload(Trigger::admin).await,
            Ok(format!(
                "reloaded {}; changes to otlp-endpoint take effect after a restart",
                file.display()
            ))
        );
        assert_eq!(updates.recv().await.unwrap().ports, [9090]);
        assert_eq!(r.metrics.applied.get(), 2);
        let e = r.plugins.changes.effective();
        assert_eq!(e.pending_restart, ["otlp-endpoint"]);
        assert_eq!(
            e.settings["port"],
            serde_json::json!([9090]),
            "live options in force"
        );
        assert!(
            e.settings["otlp-endpoint"].is_null(),
            "the started endpoint stays in force"
        );
        // The same content again: nothing sent, nothing counted, the version stays.
        let v = r.plugins.changes.version();
        assert_eq!(
            r.reload(Trigger::sighup).await,
            Ok(format!("{} unchanged", file.display()))
        );
        assert!(updates.try_recv().is_err());
        assert_eq!(r.metrics.applied.get(), 2);
        assert_eq!(r.plugins.changes.version(), v);
        let last = r.plugins.changes.recent().pop().unwrap();
        assert_eq!(
            (last.trigger, last.outcome),
            (Trigger::sighup, Outcome::unchanged)
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn a_bad_file_or_a_stopping_pipeline_keeps_the_running_settings() {
        let d = tmp("bad");
        let file = d.join("tracer.yaml");
        std::fs::write(&file, "prot: [80]\n").unwrap();
        let (mut r, mut updates) = reloader(Some(file.clone()), None, Ok(()));
        let e = r.reload(Trigger::admin).await.unwrap_err();
        assert!(
            e.starts_with("config rejected, the running settings stay: ")
                && e.contains("unknown field `prot`"),
            "{e}"
        );
        assert!(updates.try_recv().is_err(), "nothing sent to the pipeline");

        std::fs::write(&file, "port: [80]\n").unwrap();
        let (mut r, _) = reloader(Some(file.clone()), None, Err(STOPPING.into()));
        assert_eq!(r.reload(Trigger::admin).await, Err(STOPPING.into()));
        assert_eq!(r.current, RunOptions::default(), "not applied");
        assert_eq!(r.metrics.failed.get(), 1);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn the_plugin_directory_is_rescanned_after_the_file() {
        let d = tmp("plugins");
        let plugins = d.join("plugins");
        std::fs::create_dir(&plugins).unwrap();
        let (mut r, _) = reloader(None, Some(plugins.clone()), Ok(()));
        assert_eq!(
            r.reload(Trigger::admin).await,
            Ok("plugin chain unchanged (v0)".into())
        );
        // A refused plugin fails the reload, and the config part is still reported.
        let file = d.join("tracer.yaml");
        std::fs::write(&file, "port: [80]\n").unwrap();
        let bad = plugins.join("10-bad.wasm");
        std::fs::write(&bad, b"not wasm").unwrap();
        std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (mut r, _) = reloader(Some(file.clone()), Some(plugins), Ok(()));
        let e = r.reload(Trigger::admin).await.unwrap_err();
        assert!(
            e.starts_with(&format!("reloaded {}\n", file.display()))
                && e.contains("REJECTED 10-bad: not a WebAssembly file"),
            "{e}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
