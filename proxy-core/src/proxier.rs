//! The [`Proxier`] trait: what every proxy mode implements, and what the sync runner may ask of it.
//!
//! The runner (the daemon's sync thread, `kproxy sync`) reaches a mode only through this trait and
//! the factory that builds it, so a new mode is a new crate and one factory arm, never a change
//! to the runner.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use crate::diff::StateDiff;
use crate::mode::ProxyMode;
use crate::state::ProxyState;

/// How many objects of one kind a sync wrote, or a mode owns: rules of one iptables table, IPVS
/// virtual servers, ipset entries, …
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectCount {
    /// What was counted, `<datapath>/<kind>`: `iptables/filter`, `iptables/nat`,
    /// `ipvs/virtual-servers`, `ipset/entries`. Metrics map `iptables/<table>` to kube-proxy's
    /// `sync_proxy_rules_iptables_*{table}`, everything else to a kproxy metric labelled `kind`.
    pub kind: &'static str,
    /// How many.
    pub count: usize,
}

impl ObjectCount {
    /// Rules of one iptables table (`filter`, `nat`, `mangle`).
    pub fn iptables(table: &'static str, count: usize) -> Self {
        let kind = match table {
            "filter" => "iptables/filter",
            "nat" => "iptables/nat",
            "mangle" => "iptables/mangle",
            _ => "iptables/other",
        };
        Self { kind, count }
    }

    /// The iptables table this counts rules of, if it counts iptables rules.
    pub fn iptables_table(&self) -> Option<&'static str> {
        self.kind.strip_prefix("iptables/")
    }
}

/// What one sync did, for logs and metrics. Built by the mode, read by the runner.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Whether the backend rewrote everything (true) or only what the diff named (false). Feeds
    /// `sync_full_proxy_rules_duration_seconds` vs `sync_partial_proxy_rules_duration_seconds`.
    pub full: bool,
    /// Objects written *by this sync*, per kind (`sync_proxy_rules_iptables_last{table}`). A partial
    /// sync that changed one Service reports a handful of rules, not the whole table.
    pub written: Vec<ObjectCount>,
    /// Objects the mode owns on the node after this sync, per kind
    /// (`sync_proxy_rules_iptables_total{table}`).
    pub owned: Vec<ObjectCount>,
    /// Kernel counters read at this sync, by name (iptables mode's nfacct objects:
    /// `ct_state_invalid_dropped_pkts`, `localhost_nps_accepted_pkts`), as absolute values.
    pub counters: Vec<(&'static str, u64)>,
}

impl SyncReport {
    /// The sum of `written`, for a log line.
    pub fn total_written(&self) -> usize {
        self.written.iter().map(|c| c.count).sum()
    }
}

/// Whether a failed operation is worth retrying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The datapath may be out of step: retry soon, with a full sync (the proxier forces one
    /// itself). A restore that failed, a netlink call the kernel refused this time.
    Retry,
    /// Retrying cannot help: a tool or kernel feature the mode needs is missing, or the settings
    /// cannot work. The daemon stops with an error instead of looping.
    Fatal,
}

/// A sync, housekeeping or cleanup that failed, with the mode and the operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("{mode} proxier: {operation} failed")]
pub struct ProxierError {
    /// The proxy mode.
    pub mode: ProxyMode,
    /// Whether to retry.
    pub kind: ErrorKind,
    /// What was being done, e.g. `iptables-restore of the nat table`.
    pub operation: String,
    /// The underlying error.
    #[source]
    pub source: Box<dyn StdError + Send + Sync + 'static>,
}

impl ProxierError {
    /// A retryable failure of `operation` in `mode`.
    pub fn new(
        mode: ProxyMode,
        operation: impl fmt::Display,
        source: impl Into<Box<dyn StdError + Send + Sync + 'static>>,
    ) -> Self {
        Self {
            mode,
            kind: ErrorKind::Retry,
            operation: operation.to_string(),
            source: source.into(),
        }
    }

    /// A failure retrying cannot fix.
    pub fn fatal(
        mode: ProxyMode,
        operation: impl fmt::Display,
        source: impl Into<Box<dyn StdError + Send + Sync + 'static>>,
    ) -> Self {
        Self {
            kind: ErrorKind::Fatal,
            ..Self::new(mode, operation, source)
        }
    }

    /// Whether the runner should stop rather than retry.
    pub fn is_fatal(&self) -> bool {
        self.kind == ErrorKind::Fatal
    }
}

/// A proxy mode: programs the datapath of this node for one IP family.
///
/// # Lifecycle
///
/// 1. A factory builds the proxier for a mode, a family and the settings (and, for modes that serve
///    sockets, a tokio runtime handle to spawn them on). Building touches nothing on the node.
/// 2. The runner calls [`sync`](Proxier::sync) with the state after [`ProxyState::apply`] and the
///    diff it returned, on the bounded-frequency schedule.
/// 3. Between syncs, every [`housekeeping_interval`](Proxier::housekeeping_interval), the runner
///    calls [`housekeeping`](Proxier::housekeeping) (IPVS deletes drained real servers there).
/// 4. On SIGTERM the runner calls [`shutdown`](Proxier::shutdown): stop what the mode runs (tasks,
///    sockets) and leave the datapath in place, so traffic keeps flowing across a restart.
/// 5. [`cleanup`](Proxier::cleanup) removes what the mode created; `kproxy --cleanup` calls the
///    factory's per-mode cleanup, which needs no running proxier.
///
/// # The sync contract
///
/// - **State is the truth, the diff is a hint.** After a successful sync the datapath matches
///   `state`. A backend may program only what `diff` names, unless `diff.full` or
///   `diff.node_changed` is set. Node-derived settings (addresses, pod CIDRs, labels) are read from
///   `state.node()` at sync time; a Node update never needs a new proxier.
/// - **Failure means "not applied".** On a [`Retry`](ErrorKind::Retry) error the runner retries;
///   the backend must remember that its datapath may be out of step and do a full sync next time,
///   whatever the next diff says (the diff that failed is gone: the state has already moved on).
/// - **Atomic where the datapath allows.** A failed sync must not leave traffic half-programmed
///   where the datapath offers atomicity (iptables-restore per table, nft transactions).
/// - **No flush on start.** The first sync replaces what a previous run left in place without a
///   moment with no rules, so a restart does not cut traffic.
///
/// The trait is object safe so the binary can pick a mode at run time (`--proxy-mode`).
pub trait Proxier: Send + fmt::Debug {
    /// The mode.
    fn mode(&self) -> ProxyMode;

    /// Programs the datapath so it matches `state`, using `diff` to limit the work.
    fn sync(&mut self, state: &ProxyState, diff: &StateDiff) -> Result<SyncReport, ProxierError>;

    /// How often [`housekeeping`](Proxier::housekeeping) wants to run; `None` (the default) for
    /// modes with nothing to do between syncs.
    fn housekeeping_interval(&self) -> Option<Duration> {
        None
    }

    /// Periodic work between syncs (IPVS: delete real servers whose connections have drained).
    /// Runs on the sync thread, never at the same time as a sync.
    fn housekeeping(&mut self) -> Result<(), ProxierError> {
        Ok(())
    }

    /// Stops what the mode runs besides the datapath (listeners, tasks) before the process exits.
    /// The datapath stays as it is.
    fn shutdown(&mut self) -> Result<(), ProxierError> {
        Ok(())
    }

    /// Removes everything this mode created on the node, and nothing else.
    fn cleanup(&mut self) -> Result<(), ProxierError>;

    /// Which UDP conntrack entries the sync that just succeeded left stale, as a judge of one
    /// entry at a time (a dump is judged as it streams); `None` when none can be. The lifecycle
    /// ([`crate::lifecycle::ManagedProxier`]) asks after every successful sync, with the
    /// report's `full`, and deletes what the judge picks: one cleanup for every mode.
    ///
    /// The default is upstream's rule for modes that DNAT UDP (iptables, IPVS, nftables):
    /// [`StaleFlows`](crate::datapath::StaleFlows) — the diff's cleanups, and on a full sync
    /// every UDP flow to a Service that does not go to one of its serving endpoints. A mode that
    /// steers UDP another way (userspace: REDIRECT to its own listeners) judges by its own rule.
    fn stale_udp_flows<'a>(
        &'a self,
        state: &'a ProxyState,
        diff: &'a StateDiff,
        full: bool,
    ) -> Option<StaleUdpJudge<'a>> {
        if !full && diff.conntrack.is_empty() {
            return None;
        }
        let policy = crate::datapath::StaleFlows::new(state, &diff.conntrack, full);
        if policy.is_empty() {
            return None;
        }
        Some(Box::new(move |f| policy.is_stale(f)))
    }
}

/// A judge of conntrack entries: `true` for a stale one ([`Proxier::stale_udp_flows`]).
pub type StaleUdpJudge<'a> = Box<dyn Fn(&crate::datapath::Flow) -> bool + 'a>;
