//! [`UserspaceProxier`]: the userspace mode behind the factory — listeners for the state's
//! Service ports, and the REDIRECT rules that steer their traffic to them.

use std::collections::{BTreeMap, HashSet};

use iptables_tool::IptablesOps;
use proxy_core::datapath::{NodePortAddressSpec, NodePortAddresses};
use proxy_core::proxy_port_metrics::ProxyPortMetrics;
use proxy_core::{
    ObjectCount, Proxier, ProxierError, ProxyMode, ProxyState, ServicePortName, StateDiff,
    SyncReport,
};
use tokio::runtime::Handle;

use crate::listeners::{ListenerSettings, ListenerSpec, Listeners, Transport};
use crate::plan::{listeners as listeners_of, routes, ListenerKey};
use crate::rules::{self, RuleCounts, JUMPS};

const MODE: ProxyMode = ProxyMode::Userspace;

/// The userspace mode for one IP family.
///
/// Each sync opens, updates and closes listeners to match the state (an endpoint change only
/// updates a balancer: no rule is rewritten and no established connection is touched), then
/// renders the REDIRECT rules and restores them when they differ from what was last written, or
/// on a full sync (the periodic resync, or after a failure), which also re-inserts the jumps from
/// the built-in chains if something removed them.
#[derive(Debug)]
pub struct UserspaceProxier {
    listeners: Listeners<ListenerKey>,
    iptables: Box<dyn IptablesOps>,
    metrics: ProxyPortMetrics,
    /// The transport of each desired listener at the last sync (to label closed ones).
    transports: BTreeMap<ListenerKey, Transport>,
    rules: String,
    /// Scratch for the filter table's rules during a render (kept for its capacity).
    filter_rules: String,
    written: String,
    owned: RuleCounts,
    warned_sctp: HashSet<ServicePortName>,
    /// ctnetlink, to delete UDP entries that REDIRECT to a listener that moved; `None` off a node.
    /// Whether the last sync opened or closed a UDP listener (its conntrack entries may now
    /// point at the wrong one).
    udp_changed: bool,
    /// `--proxy-port-range`, to recognise this mode's entries whose Service went.
    port_range: Option<std::ops::RangeInclusive<u16>>,
    /// `nodePortAddresses`.
    node_port_addresses: NodePortAddressSpec,
}

impl UserspaceProxier {
    /// A proxier whose listeners run on `runtime` with `settings`, writing rules with
    /// `iptables`, counting into `metrics`. Touches nothing until the first sync.
    pub fn new(
        settings: ListenerSettings,
        runtime: Handle,
        iptables: Box<dyn IptablesOps>,
        metrics: ProxyPortMetrics,
    ) -> Self {
        let for_stats = metrics.clone();
        let port_range = settings.port_range.clone();
        Self {
            listeners: Listeners::new(settings, runtime)
                .with_stats(move |key: &ListenerKey, t| for_stats.port(&key.labels(t))),
            iptables,
            metrics,
            transports: BTreeMap::new(),
            rules: String::new(),
            filter_rules: String::new(),
            written: String::new(),
            owned: RuleCounts::default(),
            warned_sctp: HashSet::new(),
            udp_changed: false,
            port_range,
            node_port_addresses: NodePortAddressSpec::default(),
        }
    }

    /// Node ports answer only on the local addresses `spec` selects (`nodePortAddresses`),
    /// matched against this machine's interfaces at each sync.
    pub fn with_node_port_addresses(mut self, spec: NodePortAddressSpec) -> Self {
        self.node_port_addresses = spec;
        self
    }

    fn node_ports(&self, state: &ProxyState) -> Result<NodePortAddresses, ProxierError> {
        if self.node_port_addresses.matches_all(state.family()) {
            return Ok(NodePortAddresses::All);
        }
        let addresses = kproxy_netlink::interface_addresses().map_err(|e| {
            ProxierError::new(MODE, "listing interface addresses for nodePortAddresses", e)
        })?;
        Ok(self
            .node_port_addresses
            .select(state.family(), &addresses, state.node()))
    }

    /// The port serving `key`, if its listener is open (for tests and the plan).
    pub fn proxy_port(&self, key: &ListenerKey) -> Option<u16> {
        self.listeners.port_of(key)
    }

    /// The listeners `state` needs, in key order; SCTP ports are skipped with one warning each.
    fn desired(&mut self, state: &ProxyState) -> Vec<(ListenerKey, ListenerSpec)> {
        let mut desired = Vec::with_capacity(state.len());
        for (name, entry) in state.service_ports() {
            let Some(r) = routes(entry) else {
                if self.warned_sctp.insert(name.clone()) {
                    tracing::warn!(service_port = %name, "the userspace proxy cannot carry SCTP; this Service port is not proxied");
                }
                continue;
            };
            listeners_of(name, entry, &r, |k, s| desired.push((k, s)));
        }
        desired
    }

    fn ensure_jumps(&mut self) -> Result<(), ProxierError> {
        let added = iptables_tool::ensure_jumps(self.iptables.as_mut(), &JUMPS).map_err(|e| {
            ProxierError::new(MODE, "ensuring the jumps from the built-in chains", e)
        })?;
        if !added.is_empty() {
            tracing::info!(
                "added {} jump(s) from the built-in chains: {}",
                added.len(),
                iptables_tool::jump::describe(&added)
            );
        }
        Ok(())
    }
}

impl Proxier for UserspaceProxier {
    fn mode(&self) -> ProxyMode {
        MODE
    }

    fn sync(&mut self, state: &ProxyState, diff: &StateDiff) -> Result<SyncReport, ProxierError> {
        // After a failure the lifecycle makes the next sync full (`proxy_core::ManagedProxier`).
        let full = diff.full;
        let desired = self.desired(state);
        let transports: BTreeMap<ListenerKey, Transport> = desired
            .iter()
            .map(|(k, s)| (k.clone(), s.transport))
            .collect();
        let report = self.listeners.apply(desired);
        for (key, port) in &report.opened {
            tracing::info!(service_port = %key, port, "proxy listener opened");
        }
        for (key, _) in &report.failed {
            if let Some(&t) = transports.get(key) {
                self.metrics.listener_failed(&key.labels(t));
            }
        }
        // Series of listeners that went (or changed transport) go with them: O(listeners).
        for (key, &t) in &self.transports {
            if transports.get(key) != Some(&t) {
                self.metrics.remove_port(&key.labels(t));
            }
        }
        let udp = |key: &ListenerKey| {
            transports.get(key) == Some(&Transport::Udp)
                || self.transports.get(key) == Some(&Transport::Udp)
        };
        let udp_changed = report.opened.iter().any(|(k, _)| udp(k))
            || report.closed.iter().any(udp)
            || report.failed.iter().any(|(k, _)| udp(k));
        self.transports = transports;

        let node_ports = self.node_ports(state)?;
        let listeners = &self.listeners;
        let counts = rules::render(
            state,
            |k| listeners.port_of(k),
            &node_ports,
            &mut self.rules,
            &mut self.filter_rules,
        );
        let changed = self.rules != self.written;
        if changed || full {
            let text = &self.rules;
            if let Err(e) = self.iptables.restore(&mut |w| w.write_all(text.as_bytes())) {
                return Err(ProxierError::new(
                    MODE,
                    "iptables-restore of the REDIRECT rules",
                    e,
                ));
            }
            if full {
                self.ensure_jumps()?;
            }
            std::mem::swap(&mut self.rules, &mut self.written);
            self.owned = counts;
        }
        // The lifecycle deletes the UDP entries that now REDIRECT to the wrong listener
        // (`stale_udp_flows`), after a UDP listener opened or closed and on full syncs.
        self.udp_changed = udp_changed;
        let written = if changed || full {
            counts
        } else {
            RuleCounts::default()
        };
        Ok(SyncReport {
            full,
            written: vec![
                ObjectCount::iptables("filter", written.filter),
                ObjectCount::iptables("nat", written.nat),
            ],
            owned: vec![
                ObjectCount::iptables("filter", self.owned.filter),
                ObjectCount::iptables("nat", self.owned.nat),
                ObjectCount {
                    kind: "userspace/listeners",
                    count: self.listeners.len(),
                },
            ],
            counters: Vec::new(),
        })
    }

    fn shutdown(&mut self) -> Result<(), ProxierError> {
        // Closing the listeners refuses new clients at once instead of leaving them to time out;
        // the rules stay, so the next run takes over by rewriting them.
        let closed = self.listeners.apply(std::iter::empty()).closed.len();
        tracing::info!("userspace proxy: closed {closed} listeners");
        Ok(())
    }

    fn cleanup(&mut self) -> Result<(), ProxierError> {
        self.listeners.apply(std::iter::empty());
        cleanup_tables(&mut *self.iptables)
    }

    /// The UDP entries that REDIRECT to a local socket other than the listener the rules now
    /// give their frontend ([`crate::conntrack::StaleRedirects`]): after a sync that opened or
    /// closed a UDP listener, and after full syncs (a restart numbers the listeners anew).
    fn stale_udp_flows<'a>(
        &'a self,
        state: &'a ProxyState,
        _diff: &'a StateDiff,
        full: bool,
    ) -> Option<proxy_core::StaleUdpJudge<'a>> {
        if !full && !self.udp_changed {
            return None;
        }
        let local: HashSet<std::net::IpAddr> = match kproxy_netlink::interface_addresses() {
            Ok(addrs) => addrs.into_iter().collect(),
            Err(e) => {
                tracing::warn!(
                    "UDP conntrack cleanup skipped: cannot list interface addresses: {e}"
                );
                return None;
            }
        };
        let listeners = &self.listeners;
        let frontends = crate::conntrack::UdpFrontends::of(state, |k| listeners.port_of(k));
        let range = self.port_range.as_ref();
        Some(Box::new(move |f| {
            crate::conntrack::StaleRedirects {
                frontends: &frontends,
                local: &local,
                range,
            }
            .is_stale(f)
        }))
    }
}

/// Removes the userspace mode's jumps and chains through `iptables`, whatever wrote them.
pub fn cleanup_tables(iptables: &mut dyn IptablesOps) -> Result<(), ProxierError> {
    iptables_tool::remove_leftovers(iptables, None, &[rules::FOOTPRINT])
        .map(drop)
        .map_err(|e| ProxierError::new(MODE, "removing the userspace chains", e))
}

/// `kproxy --cleanup` for this mode: both families, both iptables variants; a variant or family
/// whose tools are missing is skipped.
pub fn cleanup_node() -> Result<Vec<String>, ProxierError> {
    let (cleaned, failures) =
        iptables_tool::leftovers::clean_every_variant("userspace chains", |cmd| {
            cleanup_tables(cmd)
        });
    if failures.is_empty() {
        Ok(cleaned)
    } else {
        Err(ProxierError::new(MODE, "cleanup", failures.join("\n")))
    }
}
