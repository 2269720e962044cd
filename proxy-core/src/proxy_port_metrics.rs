//! Metrics of modes that carry connections themselves (userspace): per proxied Service port,
//! connections, bytes, failed connects and dropped clients.
//!
//! The families live here, registered with every other metric, so a mode crate never touches the
//! registry: it asks [`ProxyPortMetrics::port`] for the counters of one listener and hands them to
//! the tasks that serve it. Counters are atomics shared with the families, so a connection task
//! counts without a lock and a scrape sees it at once.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// The per-Service-port proxy metric families (`kubeproxy_userspace_*`).
#[derive(Clone, Debug, Default)]
pub struct ProxyPortMetrics {
    connections: Family<Labels, Counter>,
    open: Family<Labels, Gauge>,
    bytes: Family<Labels, Counter>,
    failed_connects: Family<Labels, Counter>,
    dropped: Family<Labels, Counter>,
    listener_failures: Family<Labels, Counter>,
}

/// Which proxied port the counters are for: the Service port, its protocol, and which endpoint
/// set the listener balances over (`cluster`, or `local` for a Local traffic policy's own
/// listener).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyPortLabels {
    /// `namespace/name:port`.
    pub service_port: String,
    /// `tcp` or `udp`.
    pub protocol: &'static str,
    /// `cluster` or `local`.
    pub endpoints: &'static str,
}

impl ProxyPortLabels {
    fn labels(&self) -> Labels {
        vec![
            ("service_port".into(), self.service_port.clone()),
            ("protocol".into(), self.protocol.into()),
            ("endpoints".into(), self.endpoints.into()),
        ]
    }

    fn with_direction(&self, direction: &str) -> Labels {
        let mut l = self.labels();
        l.push(("direction".into(), direction.into()));
        l
    }
}

/// The counters of one proxied port, cheap to clone into every connection task.
#[derive(Clone, Debug, Default)]
pub struct PortStats {
    /// TCP connections accepted; UDP sessions opened.
    pub connections: Counter,
    /// TCP connections and UDP sessions open now.
    pub open: Gauge,
    /// Bytes from clients to endpoints.
    pub bytes_to_endpoint: Counter,
    /// Bytes from endpoints back to clients.
    pub bytes_to_client: Counter,
    /// Connect attempts to an endpoint that failed (refused, timed out); each attempt counts.
    pub failed_connects: Counter,
    /// Clients the proxy could not serve: TCP connections closed after every attempt failed, UDP
    /// datagrams dropped.
    pub dropped: Counter,
}

impl ProxyPortMetrics {
    /// Registers the families in `registry` (prefix `kubeproxy` comes from the registry).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "userspace_connections",
            "Connections (TCP) and sessions (UDP) the userspace proxy accepted, per Service port",
            self.connections.clone(),
        );
        registry.register(
            "userspace_open_connections",
            "Connections (TCP) and sessions (UDP) the userspace proxy holds open, per Service port",
            self.open.clone(),
        );
        registry.register(
            "userspace_bytes",
            "Bytes the userspace proxy carried, per Service port and direction (to_endpoint, to_client)",
            self.bytes.clone(),
        );
        registry.register(
            "userspace_failed_connects",
            "Connect attempts to an endpoint that failed (each retry counts), per Service port",
            self.failed_connects.clone(),
        );
        registry.register(
            "userspace_dropped",
            "Clients the userspace proxy could not serve (TCP after every attempt, UDP datagrams)",
            self.dropped.clone(),
        );
        registry.register(
            "userspace_listener_failures",
            "Times a Service port could not get a proxy listener (port taken, range exhausted)",
            self.listener_failures.clone(),
        );
    }

    /// The counters of one port (created at zero, or the existing ones).
    pub fn port(&self, port: &ProxyPortLabels) -> PortStats {
        // One statement per family: `get_or_create` hands back a read guard that lives to the end
        // of its statement, and a second call on the same family in that statement would wait
        // for a write lock behind it forever.
        fn counter(family: &Family<Labels, Counter>, labels: &Labels) -> Counter {
            let guard = family.get_or_create(labels);
            guard.clone()
        }
        let labels = port.labels();
        let open = {
            let guard = self.open.get_or_create(&labels);
            guard.clone()
        };
        PortStats {
            connections: counter(&self.connections, &labels),
            open,
            bytes_to_endpoint: counter(&self.bytes, &port.with_direction("to_endpoint")),
            bytes_to_client: counter(&self.bytes, &port.with_direction("to_client")),
            failed_connects: counter(&self.failed_connects, &labels),
            dropped: counter(&self.dropped, &labels),
        }
    }

    /// Forgets a port's series once its listener is closed, so churn does not grow the scrape.
    /// Its listener-failure count goes too: the Service port is gone.
    pub fn remove_port(&self, port: &ProxyPortLabels) {
        let labels = port.labels();
        self.connections.remove(&labels);
        self.open.remove(&labels);
        self.bytes.remove(&port.with_direction("to_endpoint"));
        self.bytes.remove(&port.with_direction("to_client"));
        self.failed_connects.remove(&labels);
        self.dropped.remove(&labels);
        self.listener_failures.remove(&labels);
    }

    /// Counts a port that could not get a listener.
    pub fn listener_failed(&self, port: &ProxyPortLabels) {
        self.listener_failures.get_or_create(&port.labels()).inc();
    }

    /// The listener failures counted for `port` (for tests and logs).
    pub fn listener_failures(&self, port: &ProxyPortLabels) -> u64 {
        self.listener_failures.get_or_create(&port.labels()).get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_shared_with_the_scrape_and_removed_with_the_port() {
        let metrics = ProxyPortMetrics::default();
        let mut registry = Registry::with_prefix("kubeproxy");
        metrics.register(&mut registry);
        let port = ProxyPortLabels {
            service_port: "ns1/web:http".into(),
            protocol: "tcp",
            endpoints: "cluster",
        };
        let stats = metrics.port(&port);
        // A second port's counters, and the same port's again: no lock is held between calls.
        let _ = metrics.port(&ProxyPortLabels {
            service_port: "ns1/web:dns".into(),
            protocol: "udp",
            endpoints: "cluster",
        });
        assert_eq!(metrics.port(&port).connections.get(), 0);
        stats.connections.inc();
        stats.bytes_to_client.inc_by(1024);
        metrics.listener_failed(&port);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(
                "kubeproxy_userspace_connections_total{service_port=\"ns1/web:http\",protocol=\"tcp\",endpoints=\"cluster\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("direction=\"to_client\"} 1024"), "{text}");
        assert_eq!(metrics.listener_failures(&port), 1);
        metrics.remove_port(&port);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(!text.contains("ns1/web:http"), "{text}");
    }
}
