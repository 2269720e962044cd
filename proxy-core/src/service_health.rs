//! Health-check node ports: what each `healthCheckNodePort` should answer on this node.
//!
//! A `LoadBalancer` Service with `externalTrafficPolicy: Local` gets a health-check node port. The
//! cloud load balancer probes it on every node and sends traffic only to nodes that answer 200,
//! i.e. nodes with a ready local endpoint; a node without one answers 503 and is skipped, so
//! traffic is never dropped by the Local policy. This module keeps, per port, the Service and its
//! local endpoint count, updated from each diff in O(changed); the daemon serves it over HTTP for
//! every mode alike.

use std::collections::{BTreeMap, HashMap};

use crate::diff::StateDiff;
use crate::model::NamespacedName;
use crate::state::ProxyState;

/// What one health-check node port answers about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceHealthEntry {
    /// The Service.
    pub service: NamespacedName,
    /// Ready endpoints of the Service on this node (the largest count over its ports).
    pub local_endpoints: usize,
}

impl ServiceHealthEntry {
    /// Whether the node should receive the Service's external traffic (HTTP 200 vs 503).
    pub fn healthy(&self) -> bool {
        self.local_endpoints > 0
    }

    /// The JSON body upstream answers with; `proxy_healthy` is the proxy's own `/healthz` verdict.
    pub fn body(&self, proxy_healthy: bool) -> String {
        format!(
            "{{\"service\":{{\"namespace\":\"{}\",\"name\":\"{}\"}},\"localEndpoints\":{},\"serviceProxyHealthy\":{}}}",
            self.service.namespace, self.service.name, self.local_endpoints, proxy_healthy
        )
    }
}

/// The health-check node ports of one state, kept in step with it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceHealthPorts {
    ports: BTreeMap<u16, ServiceHealthEntry>,
    /// The port each Service holds, to drop it when the Service loses it.
    port_of: HashMap<NamespacedName, u16>,
}

impl ServiceHealthPorts {
    /// The ports of every Service in `state`: O(Service ports), for the first sync.
    pub fn new(state: &ProxyState) -> Self {
        let mut this = Self::default();
        let mut services: Vec<&NamespacedName> =
            state.service_ports().map(|(n, _)| &n.service).collect();
        services.dedup();
        for s in services {
            this.refresh(state, s);
        }
        this
    }

    /// Follows `diff` (already applied to `state`); true when an answer changed. O(changed ports),
    /// or O(Service ports) for a full diff.
    pub fn update(&mut self, state: &ProxyState, diff: &StateDiff) -> bool {
        let before = self.ports.clone();
        if diff.full || diff.node_changed {
            *self = Self::new(state);
        } else {
            let touched = diff
                .added
                .iter()
                .chain(diff.changed.iter().map(|c| &c.name))
                .chain(diff.removed.iter().map(|c| &c.name))
                .map(|n| n.service.clone())
                .collect::<std::collections::BTreeSet<_>>();
            for s in &touched {
                self.refresh(state, s);
            }
        }
        before != self.ports
    }

    /// Every port and its answer, by port.
    pub fn ports(&self) -> &BTreeMap<u16, ServiceHealthEntry> {
        &self.ports
    }

    fn refresh(&mut self, state: &ProxyState, service: &NamespacedName) {
        if let Some(old) = self.port_of.remove(service) {
            if self.ports.get(&old).is_some_and(|e| &e.service == service) {
                self.ports.remove(&old);
            }
        }
        let mut port = None;
        let mut local = 0;
        for (_, entry) in state.ports_of_service(service) {
            if let Some(hc) = entry.service.health_check_node_port {
                port = Some(hc);
                let ready_here = entry
                    .local_endpoints()
                    .filter(|e| e.ready && e.is_local(&state.node().name))
                    .count();
                local = local.max(ready_here);
            }
        }
        if let Some(port) = port {
            self.port_of.insert(service.clone(), port);
            self.ports.insert(
                port,
                ServiceHealthEntry {
                    service: service.clone(),
                    local_endpoints: local,
                },
            );
        }
    }
}
