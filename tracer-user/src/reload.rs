//! Live reloads (SIGHUP, `POST /reload`), applied one at a time: the config file first (what
//! can change live goes to the pipeline, the rest is named as needing a restart), then the
//! plugin directory.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::sync::{mpsc, oneshot};

use crate::{
    admin::ReloadRequest,
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
    /// The settings in force.
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

impl Reloader {
    /// Answers reload requests until every sender is gone.
    pub async fn run(mut self, mut requests: mpsc::Receiver<ReloadRequest>) {
        while let Some(reply) = requests.recv().await {
            let result = self.reload().await;
            // The requester may have gone (a signal does not wait): the outcome is logged.
            let _ = reply.send(result);
        }
    }

    /// One reload: what was applied, or why something was refused (the running settings and
    /// plugins stay then). Logged and counted here.
    pub async fn reload(&mut self) -> Result<String, String> {
        let with_plugins = self.plugins.settings.dir.is_some();
        let result = match self.config.clone() {
            Some(path) => self.reload_config(&path).await,
            None if with_plugins => Ok(String::new()),
            None => Err("no --config file and no plugin directory: nothing to reload".into()),
        };
        match &result {
            Ok(msg) if msg.is_empty() => {}
            Ok(msg) => {
                self.metrics.applied.inc();
                tracing::info!("{msg}");
            }
            Err(msg) => {
                self.metrics.failed.inc();
                tracing::warn!("{msg}");
            }
        }
        if !with_plugins {
            return result;
        }
        let (report, msg) = plugins::reload(self.plugins.clone()).await;
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

    async fn reload_config(&mut self, path: &Path) -> Result<String, String> {
        let new = config::effective(Some(path), &self.flags)
            .map_err(|e| format!("config rejected, the running settings stay: {e}"))?;
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
        let restart = self.current.needs_restart(&new);
        self.current = new;
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
            r.reload().await,
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
        let msg = r.reload().await.unwrap();
        assert_eq!(
            msg,
            format!(
                "reloaded {}; changes to otlp-endpoint take effect after a restart",
                file.display()
            )
        );
        assert_eq!(updates.recv().await.unwrap().ports, [8080]);
        assert_eq!(r.current.port, [8080]);
        // Only a live option changes: nothing to restart for.
        std::fs::write(&file, "port: [9090]\notlp-endpoint: http://c:4318\n").unwrap();
        assert_eq!(r.reload().await, Ok(format!("reloaded {}", file.display())));
        assert_eq!(updates.recv().await.unwrap().ports, [9090]);
        assert_eq!(r.metrics.applied.get(), 2);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn a_bad_file_or_a_stopping_pipeline_keeps_the_running_settings() {
        let d = tmp("bad");
        let file = d.join("tracer.yaml");
        std::fs::write(&file, "prot: [80]\n").unwrap();
        let (mut r, mut updates) = reloader(Some(file.clone()), None, Ok(()));
        let e = r.reload().await.unwrap_err();
        assert!(
            e.starts_with("config rejected, the running settings stay: ")
                && e.contains("unknown field `prot`"),
            "{e}"
        );
        assert!(updates.try_recv().is_err(), "nothing sent to the pipeline");

        std::fs::write(&file, "port: [80]\n").unwrap();
        let (mut r, _) = reloader(Some(file.clone()), None, Err(STOPPING.into()));
        assert_eq!(r.reload().await, Err(STOPPING.into()));
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
        assert_eq!(r.reload().await, Ok("plugin chain unchanged (v0)".into()));
        // A refused plugin fails the reload, and the config part is still reported.
        let file = d.join("tracer.yaml");
        std::fs::write(&file, "port: [80]\n").unwrap();
        let bad = plugins.join("10-bad.wasm");
        std::fs::write(&bad, b"not wasm").unwrap();
        std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (mut r, _) = reloader(Some(file.clone()), Some(plugins), Ok(()));
        let e = r.reload().await.unwrap_err();
        assert!(
            e.starts_with(&format!("reloaded {}\n", file.display()))
                && e.contains("REJECTED 10-bad: not a WebAssembly file"),
            "{e}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
