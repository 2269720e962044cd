//! The sync thread: waits for changes or the schedule, applies them through the proxier.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime};

use backend_iptables::conntrack::{ConntrackOps, NetlinkConntrack};
use backend_iptables::{detect_variant, IptablesCmd, IptablesProxier, Renderer, Variant};
use proxy_core::{NodeInfo, Proxier, ProxyState, ScheduleConfig, SyncKind, SyncSchedule};

use super::{Settings, Shared};
use crate::args::IptablesVariant;

/// Starts the thread.
pub(crate) fn start(settings: Settings, shared: Arc<Shared>) -> anyhow::Result<JoinHandle<()>> {
    let variants: Vec<Variant> = settings
        .families
        .iter()
        .map(|f| match settings.variant {
            IptablesVariant::Auto => detect_variant(*f),
            IptablesVariant::Nft => Variant::Nft,
            IptablesVariant::Legacy => Variant::Legacy,
        })
        .collect();
    tracing::info!("using iptables-{}", variants[0]);
    let thread = std::thread::Builder::new()
        .name("sync".into())
        .spawn(move || run(settings, shared, variants))?;
    Ok(thread)
}

fn proxier_for(
    settings: &Settings,
    state: &ProxyState,
    variant: Variant,
) -> anyhow::Result<IptablesProxier> {
    let config = settings.render_config(state.family(), &state.node().addresses)?;
    let conntrack = NetlinkConntrack::open()
        .map_err(|e| tracing::warn!("conntrack cleanup disabled: {e}"))
        .ok()
        .map(|c| Box::new(c) as Box<dyn ConntrackOps>);
    Ok(IptablesProxier::new(
        Renderer::new(config)?,
        Box::new(IptablesCmd::new(variant, state.family())),
        conntrack,
    ))
}

/// One family's state and proxier.
struct FamilyProxy {
    state: ProxyState,
    variant: Variant,
    proxier: Option<IptablesProxier>,
    node_addresses: Vec<std::net::IpAddr>,
}

impl FamilyProxy {
    fn sync(
        &mut self,
        settings: &Settings,
        diff: &proxy_core::StateDiff,
    ) -> anyhow::Result<SyncKind> {
        // The render config depends on the node's addresses: rebuild the proxier when they change.
        if self.proxier.is_none() || self.state.node().addresses != self.node_addresses {
            self.node_addresses = self.state.node().addresses.clone();
            self.proxier = Some(proxier_for(settings, &self.state, self.variant)?);
        }
        let proxier = self.proxier.as_mut().expect("just set");
        let report = proxier.sync(&self.state, diff)?;
        Ok(if report.full {
            SyncKind::Full
        } else {
            SyncKind::Changes
        })
    }
}

fn run(settings: Settings, shared: Arc<Shared>, variants: Vec<Variant>) {
    let mut schedule = SyncSchedule::new(ScheduleConfig {
        min_interval: settings.min_sync_period,
        max_interval: settings.sync_period,
        retry_interval: settings
            .min_sync_period
            .max(std::time::Duration::from_secs(1)),
    });
    let mut families: Vec<FamilyProxy> = settings
        .families
        .iter()
        .zip(variants)
        .map(|(f, variant)| FamilyProxy {
            state: ProxyState::new(*f, NodeInfo::named(&settings.node_name)),
            variant,
            proxier: None,
            node_addresses: Vec::new(),
        })
        .collect();
    while !shared.stopping() {
        let due = {
            let mut trackers = shared.pending.lock().expect("pending lock");
            if trackers.iter().any(|p| p.has_pending()) {
                schedule.request();
            }
            let synced = trackers.iter().all(|p| p.is_synced());
            schedule.due(Instant::now(), synced).map(|kind| {
                let diffs: Vec<_> = families
                    .iter_mut()
                    .zip(trackers.iter_mut())
                    .map(|(fam, pending)| {
                        let mut diff = fam.state.apply(pending);
                        diff.full |= kind == SyncKind::Full;
                        diff
                    })
                    .collect();
                let triggers = trackers[0].take_trigger_times();
                for other in trackers.iter_mut().skip(1) {
                    other.take_trigger_times(); // the same events: count them once
                }
                let first = &trackers[0];
                let mut metrics = shared.metrics.lock().expect("metrics lock");
                metrics.changes(
                    first.counters(),
                    first.pending_service_changes(),
                    first.pending_endpoint_changes(),
                );
                shared
                    .health
                    .lock()
                    .expect("health lock")
                    .set_node_eligible(!first.node_deleted());
                (kind, diffs, triggers)
            })
        };
        if let Some((kind, diffs, triggers)) = due {
            let started = Instant::now();
            let mut result: anyhow::Result<SyncKind> = Ok(SyncKind::Changes);
            for (fam, diff) in families.iter_mut().zip(&diffs) {
                match fam.sync(&settings, diff) {
                    Ok(SyncKind::Full) => {
                        if result.is_ok() {
                            result = Ok(SyncKind::Full);
                        }
                    }
                    Ok(SyncKind::Changes) => {}
                    Err(e) => {
                        result = Err(e.context(format!("{} rules", fam.state.family())));
                    }
                }
            }
            let took = started.elapsed();
            match result {
                Ok(done) => {
                    schedule.ran(done, started, true);
                    let now = SystemTime::now();
                    shared.health.lock().expect("health lock").updated(now);
                    let metrics = shared.metrics.lock().expect("metrics lock");
                    metrics.synced(done, took, now);
                    metrics.programmed(&triggers, now);
                    metrics.no_local_endpoints(&families[0].state);
                    let (mut filter, mut nat) = (0, 0);
                    for fam in &families {
                        if let Some(p) = fam.proxier.as_ref() {
                            filter += p.rule_counts().filter;
                            nat += p.rule_counts().nat;
                        }
                    }
                    metrics.rules("filter", filter);
                    metrics.rules("nat", nat);
                    tracing::debug!(?done, ?took, "synced");
                }
                Err(e) => {
                    schedule.ran(kind, started, false);
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
        // Sleep until the schedule's next wake-up or a source's notification.
        let wake_at = schedule.next_wake(Instant::now());
        let (flag, cv) = &shared.wake;
        let mut woken = flag.lock().expect("wake lock");
        let timeout = wake_at.saturating_duration_since(Instant::now());
        if !*woken {
            woken = cv.wait_timeout(woken, timeout).expect("wake lock").0;
        }
        *woken = false;
    }
}
