//! Per-Service-port traffic counters a datapath keeps itself (nftables mode: a named counter at
//! the head of each Service chain, which only the first packet of a connection reaches), exported
//! as `kubeproxy_service_new_connections_total` and `kubeproxy_service_new_connection_bytes_total`
//! with the Service's namespace, name, port and protocol as labels — asked for upstream since
//! 2015 (kubernetes/kubernetes#9125).
//!
//! The datapath reads its counters now and then and hands the totals over; the family turns
//! them into Prometheus counters: a total below the last one means the datapath's counter
//! started again (the table was rebuilt, the proxy restarted), and the new total is counted as
//! fresh traffic, so the exported counter never goes back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::model::ServicePortName;

type Labels = Vec<(String, String)>;

/// The families and the last totals seen per port.
#[derive(Clone, Debug, Default)]
pub struct ServiceTrafficMetrics {
    connections: Family<Labels, Counter>,
    bytes: Family<Labels, Counter>,
    last: Arc<Mutex<HashMap<ServicePortName, (u64, u64)>>>,
}

fn labels(name: &ServicePortName) -> Labels {
    vec![
        ("namespace".into(), name.service.namespace.clone()),
        ("service".into(), name.service.name.clone()),
        ("port".into(), name.port.clone()),
        ("protocol".into(), name.protocol.to_string()),
    ]
}

impl ServiceTrafficMetrics {
    /// Registers the families (prefix `kubeproxy` comes from the registry).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "service_new_connections",
            "New connections (their first packets) to a Service port, counted by the datapath (nftables mode)",
            self.connections.clone(),
        );
        registry.register(
            "service_new_connection_bytes",
            "Bytes of the first packets of new connections to a Service port (nftables mode)",
            self.bytes.clone(),
        );
    }

    /// Takes the datapath's current totals. Ports not listed are forgotten (their Service is
    /// gone), so churn does not grow the scrape.
    pub fn update(&self, totals: &[(ServicePortName, u64, u64)]) {
        let mut last = self.last.lock().expect("service traffic lock");
        let mut seen: HashMap<ServicePortName, (u64, u64)> = HashMap::with_capacity(totals.len());
        for (name, packets, bytes) in totals {
            let (p0, b0) = last.get(name).copied().unwrap_or((0, 0));
            let delta = |now: u64, before: u64| if now >= before { now - before } else { now };
            let l = labels(name);
            {
                let c = self.connections.get_or_create(&l);
                c.inc_by(delta(*packets, p0));
            }
            {
                let c = self.bytes.get_or_create(&l);
                c.inc_by(delta(*bytes, b0));
            }
            seen.insert(name.clone(), (*packets, *bytes));
        }
        for gone in last.keys().filter(|n| !seen.contains_key(*n)) {
            let l = labels(gone);
            self.connections.remove(&l);
            self.bytes.remove(&l);
        }
        *last = seen;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NamespacedName, Protocol};

    fn scrape(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    #[test]
    fn totals_become_counters_that_survive_a_reset_and_leave_with_the_port() {
        let m = ServiceTrafficMetrics::default();
        let mut registry = Registry::with_prefix("kubeproxy");
        m.register(&mut registry);
        let web = ServicePortName::new(NamespacedName::new("ns1", "web"), "http", Protocol::Tcp);
        m.update(&[(web.clone(), 3, 180)]);
        m.update(&[(web.clone(), 5, 300)]);
        let line = "kubeproxy_service_new_connections_total{namespace=\"ns1\",service=\"web\",port=\"http\",protocol=\"TCP\"}";
        assert!(
            scrape(&registry).contains(&format!("{line} 5")),
            "{}",
            scrape(&registry)
        );
        // The datapath's counter started again at 2: two more, not a step back.
        m.update(&[(web.clone(), 2, 120)]);
        assert!(scrape(&registry).contains(&format!("{line} 7")));
        assert!(scrape(&registry).contains("kubeproxy_service_new_connection_bytes_total{namespace=\"ns1\",service=\"web\",port=\"http\",protocol=\"TCP\"} 420"));
        m.update(&[]);
        assert!(!scrape(&registry).contains("service=\"web\""));
    }
}
