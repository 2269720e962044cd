//! Service semantics every proxy mode shares, decided once here rather than once per backend:
//!
//! - [`verdict`]: what traffic to one Service port gets (endpoints, REJECT, DROP) and which paths it
//!   needs;
//! - [`local_traffic`]: which traffic counts as coming from a local pod (`detectLocalMode`), and
//!   the masquerade decision built on it;
//! - [`node_ports`]: which node addresses accept NodePorts (`nodePortAddresses`);
//! - [`conntrack_policy`]: which conntrack entries a sync leaves stale.
//!
//! Backends turn these decisions into their own datapath's language (iptables matches, IPVS
//! servers, nftables sets); none of them re-derives the decisions.

pub mod conntrack_policy;
pub mod local_traffic;
pub mod node_ports;
pub mod verdict;

pub use conntrack_policy::{
    stale_after_sync, stale_for_diff, stale_for_state, Flow, StaleFlows, IPPROTO_UDP,
};
pub use local_traffic::{DetectLocalMode, LocalTrafficDetector, MasqueradeDecision};
pub use node_ports::{NodePortAddressSpec, NodePortAddresses};
pub use verdict::{PortVerdict, TrafficTarget};
