//! What the iptables renderer needs beyond the state: kube-proxy's iptables-related settings.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use proxy_core::IpFamily;

/// Which node addresses accept NodePort traffic (kube-proxy's `nodePortAddresses`, resolved).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// Every local address (`-m addrtype --dst-type LOCAL`), kube-proxy's default.
    All,
    /// Only these addresses (the node's addresses inside the configured CIDRs). A loopback address
    /// here is honoured only for IPv4 with localhost NodePorts on.
    Only(Vec<IpAddr>),
}

/// Settings for one renderer (one IP family).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderConfig {
    /// The family of the state this renderer takes (iptables for IPv4, ip6tables for IPv6).
    pub family: IpFamily,
    /// The pod network (`clusterCIDR`) of this family: traffic from outside it to a cluster IP is
    /// masqueraded, and pod traffic to external addresses short-circuits Local policies. `None`
    /// disables both (upstream's "no local detector").
    pub cluster_cidr: Option<IpNetwork>,
    /// Masquerade all traffic to cluster IPs (`masqueradeAll`).
    pub masquerade_all: bool,
    /// The fwmark bit used to flag packets for masquerading (`iptables.masqueradeBit`, default 14).
    pub masquerade_bit: u8,
    /// The node's own addresses of this family: used to let the node reach a load balancer whose
    /// source ranges include it, and by the packet-flow evaluator as the node's local addresses.
    pub node_ips: Vec<IpAddr>,
    /// Where NodePorts are reachable.
    pub node_port_addresses: NodePortAddresses,
    /// Allow NodePorts on 127.0.0.1 (`iptables.localhostNodePorts`, IPv4 only; needs
    /// `route_localnet`, and brings the CVE-2020-8558 guard rule).
    pub localhost_node_ports: bool,
    /// Add `--random-fully` to the MASQUERADE rule (when the kernel and iptables support it).
    pub masquerade_random_fully: bool,
    /// `nf_conntrack_tcp_be_liberal` is set: the INVALID-drop rule in KUBE-FORWARD is not needed.
    pub conntrack_tcp_liberal: bool,
}

impl RenderConfig {
    /// kube-proxy's defaults for `family`: no cluster CIDR, mark bit 14, NodePorts on every local
    /// address, localhost NodePorts on (IPv4).
    pub fn new(family: IpFamily) -> Self {
        Self {
            family,
            cluster_cidr: None,
            masquerade_all: false,
            masquerade_bit: 14,
            node_ips: Vec::new(),
            node_port_addresses: NodePortAddresses::All,
            localhost_node_ports: family == IpFamily::V4,
            masquerade_random_fully: false,
            conntrack_tcp_liberal: false,
        }
    }

    /// Checks the settings against each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.masquerade_bit > 31 {
            return Err(ConfigError::MasqueradeBit(self.masquerade_bit));
        }
        if let Some(cidr) = self.cluster_cidr {
            if !self.family.contains(&cidr.ip()) {
                return Err(ConfigError::WrongFamily {
                    what: "cluster CIDR",
                    value: cidr.to_string(),
                    family: self.family,
                });
            }
        }
        for ip in &self.node_ips {
            if !self.family.contains(ip) {
                return Err(ConfigError::WrongFamily {
                    what: "node IP",
                    value: ip.to_string(),
                    family: self.family,
                });
            }
        }
        Ok(())
    }

    /// The masquerade mark as kube-proxy prints it, e.g. `0x4000`.
    pub fn masquerade_mark(&self) -> String {
        format!("{:#x}", 1u32 << self.masquerade_bit)
    }

    /// Whether localhost NodePorts are in effect (IPv4 only).
    pub fn localhost_node_ports_active(&self) -> bool {
        self.family == IpFamily::V4 && self.localhost_node_ports
    }
}

/// A setting the renderer cannot work with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The mark bit does not fit a 32-bit fwmark.
    #[error("masquerade bit {0} is outside 0-31")]
    MasqueradeBit(u8),
    /// An address of the other family was given to a single-family renderer.
    #[error("{what} {value} is not an {family} address")]
    WrongFamily {
        /// Which setting.
        what: &'static str,
        /// The offending value.
        value: String,
        /// The renderer's family.
        family: IpFamily,
    },
}
