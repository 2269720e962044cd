//! [`NodeView`]: what a render derives from the node (its Node object, its interfaces) through
//! proxy-core's shared semantics, resolved once per full render.

use std::net::IpAddr;

use proxy_core::datapath::{LocalTrafficDetector, MasqueradeDecision, NodePortAddresses};
use proxy_core::{IpFamily, NodeInfo};

use crate::config::RenderConfig;

/// The node-derived inputs of a render.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    /// How local pod traffic is recognised.
    pub detector: LocalTrafficDetector,
    /// Which traffic to cluster IPs is masqueraded.
    pub masquerade: MasqueradeDecision,
    /// The node's addresses of the family: flags' first, then the Node's.
    pub node_ips: Vec<IpAddr>,
    /// Where NodePorts answer.
    pub node_ports: NodePortAddresses,
    /// The iptables match for local pod traffic (`-s CIDR`, `-i IF`, `-i PREFIX+`), if the
    /// detector can tell; rendered once here, used by every Service.
    pub if_local: Option<String>,
    /// Its negation (`! -s CIDR`, …).
    pub if_not_local: Option<String>,
    /// Count packets accepted by localhost NodePorts with nfacct (IPv4, localhost NodePorts on,
    /// nfacct available).
    pub count_localhost_node_ports: bool,
}

impl Default for NodeView {
    fn default() -> Self {
        Self {
            detector: LocalTrafficDetector::None,
            masquerade: MasqueradeDecision::Never,
            node_ips: Vec::new(),
            node_ports: NodePortAddresses::All,
            if_local: None,
            if_not_local: None,
            count_localhost_node_ports: false,
        }
    }
}

impl NodeView {
    /// Resolves `config` for `node`. Without `interface_addresses`, the node's addresses and the
    /// loopback address stand in for the interfaces.
    pub fn resolve(
        config: &RenderConfig,
        node: &NodeInfo,
        interface_addresses: Option<&[IpAddr]>,
    ) -> Self {
        let family = config.family;
        let detector = config.detect_local.detector(family, node);
        let mut node_ips: Vec<IpAddr> = Vec::new();
        for ip in config.node_ips.iter().chain(&node.addresses) {
            if family.contains(ip) && !node_ips.contains(ip) {
                node_ips.push(*ip);
            }
        }
        let stand_in;
        let interfaces = match interface_addresses {
            Some(addrs) => addrs,
            None => {
                let loopback: IpAddr = match family {
                    IpFamily::V4 => std::net::Ipv4Addr::LOCALHOST.into(),
                    IpFamily::V6 => std::net::Ipv6Addr::LOCALHOST.into(),
                };
                stand_in = node_ips
                    .iter()
                    .copied()
                    .chain(std::iter::once(loopback))
                    .collect::<Vec<_>>();
                &stand_in
            }
        };
        let node_ports = config.node_port_addresses.select(family, interfaces, node);
        let if_local = match &detector {
            LocalTrafficDetector::None => None,
            LocalTrafficDetector::SourceCidr(net) => Some(format!("-s {net}")),
            LocalTrafficDetector::InputInterface(name) => Some(format!("-i {name}")),
            LocalTrafficDetector::InputInterfacePrefix(prefix) => Some(format!("-i {prefix}+")),
        };
        Self {
            masquerade: MasqueradeDecision::new(config.masquerade_all, &detector),
            if_not_local: if_local.as_ref().map(|m| format!("! {m}")),
            if_local,
            detector,
            node_ips,
            node_ports,
            count_localhost_node_ports: config.nfacct && config.localhost_node_ports_active(),
        }
    }
}
