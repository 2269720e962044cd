//! The address-level view of a diff, for modes that program addresses and set elements rather
//! than per-Service rules: IPVS's `kube-ipvs0` addresses and ipsets, nftables' maps.
//!
//! [`StateDiff`] says which Service *ports* changed. An address is shared: one cluster IP serves
//! every port of its Service, one external IP may serve several Services. So [`AddressTracker`]
//! keeps a reference count per service address and per [`Frontend`] `(address, protocol, port)`,
//! and turns each diff into an [`AddressDiff`]: addresses whose count rose from zero or fell to
//! zero, frontends that appeared, disappeared, or whose Service port changed (new endpoints,
//! policy, affinity). An update costs O(ports the diff touches), never O(cluster); a full diff is
//! recomputed from the state.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use crate::diff::StateDiff;
use crate::model::Protocol;
use crate::state::{ProxyState, ServicePortEntry};

/// Where a Service port answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrontendAddress {
    /// A service address: the cluster IP, an external IP or a load-balancer IP.
    Service(IpAddr),
    /// The node port, on every NodePort address of the node.
    NodePort,
}

/// One `(address, protocol, port)` a Service port answers on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    /// The address.
    pub address: FrontendAddress,
    /// The protocol.
    pub protocol: Protocol,
    /// The port (the node port for [`FrontendAddress::NodePort`]).
    pub port: u16,
}

/// What one diff changed at the address level. Every list is sorted and without duplicates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressDiff {
    /// Computed from the whole state (first sync, periodic resync, node change): reconcile
    /// against what the datapath holds rather than trusting the lists alone.
    pub full: bool,
    /// Service addresses no Service port used before, and one uses now.
    pub addresses_added: Vec<IpAddr>,
    /// Service addresses no Service port uses any more.
    pub addresses_removed: Vec<IpAddr>,
    /// Frontends that appeared.
    pub frontends_added: Vec<Frontend>,
    /// Frontends that disappeared.
    pub frontends_removed: Vec<Frontend>,
    /// Frontends present before and after whose Service port changed (endpoints, policies,
    /// affinity): their servers or map entries need rewriting. On a full diff, every frontend
    /// present before and after.
    pub frontends_changed: Vec<Frontend>,
}

impl AddressDiff {
    /// Whether nothing changed at the address level.
    pub fn is_empty(&self) -> bool {
        !self.full
            && self.addresses_added.is_empty()
            && self.addresses_removed.is_empty()
            && self.frontends_added.is_empty()
            && self.frontends_removed.is_empty()
            && self.frontends_changed.is_empty()
    }
}

/// Reference-counted service addresses and frontends of a state, kept in step with its diffs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressTracker {
    addresses: HashMap<IpAddr, u32>,
    frontends: HashMap<Frontend, u32>,
}

/// The distinct service addresses of one port entry.
fn entry_addresses(entry: &ServicePortEntry) -> impl Iterator<Item = IpAddr> + '_ {
    let mut seen: Vec<IpAddr> = Vec::new();
    entry.service.service_ips().filter(move |ip| {
        if seen.contains(ip) {
            false
        } else {
            seen.push(*ip);
            true
        }
    })
}

/// The distinct frontends of one port entry.
fn entry_frontends(entry: &ServicePortEntry) -> impl Iterator<Item = Frontend> + '_ {
    let svc = &entry.service;
    let protocol = svc.protocol;
    entry_addresses(entry)
        .map(move |ip| Frontend {
            address: FrontendAddress::Service(ip),
            protocol,
            port: svc.port,
        })
        .chain(svc.node_port.map(|port| Frontend {
            address: FrontendAddress::NodePort,
            protocol,
            port,
        }))
}

impl AddressTracker {
    /// An empty tracker (nothing programmed yet).
    pub fn new() -> Self {
        Self::default()
    }

    /// The tracker for `state` as it is, built from scratch in O(Service ports).
    pub fn from_state(state: &ProxyState) -> Self {
        let mut t = Self::default();
        for (_, entry) in state.service_ports() {
            t.count(entry, 1, &mut Touched::default());
        }
        t
    }

    /// Every service address in use, in no particular order.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.addresses.keys().copied()
    }

    /// Every frontend in use, in no particular order.
    pub fn frontends(&self) -> impl Iterator<Item = Frontend> + '_ {
        self.frontends.keys().copied()
    }

    /// How many Service ports use `address`.
    pub fn address_refs(&self, address: IpAddr) -> u32 {
        self.addresses.get(&address).copied().unwrap_or(0)
    }

    /// Follows `diff`, already applied to `state`, and says what changed at the address level.
    pub fn update(&mut self, state: &ProxyState, diff: &StateDiff) -> AddressDiff {
        if diff.full || diff.node_changed {
            return self.replace(Self::from_state(state));
        }
        let mut touched = Touched::default();
        let mut changed_ports: BTreeSet<Frontend> = BTreeSet::new();
        for change in &diff.removed {
            self.count(&change.previous, -1, &mut touched);
        }
        for change in &diff.changed {
            self.count(&change.previous, -1, &mut touched);
            if let Some(entry) = state.get(&change.name) {
                self.count(entry, 1, &mut touched);
                changed_ports.extend(entry_frontends(entry));
            }
        }
        for name in &diff.added {
            if let Some(entry) = state.get(name) {
                self.count(entry, 1, &mut touched);
            }
        }
        let mut out = AddressDiff::default();
        for (ip, before) in touched.addresses {
            match (before > 0, self.address_refs(ip) > 0) {
                (false, true) => out.addresses_added.push(ip),
                (true, false) => out.addresses_removed.push(ip),
                _ => {}
            }
        }
        for (f, before) in touched.frontends {
            let after = self.frontends.get(&f).copied().unwrap_or(0);
            match (before > 0, after > 0) {
                (false, true) => out.frontends_added.push(f),
                (true, false) => out.frontends_removed.push(f),
                (true, true) if changed_ports.contains(&f) => out.frontends_changed.push(f),
                _ => {}
            }
        }
        out.sort();
        out
    }

    /// Replaces the tracker with `fresh` and reports the difference as a full diff.
    fn replace(&mut self, fresh: Self) -> AddressDiff {
        let mut out = AddressDiff {
            full: true,
            ..AddressDiff::default()
        };
        out.addresses_added = fresh
            .addresses()
            .filter(|a| !self.addresses.contains_key(a))
            .collect();
        out.addresses_removed = self
            .addresses()
            .filter(|a| !fresh.addresses.contains_key(a))
            .collect();
        for f in fresh.frontends() {
            if self.frontends.contains_key(&f) {
                out.frontends_changed.push(f);
            } else {
                out.frontends_added.push(f);
            }
        }
        out.frontends_removed = self
            .frontends()
            .filter(|f| !fresh.frontends.contains_key(f))
            .collect();
        *self = fresh;
        out.sort();
        out
    }

    /// Adds (`delta` 1) or removes (-1) one entry's references, noting each key's count before
    /// its first touch.
    fn count(&mut self, entry: &ServicePortEntry, delta: i32, touched: &mut Touched) {
        for ip in entry_addresses(entry) {
            let n = self.addresses.entry(ip).or_insert(0);
            touched.addresses.entry(ip).or_insert(*n);
            *n = n
                .checked_add_signed(delta)
                .expect("address reference count");
            if *n == 0 {
                self.addresses.remove(&ip);
            }
        }
        for f in entry_frontends(entry) {
            let n = self.frontends.entry(f).or_insert(0);
            touched.frontends.entry(f).or_insert(*n);
            *n = n
                .checked_add_signed(delta)
                .expect("frontend reference count");
            if *n == 0 {
                self.frontends.remove(&f);
            }
        }
    }
}

impl AddressDiff {
    fn sort(&mut self) {
        self.addresses_added.sort_unstable();
        self.addresses_removed.sort_unstable();
        self.frontends_added.sort_unstable();
        self.frontends_removed.sort_unstable();
        self.frontends_changed.sort_unstable();
    }
}

/// Keys touched by one update, with their count before it.
#[derive(Default)]
struct Touched {
    addresses: HashMap<IpAddr, u32>,
    frontends: HashMap<Frontend, u32>,
}
