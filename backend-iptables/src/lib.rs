//! iptables mode: rendering a [`proxy_core::ProxyState`] into iptables-restore input in upstream
//! kube-proxy's layout, partial renders that grow with the change rather than the cluster, and a
//! packet-flow evaluator that walks packets through rendered rules without root.
//!
//! Running iptables, the jumps, cleanup helpers and the in-memory iptables used by its tests are
//! the `iptables-tool` crate's, shared with the other modes that write iptables rules.
//!
//! The rendered text is the product of this mode: it is deterministic (same state, same bytes),
//! snapshot-tested, and evaluated as packet flow in tests.
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![deny(rustdoc::broken_intra_doc_links)]

pub mod chain_name;
pub mod config;
pub mod jumps;
pub mod proxier;
pub mod render;

pub use config::{ConfigError, RenderConfig};
pub use proxier::{cleanup_node, jumps, IptablesProxier, FOOTPRINT};
pub use render::{NodeView, RenderSummary, Renderer, RuleCounts, SharedChain, Table};
