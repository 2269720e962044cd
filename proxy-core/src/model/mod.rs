//! The proxy model: what every backend programs, independent of Kubernetes' wire types.
//!
//! The model is deliberately smaller than the API objects. It keeps only what changes the datapath,
//! so two API objects that differ only in, say, `resourceVersion` convert to equal models, and the
//! change trackers can drop the update as a no-op.

mod endpoint;
mod names;
mod node;
mod protocol;
mod service_port;

pub use endpoint::{Endpoint, EndpointTopology};
pub use names::{NamespacedName, ServicePortName};
pub use node::{NodeInfo, ZONE_LABEL};
pub use protocol::{IpFamily, Protocol, UnknownProtocol};
pub use service_port::{
    ServicePort, ServiceType, SessionAffinity, DEFAULT_AFFINITY_TIMEOUT_SECONDS,
    MAX_AFFINITY_TIMEOUT_SECONDS,
};
