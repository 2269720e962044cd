//! Chain names computed once per Service port and endpoint, and kept between renders.

use std::collections::HashMap;
use std::fmt::Write;
use std::net::SocketAddr;

use proxy_core::{ServicePortEntry, ServicePortName};

use crate::chain_name::{ChainKind, ChainName, NameHash};

/// The names of one Service port: its text form and the hashes of its chains.
#[derive(Debug)]
pub(crate) struct ServiceNames {
    /// `ns/name:port`, as in comments and hash input.
    pub(crate) text: String,
    /// The hash shared by its SVC, SVL, EXT and FW chains.
    pub(crate) hash: NameHash,
    /// Endpoint chain hashes, sorted by address (the order of the state's endpoint lists).
    endpoints: Vec<(SocketAddr, NameHash)>,
    /// The render generation that last used this entry.
    seen: u64,
}

impl ServiceNames {
    /// The chain of `kind` for this Service port.
    pub(crate) fn chain(&self, kind: ChainKind) -> ChainName {
        ChainName {
            kind,
            hash: self.hash,
        }
    }
}

/// Caches chain names: hashing 200,000 endpoint names with SHA-256 on every full resync would be a
/// noticeable share of the render (upstream caches them for the same reason).
#[derive(Debug, Default)]
pub(crate) struct NameCache {
    services: HashMap<ServicePortName, ServiceNames>,
    generation: u64,
    scratch: String,
}

impl NameCache {
    /// Starts a render pass; entries not touched by the pass can be evicted with [`Self::evict_unseen`].
    pub(crate) fn begin_pass(&mut self) {
        self.generation += 1;
    }

    /// The names of `name`, with endpoint chain names for every endpoint of `entry` (plus any still
    /// cached from earlier entries, until [`Self::trim_endpoints`]).
    pub(crate) fn service(
        &mut self,
        name: &ServicePortName,
        entry: &ServicePortEntry,
    ) -> &ServiceNames {
        let generation = self.generation;
        let protocol = name.protocol.as_lower_str();
        let names = self.services.entry(name.clone()).or_insert_with(|| {
            let text = name.to_string();
            let hash = NameHash::of(&[text.as_bytes(), protocol.as_bytes()]);
            ServiceNames {
                text,
                hash,
                endpoints: Vec::new(),
                seen: generation,
            }
        });
        names.seen = generation;
        // The common case, a resync: the cached names are exactly the entry's endpoints, in order.
        let aligned = names.endpoints.len() == entry.endpoints.len()
            && names
                .endpoints
                .iter()
                .zip(entry.endpoints.iter())
                .all(|((addr, _), ep)| *addr == ep.socket_addr());
        if aligned {
            return names;
        }
        for ep in entry.endpoints.iter() {
            let addr = ep.socket_addr();
            if let Err(at) = names.endpoints.binary_search_by(|(a, _)| a.cmp(&addr)) {
                self.scratch.clear();
                let _ = write!(self.scratch, "{addr}");
                let hash = NameHash::of(&[
                    names.text.as_bytes(),
                    protocol.as_bytes(),
                    self.scratch.as_bytes(),
                ]);
                names.endpoints.insert(at, (addr, hash));
            }
        }
        names
    }

    /// Drops cached endpoint names of `name` that `entry` no longer has.
    pub(crate) fn trim_endpoints(&mut self, name: &ServicePortName, entry: &ServicePortEntry) {
        if let Some(names) = self.services.get_mut(name) {
            if names.endpoints.len() != entry.endpoints.len() {
                names.endpoints.retain(|(addr, _)| {
                    entry
                        .endpoints
                        .binary_search_by(|e| e.socket_addr().cmp(addr))
                        .is_ok()
                });
            }
        }
    }

    /// Forgets a Service port.
    pub(crate) fn remove(&mut self, name: &ServicePortName) {
        self.services.remove(name);
    }

    /// Forgets every Service port not used since [`Self::begin_pass`].
    pub(crate) fn evict_unseen(&mut self) {
        let generation = self.generation;
        self.services.retain(|_, n| n.seen == generation);
    }
}

impl ServiceNames {
    /// The endpoint chain for `addr`, the `index`-th endpoint of the entry being rendered; the
    /// address must have been passed to [`NameCache::service`]. The index is a hint: when the cache
    /// is aligned with the entry (the usual case) it finds the name without a search.
    pub(crate) fn endpoint_chain(&self, index: usize, addr: SocketAddr) -> ChainName {
        let i = match self.endpoints.get(index) {
            Some((a, _)) if *a == addr => index,
            _ => self
                .endpoints
                .binary_search_by(|(a, _)| a.cmp(&addr))
                .expect("endpoint names are computed before rendering"),
        };
        ChainName {
            kind: ChainKind::Endpoint,
            hash: self.endpoints[i].1,
        }
    }
}
