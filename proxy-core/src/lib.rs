//! The core of kproxy: the model, change tracking, the desired state, its diff and endpoint
//! selection — everything the proxy modes share.
//!
//! # The key decision: an incremental desired state
//!
//! The sources call the [handlers](handler) for each API event; they convert the object to the
//! [model] at once and record the change in [`PendingChanges`], nothing more. At sync time
//! [`ProxyState::apply`] drains the pending changes into a long-lived [`ProxyState`] and returns a
//! [`StateDiff`]: the Service ports added, changed and removed, and the conntrack entries left stale.
//! Both steps cost O(changes), not O(cluster), which is what lets a sync at 20,000 Services touch
//! only what changed. Backends implement [`Proxier`] and receive the state and the diff; they never
//! see API objects, and this crate never touches a datapath.
//!
//! ```
//! use proxy_core::{
//!     EndpointSliceHandler, IpFamily, NodeInfo, PendingChanges, ProxyState, ServiceFilter,
//!     ServiceHandler,
//! };
//! # use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
//! # let (service, slice) = (Service::default(), EndpointSlice::default());
//! let mut pending = PendingChanges::new(IpFamily::V4, "node-a", ServiceFilter::default());
//! pending.on_service_add(&service);
//! pending.on_endpoint_slice_add(&slice);
//! let mut state = ProxyState::new(IpFamily::V4, NodeInfo::named("node-a"));
//! let diff = state.apply(&mut pending);
//! for name in &diff.added {
//!     let entry = state.get(name).unwrap();
//!     // ... program entry.service and entry.cluster_endpoints() ...
//! #   let _ = entry;
//! }
//! ```
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![deny(rustdoc::broken_intra_doc_links)]

pub mod addresses;
pub mod change_tracker;
pub mod config;
pub mod convert;
pub mod datapath;
pub mod describe;
pub mod diff;
mod endpoint_slice_cache;
pub mod frontends;
pub mod handler;
pub mod health;
pub mod lifecycle;
pub mod metrics;
pub mod mode;
pub mod model;
pub mod pending;
pub mod proxier;
pub mod proxy_port_metrics;
pub mod rfc3339;
pub mod schedule;
pub mod selection;
pub mod service_health;
pub mod service_traffic_metrics;
pub mod state;

pub use addresses::{AddressDiff, AddressTracker, Frontend, FrontendAddress};
pub use change_tracker::{Change, ChangeTracker};
pub use convert::{ConversionWarning, ServiceFilter};
pub use describe::describe;
pub use diff::{ConntrackCleanup, ConntrackTarget, PortChange, StateDiff};
pub use handler::{EndpointSliceHandler, NodeHandler, ServiceCidrHandler, ServiceHandler};
pub use lifecycle::{ManagedProxier, StaleFlowCleaner};
pub use mode::{ProxyMode, UnknownMode};
pub use model::{
    Endpoint, IpFamily, NamespacedName, NodeInfo, Protocol, ServicePort, ServicePortName,
    ServiceType, SessionAffinity,
};
pub use pending::{ChangeCounters, PendingBatch, PendingChanges};
pub use proxier::{ErrorKind, ObjectCount, Proxier, ProxierError, StaleUdpJudge, SyncReport};
pub use schedule::{ScheduleConfig, SyncKind, SyncSchedule};
pub use selection::{select_endpoints, EndpointSelection, TopologyMode};
pub use state::{ProxyState, ServicePortEntry};
