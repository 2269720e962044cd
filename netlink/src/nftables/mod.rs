//! nf_tables over netlink (nfnetlink subsystem `NFNL_SUBSYS_NFTABLES`), with no `nft` binary: the
//! messages (`wire`), the expressions rules are made of (`expr`), the objects kproxy creates
//! (`objects`) and a transaction that sends them as one atomic batch (`batch`). No crate has
//! these under a licence the project can take; the layout is the kernel's
//! `include/uapi/linux/netfilter/nf_tables.h`, checked byte for byte against what `nft` 1.0.6
//! sends (`netlink/tests/nftables_bytes.rs`).

pub mod batch;
pub mod expr;
pub mod objects;
pub mod wire;
