//! Frontend ownership: an address inside the Service range belongs to the Service it is the
//! cluster IP of, and to no other.
//!
//! An externalIP or a load-balancer ingress IP that equals another Service's cluster IP would
//! take that cluster IP's traffic over in every mode (kube-proxy has the same hole, the
//! CVE-2020-8554 class: anyone who may create a Service may hijack another's traffic). One that
//! lies inside a known ServiceCIDR can become another Service's cluster IP at any time. So
//! neither is programmed: [`crate::ProxyState`] drops it from the port it hands to the modes
//! (all modes comply without a line of their own), warns naming both Services once, and counts
//! it ([`crate::ProxyState::refused_frontends`], the `kubeproxy_refused_service_frontends` gauge).

use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::model::NamespacedName;

/// Which field of the Service declared the refused address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrontendKind {
    /// `spec.externalIPs`.
    ExternalIp,
    /// `status.loadBalancer.ingress[].ip`.
    LoadBalancerIp,
}

impl fmt::Display for FrontendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FrontendKind::ExternalIp => "externalIP",
            FrontendKind::LoadBalancerIp => "load-balancer IP",
        })
    }
}

/// Why an address is not the Service's to serve.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RefusalReason {
    /// It is this other Service's cluster IP.
    ClusterIpOf(NamespacedName),
    /// It lies inside this ServiceCIDR (cluster IPs are allocated from it).
    InServiceCidr(IpNetwork),
}

/// One address a Service declared and kproxy does not program.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RefusedFrontend {
    /// The address.
    pub address: IpAddr,
    /// Where the Service declared it.
    pub kind: FrontendKind,
    /// Why it is refused.
    pub reason: RefusalReason,
}

impl fmt::Display for RefusedFrontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reason {
            RefusalReason::ClusterIpOf(owner) => write!(
                f,
                "{} {} is the cluster IP of Service {owner}",
                self.kind, self.address
            ),
            RefusalReason::InServiceCidr(net) => write!(
                f,
                "{} {} lies inside the ServiceCIDR {net}, where only cluster IPs belong",
                self.kind, self.address
            ),
        }
    }
}
