//! Names that identify Services and their ports.

use std::fmt;

use super::Protocol;

/// The namespace and name of a Kubernetes object, e.g. `default/kubernetes`.
///
/// Services and EndpointSlices are both keyed by it: an EndpointSlice names its Service through the
/// `kubernetes.io/service-name` label, and the two meet on this key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamespacedName {
    /// The object's namespace.
    pub namespace: String,
    /// The object's name within its namespace.
    pub name: String,
}

impl NamespacedName {
    /// Builds a name from its two parts.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for NamespacedName {
    /// `namespace/name`, or just `name` for cluster-scoped objects (empty namespace).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            return f.write_str(&self.name);
        }
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One port of one Service: the unit every proxy mode programs.
///
/// It is upstream kube-proxy's `ServicePortName`. Its text form, `ns/name:port` (or `ns/name` when the
/// port has no name), together with the lower-case protocol, is what iptables chain names are hashed
/// from, so [`Display`](fmt::Display) must stay byte-for-byte upstream's.
///
/// The protocol is part of the key because an EndpointSlice port is matched to a Service port by name
/// *and* protocol, exactly as upstream keys its endpoints map.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortName {
    /// The Service this port belongs to.
    pub service: NamespacedName,
    /// The port's `name`; empty for the single unnamed port a Service may have.
    pub port: String,
    /// The port's protocol.
    pub protocol: Protocol,
}

impl ServicePortName {
    /// Builds a service port name.
    pub fn new(service: NamespacedName, port: impl Into<String>, protocol: Protocol) -> Self {
        Self {
            service,
            port: port.into(),
            protocol,
        }
    }
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port.is_empty() {
            write!(f, "{}", self.service)
        } else {
            write!(f, "{}:{}", self.service, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_matches_upstream_form() {
        let svc = NamespacedName::new("ns1", "svc1");
        assert_eq!(
            ServicePortName::new(svc.clone(), "p80", Protocol::Tcp).to_string(),
            "ns1/svc1:p80"
        );
        assert_eq!(
            ServicePortName::new(svc, "", Protocol::Udp).to_string(),
            "ns1/svc1"
        );
    }
}
