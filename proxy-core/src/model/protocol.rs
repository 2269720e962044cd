//! Transport protocols and IP families.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// A Service port's transport protocol.
///
/// Ordered and hashable so it can be part of [`ServicePortName`](super::ServicePortName).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP, the Kubernetes default when a port names no protocol.
    Tcp,
    /// UDP: the one protocol whose stale conntrack entries kproxy must delete.
    Udp,
    /// SCTP, where the datapath supports it.
    Sctp,
}

impl Protocol {
    /// The Kubernetes spelling: `TCP`, `UDP`, `SCTP`.
    pub fn as_k8s_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// The lower-case spelling iptables uses (`-p tcp`) and chain-name hashes are built from.
    pub fn as_lower_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_k8s_str())
    }
}

/// The error for a protocol name Kubernetes does not define.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown protocol {0:?} (expected TCP, UDP or SCTP)")]
pub struct UnknownProtocol(pub String);

impl FromStr for Protocol {
    type Err = UnknownProtocol;

    /// Parses the Kubernetes spelling. Kubernetes is case-sensitive here, and so are we: `tcp` is
    /// rejected by the API server's validation, so accepting it would hide a broken object.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            other => Err(UnknownProtocol(other.to_owned())),
        }
    }
}

/// An IP family. kproxy runs one proxier per family, as upstream does for dual-stack clusters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpFamily {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl IpFamily {
    /// The family of an address.
    pub fn of(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    /// Whether `ip` belongs to this family.
    pub fn contains(self, ip: &IpAddr) -> bool {
        IpFamily::of(ip) == self
    }

    /// The spelling of `Service.spec.ipFamilies` and `EndpointSlice.addressType`: `IPv4`, `IPv6`.
    pub fn as_k8s_str(self) -> &'static str {
        match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_k8s_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_parses_kubernetes_spelling_only() {
        assert_eq!("UDP".parse::<Protocol>(), Ok(Protocol::Udp));
        assert_eq!("SCTP".parse::<Protocol>(), Ok(Protocol::Sctp));
        assert!("udp".parse::<Protocol>().is_err());
        assert!("ICMP".parse::<Protocol>().is_err());
        assert_eq!(Protocol::Sctp.as_lower_str(), "sctp");
    }

    #[test]
    fn family_of_address() {
        assert!(IpFamily::V4.contains(&"10.0.0.1".parse().unwrap()));
        assert!(IpFamily::V6.contains(&"fd00::1".parse().unwrap()));
        assert!(!IpFamily::V6.contains(&"10.0.0.1".parse().unwrap()));
    }
}
