//! [`NftablesProxier`]: keeps the `kube-proxy` table of one family in step with the state.
//!
//! - The first sync, a sync after a failure, and a change of the table's constant part (the
//!   node's addresses, the masquerade settings) replace the whole table in one transaction:
//!   create-if-missing, delete, create, fill. The old rules serve until the commit, so there is
//!   no moment without rules, and whatever the table held before (another kube-proxy's, a
//!   half-applied state) is gone after it.
//! - Other syncs diff each touched Service port's plan against the one last written and send
//!   only the difference: new chains, replaced chains (flushed and refilled), deleted chains,
//!   added and deleted elements. One endpoint change is a handful of messages. A periodic full
//!   sync diffs every port (nothing is sent when nothing changed) after checking the table is
//!   still there.
//! - Elements shared by several ports (a Service's cluster IP in `cluster-ips`) are counted, so
//!   the last port to leave removes them.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use ahash::{AHashMap, AHashSet};
use kproxy_netlink::nftables::batch::{CommitError, NftSocket, Transaction};
use kproxy_netlink::nftables::expr::Verdict;
use kproxy_netlink::nftables::objects;
use kproxy_netlink::nftables::wire::msg;
use proxy_core::datapath::{
    DetectLocalMode, MasqueradeDecision, NodePortAddressSpec, NodePortAddresses,
};
use proxy_core::model::ServicePortName;
use proxy_core::service_traffic_metrics::ServiceTrafficMetrics;
use proxy_core::{
    ErrorKind, IpFamily, ObjectCount, Proxier, ProxierError, ProxyMode, ProxyState, StateDiff,
    SyncReport,
};

use crate::names::TABLE;
use crate::plan::{
    base_plan, port_plan, BasePlan, MapKey, PlanContext, PlannedElement, PortPlan, RegionSource,
};
use crate::program::{Writer, Written};
use crate::rule::nfproto;

/// nftables mode's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NftablesSettings {
    /// `masqueradeAll`.
    pub masquerade_all: bool,
    /// `iptables.masqueradeBit` (upstream's nftables mode uses the same bit).
    pub masquerade_bit: u8,
    /// How local traffic is recognised.
    pub detect_local: DetectLocalMode,
    /// `nodePortAddresses`; empty means the node's primary addresses, as upstream's nftables
    /// mode defaults.
    pub node_port_addresses: NodePortAddressSpec,
    /// A named counter per Service port, exported as metrics.
    pub counters: bool,
    /// The node's addresses given on the command line (`--node-ip`): the primary address when
    /// the Node object lists none.
    pub node_ips: Vec<IpAddr>,
}

impl NftablesSettings {
    /// Upstream's defaults with this local-traffic detection.
    pub fn new(detect_local: DetectLocalMode) -> Self {
        Self {
            masquerade_all: false,
            masquerade_bit: 14,
            detect_local,
            node_port_addresses: NodePortAddressSpec::default(),
            counters: true,
            node_ips: Vec::new(),
        }
    }
}

/// Regions of the endpoint maps: each policy chain owns one region of its map for as long as
/// it lives; freed regions are reused lowest first (so a full load numbers them as a render
/// does).
#[derive(Debug, Default)]
struct RegionAllocator {
    owned: HashMap<String, (u32, u32)>,
    free: HashMap<u32, std::collections::BTreeSet<u32>>,
    next: HashMap<u32, u32>,
}

impl RegionAllocator {
    fn release(&mut self, chain: &str) {
        if let Some((map, region)) = self.owned.remove(chain) {
            self.free.entry(map).or_default().insert(region);
        }
    }
}

impl RegionSource for RegionAllocator {
    fn region(&mut self, map: u32, chain: &str) -> u32 {
        if let Some(&(m, r)) = self.owned.get(chain) {
            if m == map {
                return r;
            }
            self.release(chain);
        }
        let reused = self.free.get_mut(&map).and_then(|f| f.pop_first());
        let region = reused.unwrap_or_else(|| {
            let next = self.next.entry(map).or_insert(0);
            *next += 1;
            *next - 1
        });
        self.owned.insert(chain.to_owned(), (map, region));
        region
    }
}

/// One port holding an element: its name's hash and the verdict it wants there.
type Holder = (u64, Option<Verdict>);

/// The nftables proxier of one family.
#[derive(Debug)]
pub struct NftablesProxier {
    family: IpFamily,
    settings: NftablesSettings,
    socket: NftSocket,
    books: HashMap<ServicePortName, PortPlan>,
    /// Who wants each element several ports could want: the holders' port-name hashes with
    /// the verdict each wants, in arrival order (the kernel has the first one's). Endpoint
    /// ranges are not here: each lies in one port's own region.
    element_refs: AHashMap<(&'static str, MapKey), Vec<Holder>>,
    regions: RegionAllocator,
    /// How many endpoint ranges the books hold (they are not in `element_refs`).
    range_elements: usize,
    /// How many endpoint maps the table has: chosen at each full load for the state's size, and
    /// kept until the next one (so incremental syncs never change the table's layout).
    endpoint_maps: u32,
    base: Option<BasePlan>,
    /// The context `base` was planned from.
    base_context: Option<PlanContext>,
    needs_rebuild: bool,
    fixed_node_addresses: Option<Vec<IpAddr>>,
    last_written: Written,
    last_messages: usize,
    last_bytes: usize,
    last_commit: std::time::Duration,
    traffic: Option<ServiceTrafficMetrics>,
}

fn error(operation: String, e: impl std::error::Error + Send + Sync + 'static) -> ProxierError {
    ProxierError {
        mode: ProxyMode::Nftables,
        kind: ErrorKind::Retry,
        operation,
        source: Box::new(e),
    }
}

impl NftablesProxier {
    /// Opens the netlink sockets; touches nothing.
    pub fn open(family: IpFamily, settings: NftablesSettings) -> Result<Self, ProxierError> {
        let socket =
            NftSocket::open().map_err(|e| error("open nf_tables netlink socket".into(), e))?;
        Ok(Self {
            family,
            settings,
            socket,
            books: HashMap::new(),
            element_refs: AHashMap::new(),
            regions: RegionAllocator::default(),
            range_elements: 0,
            endpoint_maps: 0,
            base: None,
            base_context: None,
            needs_rebuild: true,
            fixed_node_addresses: None,
            last_written: Written::default(),
            last_messages: 0,
            last_bytes: 0,
            last_commit: std::time::Duration::ZERO,
            traffic: None,
        })
    }

    /// Uses these node addresses instead of listing the interfaces (tests, benches).
    pub fn with_node_addresses(mut self, addresses: Vec<IpAddr>) -> Self {
        self.fixed_node_addresses = Some(addresses);
        self
    }

    /// Exports the per-Service-port counters into these families at each housekeeping.
    pub fn with_traffic_metrics(mut self, metrics: ServiceTrafficMetrics) -> Self {
        self.traffic = Some(metrics);
        self
    }

    /// What the last sync wrote, the number of messages and their bytes.
    pub fn last_sync(&self) -> (Written, usize, usize) {
        (self.last_written, self.last_messages, self.last_bytes)
    }

    /// How long the last transaction took from `send` to the kernel's verdict: the kernel's
    /// share of a sync (the rest is planning and serializing).
    pub fn last_commit_time(&self) -> std::time::Duration {
        self.last_commit
    }

    /// The plan context for `state` on this node.
    pub fn plan_context(&self, state: &ProxyState) -> PlanContext {
        plan_context(
            self.family,
            &self.settings,
            state,
            self.fixed_node_addresses.as_deref(),
        )
    }

    /// Records that port `holder` wants these elements; those no port held before go to `out`
    /// (to be added).
    fn add_refs<'e>(
        &mut self,
        holder: u64,
        elements: impl Iterator<Item = &'e PlannedElement>,
        out: &mut Vec<PlannedElement>,
    ) {
        for e in elements {
            if let MapKey::Range(..) = e.key {
                // A range lies in its port's own region: only that port ever holds it.
                out.push(e.clone());
                continue;
            }
            let holders = self.element_refs.entry((e.set, e.key.clone())).or_default();
            holders.push((holder, e.verdict.clone()));
            if holders.len() == 1 {
                out.push(e.clone());
            }
        }
    }

    /// Records that port `holder` no longer wants these elements. An element nobody holds any
    /// more goes to `deleted`; one whose first holder (whose verdict the kernel has) left while
    /// others remain is rewritten with the next holder's verdict (deleted and added).
    fn drop_refs<'e>(
        &mut self,
        holder: u64,
        elements: impl Iterator<Item = &'e PlannedElement>,
        deleted: &mut Vec<PlannedElement>,
        added: &mut Vec<PlannedElement>,
    ) {
        for e in elements {
            if let MapKey::Range(..) = e.key {
                deleted.push(e.clone());
                continue;
            }
            let key = (e.set, e.key.clone());
            let Some(holders) = self.element_refs.get_mut(&key) else {
                continue;
            };
            let Some(at) = holders
                .iter()
                .position(|(h, v)| *h == holder && *v == e.verdict)
            else {
                continue;
            };
            holders.remove(at);
            if holders.is_empty() {
                self.element_refs.remove(&key);
                deleted.push(e.clone());
            } else if at == 0 && holders[0].1 != e.verdict {
                deleted.push(e.clone());
                added.push(PlannedElement {
                    verdict: holders[0].1.clone(),
                    ..e.clone()
                });
            }
        }
    }

    fn rebuild(
        &mut self,
        state: &ProxyState,
        ctx: &PlanContext,
        base: BasePlan,
    ) -> Result<(), ProxierError> {
        self.element_refs.clear();
        self.regions = RegionAllocator::default();
        self.endpoint_maps = ctx.endpoint_maps;
        let mut books = HashMap::with_capacity(state.len());
        let mut order = Vec::with_capacity(state.len());
        for (name, entry) in state.service_ports() {
            let plan = port_plan(name, entry, ctx, &mut self.regions);
            order.push(name.clone());
            books.insert(name.clone(), plan);
        }
        for name in &order {
            let holder = holder_id(name);
            for e in books[name]
                .elements
                .iter()
                .filter(|e| !matches!(e.key, MapKey::Range(..)))
            {
                self.element_refs
                    .entry((e.set, e.key.clone()))
                    .or_default()
                    .push((holder, e.verdict.clone()));
            }
        }
        let mut tx = Transaction::new();
        let mut w = Writer::new(self.family, &mut tx);
        w.full_load(&base, order.iter().map(|n| &books[n]), true);
        let written = w.written;
        self.commit(tx, written, "replace table")?;
        self.range_elements = books.values().map(ranges_of).sum();
        self.books = books;
        self.base = Some(base);
        self.needs_rebuild = false;
        Ok(())
    }

    fn commit(
        &mut self,
        tx: Transaction,
        written: Written,
        what: &str,
    ) -> Result<(), ProxierError> {
        self.last_messages = tx.len();
        self.last_bytes = tx.byte_len();
        self.last_written = written;
        let started = std::time::Instant::now();
        let result = self.socket.commit(tx);
        self.last_commit = started.elapsed();
        if let Err(e) = result {
            self.needs_rebuild = true;
            return Err(error(
                format!("{}: nf_tables transaction ({what})", self.family),
                e,
            ));
        }
        note_own_generation(&mut self.socket);
        Ok(())
    }

    /// Whether anyone but this process has committed an nf_tables transaction since this
    /// process's last commit: the ruleset generation moved on. Only then can the table differ
    /// from what kproxy wrote (a flushed chain, a deleted element, a planted rule), so only then
    /// does a periodic full sync reload it; with nobody else writing nf_tables it costs one
    /// message. Unknown (the generation cannot be read) counts as changed.
    fn changed_by_someone_else(&mut self) -> bool {
        let ours = LAST_OWN_GENERATION.load(std::sync::atomic::Ordering::SeqCst);
        match self.socket.generation() {
            Ok(now) => u64::from(now) != ours,
            Err(e) => {
                tracing::debug!("cannot read the nf_tables generation: {e}");
                true
            }
        }
    }

    fn table_exists(&mut self) -> bool {
        let mut found = false;
        let request = objects::dump_request(msg::GETTABLE, nfproto(self.family), TABLE);
        let _ = self.socket.dump(request, "list tables", |m| {
            if m.attribute(1).and_then(|a| a.as_string()).as_deref() == Some(TABLE) {
                found = true;
            }
        });
        found
    }

    fn incremental(
        &mut self,
        state: &ProxyState,
        ctx: &PlanContext,
        names: Vec<ServicePortName>,
    ) -> Result<(), ProxierError> {
        let mut changes: Vec<(ServicePortName, Option<PortPlan>)> = Vec::new();
        for name in names {
            let new = state
                .get(&name)
                .map(|entry| port_plan(&name, entry, ctx, &mut self.regions));
            let old = self.books.get(&name);
            if old == new.as_ref() {
                continue;
            }
            changes.push((name, new));
        }
        if changes.is_empty() {
            self.last_written = Written::default();
            self.last_messages = 0;
            self.last_bytes = 0;
            return Ok(());
        }
        let empty = PortPlan::default();
        let mut tx = Transaction::new();
        let mut w = Writer::new(self.family, &mut tx);
        // Phase 1: new sets and counters, new chains.
        for (name, new) in &changes {
            let old = self.books.get(name).unwrap_or(&empty);
            let new = new.as_ref().unwrap_or(&empty);
            let old_sets: HashSet<&str> = old.sets.iter().map(|s| s.name.as_str()).collect();
            for s in new
                .sets
                .iter()
                .filter(|s| !old_sets.contains(s.name.as_str()))
            {
                w.set(s);
            }
            if new.counter.is_some() && new.counter != old.counter {
                w.counter(new.counter.as_deref().unwrap_or_default());
            }
            let old_chains: HashSet<&str> = old.chains.iter().map(|c| c.name.as_str()).collect();
            for c in new
                .chains
                .iter()
                .filter(|c| !old_chains.contains(c.name.as_str()))
            {
                w.chain(c);
            }
        }
        // Phase 2: rules of new chains, and of changed chains after a flush.
        for (name, new) in &changes {
            let old = self.books.get(name).unwrap_or(&empty);
            let new = new.as_ref().unwrap_or(&empty);
            let old_chains: HashMap<&str, &crate::plan::PlannedChain> =
                old.chains.iter().map(|c| (c.name.as_str(), c)).collect();
            for c in &new.chains {
                match old_chains.get(c.name.as_str()) {
                    None => w.rules(c),
                    Some(o) if o.rules != c.rules => {
                        w.flush_chain(&c.name);
                        w.rules(c);
                    }
                    Some(_) => {}
                }
            }
        }
        // Phase 3: elements, deletions first (a key whose verdict changed goes out and back).
        // The differences are taken from the books by reference (only differing elements are
        // copied), then the holder lists are updated.
        let mut gone_and_fresh = Vec::with_capacity(changes.len());
        for (name, new) in &changes {
            let old = self.books.get(name).unwrap_or(&empty);
            let new = new.as_ref().unwrap_or(&empty);
            let new_set: AHashSet<&PlannedElement> = new.elements.iter().collect();
            let old_set: AHashSet<&PlannedElement> = old.elements.iter().collect();
            let gone: Vec<PlannedElement> = old
                .elements
                .iter()
                .filter(|e| !new_set.contains(e))
                .cloned()
                .collect();
            let fresh: Vec<PlannedElement> = new
                .elements
                .iter()
                .filter(|e| !old_set.contains(e))
                .cloned()
                .collect();
            gone_and_fresh.push((holder_id(name), gone, fresh));
        }
        let mut deleted = Vec::new();
        let mut added = Vec::new();
        for (holder, gone, _) in &gone_and_fresh {
            self.drop_refs(*holder, gone.iter(), &mut deleted, &mut added);
        }
        for (holder, _, fresh) in &gone_and_fresh {
            self.add_refs(*holder, fresh.iter(), &mut added);
        }
        w.delete_elements(deleted.iter());
        w.add_elements(added.iter());
        // Phase 4: chains, sets and counters that went away (flushed first, then deleted, as
        // they may refer to one another).
        let mut gone_chains = Vec::new();
        let mut gone_sets = Vec::new();
        let mut gone_counters = Vec::new();
        for (name, new) in &changes {
            let old = self.books.get(name).unwrap_or(&empty);
            let new = new.as_ref().unwrap_or(&empty);
            let new_chains: HashSet<&str> = new.chains.iter().map(|c| c.name.as_str()).collect();
            for c in old
                .chains
                .iter()
                .filter(|c| !new_chains.contains(c.name.as_str()))
            {
                gone_chains.push(c.name.clone());
            }
            let new_sets: HashSet<&str> = new.sets.iter().map(|s| s.name.as_str()).collect();
            for s in old
                .sets
                .iter()
                .filter(|s| !new_sets.contains(s.name.as_str()))
            {
                gone_sets.push(s.name.clone());
            }
            if old.counter.is_some() && old.counter != new.counter {
                gone_counters.push(old.counter.clone().unwrap_or_default());
            }
        }
        for c in &gone_chains {
            w.flush_chain(c);
        }
        for c in &gone_chains {
            w.delete_chain(c);
        }
        for s in &gone_sets {
            w.delete_set(s);
        }
        for c in &gone_counters {
            w.delete_counter(c);
        }
        let written = w.written;
        self.commit(tx, written, "update")?;
        // Book the new plans; free the regions of policy chains that went away.
        for (name, new) in changes {
            self.range_elements += new.as_ref().map_or(0, ranges_of);
            let kept: HashSet<String> = new
                .iter()
                .flat_map(|p| p.regions.iter().map(|(c, _, _)| c.clone()))
                .collect();
            let old = match new {
                Some(p) => self.books.insert(name, p),
                None => self.books.remove(&name),
            };
            self.range_elements -= old.as_ref().map_or(0, ranges_of);
            for (chain, _, _) in old.iter().flat_map(|o| o.regions.iter()) {
                if !kept.contains(chain) {
                    self.regions.release(chain);
                }
            }
        }
        Ok(())
    }

    fn owned(&self) -> Vec<ObjectCount> {
        let chains: usize = self.books.values().map(|p| p.chains.len()).sum();
        vec![
            ObjectCount {
                kind: "nftables/chains",
                count: chains + self.base.as_ref().map_or(0, |b| b.chains.len()),
            },
            ObjectCount {
                kind: "nftables/elements",
                count: self.element_refs.len() + self.range_elements,
            },
        ]
    }

    /// Reads the per-Service-port counters: `(service port, packets, bytes)` of new
    /// connections. Ports without a counter (no endpoints) are absent.
    pub fn counters(&mut self) -> Vec<(ServicePortName, u64, u64)> {
        let mut by_name: HashMap<String, (u64, u64)> = HashMap::new();
        let request = objects::dump_request(msg::GETOBJ, nfproto(self.family), TABLE);
        let _ = self.socket.dump(request, "list counters", |m| {
            if let Some((name, packets, bytes)) = objects::dumped_counter(&m) {
                by_name.insert(name, (packets, bytes));
            }
        });
        let mut out = Vec::new();
        for (name, plan) in &self.books {
            if let Some((p, b)) = plan.counter.as_ref().and_then(|c| by_name.get(c)) {
                out.push((name.clone(), *p, *b));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// The plan context for `state`. NodePorts answer, as in upstream's nftables mode, on the node's
/// primary address when `nodePortAddresses` is empty (the Node's first address of the family,
/// else the first `--node-ip`; on every local address when neither is known), else on the
/// addresses it selects among `addresses` (this machine's interfaces when `None`).
pub fn plan_context(
    family: IpFamily,
    settings: &NftablesSettings,
    state: &ProxyState,
    addresses: Option<&[IpAddr]>,
) -> PlanContext {
    let node = state.node();
    let detector = settings.detect_local.detector(family, node);
    let primary_ip = node.primary_address(family).or_else(|| {
        settings
            .node_ips
            .iter()
            .copied()
            .find(|ip| family.contains(ip))
    });
    let spec = &settings.node_port_addresses;
    let node_port_ips = if spec.cidrs.is_empty() && !spec.primary {
        primary_ip.map(|ip| vec![ip])
    } else {
        let listed;
        let addrs: &[IpAddr] = match addresses {
            Some(a) => a,
            None => {
                listed = node_addresses();
                &listed
            }
        };
        match spec.select(family, addrs, node) {
            NodePortAddresses::All => None,
            NodePortAddresses::Only(mut list) => {
                if spec.primary && list.is_empty() {
                    list.extend(primary_ip);
                }
                Some(
                    list.into_iter()
                        .filter(|ip| family.contains(ip) && !ip.is_loopback())
                        .collect(),
                )
            }
        }
    };
    PlanContext {
        family,
        node_name: node.name.clone(),
        masquerade: MasqueradeDecision::new(settings.masquerade_all, &detector),
        detector,
        masquerade_bit: settings.masquerade_bit,
        node_port_ips,
        primary_ip,
        counters: settings.counters,
        endpoint_maps: crate::names::endpoint_maps_for(state.len()),
        service_cidrs: state.service_cidrs().to_vec(),
    }
}

/// How many endpoint ranges a port's plan holds.
fn ranges_of(plan: &PortPlan) -> usize {
    plan.elements
        .iter()
        .filter(|e| matches!(e.key, MapKey::Range(..)))
        .count()
}

/// A port's identity among an element's holders.
fn holder_id(name: &ServicePortName) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    h.finish()
}

/// The nf_tables generation right after this process's latest commit (of any family: the
/// generation is the whole ruleset's), `u64::MAX` before the first. A generation read just after
/// a commit may already include another program's commit that landed in between; that change is
/// then seen only when the generation moves again.
static LAST_OWN_GENERATION: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(u64::MAX);

fn note_own_generation(socket: &mut NftSocket) {
    let generation = socket.generation().map_or(u64::MAX, u64::from);
    LAST_OWN_GENERATION.store(generation, std::sync::atomic::Ordering::SeqCst);
}

fn node_addresses() -> Vec<IpAddr> {
    kproxy_netlink::interface_addresses().unwrap_or_default()
}

impl Proxier for NftablesProxier {
    fn mode(&self) -> ProxyMode {
        ProxyMode::Nftables
    }

    fn sync(&mut self, state: &ProxyState, diff: &StateDiff) -> Result<SyncReport, ProxierError> {
        let started = std::time::Instant::now();
        let mut ctx = self.plan_context(state);
        if !self.needs_rebuild {
            ctx.endpoint_maps = self.endpoint_maps;
        }
        let full = diff.full || diff.node_changed;
        let mut rebuilt = false;
        // The table's constant part is a function of the context: compare that, and plan the
        // base only when it changed (a partial sync at 20,000 Services would otherwise build
        // a thousand endpoint-map names to compare).
        // A periodic (or post-failure) full sync makes the kernel equal the plan again: when
        // anyone else has written nf_tables since kproxy's last commit, the table is reloaded
        // whole, undoing any edit of it (upstream's full sync rewrites its table every time).
        if self.needs_rebuild
            || self.base_context.as_ref() != Some(&ctx)
            || (full && (self.changed_by_someone_else() || !self.table_exists()))
        {
            let base = base_plan(&ctx);
            self.base_context = Some(ctx.clone());
            self.rebuild(state, &ctx, base)?;
            rebuilt = true;
        } else {
            let names: Vec<ServicePortName> = if full {
                let mut all: HashSet<ServicePortName> = self.books.keys().cloned().collect();
                all.extend(state.service_ports().map(|(n, _)| n.clone()));
                all.into_iter().collect()
            } else {
                diff.added
                    .iter()
                    .cloned()
                    .chain(diff.changed.iter().map(|c| c.name.clone()))
                    .chain(diff.removed.iter().map(|c| c.name.clone()))
                    .collect()
            };
            self.incremental(state, &ctx, names)?;
        }
        let programmed = started.elapsed();
        let w = self.last_written;
        tracing::debug!(
            family = %self.family,
            rebuilt,
            messages = self.last_messages,
            bytes = self.last_bytes,
            ?programmed,
            commit = ?self.last_commit,
            total = ?started.elapsed(),
            "nftables sync"
        );
        Ok(SyncReport {
            full: full || rebuilt,
            written: vec![
                ObjectCount {
                    kind: "nftables/chains",
                    count: w.chains,
                },
                ObjectCount {
                    kind: "nftables/rules",
                    count: w.rules,
                },
                ObjectCount {
                    kind: "nftables/elements",
                    count: w.elements,
                },
            ],
            owned: self.owned(),
            counters: Vec::new(),
        })
    }

    fn housekeeping_interval(&self) -> Option<std::time::Duration> {
        (self.settings.counters && self.traffic.is_some())
            .then_some(std::time::Duration::from_secs(10))
    }

    /// Reads the per-Service-port counters (one dump of the table's counter objects) into the
    /// metric families.
    fn housekeeping(&mut self) -> Result<(), ProxierError> {
        if self.traffic.is_some() && !self.books.is_empty() {
            let totals = self.counters();
            if let Some(m) = &self.traffic {
                m.update(&totals);
            }
        }
        Ok(())
    }

    fn cleanup(&mut self) -> Result<(), ProxierError> {
        delete_table(&mut self.socket, self.family)
            .map_err(|e| error(format!("{}: delete table {TABLE}", self.family), e))?;
        self.books.clear();
        self.needs_rebuild = true;
        Ok(())
    }
}

fn delete_table(socket: &mut NftSocket, family: IpFamily) -> Result<bool, CommitError> {
    let mut tx = Transaction::new();
    tx.push(objects::delete_table(nfproto(family), TABLE));
    match socket.commit(tx) {
        Ok(()) => Ok(true),
        // No such table; or a kernel without nf_tables for this family (the user-mode-linux
        // kernel the IPVS tests boot has none for IPv4): nothing of ours can be there.
        Err(e)
            if matches!(
                e.errno(),
                Some(nix::libc::ENOENT | nix::libc::EOPNOTSUPP | nix::libc::EAFNOSUPPORT)
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Removes both families' `kube-proxy` tables (`kproxy --cleanup`), and nothing else.
pub fn cleanup_node() -> Result<Vec<String>, ProxierError> {
    let mut socket = match NftSocket::open() {
        Ok(s) => s,
        Err(e) => {
            // No netfilter netlink at all: no table of ours either.
            tracing::debug!("nftables cleanup skipped: {e}");
            return Ok(Vec::new());
        }
    };
    let mut cleaned = Vec::new();
    for family in [IpFamily::V4, IpFamily::V6] {
        if delete_table(&mut socket, family)
            .map_err(|e| error(format!("{family}: delete table {TABLE}"), e))?
        {
            cleaned.push(format!(
                "nftables table {} {TABLE}",
                crate::rule::family_keyword(family)
            ));
        }
    }
    Ok(cleaned)
}
