//! One endpoint of one Service port.

use std::net::{IpAddr, SocketAddr};

/// One address:port that serves a Service port, with the EndpointSlice conditions and topology that
/// endpoint selection needs.
///
/// Endpoints of a Service port are kept sorted by `(ip, port)` and unique on that pair, so every
/// backend sees them in the same order and rendering is deterministic.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The endpoint's address (the first of the slice endpoint's `addresses`).
    pub ip: IpAddr,
    /// The target port, from the EndpointSlice port matched by name and protocol.
    pub port: u16,
    /// `conditions.ready`; an absent condition means ready.
    pub ready: bool,
    /// `conditions.serving`; an absent condition means serving.
    pub serving: bool,
    /// `conditions.terminating`; an absent condition means not terminating.
    pub terminating: bool,
    /// `nodeName`: the node the endpoint runs on, which decides whether it is local.
    pub node_name: Option<String>,
    /// `zone`.
    pub zone: Option<String>,
    /// `hints.forZones[].name`, sorted and deduplicated.
    pub zone_hints: Vec<String>,
    /// `hints.forNodes[].name`, sorted and deduplicated.
    pub node_hints: Vec<String>,
}

impl Endpoint {
    /// The endpoint as a socket address (`ip:port`, `[ip]:port` for IPv6): what a datapath targets,
    /// and the form upstream hashes into `KUBE-SEP-*` chain names.
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }

    /// Whether the endpoint runs on the node called `node_name`.
    pub fn is_local(&self, node_name: &str) -> bool {
        self.node_name.as_deref() == Some(node_name)
    }

    /// Whether the endpoint may take new traffic when serving+terminating endpoints are the fallback.
    pub fn is_serving_terminating(&self) -> bool {
        self.serving && self.terminating
    }

    /// Whether the endpoint has a zone hint naming `zone`.
    pub fn has_zone_hint(&self, zone: &str) -> bool {
        self.zone_hints.binary_search_by(|z| z.as_str().cmp(zone)).is_ok()
    }

    /// Whether the endpoint has a node hint naming `node`.
    pub fn has_node_hint(&self, node: &str) -> bool {
        self.node_hints.binary_search_by(|n| n.as_str().cmp(node)).is_ok()
    }
}
