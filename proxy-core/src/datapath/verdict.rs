//! [`PortVerdict`]: what each kind of traffic to one Service port gets on this node.
//!
//! Upstream computes this inline in every proxier (`hasEndpoints`, `hasInternalEndpoints`,
//! `usesExternalChain`, …); here it is one value computed from the endpoint selection, so every mode
//! rejects, drops and forwards the same traffic.

use crate::state::ServicePortEntry;

/// Where one kind of traffic (internal: to the cluster IP; external: to node ports, external and
/// load-balancer IPs) goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TrafficTarget {
    /// Spread over the Cluster-policy endpoints.
    ClusterEndpoints,
    /// Spread over this node's endpoints (a Local policy).
    LocalEndpoints,
    /// No endpoint anywhere: refuse at once (ICMP port unreachable / TCP reset).
    Reject,
    /// A Local policy and no endpoint on this node, though some exist elsewhere: drop, so the client
    /// (or load balancer) retries another node.
    Drop,
}

impl TrafficTarget {
    /// Whether the traffic reaches endpoints.
    pub fn forwards(self) -> bool {
        matches!(
            self,
            TrafficTarget::ClusterEndpoints | TrafficTarget::LocalEndpoints
        )
    }
}

/// The per-port decisions a datapath needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortVerdict {
    /// Whether any usable endpoint exists (cluster-wide).
    pub has_endpoints: bool,
    /// Traffic to the cluster IP (`internalTrafficPolicy`).
    pub internal: TrafficTarget,
    /// Traffic to node ports, external IPs and load-balancer IPs (`externalTrafficPolicy`).
    pub external: TrafficTarget,
    /// The Cluster-policy endpoint set is used by some traffic and is not empty (iptables: a
    /// `KUBE-SVC-` chain).
    pub uses_cluster_endpoints: bool,
    /// The Local-policy endpoint set is used by some traffic and is not empty (`KUBE-SVL-`).
    pub uses_local_endpoints: bool,
    /// External traffic needs its own path (iptables: a `KUBE-EXT-` chain): the port is externally
    /// reachable and has endpoints. With a Local external policy, pods and the node itself still
    /// reach the cluster endpoints through it ("short circuit").
    pub external_path: bool,
    /// `loadBalancerSourceRanges` must be enforced on the load-balancer IPs (`KUBE-FW-`).
    pub source_ranges_apply: bool,
}

impl PortVerdict {
    /// The verdict for `entry` as selected for this node.
    pub fn of(entry: &ServicePortEntry) -> Self {
        let svc = &*entry.service;
        let sel = &*entry.selection;
        let has_endpoints = sel.has_any_endpoints;
        let target = |local_policy: bool| match (has_endpoints, local_policy) {
            (false, _) => TrafficTarget::Reject,
            (true, false) => TrafficTarget::ClusterEndpoints,
            (true, true) if sel.local.is_empty() => TrafficTarget::Drop,
            (true, true) => TrafficTarget::LocalEndpoints,
        };
        Self {
            has_endpoints,
            internal: target(svc.internal_policy_local),
            external: target(svc.external_policy_local),
            uses_cluster_endpoints: !sel.cluster.is_empty() && svc.uses_cluster_endpoints(),
            uses_local_endpoints: !sel.local.is_empty() && svc.uses_local_endpoints(),
            external_path: has_endpoints && svc.externally_accessible(),
            source_ranges_apply: has_endpoints
                && !svc.load_balancer_ips.is_empty()
                && !svc.load_balancer_source_ranges.is_empty(),
        }
    }
}
