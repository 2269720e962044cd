//! Merges a Service's EndpointSlices into one endpoint list per Service port.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::change_tracker::Change;
use crate::convert::{SliceInfo, SliceKey};
use crate::model::{Endpoint, NamespacedName, ServicePortName};

/// Endpoints of one Service, per port, sorted by port name. A sorted `Vec` rather than a map: a
/// Service has a handful of ports, and an empty-ish `BTreeMap` node costs hundreds of bytes, which
/// adds up at 20,000 Services.
pub(crate) type ServiceEndpoints = Vec<(ServicePortName, Arc<[Endpoint]>)>;

/// The slices of one Service, sorted by slice key (small, like [`ServiceEndpoints`]).
type ServiceSlices = Vec<(SliceKey, Arc<SliceInfo>)>;

/// Every EndpointSlice applied so far, grouped by Service, and the merged endpoints they give.
///
/// A change to one slice re-merges only that slice's Service, so the cost of an update grows with the
/// size of the Service, not of the cluster.
#[derive(Debug, Default)]
pub(crate) struct EndpointSliceCache {
    slices: HashMap<NamespacedName, ServiceSlices>,
    owner: HashMap<SliceKey, NamespacedName>,
    merged: HashMap<NamespacedName, ServiceEndpoints>,
}

impl EndpointSliceCache {
    /// Applies slice changes and returns the Service ports whose endpoint lists changed.
    pub(crate) fn apply(
        &mut self,
        changes: Vec<(SliceKey, Change<Arc<SliceInfo>>)>,
    ) -> BTreeSet<ServicePortName> {
        let mut services = BTreeSet::new();
        for (key, change) in changes {
            // The slice's previous owner, from what was applied (not from the event).
            if let Some(old_service) = self.owner.remove(&key) {
                if let Some(slices) = self.slices.get_mut(&old_service) {
                    slices.retain(|(k, _)| *k != key);
                    if slices.is_empty() {
                        self.slices.remove(&old_service);
                    }
                }
                services.insert(old_service);
            }
            if let Some(info) = change.current {
                let service = info.service.clone();
                self.owner.insert(key.clone(), service.clone());
                let slices = self.slices.entry(service.clone()).or_default();
                let at = slices.partition_point(|(k, _)| *k < key);
                slices.insert(at, (key, info));
                services.insert(service);
            }
        }

        let mut changed_ports = BTreeSet::new();
        for service in services {
            let merged = self
                .slices
                .get(&service)
                .map(merge_slices)
                .unwrap_or_default();
            let old = self.merged.remove(&service).unwrap_or_default();
            for (name, endpoints) in &old {
                if lookup(&merged, name) != Some(endpoints) {
                    changed_ports.insert(name.clone());
                }
            }
            for (name, _) in &merged {
                if lookup(&old, name).is_none() {
                    changed_ports.insert(name.clone());
                }
            }
            if !merged.is_empty() {
                self.merged.insert(service, merged);
            }
        }
        changed_ports
    }

    /// The merged endpoints of one Service port (`None`: no slice lists that port).
    pub(crate) fn endpoints(&self, port: &ServicePortName) -> Option<&Arc<[Endpoint]>> {
        lookup(self.merged.get(&port.service)?, port)
    }
}

fn lookup<'a>(ports: &'a ServiceEndpoints, name: &ServicePortName) -> Option<&'a Arc<[Endpoint]>> {
    ports
        .binary_search_by(|(n, _)| n.cmp(name))
        .ok()
        .map(|i| &ports[i].1)
}

/// Merges the slices of one Service. Endpoints are paired with every slice port; each port's list is
/// sorted by `(ip, port)`, and an address listed by two slices counts once (a ready copy is preferred,
/// then the slice whose name sorts first).
fn merge_slices(slices: &ServiceSlices) -> ServiceEndpoints {
    let mut by_port: BTreeMap<ServicePortName, Vec<Endpoint>> = BTreeMap::new();
    for (_, info) in slices {
        for port in &info.ports {
            let name = ServicePortName::new(info.service.clone(), port.name.clone(), port.protocol);
            let list = by_port.entry(name).or_default();
            list.reserve(info.endpoints.len());
            list.extend(info.endpoints.iter().map(|e| Endpoint {
                ip: e.ip,
                port: port.port,
                ready: e.ready,
                serving: e.serving,
                terminating: e.terminating,
                node_name: e.node_name.clone(),
                topology: e.topology.clone(),
            }));
        }
    }
    by_port
        .into_iter()
        .map(|(name, mut list)| {
            // Stable sort: among duplicates, ready first, then slice order.
            list.sort_by_key(|e| (e.ip, e.port, !e.ready));
            list.dedup_by(|later, first| later.ip == first.ip && later.port == first.port);
            (name, Arc::from(list))
        })
        .collect()
}
