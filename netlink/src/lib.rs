//! kproxy's netlink plumbing, shared by every proxy mode and built on the rust-netlink crates
//! (`netlink-sys` sockets, `netlink-packet-core` framing, `netlink-packet-netfilter` messages).
//!
//! [`conntrack`]: listing and deleting conntrack entries over ctnetlink (every mode that NATs UDP
//! cleans stale entries after a sync; which entries is decided by
//! [`proxy_core::datapath::conntrack_policy`]). Message families no crate has join this crate as
//! modules written on `netlink-packet-core`'s traits, with byte-exact tests in both directions:
//! [`ipset`], [`nfacct`], [`ipvs`] (generic netlink, framed by `netlink-packet-generic`) and
//! [`nftables`] (atomic batches of tables, chains, rules, sets and elements). [`socket`] is the request/answer loop they share, with pipelined batches.
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![deny(rustdoc::broken_intra_doc_links)]

pub mod conntrack;
pub mod interfaces;
pub mod ipset;
pub mod ipvs;
pub mod nfacct;
pub mod nftables;
pub mod socket;

pub use conntrack::{ConntrackCleaner, ConntrackError, ConntrackOps, FlowFilter, NetlinkConntrack};
pub use interfaces::interface_addresses;
