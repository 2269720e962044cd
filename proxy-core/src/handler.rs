//! The event handler traits the sources call, mirroring upstream's `pkg/proxy/config` interfaces.
//!
//! Handlers only record: they convert the object, note the change and return. They never touch the
//! datapath and never wait for a sync, so a burst of API events cannot stall the watchers.

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;

/// Receives Service events (upstream's `ServiceHandler`).
pub trait ServiceHandler {
    /// A Service was created (or first seen in a list).
    fn on_service_add(&mut self, service: &Service);
    /// A Service changed from `old` to `new`.
    fn on_service_update(&mut self, old: &Service, new: &Service);
    /// A Service was deleted; `service` is its last known state.
    fn on_service_delete(&mut self, service: &Service);
    /// The initial list of Services has been delivered. No sync happens before this.
    fn on_service_synced(&mut self);
}

/// Receives EndpointSlice events (upstream's `EndpointSliceHandler`).
pub trait EndpointSliceHandler {
    /// An EndpointSlice was created (or first seen in a list).
    fn on_endpoint_slice_add(&mut self, slice: &EndpointSlice);
    /// An EndpointSlice changed from `old` to `new`.
    fn on_endpoint_slice_update(&mut self, old: &EndpointSlice, new: &EndpointSlice);
    /// An EndpointSlice was deleted; `slice` is its last known state.
    fn on_endpoint_slice_delete(&mut self, slice: &EndpointSlice);
    /// The initial list of EndpointSlices has been delivered. No sync happens before this.
    fn on_endpoint_slice_synced(&mut self);
}

/// Receives events for this node's Node object (upstream's `NodeHandler`, with add and update folded
/// into one call because both mean "this is the node now").
pub trait NodeHandler {
    /// The Node was created or changed; `node` is its current state.
    fn on_node_change(&mut self, node: &Node);
    /// The Node was deleted: the node is going away, and health checks report it.
    fn on_node_delete(&mut self, node: &Node);
    /// The initial Node list has been delivered.
    fn on_node_synced(&mut self);
}

/// Receives ServiceCIDR events (`networking.k8s.io/v1`, KEP-1880): the ranges cluster IPs are
/// allocated from. A datapath drops traffic to an address of those ranges that no Service holds
/// (nftables mode, as upstream's).
pub trait ServiceCidrHandler {
    /// A ServiceCIDR was created or changed; `cidr` is its current state.
    fn on_service_cidr_change(&mut self, cidr: &ServiceCIDR);
    /// A ServiceCIDR was deleted.
    fn on_service_cidr_delete(&mut self, cidr: &ServiceCIDR);
}
