//! `EndpointSlice` → [`SliceInfo`]: the parts of a slice that endpoint selection needs.

use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::intern::Interner;
use super::object_name;
use super::service::port_number;
use super::warning::{ObjectKind, Skipped, Warnings};
use crate::model::{EndpointTopology, IpFamily, NamespacedName, Protocol};

/// The label through which an EndpointSlice names its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// One port of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SlicePort {
    /// The port name, matched against the Service port's name (empty for an unnamed port).
    pub name: String,
    /// The protocol, matched against the Service port's protocol.
    pub protocol: Protocol,
    /// The target port number on every endpoint of the slice.
    pub port: u16,
}

/// One endpoint of an EndpointSlice, before it is paired with a port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SliceEndpoint {
    /// The first address of the endpoint (Kubernetes guarantees the rest are the same pod).
    pub ip: IpAddr,
    /// `conditions.ready` (absent = true).
    pub ready: bool,
    /// `conditions.serving` (absent = true).
    pub serving: bool,
    /// `conditions.terminating` (absent = false).
    pub terminating: bool,
    /// `nodeName`, interned.
    pub node_name: Option<Arc<str>>,
    /// `zone` and `hints`; `None` when the slice gives none.
    pub topology: Option<Arc<EndpointTopology>>,
}

/// What kproxy keeps of one EndpointSlice of one IP family.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SliceInfo {
    /// The Service the slice belongs to (its namespace and `kubernetes.io/service-name` label).
    pub service: NamespacedName,
    /// The slice's valid ports.
    pub ports: Vec<SlicePort>,
    /// The slice's valid endpoints.
    pub endpoints: Vec<SliceEndpoint>,
}

/// The key of an EndpointSlice: its own namespace and name (not its Service's).
pub type SliceKey = NamespacedName;

/// Converts an EndpointSlice for `family`, sharing node and zone names through `names`.
///
/// Returns `None` for slices kproxy does not use: those of the other address family or FQDN slices,
/// and slices without a `kubernetes.io/service-name` label (with a warning). Invalid ports and
/// endpoints are skipped with a warning naming the slice; the rest of the slice is kept.
pub fn slice_info(
    slice: &EndpointSlice,
    family: IpFamily,
    names: &mut Interner,
    warnings: &mut Warnings,
) -> Option<(SliceKey, SliceInfo)> {
    let key = object_name(&slice.metadata, ObjectKind::EndpointSlice, warnings)?;
    if slice.address_type != family.as_k8s_str() {
        return None;
    }
    let Some(service_name) = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .filter(|n| super::is_dns_subdomain(n))
    else {
        warnings.add(
            ObjectKind::EndpointSlice,
            &key,
            format!("metadata.labels[{SERVICE_NAME_LABEL:?}]"),
            "missing or not a valid name: the slice names no Service",
            Skipped::Object,
        );
        return None;
    };
    let service = NamespacedName::new(key.namespace.clone(), service_name.clone());

    let mut ports = Vec::with_capacity(slice.ports.as_ref().map_or(0, Vec::len));
    for (i, p) in slice
        .ports
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let field = || format!("ports[{i}]");
        let protocol = match p.protocol.as_deref().unwrap_or("TCP").parse::<Protocol>() {
            Ok(protocol) => protocol,
            Err(e) => {
                warnings.add(
                    ObjectKind::EndpointSlice,
                    &key,
                    field(),
                    e.to_string(),
                    Skipped::Port,
                );
                continue;
            }
        };
        let number = match p.port {
            // A nil port means "all ports" and is only legal for slices no Service port can use.
            None => continue,
            Some(n) => match port_number(n) {
                Some(n) => n,
                None => {
                    warnings.add(
                        ObjectKind::EndpointSlice,
                        &key,
                        field(),
                        format!("port {n} is outside 1-65535"),
                        Skipped::Port,
                    );
                    continue;
                }
            },
        };
        ports.push(SlicePort {
            name: p.name.clone().unwrap_or_default(),
            protocol,
            port: number,
        });
    }

    let mut endpoints = Vec::with_capacity(slice.endpoints.as_ref().map_or(0, Vec::len));
    for (i, ep) in slice
        .endpoints
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let Some(raw) = ep.addresses.first() else {
            warnings.add(
                ObjectKind::EndpointSlice,
                &key,
                format!("endpoints[{i}].addresses"),
                "empty",
                Skipped::Endpoint,
            );
            continue;
        };
        let ip = match super::ip::parse_ip(raw).ok_or(()) {
            Ok(ip) if family.contains(&ip) => ip,
            Ok(_) => {
                warnings.add(
                    ObjectKind::EndpointSlice,
                    &key,
                    format!("endpoints[{i}].addresses[0]"),
                    format!("{raw} is not an {family} address"),
                    Skipped::Endpoint,
                );
                continue;
            }
            Err(_) => {
                warnings.add(
                    ObjectKind::EndpointSlice,
                    &key,
                    format!("endpoints[{i}].addresses[0]"),
                    format!("invalid IP address {raw:?}"),
                    Skipped::Endpoint,
                );
                continue;
            }
        };
        let conditions = ep.conditions.as_ref();
        let hints = ep.hints.as_ref();
        let topology = EndpointTopology {
            zone: ep
                .zone
                .as_deref()
                .filter(|z| !z.is_empty())
                .map(|z| names.intern(z)),
            zone_hints: sorted_names(
                names,
                hints
                    .and_then(|h| h.for_zones.as_deref())
                    .unwrap_or_default()
                    .iter()
                    .map(|z| z.name.as_str()),
            ),
            node_hints: sorted_names(
                names,
                hints
                    .and_then(|h| h.for_nodes.as_deref())
                    .unwrap_or_default()
                    .iter()
                    .map(|n| n.name.as_str()),
            ),
        };
        endpoints.push(SliceEndpoint {
            ip,
            ready: conditions.and_then(|c| c.ready).unwrap_or(true),
            serving: conditions.and_then(|c| c.serving).unwrap_or(true),
            terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
            node_name: ep
                .node_name
                .as_deref()
                .filter(|n| !n.is_empty())
                .map(|n| names.intern(n)),
            topology: (!topology.is_empty()).then(|| Arc::new(topology)),
        });
    }

    Some((
        key,
        SliceInfo {
            service,
            ports,
            endpoints,
        },
    ))
}

/// Interned, sorted and deduplicated names (no allocation when there are none).
fn sorted_names<'a>(names: &mut Interner, list: impl Iterator<Item = &'a str>) -> Vec<Arc<str>> {
    let mut v: Vec<&str> = list.collect();
    v.sort_unstable();
    v.dedup();
    v.into_iter().map(|n| names.intern(n)).collect()
}
