//! Which node addresses accept NodePort traffic (`nodePortAddresses`).
//!
//! Upstream's rules: an empty list, or a list with no CIDR of the family, or a zero CIDR
//! (`0.0.0.0/0`, `::/0`), means every local address. Otherwise a NodePort answers on the node's
//! *interface* addresses that fall in one of the CIDRs; `primary` adds the node's primary address
//! of the family (the first one its Node lists). A CIDR covering `127.0.0.1` makes localhost
//! NodePorts possible (IPv4), since `lo` holds that address.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::model::{IpFamily, NodeInfo};

/// `nodePortAddresses` as configured, for every family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodePortAddressSpec {
    /// The CIDRs listed.
    pub cidrs: Vec<IpNetwork>,
    /// Whether `primary` was listed.
    pub primary: bool,
}

/// A `nodePortAddresses` entry that is neither a CIDR nor `primary`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("nodePortAddresses: {0:?} is not a CIDR or \"primary\"")]
pub struct BadNodePortAddress(pub String);

/// The node addresses that accept NodePorts, for one family, resolved.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NodePortAddresses {
    /// Every local address (iptables: `-m addrtype --dst-type LOCAL`).
    All,
    /// Only these addresses, in the order found (may be empty: NodePorts then answer nowhere).
    Only(Vec<IpAddr>),
}

impl NodePortAddressSpec {
    /// Parses the configuration's list.
    pub fn parse<S: AsRef<str>>(values: &[S]) -> Result<Self, BadNodePortAddress> {
        let mut spec = Self::default();
        for v in values {
            let v = v.as_ref().trim();
            if v == "primary" {
                spec.primary = true;
                continue;
            }
            let net: IpNetwork = v
                .contains('/')
                .then(|| v.parse().ok())
                .flatten()
                .ok_or_else(|| BadNodePortAddress(v.to_owned()))?;
            spec.cidrs.push(net);
        }
        Ok(spec)
    }

    /// Whether NodePorts answer on every local address of `family`.
    pub fn matches_all(&self, family: IpFamily) -> bool {
        let mut of_family = self.cidrs.iter().filter(|c| family.contains(&c.ip()));
        let none_listed = of_family.clone().next().is_none() && !self.primary;
        none_listed || of_family.any(|c| c.prefix() == 0)
    }

    /// The addresses for `family`, given the node's interface addresses (`interface_addresses`,
    /// any family; include loopback) and its Node (for `primary`).
    pub fn select(
        &self,
        family: IpFamily,
        interface_addresses: &[IpAddr],
        node: &NodeInfo,
    ) -> NodePortAddresses {
        if self.matches_all(family) {
            return NodePortAddresses::All;
        }
        let mut out: Vec<IpAddr> = Vec::new();
        let mut push = |ip: IpAddr| {
            if !out.contains(&ip) {
                out.push(ip);
            }
        };
        for ip in interface_addresses.iter().copied() {
            if family.contains(&ip) && self.cidrs.iter().any(|c| c.contains(ip)) {
                push(ip);
            }
        }
        if self.primary {
            if let Some(ip) = node.primary_address(family) {
                push(ip);
            }
        }
        NodePortAddresses::Only(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn empty_or_other_family_or_zero_cidr_matches_all() {
        let node = NodeInfo::named("n");
        let all = NodePortAddressSpec::parse::<&str>(&[]).unwrap();
        assert_eq!(all.select(IpFamily::V4, &[], &node), NodePortAddresses::All);
        let v6_only = NodePortAddressSpec::parse(&["fd00::/64"]).unwrap();
        assert!(v6_only.matches_all(IpFamily::V4));
        assert!(!v6_only.matches_all(IpFamily::V6));
        let zero = NodePortAddressSpec::parse(&["10.0.0.0/8", "0.0.0.0/0"]).unwrap();
        assert!(zero.matches_all(IpFamily::V4));
    }

    #[test]
    fn cidrs_match_interface_addresses_and_primary_adds_the_node_address() {
        let node = NodeInfo {
            addresses: ips(&["192.168.56.10", "fd00::10"]),
            ..NodeInfo::named("n")
        };
        let interfaces = ips(&["127.0.0.1", "10.244.1.1", "192.168.56.10", "172.17.0.1"]);
        let spec = NodePortAddressSpec::parse(&["192.168.56.0/24", "127.0.0.0/8"]).unwrap();
        assert_eq!(
            spec.select(IpFamily::V4, &interfaces, &node),
            NodePortAddresses::Only(ips(&["127.0.0.1", "192.168.56.10"]))
        );
        let primary = NodePortAddressSpec::parse(&["primary"]).unwrap();
        assert_eq!(
            primary.select(IpFamily::V4, &interfaces, &node),
            NodePortAddresses::Only(ips(&["192.168.56.10"]))
        );
        assert_eq!(
            primary.select(IpFamily::V6, &interfaces, &node),
            NodePortAddresses::Only(ips(&["fd00::10"]))
        );
        assert!(NodePortAddressSpec::parse(&["10.0.0.1"]).is_err());
        assert!(NodePortAddressSpec::parse(&["nearby"]).is_err());
    }
}
