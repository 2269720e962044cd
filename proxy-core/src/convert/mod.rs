//! Conversion from k8s-openapi objects to the [model](crate::model).
//!
//! Conversion is total: it never returns an error for bad input. Whatever cannot be programmed is
//! left out — the smallest part that is wrong: a value, an endpoint, a port, at worst the object —
//! and a [`ConversionWarning`] names the object and field. This is what lets one broken Service be
//! skipped while every other Service still syncs.

mod endpoint_slice;
mod intern;
pub mod ip;
mod node;
mod service;
mod warning;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub use endpoint_slice::{
    slice_info, SliceEndpoint, SliceInfo, SliceKey, SlicePort, SERVICE_NAME_LABEL,
};
pub use intern::Interner;
pub use node::node_info;
pub use service::{service_ports, ServicePortMap, HEADLESS_LABEL, SERVICE_PROXY_NAME_LABEL};
pub use warning::{ConversionWarning, ObjectKind, Skipped, Warnings};

use crate::model::NamespacedName;

/// Which Services this kproxy programs, by their labels.
///
/// Services labelled `service.kubernetes.io/headless` are never programmed. With no proxy name set
/// (kube-proxy's behaviour), Services labelled `service.kubernetes.io/service-proxy-name` belong to
/// another proxy and are ignored. With a proxy name set, only Services carrying that label with
/// exactly that value are programmed — the convention alternative proxies use to share a cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceFilter {
    /// This proxy's name for `service.kubernetes.io/service-proxy-name`, if it has one.
    pub proxy_name: Option<String>,
}

impl ServiceFilter {
    /// Whether a Service with `labels` is programmed by this proxy.
    pub fn accepts(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        let label = |key: &str| labels.and_then(|l| l.get(key));
        if label(HEADLESS_LABEL).is_some() {
            return false;
        }
        match (&self.proxy_name, label(SERVICE_PROXY_NAME_LABEL)) {
            (None, None) => true,
            (None, Some(_)) => false,
            (Some(ours), Some(theirs)) => ours == theirs,
            (Some(_), None) => false,
        }
    }
}

/// The object's namespace and name; a missing namespace means `default`, as with kubectl. A missing
/// name cannot be keyed, so the object is skipped with a warning.
pub(crate) fn object_name(
    meta: &ObjectMeta,
    kind: ObjectKind,
    warnings: &mut Warnings,
) -> Option<NamespacedName> {
    let namespace = if kind == ObjectKind::Node {
        String::new() // cluster-scoped
    } else {
        meta.namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".to_owned())
    };
    let name = match meta.name.as_deref() {
        Some(name) if !name.is_empty() => name,
        _ => {
            let object = NamespacedName::new(namespace, "<unnamed>");
            warnings.add(kind, &object, "metadata.name", "missing", Skipped::Object);
            return None;
        }
    };
    // Names end up in rule comments and chain-name hashes; anything but a valid Kubernetes name
    // (which the API server would have refused) is rejected rather than escaped.
    // A Node's namespace is empty (cluster-scoped); anything else must be a valid name.
    let namespace_ok = namespace.is_empty() || is_dns_subdomain(&namespace);
    let bad_field = if !namespace_ok {
        Some("metadata.namespace")
    } else if !is_dns_subdomain(name) {
        Some("metadata.name")
    } else {
        None
    };
    if let Some(field) = bad_field {
        let object = NamespacedName::new(printable(&namespace), printable(name));
        warnings.add(
            kind,
            &object,
            field,
            "not a valid Kubernetes name (lower-case letters, digits, '-' and '.')",
            Skipped::Object,
        );
        return None;
    }
    Some(NamespacedName::new(namespace, name))
}

/// Whether `s` is a DNS-1123 subdomain: what the API server accepts as a namespace or object name.
pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 253
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'.')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// Whether `s` is a valid Service port name: a DNS-1123 label (`[a-z0-9-]`, at most 63).
pub(crate) fn is_port_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// `s` with anything but letters, digits and `-._:/` replaced by `?`: safe to quote in a log line
/// or a warning without letting the input forge structure (quotes, newlines, escapes).
pub(crate) fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-._:/".contains(c) {
                c
            } else {
                '?'
            }
        })
        .collect()
}
