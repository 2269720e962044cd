//! Endpoint selection: readiness, terminating fallback, traffic policies and topology hints.

use std::net::IpAddr;
use std::sync::Arc;

use proxy_core::model::EndpointTopology;
use proxy_core::{
    select_endpoints, Endpoint, NodeInfo, Protocol, ServicePort, ServiceType, SessionAffinity,
    TopologyMode,
};

fn port() -> ServicePort {
    ServicePort {
        service_type: ServiceType::ClusterIp,
        cluster_ip: "172.30.0.1".parse().unwrap(),
        port: 80,
        protocol: Protocol::Tcp,
        node_port: None,
        external_ips: vec![],
        load_balancer_ips: vec![],
        load_balancer_source_ranges: vec![],
        external_policy_local: false,
        internal_policy_local: false,
        health_check_node_port: None,
        session_affinity: SessionAffinity::None,
    }
}

fn local_external(p: ServicePort) -> ServicePort {
    ServicePort {
        service_type: ServiceType::NodePort,
        node_port: Some(30000),
        external_policy_local: true,
        ..p
    }
}

fn ep(ip: &str, node: &str) -> Endpoint {
    Endpoint {
        node_name: Some(node.into()),
        ..Endpoint::new(ip.parse::<IpAddr>().unwrap(), 8080)
    }
}

fn terminating(mut e: Endpoint, serving: bool) -> Endpoint {
    e.ready = false;
    e.serving = serving;
    e.terminating = true;
    e
}

fn not_ready(mut e: Endpoint) -> Endpoint {
    e.ready = false;
    e.serving = false;
    e
}

fn names(list: &[&str]) -> Vec<Arc<str>> {
    list.iter().map(|s| Arc::from(*s)).collect()
}

fn zoned(mut e: Endpoint, hints: &[&str]) -> Endpoint {
    let mut t = e.topology.as_deref().cloned().unwrap_or_default();
    t.zone_hints = names(hints);
    e.topology = Some(Arc::new(t));
    e
}

fn node_hinted(mut e: Endpoint, hints: &[&str]) -> Endpoint {
    let mut t: EndpointTopology = e.topology.as_deref().cloned().unwrap_or_default();
    t.node_hints = names(hints);
    e.topology = Some(Arc::new(t));
    e
}

fn node(name: &str, zone: Option<&str>) -> NodeInfo {
    let mut n = NodeInfo::named(name);
    if let Some(z) = zone {
        n.labels
            .insert("topology.kubernetes.io/zone".into(), z.into());
    }
    n
}

#[test]
fn ready_endpoints_only() {
    let eps = [
        ep("10.0.0.1", "a"),
        not_ready(ep("10.0.0.2", "b")),
        ep("10.0.0.3", "b"),
    ];
    let s = select_endpoints(&port(), &eps, &node("a", None));
    assert_eq!(s.cluster, [0, 2]);
    assert!(s.local.is_empty(), "no Local policy, no local list");
    assert!(s.has_any_endpoints);
    assert_eq!(s.all_reachable(), [0, 2]);
}

#[test]
fn serving_terminating_used_only_without_ready() {
    let eps = [
        terminating(ep("10.0.0.1", "a"), true),
        terminating(ep("10.0.0.2", "b"), false),
        ep("10.0.0.3", "b"),
    ];
    let s = select_endpoints(&port(), &eps, &node("a", None));
    assert_eq!(s.cluster, [2], "a ready endpoint exists: no fallback");

    let s = select_endpoints(&port(), &eps[..2], &node("a", None));
    assert_eq!(
        s.cluster,
        [0],
        "fallback to serving+terminating, never to non-serving"
    );
    assert!(s.has_any_endpoints);

    let s = select_endpoints(&port(), &eps[1..2], &node("a", None));
    assert!(s.cluster.is_empty());
    assert!(!s.has_any_endpoints, "only a non-serving endpoint: REJECT");
}

#[test]
fn no_endpoints_at_all() {
    let s = select_endpoints(&port(), &[], &node("a", None));
    assert!(s.cluster.is_empty() && s.local.is_empty() && !s.has_any_endpoints);
}

#[test]
fn internal_policy_local_picks_this_nodes_endpoints_only() {
    let p = ServicePort {
        internal_policy_local: true,
        ..port()
    };
    let eps = [ep("10.0.0.1", "a"), ep("10.0.0.2", "b")];
    let s = select_endpoints(&p, &eps, &node("a", None));
    assert!(s.cluster.is_empty(), "no traffic uses the cluster policy");
    assert_eq!(s.local, [0]);
    assert!(s.has_any_endpoints);

    let s = select_endpoints(&p, &eps, &node("c", None));
    assert!(s.local.is_empty());
    assert!(
        s.has_any_endpoints,
        "endpoints exist elsewhere: DROP, not REJECT"
    );
}

#[test]
fn external_policy_local_keeps_cluster_list_for_internal_traffic() {
    let p = local_external(port());
    let eps = [ep("10.0.0.1", "a"), ep("10.0.0.2", "b")];
    let s = select_endpoints(&p, &eps, &node("b", None));
    assert_eq!(s.cluster, [0, 1]);
    assert_eq!(s.local, [1]);
    assert_eq!(s.all_reachable(), [0, 1]);
}

#[test]
fn local_falls_back_to_local_serving_terminating() {
    let p = local_external(port());
    let eps = [ep("10.0.0.1", "b"), terminating(ep("10.0.0.2", "a"), true)];
    let s = select_endpoints(&p, &eps, &node("a", None));
    assert_eq!(s.cluster, [0]);
    assert_eq!(
        s.local,
        [1],
        "no ready local endpoint: the serving terminating one"
    );
    assert_eq!(s.all_reachable(), [0, 1]);
}

#[test]
fn zone_hints_used_when_all_have_them_and_one_matches() {
    let eps = [
        zoned(ep("10.0.0.1", "a"), &["z1"]),
        zoned(ep("10.0.0.2", "b"), &["z2"]),
        zoned(ep("10.0.0.3", "c"), &["z1", "z2"]),
    ];
    let s = select_endpoints(&port(), &eps, &node("a", Some("z1")));
    assert_eq!(s.topology, TopologyMode::Zone);
    assert_eq!(s.cluster, [0, 2]);
}

#[test]
fn zone_hints_ignored_when_one_endpoint_lacks_them() {
    let eps = [zoned(ep("10.0.0.1", "a"), &["z1"]), ep("10.0.0.2", "b")];
    let s = select_endpoints(&port(), &eps, &node("a", Some("z1")));
    assert_eq!(s.topology, TopologyMode::None);
    assert_eq!(s.cluster, [0, 1]);
}

#[test]
fn zone_hints_ignored_when_node_has_no_zone_or_no_hint_matches() {
    let eps = [
        zoned(ep("10.0.0.1", "a"), &["z1"]),
        zoned(ep("10.0.0.2", "b"), &["z2"]),
    ];
    let s = select_endpoints(&port(), &eps, &node("a", None));
    assert_eq!((s.topology, s.cluster.len()), (TopologyMode::None, 2));
    let s = select_endpoints(&port(), &eps, &node("a", Some("z9")));
    assert_eq!((s.topology, s.cluster.len()), (TopologyMode::None, 2));
}

#[test]
fn hints_of_not_ready_endpoints_do_not_count() {
    let eps = [
        zoned(ep("10.0.0.1", "a"), &["z1"]),
        not_ready(ep("10.0.0.2", "b")),
    ];
    let s = select_endpoints(&port(), &eps, &node("a", Some("z1")));
    assert_eq!(s.topology, TopologyMode::Zone);
    assert_eq!(s.cluster, [0]);
}

#[test]
fn node_hints_win_over_zone_hints() {
    let a = node_hinted(zoned(ep("10.0.0.1", "a"), &["z1"]), &["a"]);
    let b = node_hinted(zoned(ep("10.0.0.2", "b"), &["z1"]), &["b"]);
    let s = select_endpoints(&port(), &[a.clone(), b.clone()], &node("a", Some("z1")));
    assert_eq!(s.topology, TopologyMode::Node);
    assert_eq!(s.cluster, [0]);
    // No node hint for this node: zone hints still apply.
    let s = select_endpoints(&port(), &[a, b], &node("c", Some("z1")));
    assert_eq!(s.topology, TopologyMode::Zone);
    assert_eq!(s.cluster, [0, 1]);
}

#[test]
fn terminating_fallback_ignores_topology() {
    let eps = [zoned(terminating(ep("10.0.0.1", "b"), true), &["z2"])];
    let s = select_endpoints(&port(), &eps, &node("a", Some("z1")));
    assert_eq!(s.cluster, [0]);
}
