//! nftables mode: upstream's nftables layout (table `kube-proxy` per family, verdict maps keyed by
//! `address . protocol . port`, per-Service and per-endpoint chains), programmed over nf_tables
//! netlink in atomic batches with no `nft` binary, element by element.
//!
//! - [`names`]: upstream's table, chain, set and map names.
//! - [`rule`]: kproxy's rules, readable as `nft` syntax and as netlink expressions.
//! - [`plan`]: the table's constant part and each Service port's chains and elements.
//! - [`program`]: plans as nf_tables commands.
//! - [`render`]: the plan as `nft` text (`kproxy render --proxy-mode nftables`).
//! - [`proxier`]: [`NftablesProxier`], full and incremental syncs, counters, cleanup.
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![deny(rustdoc::broken_intra_doc_links)]

pub mod names;
pub mod plan;
pub mod program;
pub mod proxier;
pub mod render;
pub mod rule;

pub use proxier::{cleanup_node, NftablesProxier, NftablesSettings};
