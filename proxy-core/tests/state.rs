//! Change tracking, the incremental state and its diff.

use std::net::IpAddr;

use fixtures::builder::{EndpointBuilder, NodeBuilder, ServiceBuilder, SliceBuilder};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use proxy_core::{
    ConntrackCleanup, ConntrackTarget, EndpointSliceHandler, IpFamily, NamespacedName, NodeHandler,
    NodeInfo, PendingChanges, Protocol, ProxyState, ServiceFilter, ServiceHandler, ServicePortName,
};

const NODE: &str = "node-a";

fn pending() -> PendingChanges {
    PendingChanges::new(IpFamily::V4, NODE, ServiceFilter::default())
}

fn state() -> ProxyState {
    ProxyState::new(IpFamily::V4, NodeInfo::named(NODE))
}

fn spn(name: &str, port: &str, protocol: Protocol) -> ServicePortName {
    ServicePortName::new(NamespacedName::new("ns1", name), port, protocol)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn svc(name: &str, ip: &str) -> Service {
    ServiceBuilder::new("ns1", name, ip)
        .port("p80", 80, "TCP")
        .build()
}

fn udp_svc(name: &str, ip: &str) -> Service {
    ServiceBuilder::new("ns1", name, ip)
        .port("dns", 53, "UDP")
        .build()
}

fn slice(name: &str, service: &str, port: (&str, i32, &str), ips: &[&str]) -> EndpointSlice {
    let mut b = SliceBuilder::new("ns1", name, service).port(port.0, port.1, port.2);
    for ip in ips {
        b = b.endpoint(EndpointBuilder::ready(ip).node("node-b"));
    }
    b.build()
}

fn endpoint_ips(state: &ProxyState, name: &ServicePortName) -> Vec<String> {
    state
        .get(name)
        .unwrap()
        .cluster_endpoints()
        .map(|e| e.socket_addr().to_string())
        .collect()
}

#[test]
fn first_apply_adds_everything_and_asks_for_full_sync() {
    let mut p = pending();
    p.on_service_add(&svc("a", "172.30.0.1"));
    p.on_service_add(&svc("b", "172.30.0.2"));
    p.on_endpoint_slice_add(&slice(
        "a-1",
        "a",
        ("p80", 8080, "TCP"),
        &["10.0.0.2", "10.0.0.1"],
    ));
    let mut s = state();
    let diff = s.apply(&mut p);
    assert!(diff.full);
    assert_eq!(
        diff.added,
        [
            spn("a", "p80", Protocol::Tcp),
            spn("b", "p80", Protocol::Tcp)
        ]
    );
    assert!(diff.changed.is_empty() && diff.removed.is_empty());
    assert_eq!(
        endpoint_ips(&s, &spn("a", "p80", Protocol::Tcp)),
        ["10.0.0.1:8080", "10.0.0.2:8080"]
    );
    assert!(
        !s.get(&spn("b", "p80", Protocol::Tcp))
            .unwrap()
            .selection
            .has_any_endpoints
    );
    assert!(!p.has_pending());
    assert!(
        s.apply(&mut p).is_empty(),
        "nothing pending: empty diff, not full"
    );
}

#[test]
fn add_then_delete_before_a_sync_is_no_change() {
    let mut p = pending();
    let a = svc("a", "172.30.0.1");
    let sl = slice("a-1", "a", ("p80", 8080, "TCP"), &["10.0.0.1"]);
    p.on_service_add(&a);
    p.on_endpoint_slice_add(&sl);
    p.on_service_delete(&a);
    p.on_endpoint_slice_delete(&sl);
    assert!(!p.has_pending());
    assert_eq!(
        p.counters().service_changes_total,
        2,
        "events are still counted"
    );
    let mut s = state();
    let diff = s.apply(&mut p);
    assert!(diff.added.is_empty() && s.is_empty());
}

#[test]
fn update_to_an_equal_object_is_no_change() {
    let mut p = pending();
    let mut s = state();
    let v1 = ServiceBuilder::new("ns1", "a", "172.30.0.1")
        .port("p80", 80, "TCP")
        .resource_version("1")
        .build();
    p.on_service_add(&v1);
    s.apply(&mut p);
    let v2 = ServiceBuilder::new("ns1", "a", "172.30.0.1")
        .port("p80", 80, "TCP")
        .resource_version("2")
        .label("team", "x")
        .build();
    p.on_service_update(&v1, &v2);
    assert_eq!(p.pending_service_changes(), 0);
    assert!(!p.has_pending());
}

#[test]
fn one_broken_service_is_skipped_the_others_sync() {
    let mut p = pending();
    p.on_service_add(&svc("good-1", "172.30.0.1"));
    p.on_service_add(
        &ServiceBuilder::new("ns1", "broken", "bogus")
            .port("p", 80, "TCP")
            .build(),
    );
    p.on_service_add(
        &ServiceBuilder::new("ns1", "half", "172.30.0.3")
            .port("zero", 0, "TCP")
            .port("ok", 81, "TCP")
            .build(),
    );
    p.on_service_add(&svc("good-2", "172.30.0.2"));
    let mut s = state();
    let diff = s.apply(&mut p);
    let names: Vec<String> = diff.added.iter().map(|n| n.to_string()).collect();
    assert_eq!(names, ["ns1/good-1:p80", "ns1/good-2:p80", "ns1/half:ok"]);
    let warnings = p.take_warnings();
    assert_eq!(warnings.len(), 2);
    assert!(warnings[0].to_string().contains("ns1/broken"));
    assert!(warnings[1].to_string().contains("ns1/half"));
    assert_eq!(p.counters().conversion_warnings_total, 2);
    assert!(p.take_warnings().is_empty());
}

#[test]
fn slices_merge_and_duplicates_count_once() {
    let mut p = pending();
    p.on_service_add(&svc("a", "172.30.0.1"));
    p.on_endpoint_slice_add(&slice(
        "a-1",
        "a",
        ("p80", 8080, "TCP"),
        &["10.0.0.1", "10.0.0.2"],
    ));
    p.on_endpoint_slice_add(&slice(
        "a-2",
        "a",
        ("p80", 8080, "TCP"),
        &["10.0.0.2", "10.0.0.3"],
    ));
    let mut s = state();
    s.apply(&mut p);
    let name = spn("a", "p80", Protocol::Tcp);
    assert_eq!(
        endpoint_ips(&s, &name),
        ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"]
    );

    // Removing one slice keeps the other's copy of the shared address.
    p.on_endpoint_slice_delete(&slice(
        "a-1",
        "a",
        ("p80", 8080, "TCP"),
        &["10.0.0.1", "10.0.0.2"],
    ));
    let diff = s.apply(&mut p);
    assert_eq!(diff.changed.len(), 1);
    assert_eq!(endpoint_ips(&s, &name), ["10.0.0.2:8080", "10.0.0.3:8080"]);
    assert_eq!(diff.changed[0].previous.endpoints.len(), 3);
}

#[test]
fn slice_ports_match_service_ports_by_name_and_protocol() {
    let mut p = pending();
    p.on_service_add(
        &ServiceBuilder::new("ns1", "m", "172.30.0.1")
            .port("http", 80, "TCP")
            .port("dns", 53, "UDP")
            .build(),
    );
    let sl = SliceBuilder::new("ns1", "m-1", "m")
        .port("http", 8080, "TCP")
        .port("dns", 5353, "UDP")
        .port("http", 9999, "UDP") // no such service port
        .endpoint(EndpointBuilder::ready("10.0.0.1"))
        .build();
    p.on_endpoint_slice_add(&sl);
    let mut s = state();
    s.apply(&mut p);
    assert_eq!(
        endpoint_ips(&s, &spn("m", "http", Protocol::Tcp)),
        ["10.0.0.1:8080"]
    );
    assert_eq!(
        endpoint_ips(&s, &spn("m", "dns", Protocol::Udp)),
        ["10.0.0.1:5353"]
    );
    assert!(s.get(&spn("m", "http", Protocol::Udp)).is_none());
}

#[test]
fn endpoints_arriving_before_their_service_are_kept() {
    let mut p = pending();
    let mut s = state();
    p.on_endpoint_slice_add(&slice("a-1", "a", ("p80", 8080, "TCP"), &["10.0.0.1"]));
    assert!(s.apply(&mut p).added.is_empty());
    p.on_service_add(&svc("a", "172.30.0.1"));
    let diff = s.apply(&mut p);
    assert_eq!(diff.added, [spn("a", "p80", Protocol::Tcp)]);
    assert_eq!(
        endpoint_ips(&s, &spn("a", "p80", Protocol::Tcp)),
        ["10.0.0.1:8080"]
    );
}

#[test]
fn removing_a_port_and_deleting_a_service() {
    let mut p = pending();
    let mut s = state();
    let two = ServiceBuilder::new("ns1", "a", "172.30.0.1")
        .port("x", 80, "TCP")
        .port("y", 81, "TCP")
        .build();
    p.on_service_add(&two);
    p.on_service_add(&svc("ab", "172.30.0.2")); // sorts right after "a": must not be touched
    s.apply(&mut p);
    let one = ServiceBuilder::new("ns1", "a", "172.30.0.1")
        .port("x", 80, "TCP")
        .build();
    p.on_service_update(&two, &one);
    let diff = s.apply(&mut p);
    assert_eq!(diff.removed.len(), 1);
    assert_eq!(diff.removed[0].name, spn("a", "y", Protocol::Tcp));
    assert_eq!(diff.removed[0].previous.service.port, 81);
    assert!(diff.added.is_empty() && diff.changed.is_empty());

    p.on_service_delete(&one);
    let diff = s.apply(&mut p);
    assert_eq!(diff.removed.len(), 1);
    assert_eq!(s.len(), 1);
    assert!(s.get(&spn("ab", "p80", Protocol::Tcp)).is_some());
}

#[test]
fn service_change_is_reported_with_its_previous_entry() {
    let mut p = pending();
    let mut s = state();
    let v1 = svc("a", "172.30.0.1");
    p.on_service_add(&v1);
    s.apply(&mut p);
    let v2 = ServiceBuilder::new("ns1", "a", "172.30.0.1")
        .port("p80", 80, "TCP")
        .external_ips(&["192.0.2.1"])
        .build();
    p.on_service_update(&v1, &v2);
    let diff = s.apply(&mut p);
    assert!(!diff.full);
    assert_eq!(diff.changed.len(), 1);
    assert!(diff.changed[0].previous.service.external_ips.is_empty());
    assert_eq!(
        s.get(&diff.changed[0].name).unwrap().service.external_ips,
        [ip("192.0.2.1")]
    );
}

#[test]
fn udp_endpoint_removal_asks_for_conntrack_cleanup_of_that_endpoint() {
    let mut p = pending();
    let mut s = state();
    p.on_service_add(&udp_svc("dns", "172.30.0.10"));
    let before = slice(
        "dns-1",
        "dns",
        ("dns", 5353, "UDP"),
        &["10.0.0.1", "10.0.0.2"],
    );
    p.on_endpoint_slice_add(&before);
    let first = s.apply(&mut p);
    // Newly active UDP service: flows to it are flushed.
    assert_eq!(
        first.conntrack,
        [ConntrackCleanup {
            protocol: Protocol::Udp,
            target: ConntrackTarget::ServiceIp {
                ip: ip("172.30.0.10"),
                port: 53
            },
            endpoint: None,
        }]
    );
    let after = slice(
        "dns-1",
        "dns",
        ("dns", 5353, "UDP"),
        &["10.0.0.2", "10.0.0.3"],
    );
    p.on_endpoint_slice_update(&before, &after);
    let diff = s.apply(&mut p);
    assert_eq!(
        diff.conntrack,
        [ConntrackCleanup {
            protocol: Protocol::Udp,
            target: ConntrackTarget::ServiceIp {
                ip: ip("172.30.0.10"),
                port: 53
            },
            endpoint: Some(ip("10.0.0.1")),
        }]
    );
}

#[test]
fn udp_endpoint_turning_not_serving_is_stale() {
    let mut p = pending();
    let mut s = state();
    p.on_service_add(&udp_svc("dns", "172.30.0.10"));
    let b = |serving| {
        SliceBuilder::new("ns1", "dns-1", "dns")
            .port("dns", 53, "UDP")
            .endpoint(EndpointBuilder::ready("10.0.0.1"))
            .endpoint(EndpointBuilder::with_conditions(
                "10.0.0.2", serving, serving, false,
            ))
            .build()
    };
    p.on_endpoint_slice_add(&b(true));
    s.apply(&mut p);
    p.on_endpoint_slice_update(&b(true), &b(false));
    let diff = s.apply(&mut p);
    assert_eq!(diff.conntrack.len(), 1);
    assert_eq!(diff.conntrack[0].endpoint, Some(ip("10.0.0.2")));
}

#[test]
fn udp_service_removal_flushes_all_its_addresses() {
    let mut p = pending();
    let mut s = state();
    let np = ServiceBuilder::new("ns1", "u", "172.30.0.20")
        .type_("NodePort")
        .node_port("dns", 53, "UDP", 30053)
        .external_ips(&["192.0.2.20"])
        .build();
    p.on_service_add(&np);
    s.apply(&mut p);
    p.on_service_delete(&np);
    let diff = s.apply(&mut p);
    let targets: Vec<ConntrackTarget> = diff.conntrack.iter().map(|c| c.target).collect();
    assert_eq!(
        targets,
        [
            ConntrackTarget::ServiceIp {
                ip: ip("172.30.0.20"),
                port: 53
            },
            ConntrackTarget::ServiceIp {
                ip: ip("192.0.2.20"),
                port: 53
            },
            ConntrackTarget::NodePort { port: 30053 },
        ]
    );
    assert!(diff.conntrack.iter().all(|c| c.endpoint.is_none()));
}

#[test]
fn tcp_changes_need_no_conntrack_cleanup() {
    let mut p = pending();
    let mut s = state();
    p.on_service_add(&svc("a", "172.30.0.1"));
    let before = slice("a-1", "a", ("p80", 8080, "TCP"), &["10.0.0.1"]);
    p.on_endpoint_slice_add(&before);
    s.apply(&mut p);
    p.on_endpoint_slice_delete(&before);
    p.on_service_delete(&svc("a", "172.30.0.1"));
    let diff = s.apply(&mut p);
    assert_eq!(diff.removed.len(), 1);
    assert!(diff.conntrack.is_empty());
}

#[test]
fn node_zone_change_reselects_topology() {
    let mut p = pending();
    let mut s = state();
    p.on_service_add(&svc("z", "172.30.0.1"));
    p.on_endpoint_slice_add(
        &SliceBuilder::new("ns1", "z-1", "z")
            .port("p80", 8080, "TCP")
            .endpoint(EndpointBuilder::ready("10.0.0.1").zone_hints(&["z1"]))
            .endpoint(EndpointBuilder::ready("10.0.0.2").zone_hints(&["z2"]))
            .build(),
    );
    p.on_node_change(&NodeBuilder::new(NODE).zone("z1").build());
    s.apply(&mut p);
    let name = spn("z", "p80", Protocol::Tcp);
    assert_eq!(endpoint_ips(&s, &name), ["10.0.0.1:8080"]);

    p.on_node_change(&NodeBuilder::new(NODE).zone("z2").build());
    let diff = s.apply(&mut p);
    assert!(diff.node_changed);
    assert_eq!(diff.changed.len(), 1);
    assert_eq!(endpoint_ips(&s, &name), ["10.0.0.2:8080"]);

    // Another node's events are ignored; an address change is a node change without reselection.
    p.on_node_change(&NodeBuilder::new("node-b").zone("z1").build());
    assert!(!p.has_pending());
    p.on_node_change(
        &NodeBuilder::new(NODE)
            .zone("z2")
            .address("InternalIP", "192.168.0.1")
            .build(),
    );
    let diff = s.apply(&mut p);
    assert!(diff.node_changed && diff.changed.is_empty());
    assert_eq!(s.node().addresses, [ip("192.168.0.1")]);

    p.on_node_delete(&NodeBuilder::new(NODE).build());
    assert!(p.node_deleted());
    s.apply(&mut p);
    assert_eq!(
        endpoint_ips(&s, &name),
        ["10.0.0.1:8080", "10.0.0.2:8080"],
        "no zone: no hints"
    );
}

#[test]
fn synced_only_after_both_initial_lists() {
    let mut p = pending();
    assert!(!p.is_synced());
    p.on_service_synced();
    assert!(!p.is_synced());
    p.on_endpoint_slice_synced();
    assert!(p.is_synced());
    assert!(!p.node_synced());
    p.on_node_synced();
    assert!(p.node_synced());
}

#[test]
fn pending_counts_and_drain() {
    let mut p = pending();
    assert!(!p.has_pending());
    p.on_service_add(&svc("a", "172.30.0.1"));
    p.on_endpoint_slice_add(&slice("a-1", "a", ("p80", 8080, "TCP"), &["10.0.0.1"]));
    assert_eq!(
        (p.pending_service_changes(), p.pending_endpoint_changes()),
        (1, 1)
    );
    assert!(p.has_pending());
    state().apply(&mut p);
    assert_eq!(
        (p.pending_service_changes(), p.pending_endpoint_changes()),
        (0, 0)
    );
    assert!(!p.has_pending());
}

#[test]
fn resync_diff_asks_for_full_sync_only() {
    let s = state();
    let d = s.resync_diff();
    assert!(d.full && d.touched_ports() == 0 && !d.is_empty());
}

#[test]
fn bundled_examples_build_the_expected_state() {
    let m = fixtures::examples();
    let mut p = PendingChanges::new(
        IpFamily::V4,
        fixtures::EXAMPLE_NODE,
        ServiceFilter::default(),
    );
    for svc in &m.services {
        p.on_service_add(svc);
    }
    for sl in &m.endpoint_slices {
        p.on_endpoint_slice_add(sl);
    }
    for n in &m.nodes {
        p.on_node_change(n);
    }
    let mut s = ProxyState::new(IpFamily::V4, NodeInfo::named(fixtures::EXAMPLE_NODE));
    s.apply(&mut p);
    assert!(p.take_warnings().is_empty());
    let names: Vec<String> = s
        .service_ports()
        .map(|(n, _)| format!("{n}/{}", n.protocol))
        .collect();
    assert_eq!(
        names,
        [
            "ns1/draining:http/TCP",
            "ns1/dual:http/TCP",
            "ns1/empty:http/TCP",
            "ns1/external:http/TCP",
            "ns1/internal-local:http/TCP",
            "ns1/lb:https/TCP",
            "ns1/lb-local:http/TCP",
            "ns1/lb-local-remote:http/TCP",
            "ns1/nodeport:http/TCP",
            "ns1/sctp:diameter/SCTP",
            "ns1/sticky:http/TCP",
            "ns1/web:dns/UDP",
            "ns1/web:http/TCP",
            "ns1/zonal:http/TCP",
        ]
    );
    let get = |n: &str, port: &str, proto| s.get(&spn(n, port, proto)).unwrap();
    assert_eq!(
        endpoint_ips(&s, &spn("draining", "http", Protocol::Tcp)),
        ["10.244.1.71:8080"]
    );
    assert_eq!(
        endpoint_ips(&s, &spn("zonal", "http", Protocol::Tcp)),
        ["10.244.3.82:8080"]
    );
    let lb_local = get("lb-local", "http", Protocol::Tcp);
    assert_eq!(lb_local.local_endpoints().count(), 1);
    let remote = get("lb-local-remote", "http", Protocol::Tcp);
    assert_eq!(remote.local_endpoints().count(), 0);
    assert!(remote.selection.has_any_endpoints);
    assert!(
        !get("empty", "http", Protocol::Tcp)
            .selection
            .has_any_endpoints
    );
    assert_eq!(get("web", "http", Protocol::Tcp).endpoints.len(), 3);
    assert_eq!(
        get("web", "http", Protocol::Tcp)
            .cluster_endpoints()
            .count(),
        2
    );
    assert_eq!(s.node().addresses, [ip("192.168.56.10")]);

    // The IPv6 proxier sees the dual-stack Service only.
    let mut p6 = PendingChanges::new(
        IpFamily::V6,
        fixtures::EXAMPLE_NODE,
        ServiceFilter::default(),
    );
    for svc in &m.services {
        p6.on_service_add(svc);
    }
    for sl in &m.endpoint_slices {
        p6.on_endpoint_slice_add(sl);
    }
    let mut s6 = ProxyState::new(IpFamily::V6, NodeInfo::named(fixtures::EXAMPLE_NODE));
    s6.apply(&mut p6);
    assert_eq!(s6.len(), 1);
    assert_eq!(
        endpoint_ips(&s6, &spn("dual", "http", Protocol::Tcp)),
        ["[fd00:244:1::81]:8080"]
    );
}

#[test]
fn trigger_times_of_slice_changes_are_collected() {
    let mut p = pending();
    let with_trigger = SliceBuilder::new("ns1", "a-1", "a")
        .port("p80", 8080, "TCP")
        .endpoint(EndpointBuilder::ready("10.0.0.1"))
        .annotation(
            "endpoints.kubernetes.io/last-change-trigger-time",
            "2023-11-14T22:13:20Z",
        )
        .build();
    p.on_endpoint_slice_add(&with_trigger);
    p.on_endpoint_slice_add(&slice("b-1", "b", ("p80", 8080, "TCP"), &["10.0.0.2"]));
    let times = p.take_trigger_times();
    assert_eq!(times.len(), 1);
    assert_eq!(
        proxy_core::rfc3339::format(times[0]),
        "2023-11-14T22:13:20.000Z"
    );
    assert!(p.take_trigger_times().is_empty());
}

#[test]
fn a_node_being_deleted_or_tainted_for_deletion_is_not_eligible() {
    use k8s_openapi::api::core::v1::{NodeSpec, Taint};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use proxy_core::NodeHandler;

    let mut p = pending();
    let mut node = NodeBuilder::new(NODE).build();
    p.on_node_change(&node);
    assert!(p.node_eligible());
    node.spec = Some(NodeSpec {
        taints: Some(vec![Taint {
            key: proxy_core::pending::TO_BE_DELETED_TAINT.into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        }]),
        ..Default::default()
    });
    p.on_node_change(&node);
    assert!(!p.node_eligible(), "tainted by the cluster autoscaler");
    node.spec = None;
    p.on_node_change(&node);
    assert!(p.node_eligible(), "the taint is gone");
    node.metadata.deletion_timestamp = Some(Time(Default::default()));
    p.on_node_change(&node);
    assert!(!p.node_eligible(), "being deleted");
    p.on_node_delete(&node);
    assert!(!p.node_eligible(), "deleted");
}
