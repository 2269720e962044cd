//! [`PendingChanges`]: what the handlers recorded since the last sync, for one IP family.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::change_tracker::ChangeTracker;
use crate::convert::{
    node_info, service_ports, slice_info, ConversionWarning, Interner, ServiceFilter,
    ServicePortMap, SliceInfo, SliceKey, Warnings,
};
use crate::handler::{EndpointSliceHandler, NodeHandler, ServiceHandler};
use crate::model::{IpFamily, NamespacedName, NodeInfo};

/// The taint the cluster autoscaler puts on a node it is about to remove.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// The annotation the EndpointSlice controller sets to when the change behind a slice update happened.
pub const LAST_CHANGE_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// How many warnings are kept for [`PendingChanges::take_warnings`] between two drains; the counter
/// keeps counting past it, so the metric stays exact even if nobody drains.
const MAX_KEPT_WARNINGS: usize = 10_000;

/// The changes recorded by the handlers since the last sync, for one IP family.
///
/// It implements all three handler traits, converting each object to the model as it arrives (so a
/// dual-stack node has one `PendingChanges` per family, fed the same events). [`ProxyState::apply`]
/// drains it.
///
/// [`ProxyState::apply`]: crate::ProxyState::apply
#[derive(Debug)]
pub struct PendingChanges {
    family: IpFamily,
    node_name: String,
    filter: ServiceFilter,
    pub(crate) services: ChangeTracker<NamespacedName, Arc<ServicePortMap>>,
    pub(crate) slices: ChangeTracker<SliceKey, Arc<SliceInfo>>,
    /// What each Service converted to when last recorded: the `previous` of its next change.
    /// Sources need not keep the API objects to hand the old one over (the converted form is
    /// shared with the state through the `Arc`).
    last_services: HashMap<NamespacedName, Arc<ServicePortMap>>,
    /// What each EndpointSlice converted to when last recorded.
    last_slices: HashMap<SliceKey, Arc<SliceInfo>>,
    pub(crate) node: Option<NodeInfo>,
    /// Every ServiceCIDR's ranges of this family, by object name.
    service_cidr_objects: std::collections::BTreeMap<String, Vec<ipnetwork::IpNetwork>>,
    /// The union of those ranges, when it changed since the last batch.
    service_cidrs: Option<Vec<ipnetwork::IpNetwork>>,
    node_deleted: bool,
    node_draining: bool,
    services_synced: bool,
    slices_synced: bool,
    nodes_synced: bool,
    warnings: Warnings,
    counters: ChangeCounters,
    names: Interner,
    trigger_times: Vec<SystemTime>,
}

/// Changes taken out of a [`PendingChanges`] by [`PendingChanges::take_batch`], to be applied to
/// the state without holding the trackers' lock.
#[derive(Debug)]
pub struct PendingBatch {
    pub(crate) family: IpFamily,
    pub(crate) services: Vec<(
        NamespacedName,
        crate::change_tracker::Change<Arc<ServicePortMap>>,
    )>,
    pub(crate) slices: Vec<(SliceKey, crate::change_tracker::Change<Arc<SliceInfo>>)>,
    pub(crate) node: Option<NodeInfo>,
    pub(crate) service_cidrs: Option<Vec<ipnetwork::IpNetwork>>,
}

impl PendingBatch {
    /// Whether the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
            && self.slices.is_empty()
            && self.node.is_none()
            && self.service_cidrs.is_none()
    }
}

/// Monotonic counters for the `sync_proxy_rules_*_changes_total` metrics and skipped input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChangeCounters {
    /// Service events received.
    pub service_changes_total: u64,
    /// EndpointSlice events received.
    pub endpoint_changes_total: u64,
    /// Conversion warnings: values, endpoints, ports or objects skipped as invalid.
    pub conversion_warnings_total: u64,
}

impl PendingChanges {
    /// Changes for `family` on the node named `node_name`, programming Services `filter` accepts.
    pub fn new(family: IpFamily, node_name: impl Into<String>, filter: ServiceFilter) -> Self {
        Self {
            family,
            node_name: node_name.into(),
            filter,
            services: ChangeTracker::new(),
            slices: ChangeTracker::new(),
            last_services: HashMap::new(),
            last_slices: HashMap::new(),
            node: None,
            service_cidr_objects: std::collections::BTreeMap::new(),
            service_cidrs: None,
            node_deleted: false,
            node_draining: false,
            services_synced: false,
            slices_synced: false,
            nodes_synced: false,
            warnings: Warnings::new(),
            counters: ChangeCounters::default(),
            names: Interner::new(),
            trigger_times: Vec::new(),
        }
    }

    /// The IP family these changes are for.
    pub fn family(&self) -> IpFamily {
        self.family
    }

    /// The node these changes are for.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// Whether the initial Service and EndpointSlice lists are in. Syncing earlier would program a
    /// partial cluster and, for a restarting proxy, delete rules for Services not listed yet.
    pub fn is_synced(&self) -> bool {
        self.services_synced && self.slices_synced
    }

    /// Whether the initial Node list is in (topology needs the node's labels).
    pub fn node_synced(&self) -> bool {
        self.nodes_synced
    }

    /// Whether this node's Node object was deleted (healthz then reports unhealthy).
    pub fn node_deleted(&self) -> bool {
        self.node_deleted
    }

    /// Whether load balancers should drain this node (`/healthz` answers 503 with
    /// `nodeEligible: false`): its Node is deleted or being deleted (a `deletionTimestamp`), or
    /// carries the cluster autoscaler's `ToBeDeletedByClusterAutoscaler` taint (KEP-3836).
    pub fn node_eligible(&self) -> bool {
        !self.node_deleted && !self.node_draining
    }

    /// Service objects with a change pending (`sync_proxy_rules_service_changes_pending`).
    pub fn pending_service_changes(&self) -> usize {
        self.services.len()
    }

    /// EndpointSlices with a change pending (`sync_proxy_rules_endpoint_changes_pending`).
    pub fn pending_endpoint_changes(&self) -> usize {
        self.slices.len()
    }

    /// Whether anything waits for a sync.
    pub fn has_pending(&self) -> bool {
        !self.services.is_empty()
            || !self.slices.is_empty()
            || self.node.is_some()
            || self.service_cidrs.is_some()
    }

    /// The counters so far.
    pub fn counters(&self) -> ChangeCounters {
        self.counters
    }

    /// Takes the `endpoints.kubernetes.io/last-change-trigger-time` of every EndpointSlice change
    /// recorded since the last call: when the change that caused it happened (a pod became ready,
    /// …). After a sync applies those changes, `now - trigger` is the network programming latency.
    pub fn take_trigger_times(&mut self) -> Vec<SystemTime> {
        std::mem::take(&mut self.trigger_times)
    }

    /// Takes the conversion warnings recorded since the last call (each was also logged).
    pub fn take_warnings(&mut self) -> Vec<ConversionWarning> {
        self.warnings.drain().collect()
    }

    /// Takes every recorded change out, leaving the trackers empty, in O(changes). The sync runner
    /// calls this with the trackers' lock held and applies the batch
    /// ([`ProxyState::apply_batch`](crate::ProxyState::apply_batch)) after releasing it, so the
    /// sources never wait for a state update (a Node zone change re-selects every port).
    pub fn take_batch(&mut self) -> PendingBatch {
        PendingBatch {
            family: self.family,
            services: self.services.take(),
            slices: self.slices.take(),
            node: self.node.take(),
            service_cidrs: self.service_cidrs.take(),
        }
    }

    fn keep_warnings(&mut self, mut fresh: Warnings) {
        for w in fresh.drain() {
            tracing::warn!(family = %self.family, "skipping invalid input: {w}");
            self.counters.conversion_warnings_total += 1;
            if self.warnings.len() < MAX_KEPT_WARNINGS {
                self.warnings.push(w);
            }
        }
    }

    /// Converts a Service; an empty port map is "nothing to program", i.e. `None`.
    fn convert_service(
        &self,
        service: &Service,
        warnings: &mut Warnings,
    ) -> Option<Arc<ServicePortMap>> {
        let ports = service_ports(service, self.family, &self.filter, warnings);
        (!ports.is_empty()).then(|| Arc::new(ports))
    }

    fn record_service(&mut self, old: Option<&Service>, new: Option<&Service>) {
        self.counters.service_changes_total += 1;
        let key_source = new.or(old).expect("an event carries at least one object");
        let mut scratch = Warnings::new();
        let Some(key) = crate::convert::object_name(
            &key_source.metadata,
            crate::convert::ObjectKind::Service,
            &mut scratch,
        ) else {
            self.keep_warnings(scratch);
            return;
        };
        // The previous state is what this key last converted to (not a conversion of `old`):
        // sources may pass any old object, or none, and need not keep API objects for it.
        let _ = old;
        let previous = self.last_services.get(&key).cloned();
        let mut warnings = Warnings::new();
        let current = new.and_then(|s| self.convert_service(s, &mut warnings));
        self.keep_warnings(warnings);
        match &current {
            Some(c) => {
                self.last_services.insert(key.clone(), Arc::clone(c));
            }
            None => {
                self.last_services.remove(&key);
            }
        }
        self.services.record(key, previous, current);
    }

    fn record_slice(&mut self, old: Option<&EndpointSlice>, new: Option<&EndpointSlice>) {
        self.counters.endpoint_changes_total += 1;
        let source = new.or(old).expect("an event carries at least one object");
        let mut scratch = Warnings::new();
        let Some(key) = crate::convert::object_name(
            &source.metadata,
            crate::convert::ObjectKind::EndpointSlice,
            &mut scratch,
        ) else {
            self.keep_warnings(scratch);
            return;
        };
        let family = self.family;
        let names = &mut self.names;
        let mut convert = |s: &EndpointSlice, w: &mut Warnings| {
            slice_info(s, family, names, w).map(|(_, info)| Arc::new(info))
        };
        let _ = old;
        let previous = self.last_slices.get(&key).cloned();
        let mut warnings = Warnings::new();
        let current = new.and_then(|s| convert(s, &mut warnings));
        self.keep_warnings(warnings);
        match &current {
            Some(c) => {
                self.last_slices.insert(key.clone(), Arc::clone(c));
            }
            None => {
                self.last_slices.remove(&key);
            }
        }
        let pending = self.slices.record(key, previous, current);
        if pending {
            let trigger = new
                .and_then(|s| s.metadata.annotations.as_ref())
                .and_then(|a| a.get(LAST_CHANGE_TRIGGER_TIME))
                .and_then(|t| crate::rfc3339::parse(t));
            if let Some(t) = trigger {
                if self.trigger_times.len() < MAX_KEPT_WARNINGS {
                    self.trigger_times.push(t);
                }
            }
        }
    }
}

impl ServiceHandler for PendingChanges {
    fn on_service_add(&mut self, service: &Service) {
        self.record_service(None, Some(service));
    }

    fn on_service_update(&mut self, old: &Service, new: &Service) {
        self.record_service(Some(old), Some(new));
    }

    fn on_service_delete(&mut self, service: &Service) {
        self.record_service(Some(service), None);
    }

    fn on_service_synced(&mut self) {
        self.services_synced = true;
    }
}

impl EndpointSliceHandler for PendingChanges {
    fn on_endpoint_slice_add(&mut self, slice: &EndpointSlice) {
        self.record_slice(None, Some(slice));
    }

    fn on_endpoint_slice_update(&mut self, old: &EndpointSlice, new: &EndpointSlice) {
        self.record_slice(Some(old), Some(new));
    }

    fn on_endpoint_slice_delete(&mut self, slice: &EndpointSlice) {
        self.record_slice(Some(slice), None);
    }

    fn on_endpoint_slice_synced(&mut self) {
        self.slices_synced = true;
    }
}

impl PendingChanges {
    fn record_service_cidrs(&mut self) {
        let mut all: Vec<ipnetwork::IpNetwork> = self
            .service_cidr_objects
            .values()
            .flatten()
            .copied()
            .collect();
        all.sort();
        all.dedup();
        self.service_cidrs = Some(all);
    }
}

impl crate::handler::ServiceCidrHandler for PendingChanges {
    fn on_service_cidr_change(&mut self, cidr: &k8s_openapi::api::networking::v1::ServiceCIDR) {
        let Some(name) = cidr.metadata.name.clone() else {
            return;
        };
        let mut ranges = Vec::new();
        for text in cidr.spec.iter().flat_map(|s| s.cidrs.iter().flatten()) {
            match text.parse::<ipnetwork::IpNetwork>() {
                Ok(net) if self.family.contains(&net.ip()) => ranges.push(net),
                Ok(_) => {}
                Err(_) => {
                    let mut w = Warnings::new();
                    w.add(
                        crate::convert::ObjectKind::ServiceCidr,
                        &NamespacedName::new("", name.as_str()),
                        "spec.cidrs",
                        format!("{text:?} is not a CIDR"),
                        crate::convert::Skipped::Value,
                    );
                    self.keep_warnings(w);
                }
            }
        }
        if self.service_cidr_objects.get(&name) != Some(&ranges) {
            self.service_cidr_objects.insert(name, ranges);
            self.record_service_cidrs();
        }
    }

    fn on_service_cidr_delete(&mut self, cidr: &k8s_openapi::api::networking::v1::ServiceCIDR) {
        if let Some(name) = &cidr.metadata.name {
            if self.service_cidr_objects.remove(name).is_some() {
                self.record_service_cidrs();
            }
        }
    }
}

impl NodeHandler for PendingChanges {
    fn on_node_change(&mut self, node: &Node) {
        if node.metadata.name.as_deref() != Some(self.node_name.as_str()) {
            return; // not this node: the watch should not deliver it, but a file source might
        }
        let mut warnings = Warnings::new();
        let info = node_info(node, &mut warnings);
        self.keep_warnings(warnings);
        self.node_draining = node.metadata.deletion_timestamp.is_some()
            || node
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|t| t.iter().any(|t| t.key == TO_BE_DELETED_TAINT));
        if let Some(mut info) = info {
            // The state is per family; so are the node addresses it exposes.
            info.addresses.retain(|a| self.family.contains(a));
            info.pod_cidrs.retain(|c| self.family.contains(&c.ip()));
            self.node_deleted = false;
            self.node = Some(info);
        }
    }

    fn on_node_delete(&mut self, node: &Node) {
        if node.metadata.name.as_deref() != Some(self.node_name.as_str()) {
            return;
        }
        // Upstream forgets the labels of a deleted node: topology falls back to no hints.
        self.node_deleted = true;
        self.node = Some(NodeInfo::named(self.node_name.clone()));
    }

    fn on_node_synced(&mut self) {
        self.nodes_synced = true;
    }
}
