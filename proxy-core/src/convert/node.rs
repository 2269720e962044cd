//! `Node` → [`NodeInfo`].

use k8s_openapi::api::core::v1::Node;

use super::object_name;
use super::warning::{ObjectKind, Skipped, Warnings};
use crate::model::NodeInfo;

/// Converts a Node: its name, labels and the addresses that parse as IPs.
///
/// Hostname and DNS addresses are not IPs and are left out silently; an `InternalIP` or `ExternalIP`
/// that does not parse is left out with a warning. Returns `None` only for a Node without a name.
pub fn node_info(node: &Node, warnings: &mut Warnings) -> Option<NodeInfo> {
    let name = object_name(&node.metadata, ObjectKind::Node, warnings)?;
    let mut addresses = Vec::new();
    let listed = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_deref())
        .unwrap_or_default();
    for (i, a) in listed.iter().enumerate() {
        if a.type_ != "InternalIP" && a.type_ != "ExternalIP" {
            continue;
        }
        match super::ip::parse_ip(&a.address).ok_or(()) {
            Ok(ip) if !addresses.contains(&ip) => addresses.push(ip),
            Ok(_) => {}
            Err(_) => warnings.add(
                ObjectKind::Node,
                &name,
                format!("status.addresses[{i}]"),
                format!("invalid IP address {:?}", a.address),
                Skipped::Value,
            ),
        }
    }
    let spec = node.spec.as_ref();
    let mut pod_cidrs = Vec::new();
    let listed_cidrs = spec
        .and_then(|s| s.pod_cidrs.clone())
        .filter(|c| !c.is_empty())
        .or_else(|| spec.and_then(|s| s.pod_cidr.clone()).map(|c| vec![c]))
        .unwrap_or_default();
    for (i, c) in listed_cidrs.iter().enumerate() {
        match super::ip::parse_cidr(c) {
            Some(net) => pod_cidrs.push(net),
            None => warnings.add(
                ObjectKind::Node,
                &name,
                format!("spec.podCIDRs[{i}]"),
                format!("invalid CIDR {c:?}"),
                Skipped::Value,
            ),
        }
    }
    Some(NodeInfo {
        name: name.name,
        labels: node.metadata.labels.clone().unwrap_or_default(),
        addresses,
        pod_cidrs,
    })
}
