//! Validation of the objects the server allocates for: Services. Errors are 422 `Status` objects
//! with one cause per invalid field, as the real API server returns them.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use serde_json::{json, Value};

/// One invalid field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    /// The field path, e.g. `spec.ports[0].port`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl Cause {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The `details.causes[]` entry.
    pub fn to_json(&self) -> Value {
        json!({"reason": "FieldValueInvalid", "message": self.message, "field": self.field})
    }
}

/// Checks a Service: ports, protocols, duplicates, node ports, the cluster IP.
pub fn service(svc: &Value, range: (Ipv4Addr, u32), node_ports: (i64, i64)) -> Vec<Cause> {
    let mut causes = Vec::new();
    let spec = &svc["spec"];
    let kind = spec["type"].as_str().unwrap_or("ClusterIP");
    if !matches!(
        kind,
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        causes.push(Cause::new(
            "spec.type",
            format!("Unsupported value: {kind:?}"),
        ));
    }
    let ports = spec["ports"].as_array().cloned().unwrap_or_default();
    if ports.is_empty() && kind != "ExternalName" && spec["clusterIP"] != json!("None") {
        causes.push(Cause::new("spec.ports", "Required value"));
    }
    let mut seen = BTreeSet::new();
    let mut names = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let port = p["port"].as_i64().unwrap_or(0);
        if !(1..=65535).contains(&port) {
            causes.push(Cause::new(
                format!("spec.ports[{i}].port"),
                format!("Invalid value: {port}: must be between 1 and 65535, inclusive"),
            ));
        }
        let protocol = p["protocol"].as_str().unwrap_or("TCP");
        if !matches!(protocol, "TCP" | "UDP" | "SCTP") {
            causes.push(Cause::new(
                format!("spec.ports[{i}].protocol"),
                format!(
                    "Unsupported value: {protocol:?}: supported values: \"SCTP\", \"TCP\", \"UDP\""
                ),
            ));
        }
        if !seen.insert((port, protocol.to_owned())) {
            causes.push(Cause::new(
                format!("spec.ports[{i}]"),
                format!("Duplicate value: {port}/{protocol}"),
            ));
        }
        let name = p["name"].as_str().unwrap_or_default();
        if ports.len() > 1 && name.is_empty() {
            causes.push(Cause::new(
                format!("spec.ports[{i}].name"),
                "Required value",
            ));
        } else if !name.is_empty() && !names.insert(name.to_owned()) {
            causes.push(Cause::new(
                format!("spec.ports[{i}].name"),
                format!("Duplicate value: {name:?}"),
            ));
        }
        if let Some(np) = p["nodePort"].as_i64() {
            if np != 0 && !(node_ports.0..=node_ports.1).contains(&np) {
                causes.push(Cause::new(format!("spec.ports[{i}].nodePort"), format!("Invalid value: {np}: provided port is not in the valid range. The range of valid ports is {}-{}", node_ports.0, node_ports.1)));
            }
        }
    }
    if let Some(ip) = spec["clusterIP"]
        .as_str()
        .filter(|ip| !ip.is_empty() && *ip != "None")
    {
        match ip.parse::<Ipv4Addr>() {
            Ok(addr) => {
                let (net, size) = range;
                let offset = u32::from(addr).wrapping_sub(u32::from(net));
                if offset == 0 || offset >= size.saturating_sub(1) {
                    causes.push(Cause::new(
                        "spec.clusterIP",
                        format!("Invalid value: {ip:?}: provided IP is not in the valid range"),
                    ));
                }
            }
            Err(_) => causes.push(Cause::new(
                "spec.clusterIP",
                format!("Invalid value: {ip:?}: must be a valid IP address"),
            )),
        }
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;

    const RANGE: (Ipv4Addr, u32) = (Ipv4Addr::new(10, 96, 0, 0), 1 << 16);

    #[test]
    fn good_service_has_no_causes() {
        let s = json!({"spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 53, "protocol": "UDP"}]}});
        assert!(service(&s, RANGE, (30000, 32767)).is_empty());
    }

    #[test]
    fn each_problem_names_its_field() {
        let s = json!({"spec": {"type": "NodePort", "clusterIP": "10.1.0.1", "ports": [
            {"name": "a", "port": 0},
            {"name": "a", "port": 81, "protocol": "ICMP"},
            {"port": 81, "protocol": "ICMP", "nodePort": 80},
        ]}});
        let fields: Vec<String> = service(&s, RANGE, (30000, 32767))
            .into_iter()
            .map(|c| c.field)
            .collect();
        for f in [
            "spec.ports[0].port",
            "spec.ports[1].protocol",
            "spec.ports[1].name",
            "spec.ports[2]",
            "spec.ports[2].name",
            "spec.ports[2].nodePort",
            "spec.clusterIP",
        ] {
            assert!(
                fields.contains(&f.to_owned()),
                "{f} missing from {fields:?}"
            );
        }
    }
}
