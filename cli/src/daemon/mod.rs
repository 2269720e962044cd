//! The long-running proxy: sources feed the handlers, a sync thread applies changes on the
//! bounded-frequency schedule, HTTP serves health and metrics, SIGTERM stops it cleanly.
//!
//! Threads, not tasks, for the blocking parts: the proxier runs iptables processes and the file
//! source polls the disk; the tokio runtime serves HTTP and waits for signals. Everything shared is
//! behind short-held mutexes: handlers only record, so a lock is never held across a sync.

mod file_source;
mod http;
mod kube_source;
mod settings;
mod sync_thread;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use anyhow::Context;
use proxy_core::health::ProxyHealth;
use proxy_core::metrics::ProxyMetrics;
use proxy_core::PendingChanges;

use crate::args::DaemonArgs;
pub(crate) use settings::Settings;

/// Errors that mean "bad configuration" (exit status 2).
pub(crate) mod settings_error {
    pub(crate) use super::settings::BadSetting;
}

/// What the threads share.
#[derive(Debug)]
pub(crate) struct Shared {
    /// One change tracker per IP family the proxy programs, fed the same events.
    pub(crate) pending: Mutex<Vec<PendingChanges>>,
    pub(crate) health: Mutex<ProxyHealth>,
    pub(crate) metrics: Mutex<ProxyMetrics>,
    /// Set when a source recorded a change (or on shutdown); the sync thread waits on it.
    pub(crate) wake: (Mutex<bool>, Condvar),
    pub(crate) shutdown: AtomicBool,
}

impl Shared {
    /// Wakes the sync thread.
    pub(crate) fn notify(&self) {
        let (flag, cv) = &self.wake;
        *flag.lock().expect("wake lock") = true;
        cv.notify_all();
    }

    /// Records that sources queued changes: health (the oldest waiting change) and the
    /// pending/total change metrics. Call with the trackers' lock held and released by the caller.
    pub(crate) fn queued(&self, trackers: &[PendingChanges]) {
        self.health
            .lock()
            .expect("health lock")
            .queued(std::time::SystemTime::now());
        if let Some(first) = trackers.first() {
            self.metrics.lock().expect("metrics lock").changes(
                first.counters(),
                first.pending_service_changes(),
                first.pending_endpoint_changes(),
            );
        }
    }

    pub(crate) fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }
}

/// Runs the proxy until SIGTERM or SIGINT.
pub(crate) fn run(args: &DaemonArgs) -> anyhow::Result<()> {
    let settings = Settings::from_args(args)?;
    if let Some(path) = &args.write_config_to {
        std::fs::write(path, settings.config.to_yaml())
            .with_context(|| format!("writing {}", path.display()))?;
        return Ok(());
    }
    let trackers = settings
        .families
        .iter()
        .map(|f| PendingChanges::new(*f, &settings.node_name, settings.filter.clone()))
        .collect();
    let shared = Arc::new(Shared {
        pending: Mutex::new(trackers),
        health: Mutex::new(ProxyHealth::new(settings.sync_period * 2)),
        metrics: Mutex::new(ProxyMetrics::new()),
        wake: (Mutex::new(false), Condvar::new()),
        shutdown: AtomicBool::new(false),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;

    let source = match args.manifests.clone() {
        Some(manifests) => {
            tracing::info!(
                node = %settings.node_name,
                families = ?settings.families,
                "starting kproxy (iptables), manifests from {}",
                manifests.display()
            );
            // The first load must work: a broken file at start is a configuration error (exit 2).
            Some(file_source::FileSource::start(
                manifests,
                Arc::clone(&shared),
            )?)
        }
        None => {
            let client = runtime.block_on(kube_client(args, &settings))?;
            tracing::info!(
                node = %settings.node_name,
                families = ?settings.families,
                "starting kproxy (iptables), watching the API server"
            );
            let _guard = runtime.enter();
            let selector = kube_source::service_selector(settings.filter.proxy_name.as_deref());
            kube_source::start(client, &settings.node_name, &selector, Arc::clone(&shared));
            None
        }
    };
    let sync = sync_thread::start(settings.clone(), Arc::clone(&shared))?;

    let result = runtime.block_on(http::serve_until_signal(&settings, Arc::clone(&shared)));

    // Stop: no new syncs, finish the one in flight, leave the rules in place.
    shared.shutdown.store(true, Ordering::SeqCst);
    shared.notify();
    if let Some(source) = source {
        source.stop();
    }
    let _ = sync.join();
    tracing::info!("stopped; rules left in place");
    result
}

/// A client for the API server: `--kubeconfig` (or `clientConnection.kubeconfig`) and `--master`,
/// else in-cluster settings or `~/.kube/config`.
async fn kube_client(args: &DaemonArgs, settings: &Settings) -> anyhow::Result<kube::Client> {
    let path = args.kubeconfig.clone().or_else(|| {
        let p = &settings.config.client_connection.kubeconfig;
        (!p.is_empty()).then(|| p.into())
    });
    let mut config = match &path {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        None => match &args.master {
            Some(master) => kube::Config::new(
                master
                    .parse()
                    .map_err(|e| settings::BadSetting(format!("--master {master:?}: {e}")))?,
            ),
            None => kube::Config::infer()
                .await
                .context("no --kubeconfig, --master or in-cluster configuration")?,
        },
    };
    if let (Some(master), Some(_)) = (&args.master, &path) {
        config.cluster_url = master
            .parse()
            .map_err(|e| settings::BadSetting(format!("--master {master:?}: {e}")))?;
    }
    kube::Client::try_from(config).context("creating the API client")
}
