//! [`IptablesProxier`]: applies rendered rules to the node with iptables-restore.

use std::time::{Duration, Instant};

use proxy_core::{
    IpFamily, ObjectCount, Proxier, ProxierError, ProxyMode, ProxyState, StateDiff, SyncReport,
};

use crate::chain_name::is_service_chain;
use crate::jumps::jump_rules;
use crate::render::{Renderer, RuleCounts, CT_STATE_INVALID_NFACCT, LOCALHOST_NODEPORTS_NFACCT};
use iptables_tool::{ExecError, Footprint, IptablesOps};
use kproxy_netlink::nfacct::NfacctOps;

/// The chain whose disappearance means someone flushed the tables under us.
pub const CANARY_CHAIN: &str = "KUBE-PROXY-CANARY";

/// The tables that hold a canary, as upstream keeps them.
pub const CANARY_TABLES: [&str; 3] = ["mangle", "nat", "filter"];

/// Chains kproxy creates besides the per-service ones; `cleanup` removes exactly these and the
/// per-service chains (see [`is_service_chain`]).
pub const OWNED_CHAINS: &[&str] = &[
    "KUBE-SERVICES",
    "KUBE-NODEPORTS",
    "KUBE-EXTERNAL-SERVICES",
    "KUBE-PROXY-FIREWALL",
    "KUBE-FORWARD",
    "KUBE-FIREWALL",
    "KUBE-MARK-MASQ",
    "KUBE-POSTROUTING",
    CANARY_CHAIN,
];

const MODE: ProxyMode = ProxyMode::Iptables;

/// Whether `chain` is one kproxy owns.
pub fn is_owned_chain(chain: &str) -> bool {
    OWNED_CHAINS.contains(&chain) || is_service_chain(chain)
}

/// The iptables chains iptables mode owns: its fixed chains and the per-Service ones in the nat
/// and filter tables, the canary in mangle too. What a handover to another mode removes.
pub const FOOTPRINT: Footprint = Footprint {
    mode: "iptables",
    owns: |table, chain| match table {
        "nat" | "filter" => is_owned_chain(chain),
        "mangle" => chain == CANARY_CHAIN,
        _ => false,
    },
};

/// The jumps iptables mode writes with these settings (`localhost_node_ports`: the IPv4
/// localhost NodePort guard): what a handover to iptables mode keeps.
pub fn jumps(localhost_node_ports_guard: bool) -> Vec<iptables_tool::Jump> {
    jump_rules(localhost_node_ports_guard)
}

/// Applies the iptables ruleset for one IP family.
///
/// The first sync is full; later ones are partial (only what the diff names) unless a full one is
/// needed: the diff asks for it (periodic resync), the previous sync failed, or a canary chain has
/// gone (something flushed the tables). Every full sync repairs what was tampered with: it
/// restores the jumps from the built-in chains and the canaries, and deletes per-service chains
/// kproxy owns but did not write. Nothing is flushed at start: the first full restore
/// replaces kproxy's chains atomically per table, so a restart never opens a gap in service
/// traffic; chains left by a previous run that are no longer needed are deleted in the same
/// restore.
#[derive(Debug)]
pub struct IptablesProxier {
    renderer: Renderer,
    iptables: Box<dyn IptablesOps>,
    /// nfacct, when the node has it: the counter objects are created at the first sync and the
    /// rules count into them; `None` once the node turned out not to support it.
    nfacct: Option<Box<dyn NfacctOps>>,
    nfacct_ready: bool,
    canary_interval: Duration,
    last_canary_check: Option<Instant>,
    manage_route_localnet: bool,
    /// When the kernel's nat chains were last read to find stale ones (`None`: never).
    last_chain_scan: Option<Instant>,
    /// How often a full sync in large-cluster mode reads the nat table to find stale chains
    /// (`iptables-save` of a 20,000-Service table takes seconds); smaller tables are read on
    /// every full sync. Upstream's rule; the daemon sets it to `syncPeriod`.
    chain_scan_interval: Duration,
    buf: Vec<u8>,
    /// Whether to match `nodePortAddresses` against this machine's interface addresses at each
    /// sync (on for a real node; off where the node is not this machine, e.g. in-process tests).
    read_interfaces: bool,
    /// From how many Service ports a full sync advises a faster way to program the node (set when
    /// iptables-nft was chosen automatically); `None`: never.
    scale_advice_from: Option<usize>,
    /// Whether that advice was given (it is given once per proxier).
    scale_advised: bool,
}

impl IptablesProxier {
    /// A proxier rendering with `renderer` and applying with `iptables`. UDP conntrack cleanup
    /// after its syncs is the lifecycle's (`proxy_core::ManagedProxier`), with the default rule.
    pub fn new(renderer: Renderer, iptables: Box<dyn IptablesOps>) -> Self {
        Self {
            renderer,
            iptables,
            nfacct: None,
            nfacct_ready: false,
            canary_interval: Duration::from_secs(10),
            last_canary_check: None,
            manage_route_localnet: true,
            last_chain_scan: None,
            chain_scan_interval: Duration::from_secs(30),
            buf: Vec::new(),
            read_interfaces: false,
            scale_advice_from: None,
            scale_advised: false,
        }
    }

    /// Whether full restores should start with a chainless `-S`: on for iptables-nft (see
    /// [`Renderer::set_list_first`]).
    pub fn with_list_first(mut self, on: bool) -> Self {
        self.renderer.set_list_first(on);
        self
    }

    /// Warns once, at a full sync over at least `service_ports` Service ports, that iptables-nft
    /// takes tens of seconds per full sync at that scale and that iptables-legacy or the nftables
    /// mode load faster. The factory sets it when `--iptables-variant auto` picked nft: switching
    /// variant on its own could split the node's rules between two backends, so kproxy advises
    /// rather than decides.
    pub fn with_scale_advice(mut self, service_ports: usize) -> Self {
        self.scale_advice_from = Some(service_ports);
        self
    }

    /// Whether the scale advice of [`with_scale_advice`](Self::with_scale_advice) was given.
    pub fn scale_advised(&self) -> bool {
        self.scale_advised
    }

    /// Count dropped INVALID packets and accepted localhost NodePort packets with these nfacct
    /// objects, as upstream does: created at the first sync; where that fails, or the kernel
    /// refuses `-m nfacct`, the rules are written without them.
    pub fn with_nfacct(mut self, nfacct: Box<dyn NfacctOps>) -> Self {
        self.nfacct = Some(nfacct);
        self
    }

    /// Creates the nfacct objects once; turns the counting rules on when they exist.
    fn prepare_nfacct(&mut self) {
        if self.nfacct_ready {
            return;
        }
        let Some(ops) = self.nfacct.as_mut() else {
            return;
        };
        let made = [CT_STATE_INVALID_NFACCT, LOCALHOST_NODEPORTS_NFACCT]
            .iter()
            .try_for_each(|name| ops.ensure(name));
        match made {
            Ok(()) => {
                self.nfacct_ready = true;
                self.renderer.set_nfacct(true);
            }
            Err(e) => {
                tracing::warn!("nfacct counters disabled: {e}");
                self.nfacct = None;
            }
        }
    }

    /// The nfacct counters, for the metrics.
    fn nfacct_counters(&mut self) -> Vec<(&'static str, u64)> {
        let (true, Some(ops)) = (self.nfacct_ready, self.nfacct.as_mut()) else {
            return Vec::new();
        };
        [CT_STATE_INVALID_NFACCT, LOCALHOST_NODEPORTS_NFACCT]
            .into_iter()
            .filter_map(|name| match ops.counters(name) {
                Ok((packets, _)) => Some((name, packets)),
                Err(e) => {
                    tracing::debug!("cannot read nfacct counter: {e}");
                    None
                }
            })
            .collect()
    }

    /// How often, at most, a full sync of a large cluster reads the nat table to delete chains
    /// kproxy owns but did not write (default 30 s, upstream's `syncPeriod`).
    pub fn with_chain_scan_interval(mut self, interval: Duration) -> Self {
        self.chain_scan_interval = interval;
        self
    }

    /// Match `nodePortAddresses` CIDRs against this machine's interface addresses, read at each
    /// sync (upstream does the same); a change of the selected addresses forces a full sync.
    /// Without it, the node's own addresses stand in.
    pub fn with_interface_addresses(mut self, read: bool) -> Self {
        self.read_interfaces = read;
        self
    }

    /// Reads the interface addresses when `nodePortAddresses` needs them; `true` when the selected
    /// NodePort addresses changed since the last full sync.
    fn node_port_addresses_changed(&mut self, state: &ProxyState) -> bool {
        let config = self.renderer.config();
        if !self.read_interfaces || config.node_port_addresses.matches_all(config.family) {
            return false;
        }
        match kproxy_netlink::interface_addresses() {
            Ok(addrs) => self.renderer.set_interface_addresses(state, addrs),
            Err(e) => {
                tracing::warn!("cannot list interface addresses for nodePortAddresses: {e}");
                false
            }
        }
    }

    /// How often a partial sync first checks that the canary chain still exists (default 10 s).
    pub fn with_canary_interval(mut self, interval: Duration) -> Self {
        self.canary_interval = interval;
        self
    }

    /// Whether to set `net.ipv4.conf.all.route_localnet=1` when localhost NodePorts are on
    /// (default true; off for tests that must not touch the host's sysctls).
    pub fn with_route_localnet(mut self, manage: bool) -> Self {
        self.manage_route_localnet = manage;
        self
    }

    fn err(
        operation: impl std::fmt::Display,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> ProxierError {
        ProxierError::new(MODE, operation, source)
    }

    /// An error from running iptables: fatal when the binary cannot be started at all (it is not
    /// installed; retrying will not install it), retryable otherwise.
    fn exec_err(operation: impl std::fmt::Display, error: ExecError) -> ProxierError {
        if matches!(error, ExecError::Spawn { .. }) {
            ProxierError::fatal(MODE, operation, error)
        } else {
            ProxierError::new(MODE, operation, error)
        }
    }

    /// Learns the per-service chains in the kernel, so the next full render deletes those kproxy
    /// owns and no longer wants: a previous run's at start; later, chains written behind its back
    /// (by hand, or by a predecessor's restore that landed late in a rolling restart). Done on
    /// every full sync, except in large-cluster mode at most once per `chain_scan_interval`.
    fn scan_existing_chains(&mut self, state: &ProxyState) -> Result<(), ProxierError> {
        let large = state.total_endpoints() > crate::render::LARGE_CLUSTER_ENDPOINTS;
        let due = self
            .last_chain_scan
            .is_none_or(|t| !large || t.elapsed() >= self.chain_scan_interval);
        if !due {
            return Ok(());
        }
        let saved = self
            .iptables
            .save("nat")
            .map_err(|e| Self::exec_err("iptables-save of the nat table", e))?;
        let names = saved
            .lines()
            .filter_map(|l| l.strip_prefix(':'))
            .filter_map(|l| l.split_whitespace().next());
        self.renderer.note_existing_chains(names);
        self.last_chain_scan = Some(Instant::now());
        Ok(())
    }

    /// Makes sure every jump from a built-in chain exists, on every full sync: a restore of
    /// kproxy's own chains never touches built-in chains, so a flushed `nat OUTPUT` would
    /// otherwise stay without its jump until a restart (the shared `iptables_tool::ensure_jumps`).
    fn ensure_jumps(&mut self) -> Result<(), ProxierError> {
        let jumps = jump_rules(self.renderer.config().localhost_node_ports_active());
        let added = iptables_tool::ensure_jumps(self.iptables.as_mut(), &jumps).map_err(|e| {
            if e.is_spawn() {
                ProxierError::fatal(MODE, "ensuring the jumps from the built-in chains", e)
            } else {
                ProxierError::new(MODE, "ensuring the jumps from the built-in chains", e)
            }
        })?;
        if !added.is_empty() {
            tracing::warn!(
                "restored {} missing jump(s) from the built-in chains: {}",
                added.len(),
                iptables_tool::jump::describe(&added)
            );
        }
        Ok(())
    }

    fn canary_exists(&mut self, table: &str) -> Result<bool, ProxierError> {
        self.iptables
            .run(&["-t", table, "-S", CANARY_CHAIN])
            .map_err(|e| Self::exec_err(format!("checking the canary chain in {table}"), e))
    }

    /// Creates the canary chain in each of mangle, nat and filter where it is missing.
    fn ensure_canaries(&mut self) -> Result<(), ProxierError> {
        for table in CANARY_TABLES {
            if !self.canary_exists(table)? {
                self.iptables
                    .run(&["-t", table, "-N", CANARY_CHAIN])
                    .map_err(|e| {
                        Self::exec_err(format!("creating the canary chain in {table}"), e)
                    })?;
            }
        }
        self.last_canary_check = Some(Instant::now());
        Ok(())
    }

    /// Whether a canary check is due and a canary (mangle, nat or filter) is gone: someone
    /// flushed or deleted tables behind kproxy's back.
    fn canary_lost(&mut self) -> Result<bool, ProxierError> {
        let due = self
            .last_canary_check
            .is_none_or(|t| t.elapsed() >= self.canary_interval);
        if !due {
            return Ok(false);
        }
        self.last_canary_check = Some(Instant::now());
        for table in CANARY_TABLES {
            if !self.canary_exists(table)? {
                tracing::warn!(
                    "the {CANARY_CHAIN} chain is gone from {table}: tables were flushed; \
                     resyncing fully"
                );
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn set_route_localnet(&self) {
        if !self.manage_route_localnet || !self.renderer.config().localhost_node_ports_active() {
            return;
        }
        let path = "/proc/sys/net/ipv4/conf/all/route_localnet";
        if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
            return;
        }
        if let Err(e) = std::fs::write(path, "1") {
            tracing::warn!("cannot set {path} (localhost NodePorts will not work): {e}");
        }
    }

    /// A few lines of `text` around `line`, for an error message.
    fn excerpt(text: &str, line: usize) -> String {
        let from = line.saturating_sub(3);
        text.lines()
            .enumerate()
            .skip(from)
            .take(5)
            .map(|(i, l)| format!("{:>6}{} {l}", i + 1, if i + 1 == line { ">" } else { ":" }))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn restore_failed(&mut self, what: &str, error: ExecError, text: Option<&str>) -> ProxierError {
        self.renderer.invalidate();
        if self.nfacct_ready
            && matches!(&error, ExecError::Failed { stderr, .. } if stderr.contains("nfacct"))
        {
            // The objects exist but iptables cannot match on them (no xt_nfacct): count nothing
            // rather than program nothing.
            tracing::warn!("iptables refuses -m nfacct here; writing the rules without counters");
            self.nfacct_ready = false;
            self.nfacct = None;
            self.renderer.set_nfacct(false);
        }
        let excerpt = match (&error, text) {
            (ExecError::Failed { line: Some(n), .. }, Some(text)) => {
                format!("\n{}", Self::excerpt(text, *n))
            }
            _ => String::new(),
        };
        Self::exec_err(format!("iptables-restore of the {what}{excerpt}"), error)
    }

    fn full_sync(&mut self, state: &ProxyState) -> Result<SyncReport, ProxierError> {
        self.set_route_localnet();
        self.prepare_nfacct();
        self.scan_existing_chains(state)?;
        let renderer = &mut self.renderer;
        let mut summary = None;
        let result = self.iptables.restore(&mut |w| {
            summary = Some(renderer.render_full_to(state, w)?);
            Ok(())
        });
        if let Err(e) = result {
            // The text was streamed; render it again for the excerpt (errors are rare).
            let text = matches!(e, ExecError::Failed { line: Some(_), .. })
                .then(|| self.renderer.render_full_string(state));
            self.renderer.invalidate();
            return Err(self.restore_failed("full ruleset", e, text.as_deref()));
        }
        self.ensure_jumps()?;
        self.ensure_canaries()?;
        self.advise_on_scale(state);
        let counts = summary.map(|s| s.counts).unwrap_or_default();
        Ok(report(true, counts, counts))
    }

    fn advise_on_scale(&mut self, state: &ProxyState) {
        match self.scale_advice_from {
            Some(from) if !self.scale_advised && state.len() >= from => {
                self.scale_advised = true;
                tracing::warn!(
                    service_ports = state.len(),
                    "iptables-nft (picked by --iptables-variant auto) takes tens of seconds per \
                     full sync at this many Service ports; --iptables-variant legacy loads them \
                     about 4x faster, if nothing else on this node uses iptables-nft, and \
                     --proxy-mode nftables loads 20,000 Services in about 3 s and applies an \
                     endpoint change in under a millisecond (see docs/iptables.md, \
                     docs/nftables.md)"
                );
            }
            _ => {}
        }
    }

    /// Removes every chain and jump rule kproxy owns in the filter, nat and mangle tables, and
    /// nothing else: other tools' chains and rules stay.
    pub fn cleanup_tables(iptables: &mut dyn IptablesOps) -> Result<(), ProxierError> {
        iptables_tool::remove_leftovers(iptables, None, &[FOOTPRINT])
            .map(drop)
            .map_err(|e| {
                if matches!(e.source, ExecError::Spawn { .. }) {
                    ProxierError::fatal(MODE, "removing kproxy's chains", e)
                } else {
                    ProxierError::new(MODE, "removing kproxy's chains", e)
                }
            })
    }
}

/// Removes kproxy's iptables chains and jumps from both variants (nft, legacy) and both families,
/// wherever the binaries exist; what other tools own stays. Needs no running proxier
/// (`kproxy --cleanup`). Returns what it cleaned, e.g. `iptables-nft (IPv4)`.
pub fn cleanup_node() -> Result<Vec<String>, ProxierError> {
    use iptables_tool::{IptablesCmd, Variant};
    let mut cleaned = Vec::new();
    let mut failures = Vec::new();
    for family in [IpFamily::V4, IpFamily::V6] {
        for variant in [Variant::Nft, Variant::Legacy] {
            let mut cmd = IptablesCmd::new(variant, family);
            // A variant that cannot even list the nat table has nothing of ours: its binaries
            // are missing, or the kernel lacks its backend (iptables-nft on a kernel without
            // nf_tables, as in user-mode-linux).
            if let Err(e) = cmd.save("nat") {
                tracing::debug!("skipping iptables-{variant} ({family}): {e}");
                continue;
            }
            match IptablesProxier::cleanup_tables(&mut cmd) {
                Ok(()) => cleaned.push(format!("iptables-{variant} ({family})")),
                // A variant or family that is not installed has nothing to clean.
                Err(e) if e.is_fatal() => {
                    tracing::debug!("skipping iptables-{variant} ({family}): {e}")
                }
                Err(e) => failures.push(format!(
                    "iptables-{variant} ({family}): {}",
                    error_chain(&e)
                )),
            }
        }
    }
    // The nfacct objects the rules counted into (their rules are gone now).
    if let Ok(mut nfacct) = kproxy_netlink::nfacct::NetlinkNfacct::open() {
        use kproxy_netlink::nfacct::NfacctOps;
        for name in [CT_STATE_INVALID_NFACCT, LOCALHOST_NODEPORTS_NFACCT] {
            match nfacct.delete(name) {
                Ok(true) => cleaned.push(format!("nfacct object {name}")),
                Ok(false) => {}
                // Still counted into by rules that are not kproxy's (a kube-proxy beside it).
                Err(e) if e.source.errno() == Some(16) => {
                    tracing::debug!("leaving nfacct object {name}: in use")
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
    }
    if failures.is_empty() {
        Ok(cleaned)
    } else {
        Err(ProxierError::new(MODE, "cleanup", failures.join("\n")))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The report of a sync that wrote `written` and leaves `owned` rules in place.
fn report(full: bool, written: RuleCounts, owned: RuleCounts) -> SyncReport {
    let per_table = |c: RuleCounts| {
        vec![
            ObjectCount::iptables("filter", c.filter),
            ObjectCount::iptables("nat", c.nat),
        ]
    };
    SyncReport {
        full,
        written: per_table(written),
        owned: per_table(owned),
        counters: Vec::new(),
    }
}

impl Proxier for IptablesProxier {
    fn mode(&self) -> ProxyMode {
        MODE
    }

    fn sync(&mut self, state: &ProxyState, diff: &StateDiff) -> Result<SyncReport, ProxierError> {
        let addresses_changed = self.node_port_addresses_changed(state);
        // A failed sync invalidated the renderer's baseline, so the next one renders in full
        // (the lifecycle asks for that too: `proxy_core::ManagedProxier`).
        let full = addresses_changed
            || diff.full
            || self.renderer.would_render_full(state, diff)
            || self.canary_lost()?;
        let report = if full {
            self.full_sync(state)?
        } else {
            self.buf.clear();
            let summary = self
                .renderer
                .render_to(state, diff, &mut self.buf)
                .map_err(|e| {
                    self.renderer.invalidate();
                    Self::err("rendering the partial update", e)
                })?;
            if summary.bytes > 0 {
                let buf = std::mem::take(&mut self.buf);
                let result = self.iptables.restore(&mut |w| w.write_all(&buf));
                if let Err(e) = result {
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    self.buf = buf;
                    return Err(self.restore_failed("partial update", e, Some(&text)));
                }
                self.buf = buf;
            }
            report(false, summary.written, summary.counts)
        };
        let mut report = report;
        report.counters = self.nfacct_counters();
        Ok(report)
    }

    fn cleanup(&mut self) -> Result<(), ProxierError> {
        Self::cleanup_tables(self.iptables.as_mut())?;
        self.renderer.invalidate();
        self.last_chain_scan = None;
        Ok(())
    }
}
