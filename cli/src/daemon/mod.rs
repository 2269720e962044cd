//! The long-running proxy: sources feed the handlers, a sync thread applies changes on the
//! bounded-frequency schedule, HTTP serves health and metrics, SIGTERM stops it cleanly.
//!
//! Threads, not tasks, for the blocking parts: the proxier runs iptables processes and the file
//! source polls the disk; the tokio runtime serves HTTP and waits for signals. Everything shared is
//! behind short-held mutexes: handlers only record, so a lock is never held across a sync.

mod conntrack_settings;
mod file_source;
mod http;
mod kube_source;
mod process_limits;
mod service_health;
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
    /// Set by the sync thread when the datapath cannot be programmed at all (a fatal proxier
    /// error); the daemon then exits with it.
    pub(crate) fatal: Mutex<Option<String>>,
    /// Wakes the HTTP side when the daemon must stop without a signal (a fatal error).
    pub(crate) stop: tokio::sync::Notify,
    /// What every health-check node port answers, published after each sync.
    pub(crate) service_health: tokio::sync::watch::Sender<
        std::collections::BTreeMap<u16, proxy_core::service_health::ServiceHealthEntry>,
    >,
}

impl Shared {
    /// Shared state for these trackers, with `health_timeout` (2 × syncPeriod).
    pub(crate) fn new(trackers: Vec<PendingChanges>, health_timeout: std::time::Duration) -> Self {
        Self {
            pending: Mutex::new(trackers),
            health: Mutex::new(ProxyHealth::new(health_timeout)),
            metrics: Mutex::new(ProxyMetrics::new()),
            wake: (Mutex::new(false), Condvar::new()),
            shutdown: AtomicBool::new(false),
            fatal: Mutex::new(None),
            stop: tokio::sync::Notify::new(),
            service_health: tokio::sync::watch::channel(Default::default()).0,
        }
    }

    /// Wakes the sync thread.
    pub(crate) fn notify(&self) {
        let (flag, cv) = &self.wake;
        *flag.lock().expect("wake lock") = true;
        cv.notify_all();
    }

    /// Records that sources queued changes: health (the oldest waiting change is kept by
    /// [`ProxyHealth`], the one place that tracks it) and the change metrics. Call with the
    /// trackers' lock held.
    pub(crate) fn queued(&self, trackers: &[PendingChanges]) {
        self.health
            .lock()
            .expect("health lock")
            .queued(std::time::SystemTime::now());
        self.publish_changes(trackers);
    }

    /// Mirrors the trackers' change counters into the metrics (pending gauges, cumulative
    /// counters). The counts live in the trackers; this only publishes them.
    pub(crate) fn publish_changes(&self, trackers: &[PendingChanges]) {
        if let Some(first) = trackers.first() {
            self.metrics.lock().expect("metrics lock").changes(
                first.counters(),
                first.pending_service_changes(),
                first.pending_endpoint_changes(),
            );
        }
    }

    /// Publishes what the health-check node ports answer.
    pub(crate) fn publish_service_health(
        &self,
        ports: &std::collections::BTreeMap<u16, proxy_core::service_health::ServiceHealthEntry>,
    ) {
        self.service_health.send_replace(ports.clone());
    }

    /// Stops the daemon with a fatal error.
    pub(crate) fn fail(&self, error: String) {
        *self.fatal.lock().expect("fatal lock") = Some(error);
        self.shutdown.store(true, Ordering::SeqCst);
        self.stop.notify_one();
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
    process_limits::limit_malloc_arenas();
    let trackers = settings
        .families
        .iter()
        .map(|f| PendingChanges::new(*f, &settings.node_name, settings.filter.clone()))
        .collect();
    let shared = Arc::new(Shared::new(trackers, settings.sync_period * 2));
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
                "starting kproxy ({}), manifests from {}",
                settings.mode,
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
                mode = %settings.mode,
                "starting kproxy, watching the API server"
            );
            let _guard = runtime.enter();
            let selector = kube_source::service_selector(settings.filter.proxy_name.as_deref());
            kube_source::start(client, &settings.node_name, &selector, Arc::clone(&shared));
            None
        }
    };
    // The sources are up: this is a proxy that will run, so set what kube-proxy sets at start.
    conntrack_settings::apply(&settings.config);
    conntrack_settings::apply_oom_score_adj(&settings.config);
    process_limits::raise_open_files_limit();
    let (port_proxy_metrics, service_traffic_metrics) = {
        let metrics = shared.metrics.lock().expect("metrics lock");
        (metrics.port_proxy(), metrics.service_traffic())
    };
    let context = crate::modes::ProxierContext {
        runtime: Some(runtime.handle().clone()),
        port_proxy_metrics,
        service_traffic_metrics,
    };
    let sync = sync_thread::start(settings.clone(), Arc::clone(&shared), context)?;
    let health_ports = runtime.spawn(service_health::serve(Arc::clone(&shared)));

    let mut result = runtime.block_on(http::serve_until_signal(&settings, Arc::clone(&shared)));
    health_ports.abort();

    // Stop: no new syncs, finish the one in flight, leave the rules in place.
    shared.shutdown.store(true, Ordering::SeqCst);
    shared.notify();
    if let Some(source) = source {
        source.stop();
    }
    let _ = sync.join();
    if let Some(error) = shared.fatal.lock().expect("fatal lock").take() {
        result = Err(anyhow::anyhow!("cannot program the datapath: {error}"));
    }
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
