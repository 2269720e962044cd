//! [`ProxyState`]: the desired state for this node and one IP family, updated incrementally.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use std::net::IpAddr;

use crate::diff::{ConntrackCleanup, ConntrackTarget, PortChange, StateDiff};
use crate::endpoint_slice_cache::EndpointSliceCache;
use crate::frontends::{FrontendKind, RefusalReason, RefusedFrontend};
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
    /// Frontend ownership (`crate::frontends`): how many ports of each Service have each
    /// cluster IP.
    cluster_ip_owners: HashMap<IpAddr, BTreeMap<NamespacedName, u32>>,
    /// The ports declaring each external or load-balancer IP, to judge them again when that
    /// address's ownership changes.
    claims: HashMap<IpAddr, BTreeSet<ServicePortName>>,
    /// The ServicePort as declared, for ports whose entry holds it with frontends refused.
    declared: HashMap<ServicePortName, Arc<ServicePort>>,
    /// The refused frontends of each port that has some.
    refused: BTreeMap<ServicePortName, Vec<RefusedFrontend>>,
}

impl ProxyState {
    /// An empty state for `family` on `node`.
    pub fn new(family: IpFamily, node: NodeInfo) -> Self {
        Self {
            family,
            node,
            service_cidrs: Vec::new(),
            ports: BTreeMap::new(),
            cluster_ip_owners: HashMap::new(),
            claims: HashMap::new(),
            declared: HashMap::new(),
            refused: BTreeMap::new(),
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

        let cidrs_changed = diff.node_changed;
        touched.extend(self.update_ownership(&new_services, cidrs_changed));

        let mut conntrack = BTreeSet::new();
        for name in touched {
            let declared = match new_services.remove(&name) {
                Some(replacement) => replacement,
                None => self.declared_service(&name),
            };
            let service = declared.map(|d| self.judge_frontends(&name, d));
            let Some(service) = service else {
                self.refused.remove(&name);
                self.declared.remove(&name);
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

    /// The frontends this state does not program, per Service port (see [`crate::frontends`]).
    pub fn refused_frontends(&self) -> &BTreeMap<ServicePortName, Vec<RefusedFrontend>> {
        &self.refused
    }

    /// How many frontends are refused over all ports (the
    /// `kubeproxy_refused_service_frontends` gauge): O(ports with refusals).
    pub fn refused_frontend_count(&self) -> usize {
        self.refused.values().map(Vec::len).sum()
    }

    /// The port `name` as its Service declares it (the entry may hold it with frontends
    /// refused).
    fn declared_service(&self, name: &ServicePortName) -> Option<Arc<ServicePort>> {
        self.declared
            .get(name)
            .cloned()
            .or_else(|| self.ports.get(name).map(|e| Arc::clone(&e.service)))
    }

    /// Brings the ownership indexes up to date with the ports this batch replaces or removes;
    /// returns the other ports whose frontends must be judged again: those claiming an address
    /// whose cluster-IP owners changed, every claimant when the ServiceCIDRs changed.
    /// O(ports changed + their claimants).
    fn update_ownership(
        &mut self,
        replaced: &HashMap<ServicePortName, Option<Arc<ServicePort>>>,
        cidrs_changed: bool,
    ) -> Vec<ServicePortName> {
        let mut moved: BTreeSet<IpAddr> = BTreeSet::new();
        for (name, new) in replaced {
            let old = self.declared_service(name);
            let (old_ip, new_ip) = (
                old.as_ref().map(|s| s.cluster_ip),
                new.as_ref().map(|s| s.cluster_ip),
            );
            if old_ip != new_ip {
                if let Some(ip) = old_ip {
                    if let Some(owners) = self.cluster_ip_owners.get_mut(&ip) {
                        if let Some(n) = owners.get_mut(&name.service) {
                            *n -= 1;
                            if *n == 0 {
                                owners.remove(&name.service);
                            }
                        }
                        if owners.is_empty() {
                            self.cluster_ip_owners.remove(&ip);
                        }
                    }
                    moved.insert(ip);
                }
                if let Some(ip) = new_ip {
                    *self
                        .cluster_ip_owners
                        .entry(ip)
                        .or_default()
                        .entry(name.service.clone())
                        .or_default() += 1;
                    moved.insert(ip);
                }
            }
            let claimed = |s: &Option<Arc<ServicePort>>| -> BTreeSet<IpAddr> {
                s.iter()
                    .flat_map(|s| s.external_ips.iter().chain(&s.load_balancer_ips))
                    .copied()
                    .collect()
            };
            let (old_claims, new_claims) = (claimed(&old), claimed(new));
            for ip in old_claims.difference(&new_claims) {
                if let Some(set) = self.claims.get_mut(ip) {
                    set.remove(name);
                    if set.is_empty() {
                        self.claims.remove(ip);
                    }
                }
            }
            for ip in new_claims.difference(&old_claims) {
                self.claims.entry(*ip).or_default().insert(name.clone());
            }
        }
        let mut again = Vec::new();
        if cidrs_changed {
            for names in self.claims.values() {
                again.extend(names.iter().cloned());
            }
        } else {
            for ip in &moved {
                if let Some(names) = self.claims.get(ip) {
                    again.extend(names.iter().cloned());
                }
            }
        }
        again
    }

    /// The port as the modes get it: `declared` without the external and load-balancer IPs
    /// another Service owns (its cluster IP) or the Service range holds. Records the refusals,
    /// warns when they change, and keeps the declared port to judge again later.
    fn judge_frontends(
        &mut self,
        name: &ServicePortName,
        declared: Arc<ServicePort>,
    ) -> Arc<ServicePort> {
        let mut refused = Vec::new();
        let mut judge = |ip: &IpAddr, kind: FrontendKind| -> bool {
            let other_owner = self
                .cluster_ip_owners
                .get(ip)
                .and_then(|owners| owners.keys().find(|o| **o != name.service));
            let reason = if let Some(owner) = other_owner {
                Some(RefusalReason::ClusterIpOf(owner.clone()))
            } else {
                self.service_cidrs
                    .iter()
                    .find(|net| net.contains(*ip))
                    .map(|net| RefusalReason::InServiceCidr(*net))
            };
            match reason {
                Some(reason) => {
                    refused.push(RefusedFrontend {
                        address: *ip,
                        kind,
                        reason,
                    });
                    false
                }
                None => true,
            }
        };
        let external: Vec<IpAddr> = declared
            .external_ips
            .iter()
            .filter(|ip| judge(ip, FrontendKind::ExternalIp))
            .copied()
            .collect();
        let load_balancer: Vec<IpAddr> = declared
            .load_balancer_ips
            .iter()
            .filter(|ip| judge(ip, FrontendKind::LoadBalancerIp))
            .copied()
            .collect();
        let before = self.refused.get(name).map(Vec::as_slice).unwrap_or(&[]);
        if before != refused.as_slice() {
            for r in refused.iter().filter(|r| !before.contains(r)) {
                tracing::warn!(
                    service_port = %name,
                    "Service {}: {r}; not programmed",
                    name.service
                );
            }
        }
        if refused.is_empty() {
            self.refused.remove(name);
            self.declared.remove(name);
            return declared;
        }
        self.refused.insert(name.clone(), refused);
        self.declared.insert(name.clone(), Arc::clone(&declared));
        let mut effective = (*declared).clone();
        effective.external_ips = external;
        effective.load_balancer_ips = load_balancer;
        Arc::new(effective)
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
