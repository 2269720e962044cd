//! Plans as nf_tables commands: the one place that turns planned sets, chains, rules and
//! elements into messages of a [`Transaction`], for a full load and for a Service port's change
//! alike.

use std::collections::{BTreeMap, HashMap};

use kproxy_netlink::nftables::batch::Transaction;
use kproxy_netlink::nftables::objects::{self, datatype, set_flags, Element, SetSpec, SetUserData};
use proxy_core::IpFamily;

use crate::names::TABLE;
use crate::plan::{BasePlan, MapKey, PlannedChain, PlannedElement, PlannedSet, PortPlan, SetKind};
use crate::rule::nfproto;

/// Elements per message: an attribute's length is 16 bits, so a list must stay under 64 KiB
/// (an IPv6 element is about 80 bytes).
const ELEMENTS_PER_MESSAGE: usize = 500;

/// The table's comment, as upstream's.
pub const TABLE_COMMENT: &str = "rules for kube-proxy";

/// Writes commands into a transaction, numbering new sets as `nft` does (1, 2, … in creation
/// order) so lookups can name them by id as well.
#[derive(Debug)]
pub struct Writer<'a> {
    family: IpFamily,
    tx: &'a mut Transaction,
    set_ids: HashMap<String, u32>,
    /// Counts of what was written, by kind.
    pub written: Written,
}

/// What a transaction writes, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// Chains created.
    pub chains: usize,
    /// Rules added.
    pub rules: usize,
    /// Elements added or deleted.
    pub elements: usize,
    /// Sets created or deleted.
    pub sets: usize,
    /// Chains flushed or deleted.
    pub chain_removals: usize,
}

impl<'a> Writer<'a> {
    /// A writer for `family` into `tx`.
    pub fn new(family: IpFamily, tx: &'a mut Transaction) -> Self {
        Self {
            family,
            tx,
            set_ids: HashMap::new(),
            written: Written::default(),
        }
    }

    fn f(&self) -> u8 {
        nfproto(self.family)
    }

    /// Creates the table, or — with `replace` — replaces whatever table of that name exists by
    /// an empty one in the same transaction (create, delete, create: the first create makes the
    /// delete valid when there is none). The old table's rules stay in force until the whole
    /// transaction commits.
    pub fn table(&mut self, replace: bool) {
        let f = self.f();
        if replace {
            self.tx.push(objects::new_table(f, TABLE, None));
            self.tx.push(objects::delete_table(f, TABLE));
        }
        self.tx
            .push(objects::new_table(f, TABLE, Some(TABLE_COMMENT)));
    }

    /// Creates a set or map.
    pub fn set(&mut self, set: &PlannedSet) {
        let id = self.set_ids.len() as u32 + 1;
        self.set_ids.insert(set.name.clone(), id);
        let addr = match self.family {
            IpFamily::V4 => (datatype::IPV4_ADDR, 4),
            IpFamily::V6 => (datatype::IPV6_ADDR, 16),
        };
        let tuple =
            datatype::concat(&[addr, (datatype::INET_PROTO, 1), (datatype::INET_SERVICE, 2)]);
        let port = datatype::concat(&[(datatype::INET_PROTO, 1), (datatype::INET_SERVICE, 2)]);
        let verdict = Some((datatype::VERDICT, 0));
        let comment = set.comment;
        let (flags, key, data, timeout_ms, user_data) = match set.kind {
            SetKind::Addresses => (0, addr, None, None, SetUserData::Addresses { comment }),
            SetKind::AddressPortMap => (
                set_flags::MAP,
                tuple,
                verdict,
                None,
                SetUserData::ConcatVerdictMap { comment },
            ),
            SetKind::PortMap => (
                set_flags::MAP,
                port,
                verdict,
                None,
                SetUserData::ConcatVerdictMap { comment },
            ),
            SetKind::EndpointRanges => (
                set_flags::MAP | set_flags::INTERVAL,
                (datatype::INTEGER, 4),
                Some(datatype::concat(&[addr, (datatype::INET_SERVICE, 2)])),
                None,
                SetUserData::RandomRangeAddressPortMap {
                    ipv6: self.family == IpFamily::V6,
                    comment,
                },
            ),
            SetKind::AddressPairs => (
                0,
                datatype::concat(&[addr, addr]),
                None,
                None,
                SetUserData::Concat { comment },
            ),
            SetKind::Affinity(seconds) => (
                set_flags::TIMEOUT | set_flags::EVAL,
                addr,
                None,
                Some(u64::from(seconds) * 1000),
                SetUserData::Addresses { comment },
            ),
        };
        let spec = SetSpec {
            table: TABLE,
            name: &set.name,
            flags,
            key,
            data,
            timeout_ms,
            user_data,
            id,
        };
        self.tx.push(objects::new_set(self.f(), &spec));
        self.written.sets += 1;
    }

    /// Deletes a set.
    pub fn delete_set(&mut self, name: &str) {
        self.tx.push(objects::delete_set(self.f(), TABLE, name));
        self.written.sets += 1;
    }

    /// Creates a named counter.
    pub fn counter(&mut self, name: &str) {
        self.tx.push(objects::new_counter(self.f(), TABLE, name));
    }

    /// Deletes a named counter.
    pub fn delete_counter(&mut self, name: &str) {
        self.tx.push(objects::delete_counter(self.f(), TABLE, name));
    }

    /// Creates a chain (empty).
    pub fn chain(&mut self, chain: &PlannedChain) {
        self.tx.push(objects::new_chain(
            self.f(),
            TABLE,
            &chain.name,
            chain.base.as_ref(),
        ));
        self.written.chains += 1;
    }

    /// Appends a chain's rules.
    pub fn rules(&mut self, chain: &PlannedChain) {
        for rule in &chain.rules {
            let exprs = rule.exprs(self.family, &self.set_ids);
            self.tx.push(objects::new_rule(
                self.f(),
                TABLE,
                &chain.name,
                &exprs,
                rule.comment,
            ));
            self.written.rules += 1;
        }
    }

    /// Empties a chain.
    pub fn flush_chain(&mut self, name: &str) {
        self.tx.push(objects::flush_chain(self.f(), TABLE, name));
        self.written.chain_removals += 1;
    }

    /// Deletes an empty, unreferenced chain.
    pub fn delete_chain(&mut self, name: &str) {
        self.tx.push(objects::delete_chain(self.f(), TABLE, name));
        self.written.chain_removals += 1;
    }

    /// Adds elements, one message per set (several for long lists).
    pub fn add_elements<'e>(&mut self, elements: impl IntoIterator<Item = &'e PlannedElement>) {
        for (set, list) in group(elements) {
            let id = self.set_ids.get(set).copied().unwrap_or(0);
            for chunk in list.chunks(ELEMENTS_PER_MESSAGE) {
                self.written.elements += chunk.len();
                self.tx.push_elements(true, self.f(), TABLE, set, id, chunk);
            }
        }
    }

    /// Deletes elements by key, one message per set (several for long lists).
    pub fn delete_elements<'e>(&mut self, elements: impl IntoIterator<Item = &'e PlannedElement>) {
        for (set, list) in group(elements) {
            for chunk in list.chunks(ELEMENTS_PER_MESSAGE) {
                self.written.elements += chunk.len();
                self.tx.push_elements(false, self.f(), TABLE, set, 0, chunk);
            }
        }
    }

    /// A whole table from scratch: the base plan and every port's, in the order `render` prints
    /// them (so sets get the same ids as `nft -f` of the rendering gives them).
    pub fn full_load<'p>(
        &mut self,
        base: &BasePlan,
        ports: impl Iterator<Item = &'p PortPlan> + Clone,
        replace: bool,
    ) {
        self.table(replace);
        for s in &base.sets {
            self.set(s);
        }
        for p in ports.clone() {
            for s in &p.sets {
                self.set(s);
            }
        }
        for p in ports.clone() {
            if let Some(c) = &p.counter {
                self.counter(c);
            }
        }
        for c in &base.chains {
            self.chain(c);
        }
        for p in ports.clone() {
            for c in &p.chains {
                self.chain(c);
            }
        }
        for c in &base.chains {
            self.rules(c);
        }
        for p in ports.clone() {
            for c in &p.chains {
                self.rules(c);
            }
        }
        // An element several ports want goes in once; the first in order wins.
        let mut seen = ahash::AHashSet::with_capacity(base.elements.len() + 16 * 1024);
        self.add_elements(
            base.elements
                .iter()
                .chain(ports.flat_map(|p| p.elements.iter()))
                .filter(|e| seen.insert((e.set, &e.key))),
        );
    }
}

/// Elements grouped by set (sets in name order, elements in the order given), ranges as the
/// kernel holds them: the start with the target, and an interval-end element; a set with
/// ranges is sorted by key, an end before a start at the same key, as `nft` sends them.
fn group<'e>(
    elements: impl IntoIterator<Item = &'e PlannedElement>,
) -> BTreeMap<&'static str, Vec<Element>> {
    let mut out: BTreeMap<&'static str, Vec<Element>> = BTreeMap::new();
    let mut ranged = std::collections::BTreeSet::new();
    for e in elements {
        let list = out.entry(e.set).or_default();
        match e.key {
            MapKey::Range(start, end) => {
                ranged.insert(e.set);
                list.push(Element {
                    key: start.to_be_bytes().to_vec(),
                    verdict: None,
                    data: e.target.map(|(ip, port)| target_bytes(&ip, port)),
                    interval_end: false,
                });
                list.push(Element {
                    key: end.to_be_bytes().to_vec(),
                    verdict: None,
                    data: None,
                    interval_end: true,
                });
            }
            _ => list.push(Element {
                key: e.key.bytes(),
                verdict: e.verdict.clone(),
                data: None,
                interval_end: false,
            }),
        }
    }
    for set in ranged {
        if let Some(list) = out.get_mut(set) {
            list.sort_by(|a, b| (&a.key, !a.interval_end).cmp(&(&b.key, !b.interval_end)));
        }
    }
    out
}

/// A DNAT target's bytes: the address, then the port padded to 4 bytes.
fn target_bytes(ip: &std::net::IpAddr, port: u16) -> Vec<u8> {
    let mut v = crate::rule::ip_bytes(ip);
    v.extend_from_slice(&port.to_be_bytes());
    v.extend_from_slice(&[0, 0]);
    v
}
