//! [`StateDiff`]: what one sync changes, for backends that program only the difference.

use std::net::IpAddr;

use crate::model::{Protocol, ServicePortName};
use crate::state::ServicePortEntry;

/// A Service port that changed or went away, with the entry as it was last applied (backends need
/// the old endpoints for graceful termination and the old addresses to clean up).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortChange {
    /// The Service port.
    pub name: ServicePortName,
    /// Its entry before this diff.
    pub previous: ServicePortEntry,
}

/// Which flows a conntrack cleanup targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConntrackTarget {
    /// Flows whose original destination is this service address and port.
    ServiceIp {
        /// A cluster, external or load-balancer IP.
        ip: IpAddr,
        /// The Service port.
        port: u16,
    },
    /// Flows whose original destination port is this node port (on any node address).
    NodePort {
        /// The node port.
        port: u16,
    },
}

/// Conntrack entries to delete after a sync, so UDP clients do not keep talking to a stale endpoint
/// (or keep being rejected) through an entry that outlives the rules that created it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConntrackCleanup {
    /// The protocol of the flows (UDP: TCP flows die with their endpoint on their own).
    pub protocol: Protocol,
    /// The original destination.
    pub target: ConntrackTarget,
    /// Only flows translated to this endpoint address; `None` for every flow to the target.
    pub endpoint: Option<IpAddr>,
}

/// The difference between the last applied [`ProxyState`](crate::ProxyState) and the new one.
///
/// Lists are sorted by Service port name and disjoint. The state after the diff is the state the
/// backend is given alongside it: for `added` and `changed` names, look the new entry up there.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateDiff {
    /// The caller asks for a full resync: rewrite everything, not just the listed ports. Set on the
    /// first diff of a state, and by the sync runner for the periodic `syncPeriod` resync.
    pub full: bool,
    /// The node's own information changed (addresses, labels): node-wide rules may need rewriting.
    pub node_changed: bool,
    /// Service ports that did not exist before.
    pub added: Vec<ServicePortName>,
    /// Service ports whose service or endpoints changed.
    pub changed: Vec<PortChange>,
    /// Service ports that no longer exist.
    pub removed: Vec<PortChange>,
    /// Stale conntrack entries to delete, sorted and unique.
    pub conntrack: Vec<ConntrackCleanup>,
}

impl StateDiff {
    /// Whether the diff changes nothing and asks for nothing.
    pub fn is_empty(&self) -> bool {
        !self.full
            && !self.node_changed
            && self.added.is_empty()
            && self.changed.is_empty()
            && self.removed.is_empty()
            && self.conntrack.is_empty()
    }

    /// How many Service ports the diff touches.
    pub fn touched_ports(&self) -> usize {
        self.added.len() + self.changed.len() + self.removed.len()
    }
}
