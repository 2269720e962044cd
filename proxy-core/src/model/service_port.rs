//! What kproxy programs for one Service port in one IP family.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::Protocol;

/// Upstream's default `sessionAffinityConfig.clientIP.timeoutSeconds`: three hours.
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10_800;

/// Upstream's upper bound for `sessionAffinityConfig.clientIP.timeoutSeconds`: one day.
pub const MAX_AFFINITY_TIMEOUT_SECONDS: u32 = 86_400;

/// The Service `type`, kept because some datapaths (IPVS's ipsets, health checks) branch on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServiceType {
    /// Reachable on its cluster IP only (plus any `externalIPs`).
    ClusterIp,
    /// Also reachable on a port of every node.
    NodePort,
    /// Also reachable on load-balancer ingress IPs.
    LoadBalancer,
}

/// Session affinity of a Service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SessionAffinity {
    /// Every new connection may pick any endpoint.
    None,
    /// Connections from one client IP stick to one endpoint for `timeout_seconds` after the last one.
    ClientIp {
        /// How long a client keeps its endpoint, in seconds (default 10800).
        timeout_seconds: u32,
    },
}

/// One Service port for one IP family: every address and option a datapath needs for it.
///
/// Produced by [`crate::convert::service_ports`]; immutable afterwards and shared through `Arc` by the
/// state and the backends. Vectors are kept in the order the Service lists them, so rendering is
/// deterministic.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServicePort {
    /// The Service type.
    pub service_type: ServiceType,
    /// The cluster IP of this family.
    pub cluster_ip: IpAddr,
    /// The Service port number (1–65535).
    pub port: u16,
    /// The transport protocol.
    pub protocol: Protocol,
    /// The node port, for NodePort and LoadBalancer Services that have one.
    pub node_port: Option<u16>,
    /// `spec.externalIPs` of this family.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip` of this family, except ingresses with `ipMode: Proxy`
    /// (the load balancer proxies itself, so traffic never arrives addressed to that IP).
    pub load_balancer_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges` of this family; empty means any source.
    pub load_balancer_source_ranges: Vec<IpNetwork>,
    /// `externalTrafficPolicy: Local` on an externally reachable Service.
    pub external_policy_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_policy_local: bool,
    /// `spec.healthCheckNodePort`, for LoadBalancer Services with a Local external policy.
    pub health_check_node_port: Option<u16>,
    /// `spec.sessionAffinity` with its timeout.
    pub session_affinity: SessionAffinity,
}

impl ServicePort {
    /// Whether traffic can reach this port from outside the cluster network: through a node port,
    /// an external IP or a load-balancer IP. Upstream's `ExternallyAccessible`.
    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some()
            || !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
    }

    /// Whether some traffic to this port is spread over all endpoints of the cluster: a Cluster
    /// internal policy, or any external reachability. Even with a Local external policy, traffic
    /// from pods and from the node itself to an external address short-circuits to the cluster
    /// endpoints (upstream's "short circuiting"), so they are needed.
    pub fn uses_cluster_endpoints(&self) -> bool {
        !self.internal_policy_local || self.externally_accessible()
    }

    /// Whether some traffic to this port goes only to endpoints on this node.
    pub fn uses_local_endpoints(&self) -> bool {
        self.internal_policy_local || (self.externally_accessible() && self.external_policy_local)
    }

    /// The ClientIP affinity timeout, if affinity is on.
    pub fn affinity_timeout_seconds(&self) -> Option<u32> {
        match self.session_affinity {
            SessionAffinity::None => None,
            SessionAffinity::ClientIp { timeout_seconds } => Some(timeout_seconds),
        }
    }

    /// Every address this port answers on except node addresses: the cluster IP, external IPs and
    /// load-balancer IPs. Used for conntrack cleanup and by datapaths that own addresses (IPVS).
    pub fn service_ips(&self) -> impl Iterator<Item = IpAddr> + '_ {
        std::iter::once(self.cluster_ip)
            .chain(self.external_ips.iter().copied())
            .chain(self.load_balancer_ips.iter().copied())
    }
}
