//! Telling local pod traffic from the rest (`detectLocalMode`), and the masquerade decision.
//!
//! Traffic from a local pod to a cluster IP keeps its source address; traffic from anywhere else is
//! masqueraded so replies come back through this node. Pod traffic to an external address of a
//! Local-policy Service short-circuits to the cluster endpoints. Both need to know what "from a
//! local pod" means, which upstream's `detectLocalMode` chooses:
//!
//! | mode | local traffic is | needs |
//! |---|---|---|
//! | `ClusterCIDR` (default) | from the cluster CIDR of the family | `clusterCIDR` |
//! | `NodeCIDR` | from this node's pod CIDR of the family | the Node's `spec.podCIDRs` |
//! | `BridgeInterface` | arriving on the bridge | `detectLocal.bridgeInterface` |
//! | `InterfaceNamePrefix` | arriving on an interface with the prefix | `detectLocal.interfaceNamePrefix` |
//!
//! Without what a mode needs, nothing is local (upstream's no-op detector): no masquerading of
//! off-cluster traffic and no short circuit.

use std::fmt;

use ipnetwork::IpNetwork;

use crate::model::{IpFamily, NodeInfo};

/// `detectLocalMode` with its setting, before it is resolved for a family and a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DetectLocalMode {
    /// The cluster CIDRs (at most one per family).
    ClusterCidr(Vec<IpNetwork>),
    /// The node's pod CIDRs, read from the Node at each sync.
    NodeCidr,
    /// A bridge interface name.
    BridgeInterface(String),
    /// An interface name prefix.
    InterfaceNamePrefix(String),
}

/// A `detectLocalMode` that cannot work as configured.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("detectLocalMode {mode}: {reason}")]
pub struct DetectLocalError {
    /// The mode.
    pub mode: String,
    /// Why.
    pub reason: String,
}

impl DetectLocalMode {
    /// Parses the configuration's `detectLocalMode` (empty: `ClusterCIDR`) with its settings.
    pub fn from_config(
        mode: &str,
        cluster_cidrs: Vec<IpNetwork>,
        bridge_interface: &str,
        interface_name_prefix: &str,
    ) -> Result<Self, DetectLocalError> {
        let err = |reason: &str| DetectLocalError {
            mode: mode.to_owned(),
            reason: reason.to_owned(),
        };
        match mode {
            "" | "ClusterCIDR" => Ok(Self::ClusterCidr(cluster_cidrs)),
            "NodeCIDR" => Ok(Self::NodeCidr),
            "BridgeInterface" if bridge_interface.is_empty() => {
                Err(err("detectLocal.bridgeInterface is empty"))
            }
            "BridgeInterface" => Ok(Self::BridgeInterface(bridge_interface.to_owned())),
            "InterfaceNamePrefix" if interface_name_prefix.is_empty() => {
                Err(err("detectLocal.interfaceNamePrefix is empty"))
            }
            "InterfaceNamePrefix" => {
                Ok(Self::InterfaceNamePrefix(interface_name_prefix.to_owned()))
            }
            _ => Err(err(
                "unknown mode (ClusterCIDR, NodeCIDR, BridgeInterface, InterfaceNamePrefix)",
            )),
        }
    }

    /// The detector for `family` on `node` (the node matters only for `NodeCIDR`).
    pub fn detector(&self, family: IpFamily, node: &NodeInfo) -> LocalTrafficDetector {
        let of_family = |cidrs: &[IpNetwork]| {
            cidrs
                .iter()
                .copied()
                .find(|c| family.contains(&c.ip()))
                .map_or(LocalTrafficDetector::None, LocalTrafficDetector::SourceCidr)
        };
        match self {
            Self::ClusterCidr(cidrs) => of_family(cidrs),
            Self::NodeCidr => of_family(&node.pod_cidrs),
            Self::BridgeInterface(name) => LocalTrafficDetector::InputInterface(name.clone()),
            Self::InterfaceNamePrefix(prefix) => {
                LocalTrafficDetector::InputInterfacePrefix(prefix.clone())
            }
        }
    }
}

/// How local pod traffic is recognised, resolved for one family and node.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LocalTrafficDetector {
    /// Nothing is recognised as local.
    None,
    /// Traffic from this CIDR.
    SourceCidr(IpNetwork),
    /// Traffic arriving on this interface.
    InputInterface(String),
    /// Traffic arriving on an interface whose name starts with this.
    InputInterfacePrefix(String),
}

impl LocalTrafficDetector {
    /// Whether local traffic can be told apart at all.
    pub fn is_implemented(&self) -> bool {
        !matches!(self, Self::None)
    }

    /// Whether a packet from `source` that arrived on `input_interface` is local pod traffic.
    pub fn is_local(&self, source: std::net::IpAddr, input_interface: &str) -> bool {
        match self {
            Self::None => false,
            Self::SourceCidr(net) => net.contains(source),
            Self::InputInterface(name) => input_interface == name,
            Self::InputInterfacePrefix(prefix) => input_interface.starts_with(prefix.as_str()),
        }
    }
}

impl fmt::Display for LocalTrafficDetector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::SourceCidr(net) => write!(f, "source {net}"),
            Self::InputInterface(name) => write!(f, "interface {name}"),
            Self::InputInterfacePrefix(prefix) => write!(f, "interfaces {prefix}*"),
        }
    }
}

/// Which traffic to a cluster IP is masqueraded (so replies come back through this node).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MasqueradeDecision {
    /// All of it (`masqueradeAll`).
    All,
    /// Traffic that is not local pod traffic (the detector's negation).
    OffCluster,
    /// None: local traffic cannot be told apart and `masqueradeAll` is off.
    Never,
}

impl MasqueradeDecision {
    /// Upstream's rule: `masqueradeAll` wins; otherwise off-cluster traffic when the detector
    /// works.
    pub fn new(masquerade_all: bool, detector: &LocalTrafficDetector) -> Self {
        if masquerade_all {
            Self::All
        } else if detector.is_implemented() {
            Self::OffCluster
        } else {
            Self::Never
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_with_cidrs(cidrs: &[&str]) -> NodeInfo {
        NodeInfo {
            pod_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
            ..NodeInfo::named("n")
        }
    }

    #[test]
    fn each_mode_resolves_per_family_and_node() {
        let v4: IpNetwork = "10.244.0.0/16".parse().unwrap();
        let v6: IpNetwork = "fd00::/48".parse().unwrap();
        let node = node_with_cidrs(&["10.244.3.0/24", "fd00:0:0:3::/64"]);
        let cluster = DetectLocalMode::from_config("", vec![v4, v6], "", "").unwrap();
        assert_eq!(
            cluster.detector(IpFamily::V6, &node),
            LocalTrafficDetector::SourceCidr(v6)
        );
        let per_node = DetectLocalMode::from_config("NodeCIDR", vec![v4], "", "").unwrap();
        assert_eq!(
            per_node.detector(IpFamily::V4, &node),
            LocalTrafficDetector::SourceCidr("10.244.3.0/24".parse().unwrap())
        );
        assert_eq!(
            per_node.detector(IpFamily::V4, &NodeInfo::named("n")),
            LocalTrafficDetector::None,
            "no pod CIDR on the Node yet: nothing is local"
        );
        let bridge = DetectLocalMode::from_config("BridgeInterface", vec![], "cbr0", "").unwrap();
        let d = bridge.detector(IpFamily::V4, &node);
        assert!(d.is_local("192.0.2.1".parse().unwrap(), "cbr0"));
        assert!(!d.is_local("10.244.3.4".parse().unwrap(), "eth0"));
        let prefix =
            DetectLocalMode::from_config("InterfaceNamePrefix", vec![], "", "veth").unwrap();
        assert!(prefix
            .detector(IpFamily::V4, &node)
            .is_local("192.0.2.1".parse().unwrap(), "veth1234"));
    }

    #[test]
    fn missing_settings_are_errors() {
        assert!(DetectLocalMode::from_config("BridgeInterface", vec![], "", "").is_err());
        assert!(DetectLocalMode::from_config("InterfaceNamePrefix", vec![], "", "").is_err());
        assert!(DetectLocalMode::from_config("Nearby", vec![], "", "").is_err());
    }

    #[test]
    fn masquerade_all_wins_and_no_detector_means_never() {
        let none = LocalTrafficDetector::None;
        let cidr = LocalTrafficDetector::SourceCidr("10.0.0.0/8".parse().unwrap());
        assert_eq!(
            MasqueradeDecision::new(true, &none),
            MasqueradeDecision::All
        );
        assert_eq!(
            MasqueradeDecision::new(false, &cidr),
            MasqueradeDecision::OffCluster
        );
        assert_eq!(
            MasqueradeDecision::new(false, &none),
            MasqueradeDecision::Never
        );
    }
}
