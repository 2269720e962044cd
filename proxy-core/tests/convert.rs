//! Conversion of Services, EndpointSlices and Nodes into the model, including odd input.

use std::net::IpAddr;

use fixtures::builder::{EndpointBuilder, NodeBuilder, ServiceBuilder, SliceBuilder};
use proxy_core::convert::{
    node_info, service_ports, slice_info, Interner, ObjectKind, ServiceFilter, Skipped, Warnings,
};
use proxy_core::{
    IpFamily, NamespacedName, Protocol, ServicePortName, ServiceType, SessionAffinity,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn spn(ns: &str, name: &str, port: &str, protocol: Protocol) -> ServicePortName {
    ServicePortName::new(NamespacedName::new(ns, name), port, protocol)
}

fn convert(
    svc: &k8s_openapi::api::core::v1::Service,
) -> (proxy_core::convert::ServicePortMap, Warnings) {
    let mut w = Warnings::new();
    let m = service_ports(svc, IpFamily::V4, &ServiceFilter::default(), &mut w);
    (m, w)
}

#[test]
fn cluster_ip_service_with_two_ports() {
    let svc = ServiceBuilder::new("ns1", "web", "172.30.0.10")
        .port("http", 80, "TCP")
        .port("dns", 53, "UDP")
        .build();
    let (m, w) = convert(&svc);
    assert!(w.is_empty(), "{:?}", w.as_slice());
    assert_eq!(m.len(), 2);
    let http = &m[&spn("ns1", "web", "http", Protocol::Tcp)];
    assert_eq!(http.cluster_ip, ip("172.30.0.10"));
    assert_eq!(http.port, 80);
    assert_eq!(http.service_type, ServiceType::ClusterIp);
    assert_eq!(http.node_port, None);
    assert_eq!(http.session_affinity, SessionAffinity::None);
    assert!(!http.externally_accessible());
    assert!(http.uses_cluster_endpoints() && !http.uses_local_endpoints());
    assert_eq!(m[&spn("ns1", "web", "dns", Protocol::Udp)].port, 53);
}

#[test]
fn unnamed_single_port_and_default_protocol() {
    let mut svc = ServiceBuilder::new("ns1", "a", "172.30.0.1")
        .port("", 80, "TCP")
        .build();
    svc.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].protocol = None;
    let (m, w) = convert(&svc);
    assert!(w.is_empty());
    let (name, _) = m.iter().next().unwrap();
    assert_eq!(name.to_string(), "ns1/a");
    assert_eq!(name.protocol, Protocol::Tcp);
}

#[test]
fn node_port_and_load_balancer_fields() {
    let svc = ServiceBuilder::new("ns1", "lb", "172.30.0.30")
        .type_("LoadBalancer")
        .node_port("https", 443, "TCP", 30443)
        .ingress_ip("203.0.113.30")
        .ingress_ip_proxy_mode("203.0.113.31")
        .ingress_ip("2001:db8::1")
        .source_ranges(&[
            "198.51.100.0/24",
            " 192.0.2.0/25 ",
            "10.0.0.1/8",
            "2001:db8::/32",
        ])
        .external_traffic_local()
        .health_check_node_port(32000)
        .build();
    let (m, w) = convert(&svc);
    assert!(w.is_empty(), "{:?}", w.as_slice());
    let p = &m[&spn("ns1", "lb", "https", Protocol::Tcp)];
    assert_eq!(p.service_type, ServiceType::LoadBalancer);
    assert_eq!(p.node_port, Some(30443));
    assert_eq!(
        p.load_balancer_ips,
        vec![ip("203.0.113.30")],
        "Proxy-mode and v6 ingresses are not programmed"
    );
    let ranges: Vec<String> = p
        .load_balancer_source_ranges
        .iter()
        .map(|r| r.to_string())
        .collect();
    assert_eq!(ranges, ["198.51.100.0/24", "192.0.2.0/25", "10.0.0.0/8"]);
    assert!(p.external_policy_local);
    assert_eq!(p.health_check_node_port, Some(32000));
    assert!(p.externally_accessible());
    assert!(
        p.uses_cluster_endpoints(),
        "internal traffic still uses the cluster policy"
    );
    assert!(p.uses_local_endpoints());
}

#[test]
fn node_port_of_a_cluster_ip_service_is_ignored() {
    let svc = ServiceBuilder::new("ns1", "a", "172.30.0.1")
        .node_port("p", 80, "TCP", 30001)
        .external_traffic_local()
        .build();
    let (m, _) = convert(&svc);
    let p = m.values().next().unwrap();
    assert_eq!(p.node_port, None);
    assert!(
        !p.external_policy_local,
        "Local external policy needs external reachability"
    );
}

#[test]
fn health_check_port_only_for_local_load_balancers() {
    let svc = ServiceBuilder::new("ns1", "np", "172.30.0.1")
        .type_("NodePort")
        .node_port("p", 80, "TCP", 30001)
        .external_traffic_local()
        .health_check_node_port(32000)
        .build();
    let (m, _) = convert(&svc);
    assert_eq!(m.values().next().unwrap().health_check_node_port, None);
}

#[test]
fn external_ips_filtered_by_family_and_invalid_ones_warned() {
    let svc = ServiceBuilder::new("ns1", "ext", "172.30.0.40")
        .port("http", 80, "TCP")
        .external_ips(&["192.0.2.40", "fd00::40", "not-an-ip", "192.0.2.40"])
        .build();
    let (m, w) = convert(&svc);
    let p = m.values().next().unwrap();
    assert_eq!(p.external_ips, vec![ip("192.0.2.40")]);
    assert!(p.externally_accessible());
    assert_eq!(w.len(), 1);
    let warning = &w.as_slice()[0];
    assert_eq!(warning.kind, ObjectKind::Service);
    assert_eq!(warning.skipped, Skipped::Value);
    assert_eq!(warning.field, "spec.externalIPs[2]");
    assert!(warning.to_string().contains("ns1/ext"), "{warning}");
}

#[test]
fn invalid_source_range_is_dropped_with_a_warning() {
    let svc = ServiceBuilder::new("ns1", "lb", "172.30.0.30")
        .type_("LoadBalancer")
        .node_port("p", 80, "TCP", 30001)
        .source_ranges(&["198.51.100.0/24", "300.0.0.0/8", "10.0.0.1"])
        .build();
    let (m, w) = convert(&svc);
    assert_eq!(
        m.values().next().unwrap().load_balancer_source_ranges.len(),
        1
    );
    assert_eq!(w.len(), 2);
    assert!(w
        .as_slice()
        .iter()
        .all(|w| w.field.starts_with("spec.loadBalancerSourceRanges[")));
}

#[test]
fn dual_stack_gives_one_port_per_family() {
    let svc = ServiceBuilder::new("ns1", "dual", "172.30.0.81")
        .cluster_ips(&["172.30.0.81", "fd00:30::81"])
        .port("http", 80, "TCP")
        .external_ips(&["192.0.2.1", "2001:db8::1"])
        .build();
    let filter = ServiceFilter::default();
    let mut w = Warnings::new();
    let v4 = service_ports(&svc, IpFamily::V4, &filter, &mut w);
    let v6 = service_ports(&svc, IpFamily::V6, &filter, &mut w);
    assert!(w.is_empty());
    let (v4, v6) = (v4.values().next().unwrap(), v6.values().next().unwrap());
    assert_eq!(v4.cluster_ip, ip("172.30.0.81"));
    assert_eq!(v6.cluster_ip, ip("fd00:30::81"));
    assert_eq!(v4.external_ips, vec![ip("192.0.2.1")]);
    assert_eq!(v6.external_ips, vec![ip("2001:db8::1")]);

    let single = ServiceBuilder::new("ns1", "v4only", "172.30.0.1")
        .port("p", 80, "TCP")
        .build();
    assert!(service_ports(&single, IpFamily::V6, &filter, &mut w).is_empty());
    assert!(w.is_empty(), "another family is not an error");
}

#[test]
fn session_affinity_timeout_default_explicit_and_invalid() {
    let base = || ServiceBuilder::new("ns1", "s", "172.30.0.60").port("p", 80, "TCP");
    let timeout = |svc| {
        let (m, w) = convert(&svc);
        (
            m.values().next().unwrap().affinity_timeout_seconds(),
            w.len(),
        )
    };
    assert_eq!(
        timeout(base().client_ip_affinity(None).build()),
        (Some(10_800), 0)
    );
    assert_eq!(
        timeout(base().client_ip_affinity(Some(600)).build()),
        (Some(600), 0)
    );
    assert_eq!(
        timeout(base().client_ip_affinity(Some(0)).build()),
        (Some(10_800), 1)
    );
    assert_eq!(
        timeout(base().client_ip_affinity(Some(86_401)).build()),
        (Some(10_800), 1)
    );
    assert_eq!(timeout(base().build()), (None, 0));
}

#[test]
fn internal_traffic_policy_local() {
    let svc = ServiceBuilder::new("ns1", "i", "172.30.0.50")
        .port("p", 80, "TCP")
        .internal_traffic_local()
        .build();
    let (m, _) = convert(&svc);
    let p = m.values().next().unwrap();
    assert!(p.internal_policy_local);
    assert!(!p.uses_cluster_endpoints());
    assert!(p.uses_local_endpoints());
}

#[test]
fn services_that_produce_nothing_and_say_nothing() {
    let cases = [
        ServiceBuilder::new("ns1", "headless", "None")
            .port("p", 80, "TCP")
            .build(),
        ServiceBuilder::new("ns1", "en", "")
            .type_("ExternalName")
            .build(),
        ServiceBuilder::new("ns1", "unallocated", "")
            .port("p", 80, "TCP")
            .build(),
        ServiceBuilder::new("ns1", "other", "172.30.0.90")
            .port("p", 80, "TCP")
            .label("service.kubernetes.io/service-proxy-name", "other-proxy")
            .build(),
        ServiceBuilder::new("ns1", "hl", "172.30.0.91")
            .port("p", 80, "TCP")
            .label("service.kubernetes.io/headless", "")
            .build(),
    ];
    for svc in &cases {
        let (m, w) = convert(svc);
        assert!(
            m.is_empty(),
            "{:?} should produce nothing",
            svc.metadata.name
        );
        assert!(w.is_empty(), "{:?}: {:?}", svc.metadata.name, w.as_slice());
    }
}

#[test]
fn proxy_name_filter_selects_labelled_services_only() {
    let ours = ServiceFilter {
        proxy_name: Some("kproxy".into()),
    };
    let labelled = |v: &str| {
        ServiceBuilder::new("ns1", "s", "172.30.0.1")
            .port("p", 80, "TCP")
            .label("service.kubernetes.io/service-proxy-name", v)
            .build()
    };
    let plain = ServiceBuilder::new("ns1", "s", "172.30.0.1")
        .port("p", 80, "TCP")
        .build();
    let mut w = Warnings::new();
    assert_eq!(
        service_ports(&labelled("kproxy"), IpFamily::V4, &ours, &mut w).len(),
        1
    );
    assert!(service_ports(&labelled("other"), IpFamily::V4, &ours, &mut w).is_empty());
    assert!(service_ports(&plain, IpFamily::V4, &ours, &mut w).is_empty());
}

#[test]
fn invalid_cluster_ip_skips_the_service_with_a_warning() {
    let svc = ServiceBuilder::new("ns1", "broken", "172.30.0.999")
        .port("p", 80, "TCP")
        .build();
    let (m, w) = convert(&svc);
    assert!(m.is_empty());
    assert_eq!(w.len(), 1);
    let warning = &w.as_slice()[0];
    assert_eq!(warning.skipped, Skipped::Object);
    assert_eq!(warning.object, NamespacedName::new("ns1", "broken"));
    assert!(
        warning
            .to_string()
            .starts_with("Service ns1/broken: spec.clusterIPs[0]: invalid IP"),
        "{warning}"
    );
}

#[test]
fn bad_ports_are_skipped_and_good_ports_kept() {
    let svc = ServiceBuilder::new("ns1", "odd", "172.30.0.5")
        .port("zero", 0, "TCP")
        .port("big", 70_000, "TCP")
        .port("icmp", 1, "ICMP")
        .port("lower", 2, "tcp")
        .port("good", 80, "TCP")
        .port("good", 81, "TCP") // duplicate name and protocol
        .port("good", 81, "UDP") // same name, other protocol: fine
        .build();
    let (m, w) = convert(&svc);
    let names: Vec<String> = m.keys().map(|k| format!("{k}/{}", k.protocol)).collect();
    assert_eq!(names, ["ns1/odd:good/TCP", "ns1/odd:good/UDP"]);
    assert_eq!(m[&spn("ns1", "odd", "good", Protocol::Tcp)].port, 80);
    assert_eq!(w.len(), 5, "{:#?}", w.as_slice());
    assert!(w.as_slice().iter().all(|w| w.skipped == Skipped::Port));
    let text: Vec<String> = w.as_slice().iter().map(|w| w.to_string()).collect();
    assert!(text[0].contains("port 0 is outside 1-65535"), "{}", text[0]);
    assert!(text[2].contains("unknown protocol \"ICMP\""), "{}", text[2]);
    assert!(text[4].contains("duplicate port name"), "{}", text[4]);
}

#[test]
fn multiple_unnamed_ports_keep_the_first() {
    let svc = ServiceBuilder::new("ns1", "noname", "172.30.0.6")
        .port("", 80, "TCP")
        .port("", 81, "TCP")
        .build();
    let (m, w) = convert(&svc);
    assert_eq!(m.len(), 1);
    assert_eq!(m.values().next().unwrap().port, 80);
    assert_eq!(w.len(), 1);
}

#[test]
fn invalid_node_port_skips_the_port() {
    let svc = ServiceBuilder::new("ns1", "np", "172.30.0.7")
        .type_("NodePort")
        .node_port("a", 80, "TCP", 70_000)
        .node_port("b", 81, "TCP", 30081)
        .build();
    let (m, w) = convert(&svc);
    assert_eq!(m.len(), 1);
    assert_eq!(m.values().next().unwrap().node_port, Some(30081));
    assert_eq!(w.len(), 1);
}

#[test]
fn unknown_service_type_skips_the_service() {
    let svc = ServiceBuilder::new("ns1", "weird", "172.30.0.8")
        .type_("Magic")
        .port("p", 80, "TCP")
        .build();
    let (m, w) = convert(&svc);
    assert!(m.is_empty());
    assert_eq!(w.as_slice()[0].skipped, Skipped::Object);
}

#[test]
fn slice_conditions_node_zone_and_hints() {
    let slice = SliceBuilder::new("ns1", "web-1", "web")
        .port("http", 8080, "TCP")
        .endpoint(
            EndpointBuilder::ready("10.0.0.1")
                .node("n1")
                .zone("z1")
                .zone_hints(&["z1", "z0", "z1"]),
        )
        .endpoint(
            EndpointBuilder::with_conditions("10.0.0.2", false, true, true).node_hints(&["n2"]),
        )
        .build();
    let mut w = Warnings::new();
    let (key, info) = slice_info(&slice, IpFamily::V4, &mut Interner::new(), &mut w).unwrap();
    assert!(w.is_empty());
    assert_eq!(key, NamespacedName::new("ns1", "web-1"));
    assert_eq!(info.service, NamespacedName::new("ns1", "web"));
    assert_eq!(info.ports[0].port, 8080);
    let (a, b) = (&info.endpoints[0], &info.endpoints[1]);
    assert!(
        a.ready && a.serving && !a.terminating,
        "absent conditions: ready, serving, not terminating"
    );
    assert_eq!(a.node_name.as_deref(), Some("n1"));
    let topology = a.topology.as_ref().unwrap();
    assert_eq!(topology.zone.as_deref(), Some("z1"));
    let hints: Vec<&str> = topology.zone_hints.iter().map(|h| &**h).collect();
    assert_eq!(hints, ["z0", "z1"]);
    assert!(!b.ready && b.serving && b.terminating);
    let hints: Vec<&str> = b
        .topology
        .as_ref()
        .unwrap()
        .node_hints
        .iter()
        .map(|h| &**h)
        .collect();
    assert_eq!(hints, ["n2"]);
}

#[test]
fn slice_of_other_family_or_fqdn_is_not_ours() {
    let mut w = Warnings::new();
    let v6 = SliceBuilder::new("ns1", "s6", "svc")
        .address_type("IPv6")
        .build();
    let fqdn = SliceBuilder::new("ns1", "sf", "svc")
        .address_type("FQDN")
        .build();
    assert!(slice_info(&v6, IpFamily::V4, &mut Interner::new(), &mut w).is_none());
    assert!(slice_info(&fqdn, IpFamily::V4, &mut Interner::new(), &mut w).is_none());
    assert!(slice_info(&v6, IpFamily::V6, &mut Interner::new(), &mut w).is_some());
    assert!(w.is_empty());
}

#[test]
fn slice_odd_input_is_skipped_piecewise() {
    let mut slice = SliceBuilder::new("ns1", "odd-1", "odd")
        .port("good", 80, "TCP")
        .port("zero", 0, "TCP")
        .port("bad-proto", 81, "GRE")
        .endpoint(EndpointBuilder::ready("10.0.0.1"))
        .endpoint(EndpointBuilder::ready("10.0.0.300"))
        .endpoint(EndpointBuilder::ready("fd00::1"))
        .build();
    slice
        .ports
        .as_mut()
        .unwrap()
        .push(k8s_openapi::api::discovery::v1::EndpointPort {
            name: Some("all".into()),
            port: None,
            protocol: None,
            app_protocol: None,
        });
    slice
        .endpoints
        .as_mut()
        .unwrap()
        .push(k8s_openapi::api::discovery::v1::Endpoint::default());
    let mut w = Warnings::new();
    let (_, info) = slice_info(&slice, IpFamily::V4, &mut Interner::new(), &mut w).unwrap();
    assert_eq!(info.ports.len(), 1);
    assert_eq!(info.endpoints.len(), 1);
    let kinds: Vec<Skipped> = w.as_slice().iter().map(|w| w.skipped).collect();
    assert_eq!(
        kinds,
        [
            Skipped::Port,
            Skipped::Port,
            Skipped::Endpoint,
            Skipped::Endpoint,
            Skipped::Endpoint
        ]
    );
    assert!(w
        .as_slice()
        .iter()
        .all(|w| w.kind == ObjectKind::EndpointSlice
            && w.object == NamespacedName::new("ns1", "odd-1")));
}

#[test]
fn slice_without_service_label_is_skipped_with_warning() {
    let mut slice = SliceBuilder::new("ns1", "orphan", "x").build();
    slice.metadata.labels = None;
    let mut w = Warnings::new();
    assert!(slice_info(&slice, IpFamily::V4, &mut Interner::new(), &mut w).is_none());
    assert_eq!(w.len(), 1);
    assert!(w.as_slice()[0]
        .to_string()
        .contains("EndpointSlice ns1/orphan"));
}

#[test]
fn node_name_labels_and_addresses() {
    let node = NodeBuilder::new("node-a")
        .zone("zone-a")
        .address("InternalIP", "192.168.0.10")
        .address("Hostname", "node-a")
        .address("ExternalIP", "bogus")
        .address("ExternalIP", "2001:db8::10")
        .build();
    let mut w = Warnings::new();
    let info = node_info(&node, &mut w).unwrap();
    assert_eq!(info.name, "node-a");
    assert_eq!(info.zone(), Some("zone-a"));
    assert_eq!(info.addresses, vec![ip("192.168.0.10"), ip("2001:db8::10")]);
    assert_eq!(w.len(), 1);
    assert_eq!(
        w.as_slice()[0].to_string(),
        "Node node-a: status.addresses[2]: invalid IP address \"bogus\" (value ignored)"
    );
}

#[test]
fn names_that_could_break_rule_text_are_rejected() {
    let bad_name = ServiceBuilder::new("ns1", "evil\" -j ACCEPT", "172.30.0.9")
        .port("p", 80, "TCP")
        .build();
    let (m, w) = convert(&bad_name);
    assert!(m.is_empty());
    assert_eq!(w.as_slice()[0].skipped, Skipped::Object);
    assert!(
        !w.as_slice()[0].to_string().contains('"'),
        "{}",
        w.as_slice()[0]
    );

    let bad_ns = ServiceBuilder::new("Upper", "s", "172.30.0.9")
        .port("p", 80, "TCP")
        .build();
    assert!(convert(&bad_ns).0.is_empty());

    let bad_port = ServiceBuilder::new("ns1", "s", "172.30.0.9")
        .port("a b", 80, "TCP")
        .port("ok", 81, "TCP")
        .build();
    let (m, w) = convert(&bad_port);
    assert_eq!(m.len(), 1);
    assert_eq!(w.as_slice()[0].field, "spec.ports[0].name");
}
