//! IPVS mode: Services as IPVS virtual servers with their endpoints as real servers, programmed
//! over generic netlink; every service address bound to the `kube-ipvs0` dummy link; upstream's
//! ipsets (through ipset-tool) and its small, constant iptables ruleset for masquerading,
//! NodePorts and load-balancer source ranges.
//!
//! - [`client`]: the IPVS client (family resolution, pipelined batches, listings).
//! - [`plan`]: what a state means in IPVS terms, per Service port (shared by `render`).
//! - [`sets`] and [`rules`]: upstream's ipsets and iptables rules.
//! - [`link`]: `kube-ipvs0` over rtnetlink.
//! - [`sysctl`]: the kernel settings the mode needs.
//! - [`render`]: the plan as text (`kproxy render --proxy-mode ipvs`).
//! - [`proxier`]: [`IpvsProxier`], the incremental syncs, graceful termination and cleanup.
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![deny(rustdoc::broken_intra_doc_links)]

pub mod client;
pub mod link;
pub mod plan;
pub mod proxier;
pub mod render;
pub mod rules;
pub mod sets;
pub mod sysctl;

pub use client::{IpvsClient, IpvsError, IpvsOp, IpvsOps, ServerKey, ServiceKey, Timeouts};
pub use proxier::{cleanup_node, remove_kernel_leftovers, IpvsProxier, IpvsSettings};
