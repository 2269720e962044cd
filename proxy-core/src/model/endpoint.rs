//! One endpoint of one Service port.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Where an endpoint is and where it should serve: its zone and its topology hints.
///
/// Kept apart from [`Endpoint`] behind one `Arc` because it is the same for every port of an
/// endpoint and usually absent or repeated: at 200,000 endpoints, sharing it keeps the state small.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointTopology {
    /// `zone`.
    pub zone: Option<Arc<str>>,
    /// `hints.forZones[].name`, sorted and deduplicated.
    pub zone_hints: Vec<Arc<str>>,
    /// `hints.forNodes[].name`, sorted and deduplicated.
    pub node_hints: Vec<Arc<str>>,
}

impl EndpointTopology {
    /// Whether nothing is set (such endpoints carry no topology at all).
    pub fn is_empty(&self) -> bool {
        self.zone.is_none() && self.zone_hints.is_empty() && self.node_hints.is_empty()
    }
}

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
    /// `nodeName`: the node the endpoint runs on, which decides whether it is local. Interned: all
    /// endpoints on one node share one string.
    pub node_name: Option<Arc<str>>,
    /// Zone and hints; `None` when the slice gives none.
    pub topology: Option<Arc<EndpointTopology>>,
}

impl Endpoint {
    /// A ready endpoint with no node and no topology (mostly for tests).
    pub fn new(ip: IpAddr, port: u16) -> Self {
        Self {
            ip,
            port,
            ready: true,
            serving: true,
            terminating: false,
            node_name: None,
            topology: None,
        }
    }

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

    /// The endpoint's zone.
    pub fn zone(&self) -> Option<&str> {
        self.topology.as_ref()?.zone.as_deref()
    }

    /// `hints.forZones` names.
    pub fn zone_hints(&self) -> &[Arc<str>] {
        self.topology.as_ref().map_or(&[], |t| &t.zone_hints)
    }

    /// `hints.forNodes` names.
    pub fn node_hints(&self) -> &[Arc<str>] {
        self.topology.as_ref().map_or(&[], |t| &t.node_hints)
    }

    /// Whether the endpoint has a zone hint naming `zone`.
    pub fn has_zone_hint(&self, zone: &str) -> bool {
        self.zone_hints()
            .binary_search_by(|z| (**z).cmp(zone))
            .is_ok()
    }

    /// Whether the endpoint has a node hint naming `node`.
    pub fn has_node_hint(&self, node: &str) -> bool {
        self.node_hints()
            .binary_search_by(|n| (**n).cmp(node))
            .is_ok()
    }
}
