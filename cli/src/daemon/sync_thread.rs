//! The sync thread: waits for changes, the schedule or housekeeping, and drives the proxiers.
//!
//! It knows no backend: proxiers come from the mode factory ([`crate::modes`]) and are reached only
//! through the [`Proxier`] trait.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use proxy_core::service_health::ServiceHealthPorts;
use proxy_core::{
    NodeInfo, PendingBatch, Proxier, ProxyState, ScheduleConfig, StateDiff, SyncKind, SyncReport,
    SyncSchedule,
};

use super::{Settings, Shared};
use crate::handover::Handover;
use crate::modes::{self, ProxierContext};

/// Builds one proxier per family through the factory and starts the thread. A proxier that cannot
/// be built is a start-up error.
pub(crate) fn start(
    settings: Settings,
    shared: Arc<Shared>,
    context: ProxierContext,
) -> anyhow::Result<JoinHandle<()>> {
    // Planned before any proxier reads the tables, so it sees the variant they choose.
    let handover = Handover::plan(settings.mode, &settings.datapath, &settings.families);
    let mut families = Vec::new();
    for family in &settings.families {
        families.push(FamilyProxy {
            state: ProxyState::new(*family, NodeInfo::named(&settings.node_name)),
            proxier: Box::new(modes::build_managed(
                settings.mode,
                *family,
                &settings.datapath,
                &context,
            )?),
        });
    }
    let thread = std::thread::Builder::new()
        .name("sync".into())
        .spawn(move || run(settings, shared, families, Some(handover)))?;
    Ok(thread)
}

/// One family's state and proxier. The proxier lives as long as the daemon: Node updates reach it
/// through the state, so its caches and what it learned at start survive them.
struct FamilyProxy {
    state: ProxyState,
    proxier: Box<dyn Proxier>,
}

/// What a sync takes out of the trackers, under their lock.
struct Drained {
    kind: SyncKind,
    batches: Vec<PendingBatch>,
    triggers: Vec<SystemTime>,
}

fn drain(shared: &Shared, schedule: &mut SyncSchedule) -> Option<Drained> {
    let mut trackers = shared.pending.lock().expect("pending lock");
    if trackers.iter().any(|p| p.has_pending()) {
        schedule.request();
    }
    let synced = trackers.iter().all(|p| p.is_synced());
    let kind = schedule.due(Instant::now(), synced)?;
    let batches = trackers.iter_mut().map(|p| p.take_batch()).collect();
    let triggers = trackers[0].take_trigger_times();
    for other in trackers.iter_mut().skip(1) {
        other.take_trigger_times(); // the same events: count them once
    }
    shared.publish_changes(&trackers);
    shared
        .health
        .lock()
        .expect("health lock")
        .set_node_eligible(trackers[0].node_eligible());
    Some(Drained {
        kind,
        batches,
        triggers,
    })
}

/// The sync loop. `handover` runs after the first sync that succeeds for every family, and again
/// after later full syncs until it succeeds.
fn run(
    settings: Settings,
    shared: Arc<Shared>,
    mut families: Vec<FamilyProxy>,
    mut handover: Option<Handover>,
) {
    let mut schedule = SyncSchedule::new(ScheduleConfig {
        min_interval: settings.min_sync_period,
        max_interval: settings.sync_period,
        retry_interval: settings.min_sync_period.max(Duration::from_secs(1)),
    });
    let housekeeping_every = families
        .iter()
        .filter_map(|f| f.proxier.housekeeping_interval())
        .min();
    let mut next_housekeeping = housekeeping_every.map(|d| Instant::now() + d);
    let mut health_ports = ServiceHealthPorts::default();

    while !shared.stopping() {
        if let Some(drained) = drain(&shared, &mut schedule) {
            // The trackers' lock is released: sources keep recording while the state moves.
            let diffs: Vec<StateDiff> = families
                .iter_mut()
                .zip(drained.batches)
                .map(|(fam, batch)| {
                    let mut diff = fam.state.apply_batch(batch);
                    diff.full |= drained.kind == SyncKind::Full;
                    diff
                })
                .collect();
            let started = Instant::now();
            let mut reports = Vec::new();
            let mut failure = None;
            for (fam, diff) in families.iter_mut().zip(&diffs) {
                match fam.proxier.sync(&fam.state, diff) {
                    Ok(report) => reports.push(report),
                    Err(e) => {
                        let fatal = e.is_fatal();
                        let e =
                            anyhow::Error::new(e).context(format!("{} rules", fam.state.family()));
                        failure = Some((fatal, e));
                    }
                }
            }
            let took = started.elapsed();
            // Health-check node ports follow the first family's state (upstream serves one).
            if health_ports.update(&families[0].state, &diffs[0]) {
                shared.publish_service_health(health_ports.ports());
            }
            match failure {
                None => {
                    let done = if reports.iter().any(|r| r.full) {
                        SyncKind::Full
                    } else {
                        SyncKind::Changes
                    };
                    schedule.ran(done, started, true);
                    if done == SyncKind::Full {
                        schedule.full_sync_finished(Instant::now());
                    }
                    record_success(
                        &shared,
                        done,
                        took,
                        &drained.triggers,
                        &reports,
                        &families[0].state,
                    );
                    tracing::debug!(?done, ?took, "synced");
                    if let Some(h) = handover.take() {
                        // The first sync after start is full; a failed handover waits for the
                        // next full one rather than retrying at every change.
                        if done == SyncKind::Full {
                            if let Err(failures) = h.run() {
                                tracing::warn!(
                                    "removing other modes' leftovers failed (retried after the \
                                     next full sync): {}",
                                    failures.join("; ")
                                );
                                handover = Some(h);
                            }
                        } else {
                            handover = Some(h);
                        }
                    }
                    if done == SyncKind::Full {
                        release_freed_memory();
                    }
                }
                Some((true, e)) => {
                    tracing::error!("sync failed and cannot be retried: {e:#}");
                    shared.fail(format!("{e:#}"));
                    break;
                }
                Some((false, e)) => {
                    schedule.ran(drained.kind, started, false);
                    shared
                        .metrics
                        .lock()
                        .expect("metrics lock")
                        .restore_failed();
                    tracing::error!("sync failed, retrying with a full sync: {e:#}");
                }
            }
            continue;
        }
        if let (Some(at), Some(every)) = (next_housekeeping, housekeeping_every) {
            if Instant::now() >= at {
                for fam in &mut families {
                    if let Err(e) = fam.proxier.housekeeping() {
                        tracing::warn!("{} housekeeping: {e:#}", fam.state.family());
                    }
                }
                next_housekeeping = Some(Instant::now() + every);
            }
        }
        // Sleep until the schedule's next wake-up, housekeeping, or a source's notification.
        let mut wake_at = schedule.next_wake(Instant::now());
        if let Some(at) = next_housekeeping {
            wake_at = wake_at.min(at);
        }
        let (flag, cv) = &shared.wake;
        let mut woken = flag.lock().expect("wake lock");
        let timeout = wake_at.saturating_duration_since(Instant::now());
        if !*woken {
            woken = cv.wait_timeout(woken, timeout).expect("wake lock").0;
        }
        *woken = false;
    }
    for fam in &mut families {
        if let Err(e) = fam.proxier.shutdown() {
            tracing::warn!("{} shutdown: {e:#}", fam.state.family());
        }
    }
}

fn record_success(
    shared: &Shared,
    done: SyncKind,
    took: Duration,
    triggers: &[SystemTime],
    reports: &[SyncReport],
    state: &ProxyState,
) {
    let now = SystemTime::now();
    shared.health.lock().expect("health lock").updated(now);
    let metrics = shared.metrics.lock().expect("metrics lock");
    metrics.synced(done, took, now);
    metrics.programmed(triggers, now);
    metrics.no_local_endpoints(state);
    metrics.refused_frontends(state);
    metrics.reports(reports);
}

/// Hands memory the allocator holds free back to the kernel. A full sync of a large cluster
/// allocates and frees tens of MiB (the restore text, the initial lists); glibc keeps such pages
/// in its arenas, so without this the RSS stays at the high-water mark (measured at 20,000
/// Services: BENCHMARKS.md). Runs after full syncs only: a few milliseconds, rarely.
fn release_freed_memory() {
    // SAFETY: malloc_trim only walks glibc's own free lists; it has no preconditions.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    //! The runner's side of the lifecycle, with a scripted proxier: what it is called with, when
    //! housekeeping runs, what a retryable and a fatal error do, and that shutdown is called.

    use std::sync::Mutex;

    use clap::Parser;
    use fixtures::builder::ServiceBuilder;
    use proxy_core::{
        ErrorKind, IpFamily, ObjectCount, PendingChanges, ProxierError, ProxyMode, ServiceFilter,
        ServiceHandler,
    };

    use super::*;

    /// What the runner asked of the proxier, in order.
    #[derive(Debug, Clone, PartialEq)]
    enum Call {
        Sync { full: bool, added: usize },
        Housekeeping,
        Shutdown,
    }

    #[derive(Debug)]
    struct Scripted {
        calls: Arc<Mutex<Vec<Call>>>,
        /// The outcome of each sync in turn; `Ok` once the script runs out.
        script: Vec<Option<ErrorKind>>,
    }

    impl Proxier for Scripted {
        fn mode(&self) -> ProxyMode {
            ProxyMode::Iptables
        }
        fn sync(&mut self, _: &ProxyState, diff: &StateDiff) -> Result<SyncReport, ProxierError> {
            self.calls.lock().unwrap().push(Call::Sync {
                full: diff.full,
                added: diff.added.len(),
            });
            match (!self.script.is_empty())
                .then(|| self.script.remove(0))
                .flatten()
            {
                Some(kind) => Err(ProxierError {
                    kind,
                    ..ProxierError::new(ProxyMode::Iptables, "a scripted sync", "scripted")
                }),
                None => Ok(SyncReport {
                    full: diff.full,
                    written: vec![ObjectCount::iptables("nat", 3)],
                    owned: vec![ObjectCount::iptables("nat", 42)],
                    counters: Vec::new(),
                }),
            }
        }
        fn housekeeping_interval(&self) -> Option<Duration> {
            Some(Duration::from_millis(20))
        }
        fn housekeeping(&mut self) -> Result<(), ProxierError> {
            self.calls.lock().unwrap().push(Call::Housekeeping);
            Ok(())
        }
        fn shutdown(&mut self) -> Result<(), ProxierError> {
            self.calls.lock().unwrap().push(Call::Shutdown);
            Ok(())
        }
        fn cleanup(&mut self) -> Result<(), ProxierError> {
            Ok(())
        }
    }

    fn wait_until(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn runner_drives_the_lifecycle_through_the_trait() {
        let cli = crate::args::Cli::parse_from([
            "kproxy",
            "--hostname-override",
            "n",
            "--iptables-min-sync-period",
            "0",
        ]);
        let settings = Settings::from_args(&cli.daemon).unwrap();
        let mut tracker = PendingChanges::new(IpFamily::V4, "n", ServiceFilter::default());
        tracker.on_service_synced();
        proxy_core::EndpointSliceHandler::on_endpoint_slice_synced(&mut tracker);
        let shared = Arc::new(Shared::new(vec![tracker], Duration::from_secs(60)));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let proxier = Scripted {
            calls: Arc::clone(&calls),
            // first sync fine; the second fails (retry); the fourth is fatal
            script: vec![None, Some(ErrorKind::Retry), None, Some(ErrorKind::Fatal)],
        };
        let families = vec![FamilyProxy {
            state: ProxyState::new(IpFamily::V4, NodeInfo::named("n")),
            proxier: Box::new(proxier),
        }];
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || run(settings, shared, families, None))
        };
        let syncs = || {
            calls
                .lock()
                .unwrap()
                .iter()
                .filter(|c| matches!(c, Call::Sync { .. }))
                .cloned()
                .collect::<Vec<_>>()
        };
        let add = |name: &str, ip: &str| {
            let svc = ServiceBuilder::new("ns", name, ip)
                .port("p", 80, "TCP")
                .build();
            let mut trackers = shared.pending.lock().unwrap();
            trackers[0].on_service_add(&svc);
            shared.queued(&trackers);
            drop(trackers);
            shared.notify();
        };

        wait_until("the first sync", || syncs().len() == 1);
        assert_eq!(
            syncs()[0],
            Call::Sync {
                full: true,
                added: 0
            }
        );
        wait_until("housekeeping between syncs", || {
            calls.lock().unwrap().contains(&Call::Housekeeping)
        });

        add("a", "172.30.0.1"); // this sync fails (retry) ...
        wait_until("the failing sync", || syncs().len() == 2);
        assert_eq!(
            syncs()[1],
            Call::Sync {
                full: false,
                added: 1
            }
        );
        // ... and the retry is full, whatever its diff holds.
        wait_until("the retry", || syncs().len() == 3);
        assert!(
            matches!(syncs()[2], Call::Sync { full: true, .. }),
            "{:?}",
            syncs()
        );
        let metrics = shared.metrics.lock().unwrap().encode();
        assert!(
            metrics.contains("kubeproxy_sync_proxy_rules_iptables_restore_failures_total 1"),
            "{metrics}"
        );
        wait_until("the report in the metrics", || {
            shared
                .metrics
                .lock()
                .unwrap()
                .encode()
                .contains("kubeproxy_sync_proxy_rules_iptables_total{table=\"nat\"} 42")
        });

        add("b", "172.30.0.2"); // fatal: the runner stops, shuts the proxier down, says why
        thread.join().unwrap();
        assert!(shared.stopping());
        let fatal = shared.fatal.lock().unwrap().clone().unwrap();
        assert!(fatal.contains("a scripted sync"), "{fatal}");
        assert_eq!(calls.lock().unwrap().last(), Some(&Call::Shutdown));
    }
}
