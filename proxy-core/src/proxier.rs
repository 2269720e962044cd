//! The [`Proxier`] trait: what every proxy mode implements.

use std::error::Error as StdError;
use std::fmt;

use crate::diff::StateDiff;
use crate::state::ProxyState;

/// How a sync went, for logs and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Whether the backend rewrote everything (true) or only what the diff named (false). Feeds
    /// `sync_full_proxy_rules_duration_seconds` vs `sync_partial_proxy_rules_duration_seconds`.
    pub full: bool,
    /// How many rules, servers or sets the backend wrote; backend-defined, for logs.
    pub objects_written: usize,
}

/// A sync or cleanup that failed, with the backend and the operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("{backend} proxier: {operation} failed")]
pub struct ProxierError {
    /// The proxy mode, e.g. `iptables`.
    pub backend: &'static str,
    /// What was being done, e.g. `iptables-restore of the nat table`.
    pub operation: String,
    /// The underlying error.
    #[source]
    pub source: Box<dyn StdError + Send + Sync + 'static>,
}

impl ProxierError {
    /// Wraps `source` with the backend and operation.
    pub fn new(
        backend: &'static str,
        operation: impl fmt::Display,
        source: impl Into<Box<dyn StdError + Send + Sync + 'static>>,
    ) -> Self {
        Self {
            backend,
            operation: operation.to_string(),
            source: source.into(),
        }
    }
}

/// A proxy mode: programs the datapath of this node for one IP family.
///
/// The sync runner calls [`sync`](Proxier::sync) with the state after [`ProxyState::apply`] and the
/// diff it returned. The contract:
///
/// - **State is the truth, the diff is a hint.** After a successful sync the datapath matches
///   `state`. A backend may program only what `diff` names, unless `diff.full` is set.
/// - **Failure means "not applied".** On error the runner retries; the backend must remember that
///   its datapath may be out of step and do a full sync next time, whatever the next diff says
///   (the diff that failed is gone: the state has already moved on).
/// - **Atomic where the datapath allows.** A failed sync must not leave traffic half-programmed
///   where the datapath offers atomicity (iptables-restore per table, nft transactions).
/// - **No flush on start.** The first sync replaces what a previous run left in place without a
///   moment with no rules, so a restart does not cut traffic.
///
/// The trait is object safe so the binary can pick a mode at run time (`--proxy-mode`).
pub trait Proxier: Send {
    /// The mode's name as `--proxy-mode` spells it.
    fn mode(&self) -> &'static str;

    /// Programs the datapath so it matches `state`, using `diff` to limit the work.
    fn sync(&mut self, state: &ProxyState, diff: &StateDiff) -> Result<SyncReport, ProxierError>;

    /// Removes everything this mode created on the node, and nothing else.
    fn cleanup(&mut self) -> Result<(), ProxierError>;
}
