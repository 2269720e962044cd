//! `Service` → [`ServicePort`]s of one IP family.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Service;

use super::warning::{ObjectKind, Skipped, Warnings};
use super::{object_name, ServiceFilter};
use crate::model::{
    IpFamily, NamespacedName, Protocol, ServicePort, ServicePortName, ServiceType, SessionAffinity,
    DEFAULT_AFFINITY_TIMEOUT_SECONDS, MAX_AFFINITY_TIMEOUT_SECONDS,
};

/// The label that marks a Service as handled by another proxy.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

/// The label that marks a Service as headless regardless of its spec.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

/// The ports of one Service, for one IP family, keyed by name.
pub type ServicePortMap = BTreeMap<ServicePortName, Arc<ServicePort>>;

/// Converts one Service into its ports for `family`.
///
/// Returns an empty map for Services kproxy does not program: ExternalName and headless Services,
/// Services labelled as headless or as belonging to another proxy (see [`ServiceFilter`]), and
/// single-stack Services of the other family. Invalid input never fails the whole call: a bad port
/// is skipped, a bad external IP or source range is dropped, each with a warning in `warnings`
/// naming the Service and the field.
pub fn service_ports(
    service: &Service,
    family: IpFamily,
    filter: &ServiceFilter,
    warnings: &mut Warnings,
) -> ServicePortMap {
    let mut out = ServicePortMap::new();
    let Some(name) = object_name(&service.metadata, ObjectKind::Service, warnings) else {
        return out;
    };
    if !filter.accepts(service.metadata.labels.as_ref()) {
        return out;
    }
    let Some(spec) = service.spec.as_ref() else {
        warnings.add(
            ObjectKind::Service,
            &name,
            "spec",
            "the Service has no spec",
            Skipped::Object,
        );
        return out;
    };
    let service_type = match spec.type_.as_deref().unwrap_or("ClusterIP") {
        "ClusterIP" => ServiceType::ClusterIp,
        "NodePort" => ServiceType::NodePort,
        "LoadBalancer" => ServiceType::LoadBalancer,
        "ExternalName" => return out,
        other => {
            warnings.add(
                ObjectKind::Service,
                &name,
                "spec.type",
                format!("unknown Service type {other:?}"),
                Skipped::Object,
            );
            return out;
        }
    };

    let Some(cluster_ip) = cluster_ip_for_family(spec, family, &name, warnings) else {
        return out;
    };

    let warn = |warnings: &mut Warnings, field: String, reason: String, skipped| {
        warnings.add(ObjectKind::Service, &name, field, reason, skipped)
    };

    let external_ips = parse_ips_of_family(
        spec.external_ips.as_deref().unwrap_or_default(),
        family,
        "spec.externalIPs",
        &mut |field, reason| warn(warnings, field, reason, Skipped::Value),
    );

    let mut load_balancer_ips = Vec::new();
    let ingresses = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default();
    for (i, ingress) in ingresses.iter().enumerate() {
        let Some(ip) = ingress.ip.as_deref().filter(|ip| !ip.is_empty()) else {
            continue; // hostname-only ingress: nothing to program
        };
        if ingress.ip_mode.as_deref() == Some("Proxy") {
            continue;
        }
        match super::ip::parse_ip(ip).ok_or(()) {
            Ok(ip) if family.contains(&ip) => load_balancer_ips.push(ip),
            Ok(_) => {}
            Err(_) => warn(
                warnings,
                format!("status.loadBalancer.ingress[{i}].ip"),
                format!("invalid IP address {ip:?}"),
                Skipped::Value,
            ),
        }
    }

    let mut load_balancer_source_ranges = Vec::new();
    for (i, raw) in spec
        .load_balancer_source_ranges
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        match parse_cidr(raw.trim()) {
            Some(net) if family.contains(&net.ip()) => load_balancer_source_ranges.push(net),
            Some(_) => {}
            None => warn(
                warnings,
                format!("spec.loadBalancerSourceRanges[{i}]"),
                format!("invalid CIDR {raw:?}"),
                Skipped::Value,
            ),
        }
    }

    let has_node_ports = matches!(
        service_type,
        ServiceType::NodePort | ServiceType::LoadBalancer
    );
    let externally_reachable_type = has_node_ports || !external_ips.is_empty();
    let external_policy_local =
        externally_reachable_type && spec.external_traffic_policy.as_deref() == Some("Local");
    let internal_policy_local = spec.internal_traffic_policy.as_deref() == Some("Local");

    let health_check_node_port =
        if service_type == ServiceType::LoadBalancer && external_policy_local {
            match optional_port(spec.health_check_node_port) {
                Ok(p) => p,
                Err(p) => {
                    warn(
                        warnings,
                        "spec.healthCheckNodePort".into(),
                        format!("port {p} is outside 1-65535"),
                        Skipped::Value,
                    );
                    None
                }
            }
        } else {
            None
        };

    let session_affinity = match spec.session_affinity.as_deref() {
        Some("ClientIP") => {
            let configured = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            let timeout_seconds = match configured {
                None => DEFAULT_AFFINITY_TIMEOUT_SECONDS,
                Some(t) if t >= 1 && t as i64 <= MAX_AFFINITY_TIMEOUT_SECONDS as i64 => t as u32,
                Some(t) => {
                    warn(
                        warnings,
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds".into(),
                        format!(
                            "{t} is outside 1-{MAX_AFFINITY_TIMEOUT_SECONDS}; using {DEFAULT_AFFINITY_TIMEOUT_SECONDS}"
                        ),
                        Skipped::Value,
                    );
                    DEFAULT_AFFINITY_TIMEOUT_SECONDS
                }
            };
            SessionAffinity::ClientIp { timeout_seconds }
        }
        None | Some("None") | Some("") => SessionAffinity::None,
        Some(other) => {
            warn(
                warnings,
                "spec.sessionAffinity".into(),
                format!("unknown session affinity {other:?}; using None"),
                Skipped::Value,
            );
            SessionAffinity::None
        }
    };

    for (i, port) in spec.ports.as_deref().unwrap_or_default().iter().enumerate() {
        let port_name = port.name.clone().unwrap_or_default();
        let field = || {
            if port_name.is_empty() {
                format!("spec.ports[{i}]")
            } else {
                format!("spec.ports[{i}] ({port_name:?})")
            }
        };
        if !port_name.is_empty() && !super::is_port_name(&port_name) {
            warn(
                warnings,
                format!("spec.ports[{i}].name"),
                format!(
                    "{:?} is not a valid port name (lower-case letters, digits and '-')",
                    super::printable(&port_name)
                ),
                Skipped::Port,
            );
            continue;
        }
        let protocol = match port
            .protocol
            .as_deref()
            .unwrap_or("TCP")
            .parse::<Protocol>()
        {
            Ok(p) => p,
            Err(e) => {
                warn(warnings, field(), e.to_string(), Skipped::Port);
                continue;
            }
        };
        let Some(number) = port_number(port.port) else {
            warn(
                warnings,
                field(),
                format!("port {} is outside 1-65535", port.port),
                Skipped::Port,
            );
            continue;
        };
        let node_port = if has_node_ports {
            match optional_port(port.node_port) {
                Ok(p) => p,
                Err(p) => {
                    warn(
                        warnings,
                        field(),
                        format!("nodePort {p} is outside 1-65535"),
                        Skipped::Port,
                    );
                    continue;
                }
            }
        } else {
            None
        };
        let key = ServicePortName::new(name.clone(), port_name.clone(), protocol);
        if out.contains_key(&key) {
            warn(
                warnings,
                field(),
                format!(
                    "duplicate port name {:?} for {protocol}; every port of a multi-port Service needs its own name",
                    key.port
                ),
                Skipped::Port,
            );
            continue;
        }
        out.insert(
            key,
            Arc::new(ServicePort {
                service_type,
                cluster_ip,
                port: number,
                protocol,
                node_port,
                external_ips: external_ips.clone(),
                load_balancer_ips: load_balancer_ips.clone(),
                load_balancer_source_ranges: load_balancer_source_ranges.clone(),
                external_policy_local,
                internal_policy_local,
                health_check_node_port,
                session_affinity,
            }),
        );
    }
    out
}

/// The cluster IP of `family`, or `None` when the Service has none of that family (single-stack of
/// the other family), is headless, or its IPs are invalid (with a warning).
fn cluster_ip_for_family(
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
    family: IpFamily,
    name: &NamespacedName,
    warnings: &mut Warnings,
) -> Option<IpAddr> {
    // `clusterIPs` is authoritative when set; `clusterIP` is its first element on any real server,
    // but hand-written manifests may carry only the latter.
    let single;
    let ips: &[String] = match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ips,
        _ => match spec.cluster_ip.as_ref() {
            Some(ip) => {
                single = [ip.clone()];
                &single
            }
            None => return None,
        },
    };
    if ips.iter().any(|ip| ip == "None") {
        return None; // headless
    }
    let mut found = None;
    for (i, raw) in ips.iter().enumerate() {
        if raw.is_empty() {
            continue; // not allocated yet
        }
        match super::ip::parse_ip(raw).ok_or(()) {
            Ok(ip) if family.contains(&ip) => {
                found.get_or_insert(ip);
            }
            Ok(_) => {}
            Err(_) => {
                warnings.add(
                    ObjectKind::Service,
                    name,
                    format!("spec.clusterIPs[{i}]"),
                    format!("invalid IP address {raw:?}"),
                    Skipped::Object,
                );
                return None;
            }
        }
    }
    found
}

/// Parses `raw` addresses, keeping those of `family` and reporting invalid ones.
fn parse_ips_of_family(
    raw: &[String],
    family: IpFamily,
    field: &str,
    report: &mut dyn FnMut(String, String),
) -> Vec<IpAddr> {
    let mut out = Vec::with_capacity(raw.len());
    for (i, s) in raw.iter().enumerate() {
        match super::ip::parse_ip(s).ok_or(()) {
            Ok(ip) if family.contains(&ip) => {
                if !out.contains(&ip) {
                    out.push(ip);
                }
            }
            Ok(_) => {}
            Err(_) => report(format!("{field}[{i}]"), format!("invalid IP address {s:?}")),
        }
    }
    out
}

/// Parses a CIDR, requiring the prefix length (a bare IP is not a range), leniently.
fn parse_cidr(s: &str) -> Option<IpNetwork> {
    super::ip::parse_cidr(s)
}

/// A port number in 1–65535, or `None`.
pub(crate) fn port_number(p: i32) -> Option<u16> {
    u16::try_from(p).ok().filter(|p| *p != 0)
}

/// A port field where unset and 0 both mean "none" (nodePort, healthCheckNodePort); `Err` carries
/// a value outside 1-65535 for the caller's warning.
fn optional_port(value: Option<i32>) -> Result<Option<u16>, i32> {
    match value {
        None | Some(0) => Ok(None),
        Some(p) => port_number(p).map(Some).ok_or(p),
    }
}

#[cfg(test)]
mod tests {
    use super::optional_port;

    #[test]
    fn optional_ports() {
        assert_eq!(optional_port(None), Ok(None));
        assert_eq!(optional_port(Some(0)), Ok(None));
        assert_eq!(optional_port(Some(30080)), Ok(Some(30080)));
        assert_eq!(optional_port(Some(70_000)), Err(70_000));
        assert_eq!(optional_port(Some(-1)), Err(-1));
    }
}
