//! Rendering a [`ProxyState`] into iptables-restore input: full and partial.
//!
//! The layout is upstream kube-proxy's, rule for rule (see `docs/iptables.md`). A full render writes
//! every chain kproxy owns, streamed to a writer; a partial render, given a [`StateDiff`], writes only what changed:
//! rewritten per-service chains, `-X` for chains that are gone, and rule-by-rule `-D`/`-I`/`-A`
//! edits of the shared chains, so its size follows the change, not the cluster.

mod names;
mod node_view;
mod service;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::io;

use proxy_core::datapath::NodePortAddresses;
use proxy_core::{ProxyState, ServicePortEntry, ServicePortName, StateDiff};

use crate::chain_name::ChainName;
use crate::config::{ConfigError, RenderConfig};
use names::NameCache;
pub use node_view::NodeView;
use service::{render_service, Context};

/// Endpoint count above which comments are left out of endpoint rules (upstream's threshold).
pub const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

/// nat: the chain that marks packets for masquerading.
pub const KUBE_MARK_MASQ: &str = "KUBE-MARK-MASQ";
/// nat: masquerades marked packets; jumped to from POSTROUTING.
pub const KUBE_POSTROUTING: &str = "KUBE-POSTROUTING";
/// filter: the CVE-2020-8558 guard for localhost NodePorts.
pub const KUBE_FIREWALL: &str = "KUBE-FIREWALL";
/// filter: accepts forwarded service traffic.
pub const KUBE_FORWARD: &str = "KUBE-FORWARD";

/// The nfacct object counting conntrack-INVALID packets dropped in KUBE-FORWARD.
pub const CT_STATE_INVALID_NFACCT: &str = "ct_state_invalid_dropped_pkts";
/// The nfacct object counting packets accepted by localhost NodePorts.
pub const LOCALHOST_NODEPORTS_NFACCT: &str = "localhost_nps_accepted_pkts";

/// A table kproxy writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// `filter`: REJECT / DROP / ACCEPT decisions.
    Filter,
    /// `nat`: DNAT to endpoints and masquerade marks.
    Nat,
}

impl Table {
    /// The table's name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Nat => "nat",
        }
    }
}

/// A chain shared by all Services, which partial syncs edit rule by rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SharedChain {
    /// `KUBE-SERVICES` (nat: dispatch by service address; filter: REJECT for no endpoints).
    Services,
    /// `KUBE-EXTERNAL-SERVICES` (filter): REJECT/DROP for external addresses without endpoints.
    ExternalServices,
    /// `KUBE-NODEPORTS` (nat: dispatch by node port; filter: health-check ACCEPT).
    NodePorts,
    /// `KUBE-PROXY-FIREWALL` (filter): DROP for load-balancer traffic outside source ranges.
    ProxyFirewall,
}

impl SharedChain {
    /// The chain's name.
    pub fn name(self) -> &'static str {
        match self {
            SharedChain::Services => "KUBE-SERVICES",
            SharedChain::ExternalServices => "KUBE-EXTERNAL-SERVICES",
            SharedChain::NodePorts => "KUBE-NODEPORTS",
            SharedChain::ProxyFirewall => "KUBE-PROXY-FIREWALL",
        }
    }

    const FILTER: [SharedChain; 4] = [
        SharedChain::NodePorts,
        SharedChain::Services,
        SharedChain::ExternalServices,
        SharedChain::ProxyFirewall,
    ];
}

/// Where a service render puts its rules: straight into the restore buffers (full render) or into
/// a per-service collection to diff (partial render).
pub(crate) trait Sink {
    /// A rule (`spec` = everything after `-A CHAIN `) in a shared chain.
    fn shared(&mut self, table: Table, chain: SharedChain, spec: &str);
    /// Declares a per-service nat chain (once per chain).
    fn chain(&mut self, chain: ChainName);
    /// A rule in a per-service nat chain, in order.
    fn rule(&mut self, chain: ChainName, spec: &str);
}

/// Lines written per table, for `sync_proxy_rules_iptables_total{table}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleCounts {
    /// Rules in kproxy's filter chains.
    pub filter: usize,
    /// Rules in kproxy's nat chains.
    pub nat: usize,
}

/// Output is written to the caller's writer in chunks of about this size, so a full render at
/// 20,000 Services (tens of megabytes of text) never sits in memory whole.
const CHUNK: usize = 1 << 20;

/// The full render's working buffers, kept between renders so a resync reuses their capacity.
#[derive(Debug, Default)]
struct FullBuffers {
    /// Output waiting to be written.
    chunk: String,
    /// The current Service's chain declarations and rules: declarations must precede any rule
    /// that jumps to the chain, so a Service's block is assembled here, then appended.
    service_decls: String,
    service_rules: String,
    /// Filter rules per shared chain (few: only Services without endpoints, with source ranges or
    /// health checks), written as the filter section after nat.
    filter_shared: [String; 4],
}

fn filter_index(chain: SharedChain) -> usize {
    SharedChain::FILTER
        .iter()
        .position(|c| *c == chain)
        .expect("every shared chain has a filter buffer")
}

/// The full render's sink: a Service's nat lines go to its block, filter lines to their chain's
/// buffer; active chains are recorded.
struct FullSink<'a> {
    buffers: &'a mut FullBuffers,
    active: &'a mut HashSet<ChainName>,
    counts: RuleCounts,
}

impl Sink for FullSink<'_> {
    fn shared(&mut self, table: Table, chain: SharedChain, spec: &str) {
        match table {
            Table::Filter => {
                push_rule(
                    &mut self.buffers.filter_shared[filter_index(chain)],
                    chain.name(),
                    spec,
                );
                self.counts.filter += 1;
            }
            Table::Nat => {
                push_rule(&mut self.buffers.service_rules, chain.name(), spec);
                self.counts.nat += 1;
            }
        }
    }

    fn chain(&mut self, chain: ChainName) {
        push_chain_decl(&mut self.buffers.service_decls, chain);
        self.active.insert(chain);
    }

    fn rule(&mut self, chain: ChainName, spec: &str) {
        let buf = &mut self.buffers.service_rules;
        buf.push_str("-A ");
        chain.write_to(buf);
        buf.push(' ');
        buf.push_str(spec);
        buf.push('\n');
        self.counts.nat += 1;
    }
}

fn push_rule(buf: &mut String, chain: &str, spec: &str) {
    buf.push_str("-A ");
    buf.push_str(chain);
    buf.push(' ');
    buf.push_str(spec);
    buf.push('\n');
}

fn push_chain_decl(buf: &mut String, chain: ChainName) {
    buf.push(':');
    chain.write_to(buf);
    buf.push_str(" - [0:0]\n");
}

/// Counts bytes on their way to the writer.
struct Counting<'a> {
    out: &'a mut dyn io::Write,
    bytes: usize,
}

impl Counting<'_> {
    fn write(&mut self, s: &str) -> io::Result<()> {
        self.bytes += s.len();
        self.out.write_all(s.as_bytes())
    }

    /// Writes `chunk` out if it has grown past [`CHUNK`] (or `force`), and empties it.
    fn flush_chunk(&mut self, chunk: &mut String, force: bool) -> io::Result<()> {
        if force || chunk.len() >= CHUNK {
            self.write(chunk)?;
            chunk.clear();
        }
        Ok(())
    }
}

/// One Service port's rules, collected for diffing in a partial render.
#[derive(Debug, Default, PartialEq, Eq)]
struct Collected {
    shared: Vec<(Table, SharedChain, String)>,
    chains: BTreeMap<ChainName, String>,
    counts: RuleCounts,
}

impl Sink for Collected {
    fn shared(&mut self, table: Table, chain: SharedChain, spec: &str) {
        self.shared.push((table, chain, spec.to_owned()));
        match table {
            Table::Filter => self.counts.filter += 1,
            Table::Nat => self.counts.nat += 1,
        }
    }

    fn chain(&mut self, chain: ChainName) {
        self.chains.entry(chain).or_default();
    }

    fn rule(&mut self, chain: ChainName, spec: &str) {
        let text = self.chains.entry(chain).or_default();
        text.push_str("-A ");
        chain.write_to(text);
        text.push(' ');
        text.push_str(spec);
        text.push('\n');
        self.counts.nat += 1;
    }
}

/// What a render wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RenderSummary {
    /// Whether it was a full render (every chain rewritten) rather than a partial one.
    pub full: bool,
    /// Bytes written: the restore payload's size.
    pub bytes: usize,
    /// The total rules kproxy has in each table once the text is applied.
    pub counts: RuleCounts,
    /// The rules this text writes (`-A`/`-I` lines) per table: all of them for a full render, the
    /// changed ones for a partial one.
    pub written: RuleCounts,
}

/// Renders states into iptables-restore input, remembering what it rendered last so the next
/// render can be partial.
///
/// One renderer per IP family. The caller must tell it when a restore failed
/// ([`Renderer::invalidate`]): the next render is then full.
#[derive(Debug)]
pub struct Renderer {
    config: RenderConfig,
    mark: String,
    names: NameCache,
    probabilities: Vec<String>,
    spec: String,
    full: FullBuffers,
    /// Per-service nat chains believed to exist in the kernel.
    active: HashSet<ChainName>,
    /// Chains the last render deleted (`-X`). Until the caller confirms that render by rendering
    /// again without [`invalidate`](Renderer::invalidate), they may still exist: a failed restore
    /// deletes nothing, so `invalidate` puts them back into `active` for the next full render.
    unconfirmed_deletes: Vec<ChainName>,
    /// Whether the last render was applied and can be the base of a partial one.
    baseline: bool,
    large_cluster: bool,
    counts: RuleCounts,
    /// The node's interface addresses, when the caller knows them (the proxier lists them); else
    /// the node's addresses stand in (rendering for a node that is not this machine).
    interface_addresses: Option<Vec<std::net::IpAddr>>,
    /// What the last full render derived from the node; partial renders reuse it (a node change
    /// makes the next render full).
    node: NodeView,
    /// Whether a full render's nat section starts with a chainless `-S` (for iptables-nft).
    list_first: bool,
}

impl Renderer {
    /// A renderer with `config`.
    pub fn new(config: RenderConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let mark = config.masquerade_mark();
        Ok(Self {
            config,
            mark,
            names: NameCache::default(),
            probabilities: Vec::new(),
            spec: String::with_capacity(256),
            full: FullBuffers::default(),
            active: HashSet::new(),
            unconfirmed_deletes: Vec::new(),
            baseline: false,
            large_cluster: false,
            counts: RuleCounts::default(),
            interface_addresses: None,
            node: NodeView::default(),
            list_first: false,
        })
    }

    /// Sets the node's interface addresses (every family; loopback included), which
    /// `nodePortAddresses` CIDRs are matched against. Returns whether the NodePort addresses this
    /// selects differ from those of the last full render: the caller then renders fully.
    pub fn set_interface_addresses(
        &mut self,
        state: &ProxyState,
        addresses: Vec<std::net::IpAddr>,
    ) -> bool {
        self.interface_addresses = Some(addresses);
        let view = NodeView::resolve(
            &self.config,
            state.node(),
            self.interface_addresses.as_deref(),
        );
        view.node_ports != self.node.node_ports
    }

    /// What the last full render derived from the node: the local-traffic detector, the masquerade
    /// decision, the node's addresses and where NodePorts answer.
    pub fn node_view(&self) -> &NodeView {
        &self.node
    }

    /// Starts a full render's nat section with `-S` (list every rule, to nowhere: restore's stdout
    /// is discarded). For iptables-nft's restore: with `--noflush` it records every chain a
    /// command names in a sorted linked list (`nft-cache.c`), so a full load costs commands ×
    /// distinct chains — 31 s for 2,000 Services here. One command without a chain makes it fetch
    /// the whole table once and skip the list; `-S` is such a command and, unlike `-Z`, changes
    /// nothing (other owners' counters stay). Partial renders name few chains and stay as they
    /// are.
    pub fn set_list_first(&mut self, on: bool) {
        self.list_first = on;
    }

    /// Turns the nfacct counting rules on or off (the proxier learns at its first sync whether
    /// the node has nfacct); the next render is full.
    pub fn set_nfacct(&mut self, on: bool) {
        if self.config.nfacct != on {
            self.config.nfacct = on;
            self.baseline = false;
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RenderConfig {
        &self.config
    }

    /// Forget what was applied: the next render is full. Call after a failed restore. Chains the
    /// failed render meant to delete are assumed to still exist, so the full render deletes them.
    pub fn invalidate(&mut self) {
        self.baseline = false;
        self.active.extend(self.unconfirmed_deletes.drain(..));
    }

    /// Adds chains found in the kernel (e.g. by `iptables-save` at start-up) so the next full render
    /// deletes those no longer needed. Names that are not per-service chains are ignored.
    pub fn note_existing_chains<'n>(&mut self, names: impl IntoIterator<Item = &'n str>) {
        for n in names {
            if let Some(chain) = crate::chain_name::parse_chain_name(n) {
                self.active.insert(chain);
            }
        }
    }

    /// The rule counts after the last render.
    pub fn counts(&self) -> RuleCounts {
        self.counts
    }

    /// A full render as one string (for tests and small states; the proxier streams).
    pub fn render_full_string(&mut self, state: &ProxyState) -> String {
        let mut out = Vec::new();
        self.render_full_to(state, &mut out)
            .expect("writing to memory cannot fail");
        String::from_utf8(out).expect("rules are UTF-8")
    }

    /// A render (partial when possible) as one string, with its summary.
    pub fn render_string(
        &mut self,
        state: &ProxyState,
        diff: &StateDiff,
    ) -> (String, RenderSummary) {
        let mut out = Vec::new();
        let summary = self
            .render_to(state, diff, &mut out)
            .expect("writing to memory cannot fail");
        (String::from_utf8(out).expect("rules are UTF-8"), summary)
    }

    /// Renders everything into `out`, streaming. Chains rendered before (or noted as existing) that
    /// the state no longer needs are flushed and deleted in the same restore.
    ///
    /// Layout: the nat table first, each Service's chain declarations just before its rules (a
    /// declaration must precede every jump to the chain), the NodePorts jump last in
    /// KUBE-SERVICES, then the filter table.
    pub fn render_full_to(
        &mut self,
        state: &ProxyState,
        out: &mut dyn io::Write,
    ) -> io::Result<RenderSummary> {
        debug_assert_eq!(state.family(), self.config.family);
        // Rendering again means the previous render was applied (or invalidated).
        self.unconfirmed_deletes.clear();
        // Until this render is applied, nothing is known about the kernel.
        self.baseline = false;
        self.large_cluster = state.total_endpoints() > LARGE_CLUSTER_ENDPOINTS;
        self.node = NodeView::resolve(
            &self.config,
            state.node(),
            self.interface_addresses.as_deref(),
        );
        self.names.begin_pass();
        let mut out = Counting { out, bytes: 0 };
        let b = &mut self.full;
        b.chunk.clear();
        b.filter_shared.iter_mut().for_each(String::clear);

        b.chunk.push_str("*nat\n");
        if self.list_first {
            // See `set_list_first`: makes iptables-nft fetch the whole table once instead of
            // looking every named chain up in a sorted list (quadratic at thousands of Services).
            b.chunk.push_str("-S\n");
        }
        for chain in [SharedChain::NodePorts, SharedChain::Services] {
            let _ = writeln!(b.chunk, ":{} - [0:0]", chain.name());
        }
        let _ = writeln!(b.chunk, ":{KUBE_MARK_MASQ} - [0:0]");
        let _ = writeln!(b.chunk, ":{KUBE_POSTROUTING} - [0:0]");

        let previous_active = std::mem::take(&mut self.active);
        self.active.reserve(previous_active.len());
        let mut counts = RuleCounts::default();
        for (name, entry) in state.service_ports() {
            self.names.trim_endpoints(name, entry);
            let names = self.names.service(name, entry);
            let b = &mut self.full;
            b.service_decls.clear();
            b.service_rules.clear();
            let mut sink = FullSink {
                buffers: b,
                active: &mut self.active,
                counts,
            };
            let mut ctx = Context {
                node: &self.node,
                large_cluster: self.large_cluster,
                probabilities: &mut self.probabilities,
                spec: &mut self.spec,
            };
            render_service(&mut ctx, names, entry, &mut sink);
            counts = sink.counts;
            b.chunk.push_str(&b.service_decls);
            b.chunk.push_str(&b.service_rules);
            out.flush_chunk(&mut b.chunk, false)?;
        }
        self.names.evict_unseen();

        let b = &mut self.full;
        let fixed = write_fixed_nat(&self.config, &self.node, &self.mark, &mut b.chunk);
        counts.nat += fixed;
        // Chains that existed and are no longer used: flush (declare) and delete.
        let mut stale: Vec<ChainName> = previous_active
            .into_iter()
            .filter(|c| !self.active.contains(c))
            .collect();
        stale.sort_unstable();
        for chain in &stale {
            push_chain_decl(&mut b.chunk, *chain);
        }
        for chain in &stale {
            let _ = writeln!(b.chunk, "-X {chain}");
        }
        self.unconfirmed_deletes = stale;
        b.chunk.push_str("COMMIT\n*filter\n");
        counts.filter += write_fixed_filter(&self.config, &self.mark, b);
        b.chunk.push_str("COMMIT\n");
        out.flush_chunk(&mut b.chunk, true)?;

        self.counts = counts;
        self.baseline = true;
        Ok(RenderSummary {
            full: true,
            bytes: out.bytes,
            counts,
            written: counts,
        })
    }

    /// Renders only what `diff` changed, or everything when a partial render is not safe: the diff
    /// asks for a full sync, the node changed, the last render was not applied
    /// ([`invalidate`](Self::invalidate)), or large-cluster mode flips (every comment changes).
    pub fn render_to(
        &mut self,
        state: &ProxyState,
        diff: &StateDiff,
        out: &mut dyn io::Write,
    ) -> io::Result<RenderSummary> {
        let large_cluster = state.total_endpoints() > LARGE_CLUSTER_ENDPOINTS;
        if diff.full || diff.node_changed || !self.baseline || large_cluster != self.large_cluster {
            return self.render_full_to(state, out);
        }
        let (filter, nat) = self.partial(state, diff);
        let mut out = Counting { out, bytes: 0 };
        let written = out.write(&nat).and_then(|()| out.write(&filter));
        if let Err(e) = written {
            self.baseline = false;
            return Err(e);
        }
        let rules = |text: &str| {
            text.lines()
                .filter(|l| l.starts_with("-A ") || l.starts_with("-I "))
                .count()
        };
        Ok(RenderSummary {
            full: false,
            bytes: out.bytes,
            counts: self.counts,
            written: RuleCounts {
                filter: rules(&filter),
                nat: rules(&nat),
            },
        })
    }

    /// Whether [`render_to`](Self::render_to) would render everything for this diff.
    pub fn would_render_full(&self, state: &ProxyState, diff: &StateDiff) -> bool {
        let large_cluster = state.total_endpoints() > LARGE_CLUSTER_ENDPOINTS;
        diff.full || diff.node_changed || !self.baseline || large_cluster != self.large_cluster
    }

    /// Builds the partial payload: (filter section, nat section), each empty when untouched.
    fn partial(&mut self, state: &ProxyState, diff: &StateDiff) -> (String, String) {
        self.unconfirmed_deletes.clear();
        let mut old_shared: Vec<(Table, SharedChain, String)> = Vec::new();
        let mut new_shared: Vec<(Table, SharedChain, String)> = Vec::new();
        let mut old_chains: BTreeMap<ChainName, String> = BTreeMap::new();
        let mut new_chains: BTreeMap<ChainName, String> = BTreeMap::new();
        let mut counts_delta: (isize, isize) = (0, 0);

        let collect = |this: &mut Self, name: &ServicePortName, entry: &ServicePortEntry| {
            let mut c = Collected::default();
            let names = this.names.service(name, entry);
            let mut ctx = Context {
                node: &this.node,
                large_cluster: this.large_cluster,
                probabilities: &mut this.probabilities,
                spec: &mut this.spec,
            };
            render_service(&mut ctx, names, entry, &mut c);
            c
        };
        let changed_old = diff.changed.iter().map(|c| (&c.name, &c.previous));
        let removed_old = diff.removed.iter().map(|c| (&c.name, &c.previous));
        for (name, previous) in changed_old.chain(removed_old) {
            let c = collect(self, name, previous);
            counts_delta.0 -= c.counts.filter as isize;
            counts_delta.1 -= c.counts.nat as isize;
            old_shared.extend(c.shared);
            old_chains.extend(c.chains);
        }
        let current = diff
            .added
            .iter()
            .chain(diff.changed.iter().map(|c| &c.name));
        for name in current {
            let Some(entry) = state.get(name) else {
                continue; // the diff and the state disagree; the caller's bug, nothing to render
            };
            let c = collect(self, name, entry);
            counts_delta.0 += c.counts.filter as isize;
            counts_delta.1 += c.counts.nat as isize;
            new_shared.extend(c.shared);
            new_chains.extend(c.chains);
            self.names.trim_endpoints(name, entry);
        }
        for change in &diff.removed {
            self.names.remove(&change.name);
        }

        // Shared chains: delete what is no longer rendered, add what is new.
        let old_set: BTreeSet<&(Table, SharedChain, String)> = old_shared.iter().collect();
        let new_set: BTreeSet<&(Table, SharedChain, String)> = new_shared.iter().collect();
        let deletes = old_shared.iter().filter(|r| !new_set.contains(r));
        let inserts = new_shared.iter().filter(|r| !old_set.contains(r));

        let mut filter = String::new();
        let mut nat_decls = String::new();
        let mut nat_body = String::new();
        let mut nat_tail = String::new();
        for (table, chain, spec) in deletes {
            let buf = match table {
                Table::Filter => &mut filter,
                Table::Nat => &mut nat_body,
            };
            let _ = writeln!(buf, "-D {} {spec}", chain.name());
        }
        // Per-service chains: rewrite those whose rules changed, delete those that are gone.
        for (chain, rules) in &new_chains {
            if old_chains.get(chain) != Some(rules) || !self.active.contains(chain) {
                push_chain_decl(&mut nat_decls, *chain);
                nat_body.push_str(rules);
                self.active.insert(*chain);
            }
        }
        for chain in old_chains.keys() {
            if !new_chains.contains_key(chain) {
                push_chain_decl(&mut nat_decls, *chain);
                let _ = writeln!(nat_tail, "-X {chain}");
                self.active.remove(chain);
                self.unconfirmed_deletes.push(*chain);
            }
        }
        for (table, chain, spec) in inserts {
            match (table, chain) {
                // KUBE-SERVICES ends with the NodePorts jump, which must stay last: insert at the top.
                (Table::Nat, SharedChain::Services) => {
                    let _ = writeln!(nat_body, "-I {} 1 {spec}", chain.name());
                }
                (Table::Nat, _) => {
                    let _ = writeln!(nat_body, "-A {} {spec}", chain.name());
                }
                (Table::Filter, _) => {
                    let _ = writeln!(filter, "-A {} {spec}", chain.name());
                }
            }
        }

        if !filter.is_empty() {
            filter.insert_str(0, "*filter\n");
            filter.push_str("COMMIT\n");
        }
        let mut nat = String::new();
        if !nat_decls.is_empty() || !nat_body.is_empty() || !nat_tail.is_empty() {
            nat.reserve(nat_decls.len() + nat_body.len() + nat_tail.len() + 16);
            nat.push_str("*nat\n");
            nat.push_str(&nat_decls);
            nat.push_str(&nat_body);
            nat.push_str(&nat_tail);
            nat.push_str("COMMIT\n");
        }
        self.counts = RuleCounts {
            filter: (self.counts.filter as isize + counts_delta.0) as usize,
            nat: (self.counts.nat as isize + counts_delta.1) as usize,
        };
        (filter, nat)
    }
}

/// The nat rules that do not depend on Services: the NodePorts jump (last in KUBE-SERVICES),
/// KUBE-MARK-MASQ and KUBE-POSTROUTING. Returns the number of rules.
fn write_fixed_nat(config: &RenderConfig, node: &NodeView, mark: &str, out: &mut String) -> usize {
    let mut rules = 0;
    let services = SharedChain::Services.name();
    let node_ports = SharedChain::NodePorts.name();
    let jump_comment = "-m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\"";
    match &node.node_ports {
        NodePortAddresses::All => {
            let exclude = match config.family {
                proxy_core::IpFamily::V6 => " ! -d ::1/128",
                proxy_core::IpFamily::V4 if !config.localhost_node_ports => " ! -d 127.0.0.0/8",
                proxy_core::IpFamily::V4 => "",
            };
            let _ = writeln!(
                out,
                "-A {services} {jump_comment} -m addrtype --dst-type LOCAL{exclude} -j {node_ports}"
            );
            rules += 1;
        }
        NodePortAddresses::Only(ips) => {
            for ip in ips.iter().filter(|ip| config.family.contains(ip)) {
                if ip.is_loopback() && !config.localhost_node_ports_active() {
                    continue;
                }
                let _ = writeln!(out, "-A {services} {jump_comment} -d {ip} -j {node_ports}");
                rules += 1;
            }
        }
    }
    let _ = writeln!(
        out,
        "-A {KUBE_MARK_MASQ} -j MARK --or-mark {mark}\n\
         -A {KUBE_POSTROUTING} -m mark ! --mark {mark}/{mark} -j RETURN\n\
         -A {KUBE_POSTROUTING} -j MARK --xor-mark {mark}\n\
         -A {KUBE_POSTROUTING} -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE{}",
        if config.masquerade_random_fully {
            " --random-fully"
        } else {
            ""
        }
    );
    rules + 4
}

/// The filter section's body: chain declarations, the Services' filter rules (buffered during the
/// nat pass) and the fixed rules (KUBE-FORWARD, the localnet guard). Returns the fixed rule count.
fn write_fixed_filter(config: &RenderConfig, mark: &str, b: &mut FullBuffers) -> usize {
    let out = &mut b.chunk;
    let guard = config.localhost_node_ports_active();
    for chain in SharedChain::FILTER {
        let _ = writeln!(out, ":{} - [0:0]", chain.name());
    }
    let _ = writeln!(out, ":{KUBE_FORWARD} - [0:0]");
    if guard {
        let _ = writeln!(out, ":{KUBE_FIREWALL} - [0:0]");
    }
    for rules in &b.filter_shared {
        out.push_str(rules);
    }
    let mut fixed = 0;
    if guard {
        // CVE-2020-8558: route_localnet would let other hosts reach 127.0.0.1 services.
        let _ = writeln!(
            out,
            "-A {KUBE_FIREWALL} -m comment --comment \"block incoming localnet connections\" \
             -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"
        );
        fixed += 1;
    }
    if !config.conntrack_tcp_liberal {
        let count = if config.nfacct {
            format!(" -m nfacct --nfacct-name {CT_STATE_INVALID_NFACCT}")
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "-A {KUBE_FORWARD} -m conntrack --ctstate INVALID{count} -j DROP"
        );
        fixed += 1;
    }
    let _ = writeln!(
        out,
        "-A {KUBE_FORWARD} -m comment --comment \"kubernetes forwarding rules\" \
         -m mark --mark {mark}/{mark} -j ACCEPT"
    );
    let _ = writeln!(
        out,
        "-A {KUBE_FORWARD} -m comment --comment \"kubernetes forwarding conntrack rule\" \
         -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    );
    fixed + 2
}
