//! The userspace mode's building blocks: the proxy that carries a client's connection to an
//! endpoint, without NAT in the kernel for load balancing.
//!
//! - [`balancer`]: [`RoundRobin`], which endpoint a client goes to next — round-robin, with
//!   ClientIP session affinity and its timeout.
//! - [`connect`]: [`connect_endpoint`], connecting to the endpoint the balancer picks and, when it
//!   refuses or does not answer, to the next one ([`RetryPolicy`]), so one dead pod does not fail
//!   the client.
//! - [`splice`]: [`splice_bidirectional`], both directions of a TCP connection through kernel
//!   pipes with `splice(2)`, half-closes passed on, no bytes copied through userspace.
//! - [`udp`]: [`UdpProxy`], a session per client address towards the endpoint the balancer
//!   picked, replies sent back from the Service port's socket, sessions ended when idle.
//!
//! - [`listeners`]: [`Listeners`], one listener per Service port from `--proxy-port-range`,
//!   opened, updated in place and closed to match the desired Service ports.
//! - [`plan`]: which listeners a state needs and where each kind of traffic goes (from
//!   proxy-core's `PortVerdict`, as every mode decides it).
//! - [`rules`]: the REDIRECT rules (`KUBE-PORTALS-*`, `KUBE-NODEPORT-*`) and the REJECT/DROP
//!   rules (`KUBE-PORTALS-FILTER`).
//! - [`conntrack`]: UDP conntrack entries that REDIRECT to a listener that moved or closed.
//! - [`proxier`]: [`UserspaceProxier`], the mode behind the factory, and its cleanup.
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![deny(rustdoc::broken_intra_doc_links)]

pub mod balancer;
pub mod connect;
pub mod conntrack;
pub mod listeners;
pub mod plan;
pub mod proxier;
pub mod rules;
pub mod splice;
pub mod udp;

pub use balancer::RoundRobin;
pub use connect::{connect_endpoint, ConnectError, RetryPolicy};
pub use listeners::{ApplyReport, ListenerSettings, ListenerSpec, Listeners, Transport};
pub use plan::{EndpointSet, ListenerKey, Route};
pub use proxier::{cleanup_node, UserspaceProxier};
pub use splice::{splice_bidirectional, Transferred};
pub use udp::UdpProxy;
