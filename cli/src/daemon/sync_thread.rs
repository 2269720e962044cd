//! The sync thread: waits for changes or the schedule, applies them through the proxier.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime};

use backend_iptables::conntrack::{ConntrackOps, NetlinkConntrack};
use backend_iptables::{detect_variant, IptablesCmd, IptablesProxier, Renderer, Variant};
use proxy_core::{IpFamily, NodeInfo, Proxier, ProxyState, ScheduleConfig, SyncKind, SyncSchedule};

use super::{Settings, Shared};
use crate::args::IptablesVariant;

/// Starts the thread.
pub(crate) fn start(settings: Settings, shared: Arc<Shared>) -> anyhow::Result<JoinHandle<()>> {
    let family = IpFamily::V4;
    let variant = match settings.variant {
        IptablesVariant::Auto => detect_variant(family),
        IptablesVariant::Nft => Variant::Nft,
        IptablesVariant::Legacy => Variant::Legacy,
    };
    tracing::info!("using iptables-{variant}");
    let thread = std::thread::Builder::new()
        .name("sync".into())
        .spawn(move || run(settings, shared, variant))?;
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

fn run(settings: Settings, shared: Arc<Shared>, variant: Variant) {
    let mut schedule = SyncSchedule::new(ScheduleConfig {
        min_interval: settings.min_sync_period,
        max_interval: settings.sync_period,
        retry_interval: settings
            .min_sync_period
            .max(std::time::Duration::from_secs(1)),
    });
    let mut state = ProxyState::new(IpFamily::V4, NodeInfo::named(&settings.node_name));
    let mut proxier: Option<IptablesProxier> = None;
    let mut node_addresses = Vec::new();
    while !shared.stopping() {
        let (due, diff) = {
            let mut pending = shared.pending.lock().expect("pending lock");
            if pending.has_pending() {
                schedule.request();
            }
            match schedule.due(Instant::now(), pending.is_synced()) {
                None => (None, None),
                Some(kind) => {
                    let mut diff = state.apply(&mut pending);
                    if kind == SyncKind::Full {
                        diff.full = true;
                    }
                    let mut metrics = shared.metrics.lock().expect("metrics lock");
                    metrics.changes(pending.counters(), 0, 0);
                    shared
                        .health
                        .lock()
                        .expect("health lock")
                        .set_node_eligible(!pending.node_deleted());
                    (Some(kind), Some(diff))
                }
            }
        };
        if let (Some(kind), Some(diff)) = (due, diff) {
            // The render config depends on the node's addresses: rebuild the proxier when they change.
            if proxier.is_none() || state.node().addresses != node_addresses {
                node_addresses = state.node().addresses.clone();
                match proxier_for(&settings, &state, variant) {
                    Ok(p) => proxier = Some(p),
                    Err(e) => tracing::error!("cannot set up the iptables proxier: {e:#}"),
                }
            }
            let started = Instant::now();
            let result = match proxier.as_mut() {
                Some(p) => p.sync(&state, &diff).map_err(anyhow::Error::new),
                None => Err(anyhow::anyhow!("no proxier")),
            };
            let took = started.elapsed();
            match result {
                Ok(report) => {
                    let kind = if report.full {
                        SyncKind::Full
                    } else {
                        SyncKind::Changes
                    };
                    schedule.ran(kind, started, true);
                    let now = SystemTime::now();
                    shared.health.lock().expect("health lock").updated(now);
                    let metrics = shared.metrics.lock().expect("metrics lock");
                    metrics.synced(kind, took, now);
                    metrics.no_local_endpoints(&state);
                    if let Some(p) = proxier.as_ref() {
                        let counts = p.rule_counts();
                        metrics.rules("filter", counts.filter);
                        metrics.rules("nat", counts.nat);
                    }
                    tracing::debug!(?kind, ?took, "synced {} service ports", state.len());
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
