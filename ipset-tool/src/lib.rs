//! ipset over netlink, without the `ipset` tool: the library IPVS mode builds its sets with.
//!
//! - [`types`]: what a set is ([`SetSpec`]: name, [`SetType`], family, sizes, comment and
//!   timeout extensions) and what goes in it ([`Entry`], one variant per set type's shape).
//! - [`client`]: [`IpsetClient`], the typed commands — protocol negotiation, create, destroy,
//!   flush, rename, swap, add, del, test, list — with batched adds and deletes.
//! - [`sync`]: keeping a set equal to a desired member set with the fewest adds and deletes
//!   ([`sync_set`]), and replacing it atomically ([`replace_set`]: fill a temporary set, swap,
//!   destroy).
//! - [`error`]: kernel errors turned into [`IpsetError`]s that say which set and which entry.
//!
//! It knows nothing of Services: the IPVS mode decides what goes in which set.
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![deny(rustdoc::broken_intra_doc_links)]

pub mod client;
pub mod error;
pub mod sync;
pub mod types;

pub use client::{IpsetClient, ListedEntry, ListedSet};
pub use error::IpsetError;
pub use sync::{replace_set, sync_set, SetDiff};
pub use types::{Entry, EntryOptions, PortProtocol, SetFamily, SetSpec, SetType};
