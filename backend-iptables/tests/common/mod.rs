//! Shared test setup: states built from fixtures through the real handlers.
#![allow(dead_code)]

use backend_iptables::RenderConfig;
use fixtures::Manifests;
use proxy_core::{
    EndpointSliceHandler, IpFamily, NodeHandler, NodeInfo, PendingChanges, ProxyState,
    ServiceFilter, ServiceHandler,
};

/// Builds the state of `manifests` for `node`.
pub fn state_of(
    manifests: &Manifests,
    family: IpFamily,
    node: &str,
) -> (PendingChanges, ProxyState) {
    let mut p = PendingChanges::new(family, node, ServiceFilter::default());
    manifests.services.iter().for_each(|s| p.on_service_add(s));
    manifests
        .endpoint_slices
        .iter()
        .for_each(|s| p.on_endpoint_slice_add(s));
    manifests.nodes.iter().for_each(|n| p.on_node_change(n));
    let mut s = ProxyState::new(family, NodeInfo::named(node));
    s.apply(&mut p);
    (p, s)
}

/// The bundled examples' state on their node.
pub fn examples_state(family: IpFamily) -> ProxyState {
    state_of(&fixtures::examples(), family, fixtures::EXAMPLE_NODE).1
}

/// The config the examples are rendered with: the pod network of the examples and the node's IPs.
pub fn examples_config(family: IpFamily, state: &ProxyState) -> RenderConfig {
    let mut c = RenderConfig::new(family);
    c = c.with_cluster_cidr(Some(match family {
        IpFamily::V4 => "10.244.0.0/16".parse().unwrap(),
        IpFamily::V6 => "fd00:244::/32".parse().unwrap(),
    }));
    c.node_ips = state.node().addresses.clone();
    c
}
