//! What kproxy knows of its own node.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// The well-known label that holds a node's zone; topology hints are matched against it.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// This node: its name, labels and addresses.
///
/// The name decides which endpoints are local (an endpoint's `nodeName`); the zone label drives
/// topology-aware routing; the addresses are what NodePorts listen on when no `nodePortAddresses`
/// are configured.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's name (kproxy's `--hostname-override` or the host name).
    pub name: String,
    /// The node's labels.
    pub labels: BTreeMap<String, String>,
    /// `status.addresses` that parse as IPs (InternalIP and ExternalIP), in the order listed; in a
    /// [`ProxyState`](crate::ProxyState), only those of the state's family.
    pub addresses: Vec<IpAddr>,
    /// `spec.podCIDRs` (or `spec.podCIDR`) that parse; in a [`ProxyState`](crate::ProxyState), only
    /// those of the state's family. `detectLocalMode: NodeCIDR` treats them as local traffic.
    pub pod_cidrs: Vec<ipnetwork::IpNetwork>,
}

impl NodeInfo {
    /// A node known only by name, before its Node object has been seen.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// The node's zone (`topology.kubernetes.io/zone`), if labelled and non-empty.
    pub fn zone(&self) -> Option<&str> {
        self.labels
            .get(ZONE_LABEL)
            .map(String::as_str)
            .filter(|z| !z.is_empty())
    }

    /// The node's primary address of a family: the first listed (`nodePortAddresses: [primary]`).
    pub fn primary_address(&self, family: crate::model::IpFamily) -> Option<IpAddr> {
        self.addresses.iter().copied().find(|a| family.contains(a))
    }
}
