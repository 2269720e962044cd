//! A human-readable dump of a [`ProxyState`], for `kproxy state`, logs and snapshot tests.

use std::fmt::Write;

use crate::model::{ServiceType, SessionAffinity};
use crate::state::{ProxyState, ServicePortEntry};
use crate::ServicePortName;

/// Writes `state` as text: one block per Service port, in name order, listing its addresses,
/// options and every endpoint with its conditions and whether selection uses it for cluster
/// traffic (`cluster`) and/or local-policy traffic (`local`).
///
/// The format is for people, not for parsing; it is stable enough to snapshot.
pub fn describe(state: &ProxyState) -> String {
    let mut out = String::with_capacity(256 * state.len() + 128);
    let node = state.node();
    let _ = writeln!(
        out,
        "# node {} ({}), zone {}, addresses [{}]; {} service ports",
        node.name,
        state.family(),
        node.zone().unwrap_or("-"),
        join(node.addresses.iter()),
        state.len()
    );
    for (name, entry) in state.service_ports() {
        describe_port(&mut out, name, entry);
    }
    out
}

fn join<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    let mut s = String::new();
    for (i, item) in items.enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "{item}");
    }
    s
}

fn describe_port(out: &mut String, name: &ServicePortName, entry: &ServicePortEntry) {
    let svc = &entry.service;
    let kind = match svc.service_type {
        ServiceType::ClusterIp => "ClusterIP",
        ServiceType::NodePort => "NodePort",
        ServiceType::LoadBalancer => "LoadBalancer",
    };
    let _ = writeln!(
        out,
        "\n{name} {}: {kind} {}:{}",
        svc.protocol.as_lower_str(),
        fmt_host(&svc.cluster_ip),
        svc.port
    );
    if let Some(p) = svc.node_port {
        let _ = writeln!(out, "  node port {p}");
    }
    if !svc.external_ips.is_empty() {
        let _ = writeln!(out, "  external IPs {}", join(svc.external_ips.iter()));
    }
    if !svc.load_balancer_ips.is_empty() {
        let _ = writeln!(
            out,
            "  load-balancer IPs {}",
            join(svc.load_balancer_ips.iter())
        );
    }
    if !svc.load_balancer_source_ranges.is_empty() {
        let _ = writeln!(
            out,
            "  source ranges {}",
            join(svc.load_balancer_source_ranges.iter())
        );
    }
    if svc.external_policy_local {
        match svc.health_check_node_port {
            Some(p) => {
                let _ = writeln!(
                    out,
                    "  external traffic policy Local, health check node port {p}"
                );
            }
            None => {
                let _ = writeln!(out, "  external traffic policy Local");
            }
        }
    }
    if svc.internal_policy_local {
        let _ = writeln!(out, "  internal traffic policy Local");
    }
    if let SessionAffinity::ClientIp { timeout_seconds } = svc.session_affinity {
        let _ = writeln!(out, "  session affinity ClientIP, {timeout_seconds}s");
    }
    let sel = &entry.selection;
    if !sel.has_any_endpoints {
        let _ = writeln!(out, "  no usable endpoints: REJECT");
    } else if svc.uses_local_endpoints() && sel.local.is_empty() {
        let _ = writeln!(
            out,
            "  no usable local endpoints: local-policy traffic DROPs"
        );
    }
    if sel.topology != crate::TopologyMode::None {
        let _ = writeln!(out, "  topology hints in use: {:?}", sel.topology);
    }
    for (i, ep) in entry.endpoints.iter().enumerate() {
        let i = i as u32;
        let condition = match (ep.ready, ep.serving, ep.terminating) {
            (true, _, false) => "ready",
            (true, _, true) => "ready,terminating",
            (false, true, true) => "serving,terminating",
            (false, false, true) => "terminating",
            (false, true, false) => "serving",
            (false, false, false) => "not-ready",
        };
        let mut uses = Vec::new();
        if sel.cluster.contains(&i) {
            uses.push("cluster");
        }
        if sel.local.contains(&i) {
            uses.push("local");
        }
        let _ = writeln!(
            out,
            "  - {} {condition} node={}{}",
            ep.socket_addr(),
            ep.node_name.as_deref().unwrap_or("-"),
            if uses.is_empty() {
                String::new()
            } else {
                format!(" [{}]", uses.join(","))
            }
        );
    }
}

fn fmt_host(ip: &std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
    }
}
