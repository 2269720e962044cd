//! [`ProxyState`]: the desired state for this node and one IP family, updated incrementally.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use crate::diff::{ConntrackCleanup, ConntrackTarget, PortChange, StateDiff};
use crate::endpoint_slice_cache::EndpointSliceCache;
use crate::model::{
    Endpoint, IpFamily, NamespacedName, NodeInfo, Protocol, ServicePort, ServicePortName,
};
use crate::pending::{PendingBatch, PendingChanges};
use crate::selection::{select_endpoints, EndpointSelection};

/// Everything a backend needs for one Service port: the port, its endpoints and the selection.
///
/// Cheap to clone (three `Arc`s), so diffs can carry the previous entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortEntry {
    /// The Service port.
    pub service: Arc<ServicePort>,
    /// Every endpoint of the port, sorted by `(ip, port)`; selection indexes into it.
    pub endpoints: Arc<[Endpoint]>,
    /// Which endpoints take which traffic on this node.
    pub selection: Arc<EndpointSelection>,
}

impl ServicePortEntry {
    /// Endpoints for Cluster-policy traffic.
    pub fn cluster_endpoints(&self) -> impl Iterator<Item = &Endpoint> + '_ {
        self.selection
            .cluster
            .iter()
            .map(|&i| &self.endpoints[i as usize])
    }

    /// Endpoints for Local-policy traffic.
    pub fn local_endpoints(&self) -> impl Iterator<Item = &Endpoint> + '_ {
        self.selection
            .local
            .iter()
            .map(|&i| &self.endpoints[i as usize])
    }

    /// Endpoints any traffic on this node can reach (cluster ∪ local), in `(ip, port)` order.
    pub fn all_reachable_endpoints(&self) -> impl Iterator<Item = &Endpoint> + '_ {
        self.selection
            .all_reachable()
            .into_iter()
            .map(|i| &self.endpoints[i as usize])
    }

    fn has_serving(&self, ep: &Endpoint) -> bool {
        self.endpoints
            .binary_search_by(|e| (e.ip, e.port).cmp(&(ep.ip, ep.port)))
            .is_ok_and(|i| self.endpoints[i].serving)
    }
}

/// The desired datapath state for this node and one IP family.
///
/// It is kept between syncs and updated in place by [`ProxyState::apply`], which returns the
/// [`StateDiff`]. The cost of an update grows with the number of changes, not with the size of the
/// cluster: only Service ports named by a change are re-selected and compared. The one exception is a
/// change of this node's name or zone, which re-selects every port (topology depends on it).
///
/// Ports are kept in a `BTreeMap`, so iteration (and everything rendered from it) is in a stable
/// order.
#[derive(Debug)]
pub struct ProxyState {
    family: IpFamily,
    node: NodeInfo,
    service_cidrs: Vec<ipnetwork::IpNetwork>,
    ports: BTreeMap<ServicePortName, ServicePortEntry>,
    slices: EndpointSliceCache,
    applied_once: bool,
    endpoint_count: usize,
}

impl ProxyState {
    /// An empty state for `family` on `node`.
    pub fn new(family: IpFamily, node: NodeInfo) -> Self {
        Self {
            family,
            node,
            service_cidrs: Vec::new(),
            ports: BTreeMap::new(),
            slices: EndpointSliceCache::default(),
            applied_once: false,
            endpoint_count: 0,
        }
    }

    /// The IP family.
    pub fn family(&self) -> IpFamily {
        self.family
    }

    /// This node.
    pub fn node(&self) -> &NodeInfo {
        &self.node
    }

    /// The ranges cluster IPs of this family are allocated from (every ServiceCIDR's), sorted;
    /// empty when none is known. A change reaches proxiers as `diff.node_changed` (a node-wide
    /// rule changes).
    pub fn service_cidrs(&self) -> &[ipnetwork::IpNetwork] {
        &self.service_cidrs
    }

    /// Every Service port, in name order.
    pub fn service_ports(
        &self,
    ) -> impl ExactSizeIterator<Item = (&ServicePortName, &ServicePortEntry)> + '_ {
        self.ports.iter()
    }

    /// One Service port.
    pub fn get(&self, name: &ServicePortName) -> Option<&ServicePortEntry> {
        self.ports.get(name)
    }

    /// How many Service ports there are.
    pub fn len(&self) -> usize {
        self.ports.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    /// The number of endpoints summed over all Service ports (ready or not), kept up to date by
    /// [`apply`](Self::apply). Upstream switches the iptables "large cluster mode" on it.
    pub fn total_endpoints(&self) -> usize {
        self.endpoint_count
    }

    /// A diff that asks for a full resync and lists no change: for the periodic `syncPeriod` resync
    /// and for recovering after a failed partial sync.
    pub fn resync_diff(&self) -> StateDiff {
        StateDiff {
            full: true,
            ..StateDiff::default()
        }
    }

    /// Applies the changes recorded in `pending` (draining it) and returns what changed.
    pub fn apply(&mut self, pending: &mut PendingChanges) -> StateDiff {
        self.apply_batch(pending.take_batch())
    }

    /// Applies changes taken out of a [`PendingChanges`] with
    /// [`take_batch`](PendingChanges::take_batch) and returns what changed. Costs O(changes),
    /// except that a change of this node's name or zone re-selects every port.
    pub fn apply_batch(&mut self, batch: PendingBatch) -> StateDiff {
        debug_assert_eq!(batch.family, self.family);
        let mut diff = StateDiff {
            full: !self.applied_once,
            ..StateDiff::default()
        };
        self.applied_once = true;

        // Service ports whose ServicePort is replaced (Some) or removed (None) by this batch.
        let mut new_services: HashMap<ServicePortName, Option<Arc<ServicePort>>> = HashMap::new();
        let mut touched: BTreeSet<ServicePortName> = BTreeSet::new();

        for (service, change) in batch.services {
            let current = change.current;
            for name in self.port_names_of(&service) {
                let still_there = current.as_ref().is_some_and(|m| m.contains_key(&name));
                if !still_there {
                    new_services.insert(name.clone(), None);
                    touched.insert(name);
                }
            }
            if let Some(ports) = current {
                for (name, port) in ports.iter() {
                    new_services.insert(name.clone(), Some(Arc::clone(port)));
                    touched.insert(name.clone());
                }
            }
        }

        touched.extend(self.slices.apply(batch.slices));

        if let Some(cidrs) = batch.service_cidrs {
            if cidrs != self.service_cidrs {
                self.service_cidrs = cidrs;
                diff.node_changed = true;
            }
        }

        if let Some(node) = batch.node {
            if node != self.node {
                let reselect = node.name != self.node.name || node.zone() != self.node.zone();
                diff.node_changed = true;
                self.node = node;
                if reselect {
                    touched.extend(self.ports.keys().cloned());
                }
            }
        }

        let mut conntrack = BTreeSet::new();
        for name in touched {
            let service = match new_services.remove(&name) {
                Some(replacement) => replacement,
                None => self.ports.get(&name).map(|e| Arc::clone(&e.service)),
            };
            let Some(service) = service else {
                if let Some(previous) = self.ports.remove(&name) {
                    self.endpoint_count -= previous.endpoints.len();
                    stale_flows(&name, Some(&previous), None, &mut conntrack);
                    diff.removed.push(PortChange { name, previous });
                }
                continue;
            };
            let endpoints = self
                .slices
                .endpoints(&name)
                .cloned()
                .unwrap_or_else(|| Arc::from(Vec::new()));
            let selection = Arc::new(select_endpoints(&service, &endpoints, &self.node));
            let entry = ServicePortEntry {
                service,
                endpoints,
                selection,
            };
            match self.ports.get(&name) {
                None => {
                    stale_flows(&name, None, Some(&entry), &mut conntrack);
                    self.endpoint_count += entry.endpoints.len();
                    self.ports.insert(name.clone(), entry);
                    diff.added.push(name);
                }
                Some(previous) if *previous != entry => {
                    let previous = previous.clone();
                    stale_flows(&name, Some(&previous), Some(&entry), &mut conntrack);
                    self.endpoint_count =
                        self.endpoint_count - previous.endpoints.len() + entry.endpoints.len();
                    self.ports.insert(name.clone(), entry);
                    diff.changed.push(PortChange { name, previous });
                }
                Some(_) => {}
            }
        }
        diff.conntrack = conntrack.into_iter().collect();
        diff
    }

    /// The ports of one Service, in name order: a range of the sorted map, O(log n + its ports).
    pub fn ports_of_service<'a>(
        &'a self,
        service: &'a NamespacedName,
    ) -> impl Iterator<Item = (&'a ServicePortName, &'a ServicePortEntry)> + 'a {
        let start = ServicePortName::new(service.clone(), "", Protocol::Tcp);
        self.ports
            .range((Bound::Included(start), Bound::Unbounded))
            .take_while(move |(name, _)| &name.service == service)
    }

    /// The names of the ports of `service` now in the state: a range of the sorted map.
    fn port_names_of(&self, service: &NamespacedName) -> Vec<ServicePortName> {
        // The smallest possible name for this service: empty port name, first protocol.
        let start = ServicePortName::new(service.clone(), "", Protocol::Tcp);
        self.ports
            .range((Bound::Included(start), Bound::Unbounded))
            .take_while(|(name, _)| &name.service == service)
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// Conntrack entries a change leaves stale, for UDP Service ports (upstream's rules):
/// - a removed port: every flow to its addresses;
/// - a port that had no usable endpoint and now has one: every flow to its addresses, since flows
///   created while it answered REJECT (or nothing) would otherwise keep being black-holed;
/// - an endpoint that was serving and no longer is (or is gone): the flows translated to it.
fn stale_flows(
    name: &ServicePortName,
    previous: Option<&ServicePortEntry>,
    current: Option<&ServicePortEntry>,
    out: &mut BTreeSet<ConntrackCleanup>,
) {
    if name.protocol != Protocol::Udp {
        return;
    }
    let mut flows_to = |service: &ServicePort, endpoint| {
        for ip in service.service_ips() {
            out.insert(ConntrackCleanup {
                protocol: name.protocol,
                target: ConntrackTarget::ServiceIp {
                    ip,
                    port: service.port,
                },
                endpoint,
            });
        }
        if let Some(port) = service.node_port {
            out.insert(ConntrackCleanup {
                protocol: name.protocol,
                target: ConntrackTarget::NodePort { port },
                endpoint,
            });
        }
    };
    match (previous, current) {
        (Some(previous), None) => flows_to(&previous.service, None),
        (previous, Some(current)) => {
            let had_any = previous.is_some_and(|p| p.selection.has_any_endpoints);
            if !had_any && current.selection.has_any_endpoints {
                flows_to(&current.service, None);
            }
            if let Some(previous) = previous {
                for ep in previous.endpoints.iter().filter(|e| e.serving) {
                    if !current.has_serving(ep) {
                        flows_to(&previous.service, Some(ep.ip));
                    }
                }
            }
        }
        (None, None) => {}
    }
}
