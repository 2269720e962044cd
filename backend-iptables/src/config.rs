//! What the iptables renderer needs beyond the state: kube-proxy's iptables-related settings.

use std::net::IpAddr;

use proxy_core::datapath::{DetectLocalMode, NodePortAddressSpec};
use proxy_core::IpFamily;

/// Settings for one renderer (one IP family).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderConfig {
    /// The family of the state this renderer takes (iptables for IPv4, ip6tables for IPv6).
    pub family: IpFamily,
    /// How local pod traffic is recognised (`detectLocalMode`): traffic that is not local is
    /// masqueraded on its way to a cluster IP, and local traffic to an external address
    /// short-circuits Local policies. Resolved for the family and the state's node at each full
    /// render (`NodeCIDR` follows the Node's pod CIDRs without a new renderer). A mode that cannot
    /// recognise anything (no cluster CIDR of the family) disables both.
    pub detect_local: DetectLocalMode,
    /// Masquerade all traffic to cluster IPs (`masqueradeAll`).
    pub masquerade_all: bool,
    /// The fwmark bit used to flag packets for masquerading (`iptables.masqueradeBit`, default 14).
    pub masquerade_bit: u8,
    /// Addresses of this node known from flags (`kproxy render --node-ip`), in addition to the
    /// addresses of the state's Node, which are read at each full render. Used to let the node
    /// reach a load balancer whose source ranges include it, and by the packet-flow evaluator as
    /// the node's local addresses.
    pub node_ips: Vec<IpAddr>,
    /// Where NodePorts are reachable (`nodePortAddresses`), matched at each full render against the
    /// node's interface addresses ([`Renderer::set_interface_addresses`](crate::Renderer::set_interface_addresses)).
    pub node_port_addresses: NodePortAddressSpec,
    /// Allow NodePorts on 127.0.0.1 (`iptables.localhostNodePorts`, IPv4 only; needs
    /// `route_localnet`, and brings the CVE-2020-8558 guard rule).
    pub localhost_node_ports: bool,
    /// Add `--random-fully` to the MASQUERADE rule (when the kernel and iptables support it).
    pub masquerade_random_fully: bool,
    /// `nf_conntrack_tcp_be_liberal` is set: the INVALID-drop rule in KUBE-FORWARD is not needed.
    pub conntrack_tcp_liberal: bool,
    /// The node has nfacct (`xt_nfacct` and the counter objects exist): count dropped INVALID
    /// packets (`ct_state_invalid_dropped_pkts`) and accepted localhost NodePort packets
    /// (`localhost_nps_accepted_pkts`) with `-m nfacct`, as upstream does since v1.29.
    pub nfacct: bool,
}

impl RenderConfig {
    /// kube-proxy's defaults for `family`: no cluster CIDR, mark bit 14, NodePorts on every local
    /// address, localhost NodePorts on (IPv4).
    pub fn new(family: IpFamily) -> Self {
        Self {
            family,
            detect_local: DetectLocalMode::ClusterCidr(Vec::new()),
            masquerade_all: false,
            masquerade_bit: 14,
            node_ips: Vec::new(),
            node_port_addresses: NodePortAddressSpec::default(),
            localhost_node_ports: family == IpFamily::V4,
            masquerade_random_fully: false,
            conntrack_tcp_liberal: false,
            nfacct: false,
        }
    }

    /// Checks the settings against each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.masquerade_bit > 31 {
            return Err(ConfigError::MasqueradeBit(self.masquerade_bit));
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

    /// The same settings with `detectLocalMode: ClusterCIDR` and this cluster CIDR (or none).
    pub fn with_cluster_cidr(mut self, cidr: Option<ipnetwork::IpNetwork>) -> Self {
        self.detect_local = DetectLocalMode::ClusterCidr(cidr.into_iter().collect());
        self
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
