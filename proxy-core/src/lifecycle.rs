//! The lifecycle every mode goes through, owned once: what the runner does around a mode's
//! [`Proxier::sync`] so that no mode has to do it again (and none can forget it).
//!
//! - **A failed sync makes the next one full.** The diff that failed is gone (the state has
//!   moved on), so only a full sync can be sure to program what it named. The mode may keep its
//!   own flag as well; this one does not depend on it.
//! - **UDP conntrack cleanup after each successful sync**, for every mode: the mode says which
//!   entries its sync left stale ([`Proxier::stale_udp_flows`]), the lifecycle dumps the family's
//!   UDP entries through a [`StaleFlowCleaner`] and deletes those. Without it a UDP client that
//!   keeps its socket (a resolver, a metrics agent) keeps its old NAT binding: a removed endpoint
//!   would black-hole it.
//!
//! [`ManagedProxier`] wraps a mode's proxier and is itself a [`Proxier`], so the runner drives
//! the wrapped and the bare kind the same way.

use std::fmt;
use std::time::Duration;

use crate::datapath::Flow;
use crate::diff::StateDiff;
use crate::mode::ProxyMode;
use crate::proxier::{Proxier, ProxierError, SyncReport};
use crate::state::ProxyState;
use crate::IpFamily;

/// Deletes the UDP conntrack entries of a family that a judge picks; returns how many. Failures
/// are the cleaner's to log: the rules are right, the next full sync judges again.
/// `kproxy-netlink` implements it over ctnetlink; tests use a list.
pub trait StaleFlowCleaner: Send + fmt::Debug {
    /// Lists the UDP entries of `family`, deletes those `is_stale` picks.
    fn delete_stale_udp(&mut self, family: IpFamily, is_stale: &dyn Fn(&Flow) -> bool) -> usize;
}

/// A mode's proxier inside the lifecycle (see the module documentation).
#[derive(Debug)]
pub struct ManagedProxier {
    proxier: Box<dyn Proxier>,
    family: IpFamily,
    needs_full: bool,
    conntrack: Option<Box<dyn StaleFlowCleaner>>,
    deleted_flows: u64,
}

impl ManagedProxier {
    /// `proxier` for `family`, its first sync full, without conntrack cleanup.
    pub fn new(proxier: Box<dyn Proxier>, family: IpFamily) -> Self {
        Self {
            proxier,
            family,
            needs_full: true,
            conntrack: None,
            deleted_flows: 0,
        }
    }

    /// Deletes stale UDP conntrack entries through `cleaner` after each successful sync.
    pub fn with_conntrack(mut self, cleaner: Box<dyn StaleFlowCleaner>) -> Self {
        self.conntrack = Some(cleaner);
        self
    }

    /// Whether the next sync will be full whatever its diff says (the first one, and after a
    /// failure).
    pub fn needs_full(&self) -> bool {
        self.needs_full
    }

    /// How many conntrack entries the lifecycle deleted so far.
    pub fn deleted_flows(&self) -> u64 {
        self.deleted_flows
    }

    /// The wrapped proxier.
    pub fn inner(&self) -> &dyn Proxier {
        self.proxier.as_ref()
    }
}

impl Proxier for ManagedProxier {
    fn mode(&self) -> ProxyMode {
        self.proxier.mode()
    }

    fn sync(&mut self, state: &ProxyState, diff: &StateDiff) -> Result<SyncReport, ProxierError> {
        let forced;
        let diff = if self.needs_full && !diff.full {
            let mut full = diff.clone();
            full.full = true;
            forced = full;
            &forced
        } else {
            diff
        };
        let report = match self.proxier.sync(state, diff) {
            Ok(report) => report,
            Err(e) => {
                self.needs_full = true;
                return Err(e);
            }
        };
        self.needs_full = false;
        if let Some(cleaner) = self.conntrack.as_mut() {
            if let Some(judge) = self.proxier.stale_udp_flows(state, diff, report.full) {
                let deleted = cleaner.delete_stale_udp(self.family, &*judge);
                if deleted > 0 {
                    tracing::debug!(deleted, "deleted stale UDP conntrack entries");
                }
                self.deleted_flows += deleted as u64;
            }
        }
        Ok(report)
    }

    fn housekeeping_interval(&self) -> Option<Duration> {
        self.proxier.housekeeping_interval()
    }

    fn housekeeping(&mut self) -> Result<(), ProxierError> {
        self.proxier.housekeeping()
    }

    fn shutdown(&mut self) -> Result<(), ProxierError> {
        self.proxier.shutdown()
    }

    fn cleanup(&mut self) -> Result<(), ProxierError> {
        self.needs_full = true;
        self.proxier.cleanup()
    }

    fn stale_udp_flows<'a>(
        &'a self,
        state: &'a ProxyState,
        diff: &'a StateDiff,
        full: bool,
    ) -> Option<crate::proxier::StaleUdpJudge<'a>> {
        self.proxier.stale_udp_flows(state, diff, full)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::datapath::IPPROTO_UDP;
    use crate::proxier::ErrorKind;

    /// Answers syncs from a script and records the diffs' `full`.
    #[derive(Debug)]
    struct Scripted {
        outcomes: Vec<bool>,
        fulls: Arc<Mutex<Vec<bool>>>,
    }

    impl Proxier for Scripted {
        fn mode(&self) -> ProxyMode {
            ProxyMode::Iptables
        }
        fn sync(&mut self, _: &ProxyState, diff: &StateDiff) -> Result<SyncReport, ProxierError> {
            self.fulls.lock().unwrap().push(diff.full);
            if self.outcomes.is_empty() || self.outcomes.remove(0) {
                Ok(SyncReport {
                    full: diff.full,
                    ..SyncReport::default()
                })
            } else {
                Err(ProxierError::new(ProxyMode::Iptables, "scripted", "no"))
            }
        }
        fn cleanup(&mut self) -> Result<(), ProxierError> {
            Ok(())
        }
        fn stale_udp_flows<'a>(
            &'a self,
            _: &'a ProxyState,
            _: &'a StateDiff,
            full: bool,
        ) -> Option<crate::proxier::StaleUdpJudge<'a>> {
            // Every flow to port 53 is stale after a full sync.
            full.then(|| {
                Box::new(|f: &Flow| f.orig_dst.port() == 53) as crate::proxier::StaleUdpJudge<'a>
            })
        }
    }

    /// A conntrack table as a list.
    #[derive(Debug, Clone, Default)]
    struct Table(Arc<Mutex<Vec<Flow>>>);

    impl StaleFlowCleaner for Table {
        fn delete_stale_udp(&mut self, _: IpFamily, is_stale: &dyn Fn(&Flow) -> bool) -> usize {
            let mut flows = self.0.lock().unwrap();
            let before = flows.len();
            flows.retain(|f| !is_stale(f));
            before - flows.len()
        }
    }

    fn flow(port: u16) -> Flow {
        let a: SocketAddr = "10.0.0.1:40000".parse().unwrap();
        let d: SocketAddr = format!("10.96.0.10:{port}").parse().unwrap();
        Flow {
            protocol: IPPROTO_UDP,
            orig_src: a,
            orig_dst: d,
            reply_src: "10.244.1.5:53".parse().unwrap(),
            zone: 0,
        }
    }

    #[test]
    fn a_failed_sync_makes_the_next_full_and_cleanup_follows_success_only() {
        let fulls = Arc::new(Mutex::new(Vec::new()));
        let table = Table::default();
        table.0.lock().unwrap().extend([flow(53), flow(80)]);
        let proxier = Scripted {
            outcomes: vec![true, false, true, true],
            fulls: fulls.clone(),
        };
        let mut managed = ManagedProxier::new(Box::new(proxier), IpFamily::V4)
            .with_conntrack(Box::new(table.clone()));
        let state = ProxyState::new(IpFamily::V4, crate::NodeInfo::named("n"));
        let partial = StateDiff::default();
        // The first sync is full even with a partial diff, and cleans.
        managed.sync(&state, &partial).unwrap();
        assert_eq!(table.0.lock().unwrap().len(), 1);
        table.0.lock().unwrap().push(flow(53));
        // A partial sync that fails: no cleanup, and the next one is full.
        let e = managed.sync(&state, &partial).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Retry);
        assert!(managed.needs_full());
        assert_eq!(table.0.lock().unwrap().len(), 2);
        managed.sync(&state, &partial).unwrap();
        assert_eq!(
            table.0.lock().unwrap().len(),
            1,
            "the forced full sync cleans"
        );
        managed.sync(&state, &partial).unwrap();
        assert_eq!(*fulls.lock().unwrap(), [true, false, true, false]);
        assert_eq!(managed.deleted_flows(), 2);
    }
}
