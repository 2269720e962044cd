//! [`IpvsProxier`]: IPVS mode behind the [`Proxier`] trait.
//!
//! A partial sync recomputes the plan of the Service ports the diff names and sends only the
//! difference to what it programmed last: virtual services and real servers as one pipelined
//! netlink batch, set entries in batched ipset messages, addresses to `kube-ipvs0`, and the
//! small iptables ruleset only when the set of non-empty sets changed. A full sync (the first,
//! the periodic one, after a failure or a node change) reconciles against what the kernel lists
//! and removes what kproxy owns there but no longer wants.
//!
//! Real servers leave gracefully: a TCP server leaving is set to weight 0 (no new connections)
//! and deleted once its active and inactive connections reach zero, checked at once and then by
//! [`housekeeping`](Proxier::housekeeping); UDP and SCTP servers go at once
//! (`expire_nodest_conn` drops their flows at the next packet). A weight-0 server found in the
//! kernel at start-up that the state does not want is adopted and drained, not deleted at once
//! nor left forever (kubernetes/kubernetes#57841).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use ipset_tool::{Entry, IpsetClient};
use iptables_tool::IptablesOps;
use kproxy_netlink::ipvs::{RealServer, VirtualService, SVC_F_HASHED};
use proxy_core::datapath::{DetectLocalMode, NodePortAddressSpec, NodePortAddresses};
use proxy_core::model::{Protocol, ServicePortName};
use proxy_core::{
    IpFamily, ObjectCount, Proxier, ProxierError, ProxyMode, ProxyState, StateDiff, SyncReport,
};

use crate::client::{IpvsOp, IpvsOps, ServerKey, ServiceKey, Timeouts};
use crate::link::{DummyLink, KUBE_IPVS0};
use crate::plan::{port_plan, PlanContext, PortPlan};
use crate::rules::{self, RulesInput, JUMPS};
use crate::sets::IpvsSet;
use crate::sysctl::{self, Sysctls};

const MODE: ProxyMode = ProxyMode::Ipvs;

/// IPVS mode's settings (upstream's `ipvs.*` configuration and the shared ones it uses).
#[derive(Clone, Debug)]
pub struct IpvsSettings {
    /// `ipvs.scheduler` (`rr` when empty).
    pub scheduler: String,
    /// `ipvs.excludeCIDRs`: virtual services there are never deleted by kproxy.
    pub exclude_cidrs: Vec<IpNetwork>,
    /// `ipvs.strictARP`.
    pub strict_arp: bool,
    /// `ipvs.tcpTimeout`, `tcpFinTimeout`, `udpTimeout` (0 keeps the kernel's).
    pub timeouts: Timeouts,
    /// `masqueradeAll`.
    pub masquerade_all: bool,
    /// `iptables.masqueradeBit`.
    pub masquerade_bit: u8,
    /// How local traffic is recognised.
    pub detect_local: DetectLocalMode,
    /// `nodePortAddresses`.
    pub node_port_addresses: NodePortAddressSpec,
    /// How often terminating real servers are checked for remaining connections.
    pub drain_check_interval: Duration,
}

impl IpvsSettings {
    /// Upstream's defaults with this local-traffic detection.
    pub fn new(detect_local: DetectLocalMode) -> Self {
        Self {
            scheduler: "rr".into(),
            exclude_cidrs: Vec::new(),
            strict_arp: false,
            timeouts: Timeouts::default(),
            masquerade_all: false,
            masquerade_bit: 14,
            detect_local,
            node_port_addresses: NodePortAddressSpec::default(),
            drain_check_interval: Duration::from_secs(10),
        }
    }
}

/// A virtual service as kproxy last programmed it.
#[derive(Clone, Debug)]
struct ProgrammedService {
    service: VirtualService,
    /// How many Service ports want it (more than one only when Services collide).
    refs: u32,
    /// Real servers and their weights (0: terminating).
    servers: HashMap<ServerKey, u32>,
}

/// What the books keep of one Service port's last plan: enough to take it back (the virtual
/// services' keys, whose servers live in [`ProgrammedService`], and what it counted), not the
/// plan itself.
#[derive(Clone, Debug)]
struct PortBooks {
    services: Vec<ServiceKey>,
    entries: Vec<(IpvsSet, Entry)>,
    bound: Vec<IpAddr>,
    no_node_access: Vec<(IpAddr, Protocol, u16)>,
}

impl From<PortPlan> for PortBooks {
    fn from(p: PortPlan) -> Self {
        Self {
            services: p
                .services
                .iter()
                .map(|s| ServiceKey::of(&s.service))
                .collect(),
            entries: p.entries,
            bound: p.bound,
            no_node_access: p.no_node_access,
        }
    }
}

/// The local addresses of this node, read from its interfaces at each sync.
fn node_addresses(family: IpFamily) -> Vec<IpAddr> {
    let mut out =
        kproxy_netlink::interfaces::interface_addresses_except(&[KUBE_IPVS0]).unwrap_or_default();
    out.retain(|ip| family.contains(ip));
    out
}

fn usable_for_node_ports(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !v4.is_loopback(),
        IpAddr::V6(v6) => !v6.is_loopback() && (v6.segments()[0] & 0xffc0) != 0xfe80,
    }
}

/// The IPVS proxier for one family.
#[derive(Debug)]
pub struct IpvsProxier {
    family: IpFamily,
    settings: IpvsSettings,
    ipvs: Box<dyn IpvsOps>,
    ipset: IpsetClient,
    iptables: Box<dyn IptablesOps>,
    link: DummyLink,
    sysctls: Sysctls,
    /// Node addresses for tests that cannot read interfaces; `None` reads them.
    fixed_node_addresses: Option<Vec<IpAddr>>,
    initialized: bool,
    context: Option<PlanContext>,
    link_index: Option<u32>,
    ports: HashMap<ServicePortName, PortBooks>,
    services: HashMap<ServiceKey, ProgrammedService>,
    entries: HashMap<(IpvsSet, Entry), u32>,
    set_sizes: HashMap<IpvsSet, usize>,
    bound: HashMap<IpAddr, u32>,
    no_node_access: BTreeMap<(IpAddr, Protocol, u16), u32>,
    terminating: HashMap<ServiceKey, HashSet<ServerKey>>,
    rules_text: String,
    applied_rules: String,
    detector: proxy_core::datapath::LocalTrafficDetector,
    /// How long each phase of the last full sync took, for logs and benchmarks.
    phases: Vec<(&'static str, Duration)>,
    /// Real servers in the books, kept up to date so a partial sync reports it in O(change).
    real_servers: usize,
}

fn fail(
    operation: impl std::fmt::Display,
    e: impl std::error::Error + Send + Sync + 'static,
) -> ProxierError {
    ProxierError::new(MODE, operation, e)
}

fn is_graceful(protocol: u16) -> bool {
    protocol == 6
}

/// What one sync sends, collected before anything is applied.
#[derive(Default)]
struct Changes {
    /// Whether IPVS operations are collected: a full sync books the state without them (it
    /// reconciles against the kernel's listing instead), sparing a vector of every server.
    skip_ops: bool,
    ops: Vec<IpvsOp>,
    /// Servers set to weight 0 by this sync: deleted at once if they have no connections.
    draining: Vec<(VirtualService, ServerKey)>,
    /// Set entries touched by this sync, with their reference count before the first touch.
    touched_entries: HashMap<(IpvsSet, Entry), u32>,
    /// Bound addresses touched by this sync, likewise.
    touched_bound: HashMap<IpAddr, u32>,
    /// Virtual services touched by this sync, with their number of real servers before.
    touched_services: HashMap<ServiceKey, usize>,
    set_add: BTreeMap<IpvsSet, Vec<Entry>>,
    set_del: BTreeMap<IpvsSet, Vec<Entry>>,
    bind: Vec<IpAddr>,
    unbind: Vec<IpAddr>,
}

impl Changes {
    fn op(&mut self, op: IpvsOp) {
        if !self.skip_ops {
            self.ops.push(op);
        }
    }
}

impl IpvsProxier {
    /// A proxier for `family` over these kernel interfaces. Touches nothing until the first sync.
    pub fn new(
        family: IpFamily,
        settings: IpvsSettings,
        ipvs: Box<dyn IpvsOps>,
        ipset: IpsetClient,
        iptables: Box<dyn IptablesOps>,
        link: DummyLink,
    ) -> Self {
        Self {
            family,
            settings,
            ipvs,
            ipset,
            iptables,
            link,
            sysctls: Sysctls::default(),
            fixed_node_addresses: None,
            initialized: false,
            context: None,
            link_index: None,
            ports: HashMap::new(),
            services: HashMap::new(),
            entries: HashMap::new(),
            set_sizes: HashMap::new(),
            bound: HashMap::new(),
            no_node_access: BTreeMap::new(),
            terminating: HashMap::new(),
            rules_text: String::new(),
            applied_rules: String::new(),
            detector: proxy_core::datapath::LocalTrafficDetector::None,
            phases: Vec::new(),
            real_servers: 0,
        }
    }

    /// Opens the real kernel interfaces for `family` in this network namespace.
    pub fn open(
        family: IpFamily,
        settings: IpvsSettings,
        iptables: Box<dyn IptablesOps>,
    ) -> Result<Self, ProxierError> {
        let ipvs = crate::client::IpvsClient::open()
            .map_err(|e| ProxierError::fatal(MODE, "opening IPVS", e))?;
        let ipset =
            IpsetClient::open().map_err(|e| ProxierError::fatal(MODE, "opening ipset", e))?;
        let link = DummyLink::open(KUBE_IPVS0)
            .map_err(|e| ProxierError::fatal(MODE, "opening rtnetlink", e))?;
        Ok(Self::new(
            family,
            settings,
            Box::new(ipvs),
            ipset,
            iptables,
            link,
        ))
    }

    /// Uses these node addresses instead of reading the interfaces.
    pub fn with_node_addresses(mut self, addresses: Vec<IpAddr>) -> Self {
        self.fixed_node_addresses = Some(addresses);
        self
    }

    /// How long each phase of the last full sync took (`plan`, `ipsets`, `bind`, `ipvs-list`,
    /// `ipvs-apply`, `iptables`, `unbind`, `drain`): where a slow full sync spends its time.
    pub fn last_full_sync_phases(&self) -> &[(&'static str, Duration)] {
        &self.phases
    }

    /// How many netlink messages the IPVS client has sent so far.
    pub fn ipvs_messages_sent(&self) -> u64 {
        self.ipvs.messages_sent()
    }

    /// Whether `server` of `service` is waiting for its connections to drain.
    pub fn is_terminating(&self, service: &ServiceKey, server: &ServerKey) -> bool {
        self.terminating
            .get(service)
            .is_some_and(|s| s.contains(server))
    }

    /// Sets the sysctls and timeouts IPVS mode needs; a failure is fatal (the kernel cannot run
    /// this mode).
    fn initialize(&mut self) -> Result<(), ProxierError> {
        let fatal = |e: sysctl::SysctlError| ProxierError::fatal(MODE, "setting sysctls", e);
        for (name, value, why) in sysctl::REQUIRED {
            if self.sysctls.ensure(name, *value).map_err(fatal)? {
                tracing::info!("set {name}={value}: {why}");
            }
        }
        if self.settings.strict_arp {
            for (name, value, _) in sysctl::STRICT_ARP {
                self.sysctls.ensure(name, *value).map_err(fatal)?;
            }
        }
        let version = sysctl::kernel_version(&self.sysctls);
        match sysctl::conn_reuse_setting(version) {
            Some(v) => {
                self.sysctls
                    .ensure("net/ipv4/vs/conn_reuse_mode", v)
                    .map_err(fatal)?;
            }
            None => tracing::info!(
                ?version,
                "net/ipv4/vs/conn_reuse_mode left as it is (kernel before 4.1, or 5.9 and later where \
                 reused source ports no longer wait a second)"
            ),
        }
        if let Ok(v) = self.sysctls.get("net/bridge/bridge-nf-call-iptables") {
            if v != 1 {
                tracing::warn!("net/bridge/bridge-nf-call-iptables is {v}: pods on a bridge may bypass masquerading");
            }
        }
        let t = self.settings.timeouts;
        if t != Timeouts::default() {
            if let Err(e) = self.ipvs.set_timeouts(t) {
                tracing::error!("{e}");
            }
        }
        self.initialized = true;
        Ok(())
    }

    fn plan_context(&self, state: &ProxyState) -> PlanContext {
        let addrs = self
            .fixed_node_addresses
            .clone()
            .unwrap_or_else(|| node_addresses(self.family));
        let node = state.node();
        let node_port_ips: Vec<IpAddr> =
            match self
                .settings
                .node_port_addresses
                .select(self.family, &addrs, node)
            {
                NodePortAddresses::All => addrs
                    .iter()
                    .copied()
                    .filter(usable_for_node_ports)
                    .collect(),
                NodePortAddresses::Only(list) => {
                    list.into_iter().filter(usable_for_node_ports).collect()
                }
            };
        PlanContext {
            family: self.family,
            scheduler: self.settings.scheduler.clone(),
            node_name: node.name.clone(),
            node_port_ips,
            node_addresses: addrs.into_iter().collect(),
            primary_ip: node.primary_address(self.family),
        }
    }

    fn excluded(&self, ip: &IpAddr) -> bool {
        self.settings.exclude_cidrs.iter().any(|c| c.contains(*ip))
    }

    fn count_entry(&mut self, key: (IpvsSet, Entry), delta: i32, ch: &mut Changes) {
        let n = self.entries.entry(key).or_insert(0);
        ch.touched_entries.entry(key).or_insert(*n);
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            self.entries.remove(&key);
        }
    }

    fn count_bound(&mut self, ip: IpAddr, delta: i32, ch: &mut Changes) {
        let n = self.bound.entry(ip).or_insert(0);
        ch.touched_bound.entry(ip).or_insert(*n);
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            self.bound.remove(&ip);
        }
    }

    /// Turns the touched keys into additions and removals: a key counts only if it went from
    /// unused to used or back over the whole sync (a port re-planned with the same cluster IP
    /// touches it twice and changes nothing).
    fn settle(&mut self, ch: &mut Changes) {
        for (key, before) in std::mem::take(&mut ch.touched_services) {
            let after = self.services.get(&key).map_or(0, |p| p.servers.len());
            self.real_servers = self.real_servers + after - before;
        }
        for (ip, before) in std::mem::take(&mut ch.touched_bound) {
            let after = self.bound.get(&ip).copied().unwrap_or(0);
            match (before > 0, after > 0) {
                (false, true) => {
                    ch.bind.push(ip);
                    self.count_entry((IpvsSet::IpvsIps, Entry::Ip(ip)), 1, ch);
                }
                (true, false) => {
                    ch.unbind.push(ip);
                    self.count_entry((IpvsSet::IpvsIps, Entry::Ip(ip)), -1, ch);
                }
                _ => {}
            }
        }
        for (key, before) in std::mem::take(&mut ch.touched_entries) {
            let after = self.entries.get(&key).copied().unwrap_or(0);
            let size = self.set_sizes.entry(key.0).or_insert(0);
            match (before > 0, after > 0) {
                (false, true) => {
                    *size += 1;
                    ch.set_add.entry(key.0).or_default().push(key.1);
                }
                (true, false) => {
                    *size -= 1;
                    ch.set_del.entry(key.0).or_default().push(key.1);
                }
                _ => {}
            }
        }
        ch.bind.sort_unstable();
        ch.unbind.sort_unstable();
        for v in ch.set_add.values_mut().chain(ch.set_del.values_mut()) {
            v.sort_unstable();
        }
    }

    /// Removes one port's last plan from the books, noting what no longer anyone wants.
    fn forget_port(&mut self, old: &PortBooks, new_keys: &HashSet<ServiceKey>, ch: &mut Changes) {
        for &key in &old.services {
            if new_keys.contains(&key) {
                continue;
            }
            if let Some(p) = self.services.get_mut(&key) {
                ch.touched_services.entry(key).or_insert(p.servers.len());
                p.refs -= 1;
                if p.refs == 0 {
                    self.services.remove(&key);
                    self.terminating.remove(&key);
                    ch.op(IpvsOp::DeleteService(key));
                }
            }
        }
        for e in &old.entries {
            self.count_entry(*e, -1, ch);
        }
        for ip in &old.bound {
            self.count_bound(*ip, -1, ch);
        }
        for k in &old.no_node_access {
            if let Some(n) = self.no_node_access.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    self.no_node_access.remove(k);
                }
            }
        }
    }

    /// Books one port's new plan and collects the IPVS operations that make the kernel match it,
    /// relative to what was programmed.
    fn program_port(&mut self, plan: &PortPlan, old_keys: &HashSet<ServiceKey>, ch: &mut Changes) {
        for ps in &plan.services {
            let key = ServiceKey::of(&ps.service);
            let wanted: HashMap<ServerKey, &RealServer> = ps
                .servers
                .iter()
                .map(|r| {
                    (
                        ServerKey {
                            address: r.address,
                            port: r.port,
                        },
                        r,
                    )
                })
                .collect();
            ch.touched_services
                .entry(key)
                .or_insert_with(|| self.services.get(&key).map_or(0, |p| p.servers.len()));
            match self.services.get_mut(&key) {
                None => {
                    ch.op(IpvsOp::AddService(ps.service.clone()));
                    for r in &ps.servers {
                        ch.op(IpvsOp::AddServer(key, r.clone()));
                    }
                    self.services.insert(
                        key,
                        ProgrammedService {
                            service: ps.service.clone(),
                            refs: 1,
                            servers: wanted.keys().map(|k| (*k, 1)).collect(),
                        },
                    );
                }
                Some(p) => {
                    if !old_keys.contains(&key) {
                        p.refs += 1;
                    }
                    if p.service != ps.service {
                        ch.op(IpvsOp::UpdateService(ps.service.clone()));
                        p.service = ps.service.clone();
                    }
                    let terminating = self.terminating.entry(key).or_default();
                    for (k, r) in &wanted {
                        match p.servers.get(k).copied() {
                            None => {
                                ch.op(IpvsOp::AddServer(key, (*r).clone()));
                                p.servers.insert(*k, r.weight);
                            }
                            Some(w) if w != r.weight => {
                                // A terminating server that is wanted again comes back.
                                ch.op(IpvsOp::UpdateServer(key, (*r).clone()));
                                p.servers.insert(*k, r.weight);
                                terminating.remove(k);
                            }
                            Some(_) => {}
                        }
                    }
                    let leaving: Vec<ServerKey> = p
                        .servers
                        .iter()
                        .filter(|(k, w)| !wanted.contains_key(k) && **w > 0)
                        .map(|(k, _)| *k)
                        .collect();
                    for k in leaving {
                        let server = RealServer {
                            address: k.address,
                            port: k.port,
                            weight: 0,
                            forward: kproxy_netlink::ipvs::FWD_MASQ,
                        };
                        if is_graceful(key.protocol) {
                            ch.op(IpvsOp::UpdateServer(key, server));
                            p.servers.insert(k, 0);
                            terminating.insert(k);
                            ch.draining.push((ps.service.clone(), k));
                        } else {
                            ch.op(IpvsOp::DeleteServer(key, server));
                            p.servers.remove(&k);
                        }
                    }
                    if terminating.is_empty() {
                        self.terminating.remove(&key);
                    }
                }
            }
        }
        for e in &plan.entries {
            self.count_entry(*e, 1, ch);
        }
        for ip in &plan.bound {
            self.count_bound(*ip, 1, ch);
        }
        for k in &plan.no_node_access {
            *self.no_node_access.entry(*k).or_insert(0) += 1;
        }
    }

    fn non_empty_sets(&self) -> BTreeSet<IpvsSet> {
        self.set_sizes
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(s, _)| *s)
            .collect()
    }

    /// Renders the ruleset and restores it if it changed (or `force`). Returns the rules written.
    fn apply_rules(&mut self, force: bool) -> Result<rules::RuleCount, ProxierError> {
        let non_empty = self.non_empty_sets();
        let no_node: BTreeSet<(IpAddr, Protocol, u16)> =
            self.no_node_access.keys().copied().collect();
        let mut text = std::mem::take(&mut self.rules_text);
        rules::render(
            &RulesInput {
                family: self.family,
                non_empty: &non_empty,
                masquerade_all: self.settings.masquerade_all,
                detector: &self.detector,
                masquerade_bit: self.settings.masquerade_bit,
                no_node_access: &no_node,
            },
            &mut text,
        );
        self.rules_text = text;
        // A forced (full) sync also repairs the jumps from the built-in chains: the ones missing
        // are inserted by the same restore, so a full sync spawns three processes (two saves,
        // one restore) rather than one per jump.
        let missing = if force {
            self.missing_jumps()?
        } else {
            Vec::new()
        };
        if !force && self.rules_text == self.applied_rules {
            return Ok(rules::RuleCount::default());
        }
        let text = if missing.is_empty() {
            self.rules_text.clone()
        } else {
            rules::with_jumps(&self.rules_text, &missing)
        };
        self.iptables
            .restore(&mut |w| w.write_all(text.as_bytes()))
            .map_err(|e| fail("iptables-restore of the IPVS-mode rules", e))?;
        self.applied_rules = self.rules_text.clone();
        Ok(rules::count_rules(&text))
    }

    /// Whether the set `spec` names exists with another type or family than `spec`'s (someone
    /// recreated it, or another program owns the name).
    fn has_another_type(&mut self, spec: &ipset_tool::SetSpec) -> bool {
        match self.ipset.list(&spec.name) {
            Ok(listed) => {
                listed.set_type != Some(spec.set_type)
                    || (spec.set_type.has_family() && listed.family != Some(spec.family))
            }
            Err(_) => false,
        }
    }

    /// Replaces one of IPVS mode's sets that exists with the wrong type, so the one object is
    /// repaired and the rest of the sync goes on (rather than failing every sync at the sets):
    /// the rules are written without those that match it (and without the access filter's
    /// REJECT, which needs the set's RETURN before it), the set is destroyed, and the caller
    /// creates and fills it anew; the full sync's rules restore then brings every rule back.
    /// Between the two restores, milliseconds apart, what the set's rules do (masquerading,
    /// filtering) is not done: the set was wrong already.
    fn replace_foreign_set(
        &mut self,
        set: IpvsSet,
        spec: &ipset_tool::SetSpec,
    ) -> Result<(), ProxierError> {
        let non_empty = self.non_empty_sets();
        let no_node: BTreeSet<(IpAddr, Protocol, u16)> =
            self.no_node_access.keys().copied().collect();
        let mut full = String::new();
        rules::render(
            &RulesInput {
                family: self.family,
                non_empty: &non_empty,
                masquerade_all: self.settings.masquerade_all,
                detector: &self.detector,
                masquerade_bit: self.settings.masquerade_bit,
                no_node_access: &no_node,
            },
            &mut full,
        );
        // Every rule matching the set goes, and with it the access filter's REJECT (which
        // relies on the set's RETURN before it): permissive for a moment rather than refusing.
        let reference = format!("--match-set {} ", set.name(self.family));
        let mut text = String::with_capacity(full.len());
        for line in full.lines().filter(|l| {
            !l.contains(&reference)
                && !(l.starts_with("-A KUBE-IPVS-FILTER") && l.ends_with("-j REJECT"))
        }) {
            text.push_str(line);
            text.push('\n');
        }
        self.iptables
            .restore(&mut |w| w.write_all(text.as_bytes()))
            .map_err(|e| {
                fail(
                    format!("iptables-restore of the rules without ipset {}", spec.name),
                    e,
                )
            })?;
        self.applied_rules.clear();
        self.ipset.destroy(&spec.name, true).map_err(|e| {
            fail(
                format!("destroying ipset {} of the wrong type", spec.name),
                e,
            )
        })
    }

    /// The jumps not present in the built-in chains (`iptables_tool::missing_jumps`: one listing
    /// per built-in chain, rules compared by meaning rather than by text).
    fn missing_jumps(&mut self) -> Result<Vec<&'static iptables_tool::Jump>, ProxierError> {
        iptables_tool::missing_jumps(self.iptables.as_mut(), JUMPS)
            .map_err(|e| fail("listing the jumps from the built-in chains", e))
    }

    fn link_index(&mut self) -> Result<u32, ProxierError> {
        if let Some(i) = self.link_index {
            return Ok(i);
        }
        let i = self
            .link
            .ensure()
            .map_err(|e| fail(format!("ensuring link {KUBE_IPVS0}"), e))?;
        self.link_index = Some(i);
        Ok(i)
    }

    /// Applies collected changes in an order that never leaves a frontend half-programmed:
    /// set entries and addresses first, then IPVS, then removals.
    fn apply(&mut self, ch: Changes, force_rules: bool) -> Result<SyncReport, ProxierError> {
        let index = self.link_index()?;
        let family = self.family;
        let mut entries_written = 0;
        for (set, add) in &ch.set_add {
            let spec = set.spec(family);
            self.ipset
                .create(&spec, true)
                .map_err(|e| fail(format!("creating ipset {}", spec.name), e))?;
            self.ipset
                .add_many(&spec.name, add, true)
                .map_err(|e| fail(format!("adding to ipset {}", spec.name), e))?;
            entries_written += add.len();
        }
        let bind_failures = self.link.bind(index, &ch.bind);
        if let Some(e) = bind_failures.into_iter().next() {
            return Err(fail("binding service addresses", e));
        }
        let outcome = self
            .ipvs
            .apply(&ch.ops)
            .map_err(|e| fail("sending IPVS changes", e))?;
        let failed = outcome.failed.len();
        for e in &outcome.failed {
            tracing::warn!("{e} (retried at the next full sync)");
        }
        let rules_written = self.apply_rules(force_rules)?;
        for (set, del) in &ch.set_del {
            let name = set.name(family);
            self.ipset
                .del_many(&name, del, true)
                .map_err(|e| fail(format!("deleting from ipset {name}"), e))?;
            entries_written += del.len();
        }
        let unbind_failures = self.link.unbind(index, &ch.unbind);
        if let Some(e) = unbind_failures.into_iter().next() {
            return Err(fail("unbinding service addresses", e));
        }
        // Servers that just left: delete those without connections at once.
        self.drain_leaving(ch.draining)?;
        Ok(self.report(false, ch.ops.len(), entries_written, rules_written, failed))
    }

    /// What a sync did (`written`) and what the mode owns after it (`owned`).
    fn report(
        &self,
        full: bool,
        operations: usize,
        entries_written: usize,
        rules_written: rules::RuleCount,
        refused: usize,
    ) -> SyncReport {
        let owned_rules = rules::count_rules(&self.applied_rules);
        let kind = |kind: &'static str, count: usize| ObjectCount { kind, count };
        SyncReport {
            full,
            written: vec![
                kind("ipvs/operations", operations),
                kind("ipset/entries", entries_written),
                ObjectCount::iptables("nat", rules_written.nat),
                ObjectCount::iptables("filter", rules_written.filter),
            ],
            owned: vec![
                kind("ipvs/virtual-servers", self.services.len()),
                kind("ipvs/real-servers", self.real_servers),
                kind("ipset/entries", self.entries.len()),
                // Operations the kernel refused at this sync (each logged; the next full sync,
                // which reconciles against the kernel, tries them again).
                kind("ipvs/refused", refused),
                ObjectCount::iptables("nat", owned_rules.nat),
                ObjectCount::iptables("filter", owned_rules.filter),
            ],
            counters: Vec::new(),
        }
    }

    /// Deletes, among servers this sync set to weight 0, those without connections: one dump of
    /// each affected service.
    fn drain_leaving(
        &mut self,
        leaving: Vec<(VirtualService, ServerKey)>,
    ) -> Result<(), ProxierError> {
        let mut by_service: BTreeMap<ServiceKey, (VirtualService, Vec<ServerKey>)> =
            BTreeMap::new();
        for (vs, k) in leaving {
            by_service
                .entry(ServiceKey::of(&vs))
                .or_insert_with(|| (vs, Vec::new()))
                .1
                .push(k);
        }
        for (_, (vs, keys)) in by_service {
            self.drain(&vs, Some(&keys))?;
        }
        Ok(())
    }

    /// Deletes the terminating servers of `vs` (only `only`, if given) that have no connections
    /// left or are gone from the kernel.
    fn drain(
        &mut self,
        vs: &VirtualService,
        only: Option<&[ServerKey]>,
    ) -> Result<usize, ProxierError> {
        let key = ServiceKey::of(vs);
        let listed = self
            .ipvs
            .list_servers(vs)
            .map_err(|e| fail(format!("listing the servers of {key}"), e))?;
        let Some(term) = self.terminating.get(&key) else {
            return Ok(0);
        };
        let listed: HashMap<ServerKey, (u32, u32, u32)> = listed
            .iter()
            .map(|l| {
                (
                    ServerKey {
                        address: l.server.address,
                        port: l.server.port,
                    },
                    (l.server.weight, l.active, l.inactive),
                )
            })
            .collect();
        let mut ops = Vec::new();
        let mut gone = Vec::new();
        for k in term.iter().filter(|k| only.is_none_or(|o| o.contains(k))) {
            match listed.get(k) {
                None => gone.push(*k),
                Some((_, active, inactive)) if active + inactive == 0 => {
                    ops.push(IpvsOp::DeleteServer(
                        key,
                        RealServer {
                            address: k.address,
                            port: k.port,
                            weight: 0,
                            forward: kproxy_netlink::ipvs::FWD_MASQ,
                        },
                    ));
                    gone.push(*k);
                }
                Some(_) => {}
            }
        }
        if !ops.is_empty() {
            let outcome = self
                .ipvs
                .apply(&ops)
                .map_err(|e| fail(format!("deleting drained servers of {key}"), e))?;
            for e in &outcome.failed {
                tracing::warn!("{e}");
            }
        }
        if let Some(t) = self.terminating.get_mut(&key) {
            for k in &gone {
                t.remove(k);
            }
            if t.is_empty() {
                self.terminating.remove(&key);
            }
        }
        if let Some(p) = self.services.get_mut(&key) {
            for k in &gone {
                if p.servers.remove(k).is_some() {
                    self.real_servers -= 1;
                }
            }
        }
        Ok(gone.len())
    }

    fn partial_sync(
        &mut self,
        state: &ProxyState,
        diff: &StateDiff,
    ) -> Result<SyncReport, ProxierError> {
        let ctx = self
            .context
            .clone()
            .expect("context set before a partial sync");
        let mut ch = Changes::default();
        let names = diff
            .added
            .iter()
            .chain(diff.changed.iter().map(|c| &c.name))
            .chain(diff.removed.iter().map(|c| &c.name));
        for name in names {
            let new = state.get(name).map(|e| port_plan(e, &ctx));
            let old = self.ports.remove(name);
            let new_keys: HashSet<ServiceKey> = new
                .iter()
                .flat_map(|p| p.services.iter().map(|s| ServiceKey::of(&s.service)))
                .collect();
            let old_keys: HashSet<ServiceKey> = old
                .iter()
                .flat_map(|p| p.services.iter().copied())
                .collect();
            if let Some(old) = &old {
                self.forget_port(old, &new_keys, &mut ch);
            }
            if let Some(new) = new {
                self.program_port(&new, &old_keys, &mut ch);
                self.ports.insert(name.clone(), new.into());
            }
        }
        self.settle(&mut ch);
        self.apply(ch, false)
    }

    /// Rebuilds the books from the state and reconciles every kernel object against them.
    fn full_sync(&mut self, state: &ProxyState) -> Result<SyncReport, ProxierError> {
        let ctx = self
            .context
            .clone()
            .expect("context set before a full sync");
        self.link_index = None;
        let index = self.link_index()?;
        self.ports.clear();
        self.entries.clear();
        self.set_sizes.clear();
        self.bound.clear();
        self.no_node_access.clear();
        self.services.clear();
        self.real_servers = 0;
        self.phases.clear();
        let mut phase_start = Instant::now();
        let mut phase = |phases: &mut Vec<(&'static str, Duration)>, name: &'static str| {
            let now = Instant::now();
            phases.push((name, now - phase_start));
            phase_start = now;
        };
        let mut ch = Changes {
            skip_ops: true,
            ..Changes::default()
        };
        // Book the whole state as if nothing were programmed; no operations are collected: the
        // kernel's listing decides them below.
        for (name, entry) in state.service_ports() {
            let plan = port_plan(entry, &ctx);
            self.program_port(&plan, &HashSet::new(), &mut ch);
            self.ports.insert(name.clone(), plan.into());
        }
        self.settle(&mut ch);

        phase(&mut self.phases, "plan");
        // Sets: every set exists (the rules reference them all), with exactly its members.
        let mut desired: HashMap<IpvsSet, HashSet<Entry>> = HashMap::new();
        for (set, e) in self.entries.keys() {
            desired.entry(*set).or_default().insert(*e);
        }
        let mut entries_written = 0;
        for set in IpvsSet::ALL {
            let spec = set.spec(self.family);
            let want = desired.remove(&set).unwrap_or_default();
            let d = match ipset_tool::sync_set(&mut self.ipset, &spec, &want) {
                Ok(d) => d,
                Err(e) if self.has_another_type(&spec) => {
                    tracing::warn!(
                        "ipset {} exists with another type than IPVS mode's ({e}); replacing it",
                        spec.name
                    );
                    self.replace_foreign_set(set, &spec)?;
                    ipset_tool::sync_set(&mut self.ipset, &spec, &want)
                        .map_err(|e| fail(format!("syncing ipset {}", spec.name), e))?
                }
                Err(e) => return Err(fail(format!("syncing ipset {}", spec.name), e)),
            };
            entries_written += d.add.len() + d.del.len();
        }

        phase(&mut self.phases, "ipsets");
        // Addresses.
        let listed = self
            .link
            .addresses(index)
            .map_err(|e| fail(format!("listing the addresses of {KUBE_IPVS0}"), e))?;
        let want: BTreeSet<IpAddr> = self.bound.keys().copied().collect();
        let bind: Vec<IpAddr> = want.difference(&listed).copied().collect();
        let unbind: Vec<IpAddr> = listed
            .iter()
            .filter(|ip| self.family.contains(ip) && !want.contains(ip))
            .copied()
            .collect();
        if let Some(e) = self.link.bind(index, &bind).into_iter().next() {
            return Err(fail("binding service addresses", e));
        }

        phase(&mut self.phases, "bind");
        // IPVS: what the kernel has against what is wanted.
        let sent_before = self.ipvs.messages_sent();
        let kernel = self
            .ipvs
            .list_services()
            .map_err(|e| fail("listing IPVS virtual services", e))?;
        let mut ops = Vec::new();
        let mut draining = Vec::new();
        let mut terminating: HashMap<ServiceKey, HashSet<ServerKey>> = HashMap::new();
        let mut in_kernel: HashSet<ServiceKey> = HashSet::new();
        for listed in kernel {
            let mut vs = listed.service;
            vs.flags &= !SVC_F_HASHED;
            let key = ServiceKey::of(&vs);
            if !self.family.contains(&key.address) || self.excluded(&key.address) {
                continue;
            }
            in_kernel.insert(key);
            let Some(p) = self.services.get_mut(&key) else {
                ops.push(IpvsOp::DeleteService(key));
                continue;
            };
            if p.service != vs {
                ops.push(IpvsOp::UpdateService(p.service.clone()));
            }
            let servers = self
                .ipvs
                .list_servers(&vs)
                .map_err(|e| fail(format!("listing the servers of {key}"), e))?;
            let mut seen = HashSet::new();
            for l in servers {
                let k = ServerKey {
                    address: l.server.address,
                    port: l.server.port,
                };
                seen.insert(k);
                match p.servers.get(&k) {
                    Some(w) if *w == l.server.weight => {}
                    Some(w) => ops.push(IpvsOp::UpdateServer(
                        key,
                        RealServer {
                            weight: *w,
                            ..l.server.clone()
                        },
                    )),
                    None if !is_graceful(key.protocol) => {
                        ops.push(IpvsOp::DeleteServer(key, l.server.clone()))
                    }
                    None => {
                        // Not wanted: drain it (a weight-0 server left by an earlier run is
                        // adopted the same way).
                        if l.server.weight != 0 {
                            ops.push(IpvsOp::UpdateServer(
                                key,
                                RealServer {
                                    weight: 0,
                                    ..l.server.clone()
                                },
                            ));
                        }
                        p.servers.insert(k, 0);
                        terminating.entry(key).or_default().insert(k);
                        draining.push((p.service.clone(), k));
                    }
                }
            }
            for (k, w) in &p.servers {
                if !seen.contains(k) && *w > 0 {
                    ops.push(IpvsOp::AddServer(
                        key,
                        RealServer {
                            address: k.address,
                            port: k.port,
                            weight: *w,
                            forward: kproxy_netlink::ipvs::FWD_MASQ,
                        },
                    ));
                }
            }
        }
        phase(&mut self.phases, "ipvs-list");
        for (key, p) in &self.services {
            if in_kernel.contains(key) {
                continue;
            }
            ops.push(IpvsOp::AddService(p.service.clone()));
            for (k, w) in &p.servers {
                ops.push(IpvsOp::AddServer(
                    *key,
                    RealServer {
                        address: k.address,
                        port: k.port,
                        weight: *w,
                        forward: kproxy_netlink::ipvs::FWD_MASQ,
                    },
                ));
            }
        }
        self.terminating = terminating;
        let outcome = self
            .ipvs
            .apply(&ops)
            .map_err(|e| fail("sending IPVS changes", e))?;
        for e in &outcome.failed {
            tracing::warn!("{e} (retried at the next full sync)");
        }
        phase(&mut self.phases, "ipvs-apply");

        // The rules, with any missing jump from the built-in chains.
        let rules_written = self.apply_rules(true)?;
        phase(&mut self.phases, "iptables");
        if let Some(e) = self.link.unbind(index, &unbind).into_iter().next() {
            return Err(fail("unbinding service addresses", e));
        }
        phase(&mut self.phases, "unbind");
        self.drain_leaving(draining)?;
        phase(&mut self.phases, "drain");
        let failed = outcome.failed.len();
        self.real_servers = self.services.values().map(|p| p.servers.len()).sum();
        tracing::debug!(
            messages = self.ipvs.messages_sent() - sent_before,
            phases = ?self.phases,
            "IPVS full sync"
        );
        Ok(self.report(true, ops.len(), entries_written, rules_written, failed))
    }
}

impl Proxier for IpvsProxier {
    fn mode(&self) -> ProxyMode {
        MODE
    }

    fn sync(&mut self, state: &ProxyState, diff: &StateDiff) -> Result<SyncReport, ProxierError> {
        if !self.initialized {
            self.initialize()?;
        }
        // The node's addresses (NodePort virtual services, which external IPs are the node's)
        // are read from its interfaces at full syncs only: the dump lists every address on
        // kube-ipvs0 too, one per Service at 20,000 Services, which a one-endpoint sync must not
        // pay for. An interface change is picked up at the next periodic full sync (or at once,
        // when the Node object changes).
        // After a failure the lifecycle makes the next sync full (`proxy_core::ManagedProxier`).
        let full = diff.full || diff.node_changed || self.context.is_none();
        if full {
            self.context = Some(self.plan_context(state));
            self.detector = self
                .settings
                .detect_local
                .detector(self.family, state.node());
        }
        let report = if full {
            self.full_sync(state)?
        } else {
            self.partial_sync(state, diff)?
        };
        // UDP clients must not keep sending to a server that left: the lifecycle deletes the
        // entries the default rule (`Proxier::stale_udp_flows`) calls stale after this sync.
        Ok(report)
    }

    fn housekeeping_interval(&self) -> Option<Duration> {
        Some(self.settings.drain_check_interval)
    }

    fn housekeeping(&mut self) -> Result<(), ProxierError> {
        let services: Vec<VirtualService> = self
            .terminating
            .keys()
            .filter_map(|k| self.services.get(k).map(|p| p.service.clone()))
            .collect();
        let started = Instant::now();
        let mut deleted = 0;
        for vs in services {
            deleted += self.drain(&vs, None)?;
        }
        if deleted > 0 {
            tracing::info!(deleted, elapsed = ?started.elapsed(), "deleted drained real servers");
        }
        Ok(())
    }

    fn cleanup(&mut self) -> Result<(), ProxierError> {
        cleanup_kernel(
            &mut *self.ipvs,
            &mut self.ipset,
            &mut *self.iptables,
            &self.link,
        )
    }
}

/// Removes IPVS mode's objects: every virtual service (upstream flushes IPVS too), the
/// `kube-ipvs0` link, the jumps and chains, then the sets (which the rules referenced).
pub fn cleanup_kernel(
    ipvs: &mut dyn IpvsOps,
    ipset: &mut IpsetClient,
    iptables: &mut dyn IptablesOps,
    link: &DummyLink,
) -> Result<(), ProxierError> {
    ipvs.flush().map_err(|e| fail("flushing IPVS", e))?;
    link.delete()
        .map_err(|e| fail(format!("deleting {KUBE_IPVS0}"), e))?;
    cleanup_rules(iptables)?;
    for family in [IpFamily::V4, IpFamily::V6] {
        for set in IpvsSet::ALL {
            let name = set.name(family);
            ipset
                .destroy(&name, true)
                .map_err(|e| fail(format!("destroying ipset {name}"), e))?;
        }
    }
    Ok(())
}

/// Removes the jumps and chains of IPVS mode through `iptables`, whatever wrote them.
pub fn cleanup_rules(iptables: &mut dyn IptablesOps) -> Result<(), ProxierError> {
    iptables_tool::remove_leftovers(iptables, None, &[rules::FOOTPRINT])
        .map(drop)
        .map_err(|e| fail("removing the IPVS-mode chains", e))
}

/// `kproxy --cleanup` for IPVS mode, without a running proxier: IPVS flushed where the kernel
/// has it, `kube-ipvs0` deleted, the chains and jumps removed from every iptables variant and
/// family whose tools exist, then both families' sets destroyed. Returns what it cleaned.
pub fn cleanup_node() -> Result<Vec<String>, ProxierError> {
    let mut cleaned = Vec::new();
    let mut failures = Vec::new();
    match crate::client::IpvsClient::open() {
        Ok(mut c) => match c.flush() {
            Ok(()) => cleaned.push("IPVS virtual services".to_owned()),
            Err(e) => failures.push(format!("flushing IPVS: {e}")),
        },
        Err(crate::client::IpvsError::NotAvailable) => {}
        Err(e) => failures.push(format!("opening IPVS: {e}")),
    }
    match DummyLink::open(KUBE_IPVS0).and_then(|l| l.delete()) {
        Ok(true) => cleaned.push(format!("link {KUBE_IPVS0}")),
        Ok(false) => {}
        Err(e) => failures.push(e.to_string()),
    }
    let (rules_cleaned, rules_failed) =
        iptables_tool::leftovers::clean_every_variant("IPVS-mode chains", |cmd| cleanup_rules(cmd));
    cleaned.extend(rules_cleaned);
    failures.extend(rules_failed);
    destroy_sets(&mut cleaned, &mut failures);
    if failures.is_empty() {
        Ok(cleaned)
    } else {
        Err(ProxierError::new(MODE, "cleanup", failures.join("\n")))
    }
}

/// What IPVS mode (kproxy's or kube-proxy's) left outside iptables, removed when another mode
/// takes the node over, after that mode's first sync and after the IPVS-mode iptables rules are
/// gone (they reference the sets): the virtual services and `kube-ipvs0`, then the `KUBE-*`
/// sets. A node where IPVS mode never ran is left alone: IPVS is flushed only when `kube-ipvs0`
/// exists (virtual services of another tool stay), and nothing loads `ip_vs` or `ip_set` that
/// was not loaded. Returns what it removed.
pub fn remove_kernel_leftovers() -> Result<Vec<String>, ProxierError> {
    let mut removed = Vec::new();
    let mut failures = Vec::new();
    let link = DummyLink::open(KUBE_IPVS0).map_err(|e| fail("opening rtnetlink", e))?;
    let had_link = link
        .index()
        .map_err(|e| fail(format!("looking up {KUBE_IPVS0}"), e))?
        .is_some();
    if had_link && std::path::Path::new("/proc/net/ip_vs").exists() {
        match crate::client::IpvsClient::open() {
            Ok(mut c) => {
                let services = c.list_services().map(|s| s.len()).unwrap_or(0);
                match c.flush() {
                    Ok(()) => removed.push(format!("{services} IPVS virtual service(s)")),
                    Err(e) => failures.push(format!("flushing IPVS: {e}")),
                }
            }
            Err(crate::client::IpvsError::NotAvailable) => {}
            Err(e) => failures.push(format!("opening IPVS: {e}")),
        }
    }
    if had_link {
        match link.delete() {
            Ok(true) => removed.push(format!("link {KUBE_IPVS0}")),
            Ok(false) => {}
            Err(e) => failures.push(e.to_string()),
        }
    }
    if std::path::Path::new("/sys/module/ip_set").exists() {
        destroy_sets(&mut removed, &mut failures);
    }
    if failures.is_empty() {
        Ok(removed)
    } else {
        Err(ProxierError::new(
            MODE,
            "removing IPVS-mode leftovers",
            failures.join("\n"),
        ))
    }
}

/// Destroys both families' IPVS-mode sets that exist.
fn destroy_sets(done: &mut Vec<String>, failures: &mut Vec<String>) {
    let mut ipset = match IpsetClient::open() {
        Ok(c) => c,
        Err(e) => {
            failures.push(format!("opening ipset: {e}"));
            return;
        }
    };
    let existing: HashSet<String> = match ipset.list_names() {
        Ok(n) => n.into_iter().collect(),
        Err(e) => {
            failures.push(format!("listing ipsets: {e}"));
            return;
        }
    };
    let mut destroyed = Vec::new();
    for family in [IpFamily::V4, IpFamily::V6] {
        for set in IpvsSet::ALL {
            let name = set.name(family);
            if !existing.contains(&name) {
                continue;
            }
            match ipset.destroy(&name, true) {
                Ok(()) => destroyed.push(name),
                Err(e) => failures.push(format!("destroying ipset {name}: {e}")),
            }
        }
    }
    if !destroyed.is_empty() {
        done.push(format!(
            "{} IPVS-mode ipset(s) ({})",
            destroyed.len(),
            destroyed.join(", ")
        ));
    }
}
