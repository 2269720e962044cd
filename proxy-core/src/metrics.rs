//! Prometheus metrics under kube-proxy's names (subsystem `kubeproxy`), so existing dashboards and
//! alerts keep working.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::pending::ChangeCounters;
use crate::proxy_port_metrics::ProxyPortMetrics;
use crate::schedule::SyncKind;
use crate::state::ProxyState;

type Labels = Vec<(String, String)>;

/// Every metric kproxy exports, and the registry that renders them.
#[derive(Debug)]
pub struct ProxyMetrics {
    registry: Registry,
    sync_duration: Histogram,
    sync_full_duration: Histogram,
    sync_partial_duration: Histogram,
    last_sync: Gauge<f64, AtomicU64>,
    service_changes_pending: Gauge,
    endpoint_changes_pending: Gauge,
    service_changes_total: Counter,
    endpoint_changes_total: Counter,
    rules: Family<Labels, Gauge>,
    rules_last: Family<Labels, Gauge>,
    objects: Family<Labels, Gauge>,
    restore_failures: Counter,
    no_local_endpoints: Family<Labels, Gauge>,
    refused_frontends: Gauge,
    invalid_input: Counter,
    ct_state_invalid_dropped: Counter,
    localhost_nodeports_accepted: Counter,
    /// The last absolute value of each kernel counter, to add only what is new.
    kernel_counters: std::sync::Mutex<std::collections::HashMap<&'static str, u64>>,
    network_programming: Histogram,
    port_proxy: ProxyPortMetrics,
    service_traffic: crate::service_traffic_metrics::ServiceTrafficMetrics,
    seen: ChangeCounters,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self::new()
    }
}

fn sync_buckets() -> Histogram {
    // 1 ms … ~16 s, as upstream's exponential buckets.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl ProxyMetrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kubeproxy");
        let m = Self {
            sync_duration: sync_buckets(),
            sync_full_duration: sync_buckets(),
            sync_partial_duration: sync_buckets(),
            last_sync: Gauge::default(),
            service_changes_pending: Gauge::default(),
            endpoint_changes_pending: Gauge::default(),
            service_changes_total: Counter::default(),
            endpoint_changes_total: Counter::default(),
            rules: Family::default(),
            rules_last: Family::default(),
            objects: Family::default(),
            restore_failures: Counter::default(),
            no_local_endpoints: Family::default(),
            refused_frontends: Gauge::default(),
            invalid_input: Counter::default(),
            ct_state_invalid_dropped: Counter::default(),
            localhost_nodeports_accepted: Counter::default(),
            kernel_counters: Default::default(),
            network_programming: Histogram::new(exponential_buckets(0.001, 2.0, 20)),
            port_proxy: ProxyPortMetrics::default(),
            service_traffic: Default::default(),
            seen: ChangeCounters::default(),
            registry: Registry::default(),
        };
        registry.register(
            "sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            m.sync_duration.clone(),
        );
        registry.register(
            "sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
            m.sync_full_duration.clone(),
        );
        registry.register(
            "sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
            m.sync_partial_duration.clone(),
        );
        registry.register(
            "sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            m.last_sync.clone(),
        );
        registry.register(
            "sync_proxy_rules_service_changes_pending",
            "Pending proxy rules Service changes",
            m.service_changes_pending.clone(),
        );
        registry.register(
            "sync_proxy_rules_endpoint_changes_pending",
            "Pending proxy rules Endpoint changes",
            m.endpoint_changes_pending.clone(),
        );
        registry.register(
            "sync_proxy_rules_service_changes",
            "Cumulative proxy rules Service changes",
            m.service_changes_total.clone(),
        );
        registry.register(
            "sync_proxy_rules_endpoint_changes",
            "Cumulative proxy rules Endpoint changes",
            m.endpoint_changes_total.clone(),
        );
        registry.register(
            "sync_proxy_rules_iptables_total",
            "Total number of iptables rules owned by kube-proxy",
            m.rules.clone(),
        );
        registry.register(
            "sync_proxy_rules_iptables_last",
            "Number of iptables rules written by kube-proxy in last sync",
            m.rules_last.clone(),
        );
        registry.register(
            "sync_proxy_objects",
            "Datapath objects other than iptables rules owned by the proxy, by kind (kproxy)",
            m.objects.clone(),
        );
        registry.register(
            "sync_proxy_rules_iptables_restore_failures",
            "Cumulative proxy iptables restore failures",
            m.restore_failures.clone(),
        );
        registry.register(
            "sync_proxy_rules_no_local_endpoints",
            "Number of services with a Local traffic policy and no endpoints",
            m.no_local_endpoints.clone(),
        );
        registry.register(
            "refused_service_frontends",
            "External and load-balancer IPs not programmed because another Service owns them as \
             its cluster IP or a ServiceCIDR holds them (kproxy)",
            m.refused_frontends.clone(),
        );
        registry.register(
            "invalid_input_objects",
            "Values, endpoints, ports or objects skipped as invalid (kproxy)",
            m.invalid_input.clone(),
        );
        registry.register(
            "iptables_ct_state_invalid_dropped_packets",
            "packets dropped by iptables to work around conntrack problems",
            m.ct_state_invalid_dropped.clone(),
        );
        registry.register(
            "iptables_localhost_nodeports_accepted_packets",
            "Number of packets accepted on nodeports of loopback interface",
            m.localhost_nodeports_accepted.clone(),
        );
        registry.register(
            "network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            m.network_programming.clone(),
        );
        m.port_proxy.register(&mut registry);
        m.service_traffic.register(&mut registry);
        Self { registry, ..m }
    }

    /// Observes the network programming latency of changes triggered at `triggers`, applied at
    /// `now` (future trigger times, from skewed clocks, count as zero).
    pub fn programmed(&self, triggers: &[SystemTime], now: SystemTime) {
        for t in triggers {
            let latency = now.duration_since(*t).unwrap_or_default();
            self.network_programming.observe(latency.as_secs_f64());
        }
    }

    /// Records a successful sync of `kind` that took `took` and finished at `now`.
    pub fn synced(&self, kind: SyncKind, took: Duration, now: SystemTime) {
        let secs = took.as_secs_f64();
        self.sync_duration.observe(secs);
        match kind {
            SyncKind::Full => self.sync_full_duration.observe(secs),
            SyncKind::Changes => self.sync_partial_duration.observe(secs),
        }
        let ts = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        self.last_sync.set(ts);
    }

    /// Records a failed restore.
    pub fn restore_failed(&self) {
        self.restore_failures.inc();
    }

    /// Updates pending and cumulative change counts from the handlers' counters.
    pub fn changes(
        &mut self,
        counters: ChangeCounters,
        pending_services: usize,
        pending_endpoints: usize,
    ) {
        self.service_changes_pending.set(pending_services as i64);
        self.endpoint_changes_pending.set(pending_endpoints as i64);
        let delta = |now: u64, before: u64| now.saturating_sub(before);
        self.service_changes_total.inc_by(delta(
            counters.service_changes_total,
            self.seen.service_changes_total,
        ));
        self.endpoint_changes_total.inc_by(delta(
            counters.endpoint_changes_total,
            self.seen.endpoint_changes_total,
        ));
        self.invalid_input.inc_by(delta(
            counters.conversion_warnings_total,
            self.seen.conversion_warnings_total,
        ));
        self.seen = counters;
    }

    /// Records what the last sync of every family did: iptables rules owned per table
    /// (`sync_proxy_rules_iptables_total`) and written by it (`sync_proxy_rules_iptables_last`),
    /// other objects owned per kind (`sync_proxy_objects`). Counts of the same kind add up over
    /// families.
    pub fn reports(&self, reports: &[crate::proxier::SyncReport]) {
        let mut owned: std::collections::BTreeMap<&str, usize> = Default::default();
        let mut written: std::collections::BTreeMap<&str, usize> = Default::default();
        for r in reports {
            for c in &r.owned {
                *owned.entry(c.kind).or_default() += c.count;
            }
            for c in &r.written {
                *written.entry(c.kind).or_default() += c.count;
            }
        }
        let label = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];
        for (kind, n) in owned {
            match kind.strip_prefix("iptables/") {
                Some(table) => self
                    .rules
                    .get_or_create(&label("table", table))
                    .set(n as i64),
                None => self
                    .objects
                    .get_or_create(&label("kind", kind))
                    .set(n as i64),
            };
        }
        for (kind, n) in written {
            if let Some(table) = kind.strip_prefix("iptables/") {
                self.rules_last
                    .get_or_create(&label("table", table))
                    .set(n as i64);
            }
        }
        let mut seen = self.kernel_counters.lock().expect("kernel counters lock");
        for r in reports {
            for &(name, value) in &r.counters {
                let counter = match name {
                    "ct_state_invalid_dropped_pkts" => &self.ct_state_invalid_dropped,
                    "localhost_nps_accepted_pkts" => &self.localhost_nodeports_accepted,
                    _ => continue,
                };
                // A counter that went down was recreated: count from zero again.
                let before = seen.insert(name, value).unwrap_or(0);
                counter.inc_by(if value >= before {
                    value - before
                } else {
                    value
                });
            }
        }
    }

    /// Sets how many frontends the state refuses ([`ProxyState::refused_frontend_count`]).
    pub fn refused_frontends(&self, state: &ProxyState) {
        self.refused_frontends
            .set(i64::try_from(state.refused_frontend_count()).unwrap_or(i64::MAX));
    }

    /// Counts Local-policy Service ports with no local endpoint, per traffic policy.
    pub fn no_local_endpoints(&self, state: &ProxyState) {
        let (mut internal, mut external) = (0, 0);
        for (_, e) in state.service_ports() {
            let none_here = e.selection.has_any_endpoints && e.selection.local.is_empty();
            if none_here && e.service.internal_policy_local {
                internal += 1;
            }
            if none_here && e.service.external_policy_local {
                external += 1;
            }
        }
        for (policy, n) in [("internal", internal), ("external", external)] {
            self.no_local_endpoints
                .get_or_create(&vec![("traffic_policy".to_owned(), policy.to_owned())])
                .set(n);
        }
    }

    /// The per-Service-port families of modes that carry connections themselves (userspace),
    /// shared with the mode: its connection tasks count into them directly.
    pub fn port_proxy(&self) -> ProxyPortMetrics {
        self.port_proxy.clone()
    }

    /// The per-Service-port traffic families a datapath fills from its own counters (nftables
    /// mode), shared with the scrape.
    pub fn service_traffic(&self) -> crate::service_traffic_metrics::ServiceTrafficMetrics {
        self.service_traffic.clone()
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_kube_proxy_names() {
        let mut m = ProxyMetrics::new();
        m.synced(
            SyncKind::Full,
            Duration::from_millis(20),
            UNIX_EPOCH + Duration::from_secs(7),
        );
        m.synced(
            SyncKind::Changes,
            Duration::from_millis(2),
            UNIX_EPOCH + Duration::from_secs(9),
        );
        m.restore_failed();
        m.programmed(
            &[UNIX_EPOCH + Duration::from_secs(5)],
            UNIX_EPOCH + Duration::from_secs(7),
        );
        m.reports(&[crate::proxier::SyncReport {
            full: false,
            written: vec![crate::proxier::ObjectCount::iptables("nat", 3)],
            owned: vec![
                crate::proxier::ObjectCount::iptables("nat", 42),
                crate::proxier::ObjectCount {
                    kind: "ipvs/virtual-servers",
                    count: 7,
                },
            ],
            counters: vec![("ct_state_invalid_dropped_pkts", 5)],
        }]);
        // The kernel's counter moved from 5 to 8: three more, not eight.
        m.reports(&[crate::proxier::SyncReport {
            counters: vec![("ct_state_invalid_dropped_pkts", 8)],
            ..Default::default()
        }]);
        m.changes(
            ChangeCounters {
                service_changes_total: 3,
                endpoint_changes_total: 5,
                conversion_warnings_total: 1,
            },
            1,
            2,
        );
        m.changes(
            ChangeCounters {
                service_changes_total: 4,
                endpoint_changes_total: 5,
                conversion_warnings_total: 1,
            },
            0,
            0,
        );
        let text = m.encode();
        for expected in [
            "kubeproxy_sync_proxy_rules_duration_seconds_count 2",
            "kubeproxy_sync_full_proxy_rules_duration_seconds_count 1",
            "kubeproxy_sync_partial_proxy_rules_duration_seconds_count 1",
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds 9.0",
            "kubeproxy_sync_proxy_rules_service_changes_total 4",
            "kubeproxy_sync_proxy_rules_endpoint_changes_total 5",
            "kubeproxy_sync_proxy_rules_service_changes_pending 0",
            "kubeproxy_sync_proxy_rules_iptables_total{table=\"nat\"} 42",
            "kubeproxy_sync_proxy_rules_iptables_last{table=\"nat\"} 3",
            "kubeproxy_sync_proxy_objects{kind=\"ipvs/virtual-servers\"} 7",
            "kubeproxy_sync_proxy_rules_iptables_restore_failures_total 1",
            "kubeproxy_invalid_input_objects_total 1",
            "kubeproxy_network_programming_duration_seconds_count 1",
            "kubeproxy_iptables_ct_state_invalid_dropped_packets_total 8",
            "kubeproxy_iptables_localhost_nodeports_accepted_packets_total 0",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }
}
