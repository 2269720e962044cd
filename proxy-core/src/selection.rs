//! Endpoint selection: which endpoints of a Service port take which traffic on this node.
//!
//! This is upstream's `CategorizeEndpoints`, done once here for every backend, so the traffic
//! policies, topology hints and the terminating fallback behave identically in every proxy mode.

use crate::model::{Endpoint, NodeInfo, ServicePort};

/// How topology hints narrowed the cluster endpoints, if they did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TopologyMode {
    /// No hints used: every ready endpoint is a candidate.
    None,
    /// Only endpoints hinted for this node (`hints.forNodes`).
    Node,
    /// Only endpoints hinted for this node's zone (`hints.forZones`).
    Zone,
}

/// The result of endpoint selection for one Service port: indices into its endpoint list.
///
/// Indices are ascending, so iterating them keeps the endpoints' `(ip, port)` order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EndpointSelection {
    /// Endpoints for traffic under a Cluster policy (empty when the port uses no Cluster policy).
    pub cluster: Vec<u32>,
    /// Endpoints for traffic under a Local policy (empty when the port uses no Local policy, or no
    /// usable endpoint runs on this node).
    pub local: Vec<u32>,
    /// Whether any usable endpoint exists anywhere. When false, the port answers REJECT; when true
    /// but `local` is empty, Local-policy traffic is dropped.
    pub has_any_endpoints: bool,
    /// How topology hints shaped `cluster`.
    pub topology: TopologyMode,
}

impl EndpointSelection {
    /// Every endpoint some traffic on this node can reach: `cluster` ∪ `local`, ascending. Upstream's
    /// `allReachableEndpoints`; backends create per-endpoint state (chains, real servers) for these.
    pub fn all_reachable(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.cluster.len() + self.local.len());
        let (mut a, mut b) = (self.cluster.iter().peekable(), self.local.iter().peekable());
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(&&x), Some(&&y)) if x == y => {
                    a.next();
                    b.next();
                    x
                }
                (Some(&&x), Some(&&y)) if x < y => {
                    a.next();
                    x
                }
                (Some(_), Some(&&y)) => {
                    b.next();
                    y
                }
                (Some(&&x), None) => {
                    a.next();
                    x
                }
                (None, Some(&&y)) => {
                    b.next();
                    y
                }
                (None, None) => break,
            };
            out.push(next);
        }
        out
    }
}

/// Selects endpoints for `port` on `node`.
///
/// - Cluster endpoints: ready endpoints allowed by topology; if there are none, serving+terminating
///   endpoints (without topology: this is a best effort not to drop connections).
/// - Local endpoints: ready endpoints on this node; if there are none, serving+terminating ones on
///   this node.
/// - Topology hints are used only when every ready endpoint has hints of a kind and at least one
///   names this node (node hints) or this node's zone (zone hints); node hints win.
pub fn select_endpoints(
    port: &ServicePort,
    endpoints: &[Endpoint],
    node: &NodeInfo,
) -> EndpointSelection {
    let mut selection = EndpointSelection {
        cluster: Vec::new(),
        local: Vec::new(),
        has_any_endpoints: false,
        topology: TopologyMode::None,
    };
    let indexed = || endpoints.iter().enumerate().map(|(i, e)| (i as u32, e));

    if port.uses_cluster_endpoints() {
        let topology = topology_mode(endpoints, node);
        selection.topology = topology;
        selection.cluster = indexed()
            .filter(|(_, e)| e.ready && available_for_topology(e, topology, node))
            .map(|(i, _)| i)
            .collect();
        if selection.cluster.is_empty() {
            selection.cluster = indexed()
                .filter(|(_, e)| e.is_serving_terminating())
                .map(|(i, _)| i)
                .collect();
        }
        selection.has_any_endpoints = !selection.cluster.is_empty();
    }

    if !port.uses_local_endpoints() {
        return selection;
    }

    let mut has_local_ready = false;
    let mut has_local_serving_terminating = false;
    for e in endpoints {
        if e.ready {
            selection.has_any_endpoints = true;
            has_local_ready |= e.is_local(&node.name);
        } else if e.is_serving_terminating() {
            selection.has_any_endpoints = true;
            has_local_serving_terminating |= e.is_local(&node.name);
        }
    }
    if has_local_ready {
        selection.local = indexed()
            .filter(|(_, e)| e.ready && e.is_local(&node.name))
            .map(|(i, _)| i)
            .collect();
    } else if has_local_serving_terminating {
        selection.local = indexed()
            .filter(|(_, e)| e.is_serving_terminating() && e.is_local(&node.name))
            .map(|(i, _)| i)
            .collect();
    }
    selection
}

/// Decides whether topology hints apply (upstream's `topologyModeFromHints`).
fn topology_mode(endpoints: &[Endpoint], node: &NodeInfo) -> TopologyMode {
    let zone = node.zone();
    let mut any_ready = false;
    let (mut all_node_hints, mut node_hint_matches) = (true, false);
    let (mut all_zone_hints, mut zone_hint_matches) = (true, false);
    for e in endpoints.iter().filter(|e| e.ready) {
        any_ready = true;
        if e.node_hints().is_empty() {
            all_node_hints = false;
        } else if e.has_node_hint(&node.name) {
            node_hint_matches = true;
        }
        if e.zone_hints().is_empty() {
            all_zone_hints = false;
        } else if zone.is_some_and(|z| e.has_zone_hint(z)) {
            zone_hint_matches = true;
        }
    }
    if !any_ready {
        return TopologyMode::None;
    }
    if all_node_hints && node_hint_matches {
        return TopologyMode::Node;
    }
    if all_zone_hints && zone_hint_matches {
        return TopologyMode::Zone;
    }
    TopologyMode::None
}

fn available_for_topology(e: &Endpoint, mode: TopologyMode, node: &NodeInfo) -> bool {
    match mode {
        TopologyMode::None => true,
        TopologyMode::Node => e.has_node_hint(&node.name),
        TopologyMode::Zone => node.zone().is_some_and(|z| e.has_zone_hint(z)),
    }
}
