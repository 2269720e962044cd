//! The ipsets of upstream's IPVS mode: names, types and comments, per family.
//!
//! The IPv4 names are upstream's (`KUBE-CLUSTER-IP`, …); IPv6 sets carry upstream's `KUBE-6-`
//! prefix so both families' sets live side by side on a dual-stack node. The comments are
//! upstream's too: the iptables rules that match a set carry its comment.

use ipset_tool::{SetFamily, SetSpec, SetType};
use proxy_core::IpFamily;

/// One of IPVS mode's sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpvsSet {
    /// Local endpoints `ip,proto:port,ip`: hairpin traffic (a pod reaching itself) to masquerade.
    LoopBack,
    /// Cluster IP `ip,proto:port` of every Service port.
    ClusterIp,
    /// External IPs of Cluster-policy Service ports.
    ExternalIp,
    /// External IPs of Local-policy Service ports.
    ExternalIpLocal,
    /// Load-balancer IPs.
    LoadBalancer,
    /// Load-balancer IPs of Service ports with source ranges.
    LoadBalancerFw,
    /// Load-balancer IPs of Local-policy Service ports.
    LoadBalancerLocal,
    /// `lb-ip,proto:port,source-ip` allowed through the firewall (the node's own address).
    LoadBalancerSourceIp,
    /// `lb-ip,proto:port,source-cidr` allowed through the firewall.
    LoadBalancerSourceCidr,
    /// TCP node ports.
    NodePortTcp,
    /// TCP node ports of Local-policy Service ports.
    NodePortLocalTcp,
    /// UDP node ports.
    NodePortUdp,
    /// UDP node ports of Local-policy Service ports.
    NodePortLocalUdp,
    /// SCTP node ports, `node-ip,sctp:port` (upstream uses a hash for SCTP).
    NodePortSctp,
    /// SCTP node ports of Local-policy Service ports.
    NodePortLocalSctp,
    /// Health-check node ports of Local-policy LoadBalancer Services.
    HealthCheckNodePort,
    /// Every address on `kube-ipvs0`.
    IpvsIps,
}

impl IpvsSet {
    /// Every set, in upstream's order.
    pub const ALL: [IpvsSet; 17] = [
        IpvsSet::LoopBack,
        IpvsSet::ClusterIp,
        IpvsSet::ExternalIp,
        IpvsSet::ExternalIpLocal,
        IpvsSet::LoadBalancer,
        IpvsSet::LoadBalancerFw,
        IpvsSet::LoadBalancerLocal,
        IpvsSet::LoadBalancerSourceIp,
        IpvsSet::LoadBalancerSourceCidr,
        IpvsSet::NodePortTcp,
        IpvsSet::NodePortLocalTcp,
        IpvsSet::NodePortUdp,
        IpvsSet::NodePortLocalUdp,
        IpvsSet::NodePortSctp,
        IpvsSet::NodePortLocalSctp,
        IpvsSet::HealthCheckNodePort,
        IpvsSet::IpvsIps,
    ];

    /// The IPv4 name.
    fn base_name(self) -> &'static str {
        use IpvsSet::*;
        match self {
            LoopBack => "KUBE-LOOP-BACK",
            ClusterIp => "KUBE-CLUSTER-IP",
            ExternalIp => "KUBE-EXTERNAL-IP",
            ExternalIpLocal => "KUBE-EXTERNAL-IP-LOCAL",
            LoadBalancer => "KUBE-LOAD-BALANCER",
            LoadBalancerFw => "KUBE-LOAD-BALANCER-FW",
            LoadBalancerLocal => "KUBE-LOAD-BALANCER-LOCAL",
            LoadBalancerSourceIp => "KUBE-LOAD-BALANCER-SOURCE-IP",
            LoadBalancerSourceCidr => "KUBE-LOAD-BALANCER-SOURCE-CIDR",
            NodePortTcp => "KUBE-NODE-PORT-TCP",
            NodePortLocalTcp => "KUBE-NODE-PORT-LOCAL-TCP",
            NodePortUdp => "KUBE-NODE-PORT-UDP",
            NodePortLocalUdp => "KUBE-NODE-PORT-LOCAL-UDP",
            NodePortSctp => "KUBE-NODE-PORT-SCTP-HASH",
            NodePortLocalSctp => "KUBE-NODE-PORT-LOCAL-SCTP-HASH",
            HealthCheckNodePort => "KUBE-HEALTH-CHECK-NODE-PORT",
            IpvsIps => "KUBE-IPVS-IPS",
        }
    }

    /// The set's name for `family`: upstream's, with `KUBE-6-` for IPv6 (cut to 31 bytes).
    pub fn name(self, family: IpFamily) -> String {
        let base = self.base_name();
        match family {
            IpFamily::V4 => base.to_owned(),
            IpFamily::V6 => {
                let mut n = base.replacen("KUBE-", "KUBE-6-", 1);
                n.truncate(31);
                n
            }
        }
    }

    /// Upstream's comment, which the matching iptables rules carry.
    pub fn comment(self) -> &'static str {
        use IpvsSet::*;
        match self {
            LoopBack => "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose",
            ClusterIp => "Kubernetes service cluster ip + port for masquerade purpose",
            ExternalIp => "Kubernetes service external ip + port for masquerade and filter purpose",
            ExternalIpLocal => {
                "Kubernetes service external ip + port with externalTrafficPolicy=local"
            }
            LoadBalancer => "Kubernetes service lb portal",
            LoadBalancerFw => {
                "Kubernetes service load balancer ip + port for load balancer with sourceRange"
            }
            LoadBalancerLocal => {
                "Kubernetes service load balancer ip + port with externalTrafficPolicy=local"
            }
            LoadBalancerSourceIp => {
                "Kubernetes service load balancer ip + port + source IP for packet filter purpose"
            }
            LoadBalancerSourceCidr => {
                "Kubernetes service load balancer ip + port + source cidr for packet filter purpose"
            }
            NodePortTcp => "Kubernetes nodeport TCP port for masquerade purpose",
            NodePortLocalTcp => "Kubernetes nodeport TCP port with externalTrafficPolicy=local",
            NodePortUdp => "Kubernetes nodeport UDP port for masquerade purpose",
            NodePortLocalUdp => "Kubernetes nodeport UDP port with externalTrafficPolicy=local",
            NodePortSctp => {
                "Kubernetes nodeport SCTP port for masquerade purpose with type 'hash ip:port'"
            }
            NodePortLocalSctp => {
                "Kubernetes nodeport SCTP port with externalTrafficPolicy=local with type 'hash ip:port'"
            }
            HealthCheckNodePort => "Kubernetes health check node port",
            IpvsIps => "Addresses on the ipvs interface",
        }
    }

    /// The set's type.
    pub fn set_type(self) -> SetType {
        use IpvsSet::*;
        match self {
            LoopBack | LoadBalancerSourceIp => SetType::HashIpPortIp,
            LoadBalancerSourceCidr => SetType::HashIpPortNet,
            NodePortTcp | NodePortLocalTcp | NodePortUdp | NodePortLocalUdp
            | HealthCheckNodePort => SetType::BitmapPort,
            IpvsIps => SetType::HashIp,
            _ => SetType::HashIpPort,
        }
    }

    /// How to create the set for `family`.
    pub fn spec(self, family: IpFamily) -> SetSpec {
        match self.set_type() {
            SetType::BitmapPort => SetSpec::bitmap_port(self.name(family), 0, 65535),
            t => SetSpec::new(
                self.name(family),
                t,
                match family {
                    IpFamily::V4 => SetFamily::Inet,
                    IpFamily::V6 => SetFamily::Inet6,
                },
            ),
        }
    }

    /// How iptables matches an entry of this set (`--match-set <name> <flags>`).
    pub fn match_flags(self) -> &'static str {
        use IpvsSet::*;
        match self {
            LoopBack | LoadBalancerSourceIp | LoadBalancerSourceCidr => "dst,dst,src",
            NodePortTcp | NodePortLocalTcp | NodePortUdp | NodePortLocalUdp
            | HealthCheckNodePort | IpvsIps => "dst",
            _ => "dst,dst",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_and_ipv6_names_differ() {
        let mut seen = std::collections::HashSet::new();
        for set in IpvsSet::ALL {
            for family in [IpFamily::V4, IpFamily::V6] {
                let spec = set.spec(family);
                spec.validate().unwrap();
                assert!(seen.insert(spec.name.clone()), "{} twice", spec.name);
            }
        }
        assert_eq!(
            IpvsSet::LoadBalancerSourceCidr.name(IpFamily::V6),
            "KUBE-6-LOAD-BALANCER-SOURCE-CID"
        );
    }
}
