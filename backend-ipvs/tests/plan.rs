//! What IPVS mode plans for each kind of Service, without a kernel: the virtual services and
//! their servers, the set entries, the bound addresses.

use std::net::IpAddr;

use backend_ipvs::plan::{port_plan, Plan, PlanContext, PortPlan};
use backend_ipvs::sets::IpvsSet;
use backend_ipvs::{ServerKey, ServiceKey};
use fixtures::builder::{EndpointBuilder, ServiceBuilder, SliceBuilder};
use ipset_tool::{Entry, PortProtocol};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kproxy_netlink::ipvs::{SVC_F_PERSISTENT, SVC_F_SCHED2};
use proxy_core::{
    EndpointSliceHandler, IpFamily, NodeInfo, PendingChanges, ProxyState, ServiceFilter,
    ServiceHandler,
};

const NODE: &str = "node-a";
const NODE_IP: &str = "192.168.56.10";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ctx() -> PlanContext {
    PlanContext {
        family: IpFamily::V4,
        scheduler: "rr".into(),
        node_name: NODE.into(),
        node_port_ips: vec![ip(NODE_IP)],
        node_addresses: [ip(NODE_IP)].into(),
        primary_ip: Some(ip(NODE_IP)),
    }
}

fn state(objects: &[(Service, EndpointSlice)]) -> ProxyState {
    let mut p = PendingChanges::new(IpFamily::V4, NODE, ServiceFilter::default());
    for (s, e) in objects {
        p.on_service_add(s);
        p.on_endpoint_slice_add(e);
    }
    let mut st = ProxyState::new(IpFamily::V4, NodeInfo::named(NODE));
    st.apply(&mut p);
    st
}

fn only_plan(objects: &[(Service, EndpointSlice)], ctx: &PlanContext) -> PortPlan {
    let st = state(objects);
    let (_, entry) = st.service_ports().next().expect("one port");
    port_plan(entry, ctx)
}

fn slice(svc: &str, endpoints: &[(&str, &str)]) -> EndpointSlice {
    let mut b = SliceBuilder::new("ns1", &format!("{svc}-1"), svc).port("http", 8080, "TCP");
    for (addr, node) in endpoints {
        b = b.endpoint(EndpointBuilder::ready(addr).node(node));
    }
    b.build()
}

fn servers_of(plan: &PortPlan, address: &str, port: u16) -> Vec<String> {
    plan.services
        .iter()
        .find(|p| p.service.address == ip(address) && p.service.port == port)
        .unwrap_or_else(|| panic!("no virtual service {address}:{port} in {plan:?}"))
        .servers
        .iter()
        .map(|r| format!("{}:{}", r.address, r.port))
        .collect()
}

#[test]
fn a_nodeport_service_answers_on_its_cluster_ip_and_the_node_with_the_sets_upstream_uses() {
    let svc = ServiceBuilder::new("ns1", "web", "10.96.0.10")
        .type_("NodePort")
        .node_port("http", 80, "TCP", 30080)
        .build();
    let plan = only_plan(
        &[(
            svc,
            slice("web", &[("10.244.1.5", NODE), ("10.244.2.5", "node-b")]),
        )],
        &ctx(),
    );
    assert_eq!(
        servers_of(&plan, "10.96.0.10", 80),
        ["10.244.1.5:8080", "10.244.2.5:8080"]
    );
    assert_eq!(
        servers_of(&plan, NODE_IP, 30080),
        ["10.244.1.5:8080", "10.244.2.5:8080"]
    );
    assert_eq!(
        plan.bound,
        vec![ip("10.96.0.10")],
        "node addresses are never bound"
    );
    let has = |set: IpvsSet, e: Entry| plan.entries.contains(&(set, e));
    assert!(has(
        IpvsSet::ClusterIp,
        Entry::IpPort {
            ip: ip("10.96.0.10"),
            protocol: PortProtocol::Tcp,
            port: 80
        }
    ));
    assert!(has(IpvsSet::NodePortTcp, Entry::Port(30080)));
    assert!(!has(IpvsSet::NodePortLocalTcp, Entry::Port(30080)));
    // Only the local endpoint is a hairpin candidate.
    assert!(has(
        IpvsSet::LoopBack,
        Entry::IpPortIp {
            ip: ip("10.244.1.5"),
            protocol: PortProtocol::Tcp,
            port: 8080,
            ip2: ip("10.244.1.5")
        }
    ));
    assert_eq!(
        plan.entries
            .iter()
            .filter(|(s, _)| *s == IpvsSet::LoopBack)
            .count(),
        1
    );
}

#[test]
fn local_external_policy_uses_local_endpoints_and_falls_back_to_the_cluster_without_them() {
    let svc = || {
        ServiceBuilder::new("ns1", "lb", "10.96.0.20")
            .type_("LoadBalancer")
            .node_port("http", 80, "TCP", 30090)
            .ingress_ip("203.0.113.50")
            .external_traffic_local()
            .health_check_node_port(32100)
            .build()
    };
    let with_local = only_plan(
        &[(
            svc(),
            slice("lb", &[("10.244.1.5", NODE), ("10.244.2.5", "node-b")]),
        )],
        &ctx(),
    );
    assert_eq!(
        servers_of(&with_local, "203.0.113.50", 80),
        ["10.244.1.5:8080"]
    );
    assert_eq!(servers_of(&with_local, NODE_IP, 30090), ["10.244.1.5:8080"]);
    // The cluster IP keeps the Cluster internal policy.
    assert_eq!(servers_of(&with_local, "10.96.0.20", 80).len(), 2);
    assert!(with_local
        .entries
        .contains(&(IpvsSet::NodePortLocalTcp, Entry::Port(30090))));
    assert!(with_local
        .entries
        .contains(&(IpvsSet::HealthCheckNodePort, Entry::Port(32100))));
    assert!(with_local.entries.contains(&(
        IpvsSet::LoadBalancerLocal,
        Entry::IpPort {
            ip: ip("203.0.113.50"),
            protocol: PortProtocol::Tcp,
            port: 80
        }
    )));
    assert_eq!(with_local.bound, vec![ip("10.96.0.20"), ip("203.0.113.50")]);

    // No endpoint here: pods and the node still reach the LoadBalancer IP (kubernetes#93456).
    let remote_only = only_plan(&[(svc(), slice("lb", &[("10.244.2.5", "node-b")]))], &ctx());
    assert_eq!(
        servers_of(&remote_only, "203.0.113.50", 80),
        ["10.244.2.5:8080"]
    );
}

#[test]
fn local_internal_policy_without_local_endpoints_leaves_the_cluster_ip_without_servers() {
    let svc = ServiceBuilder::new("ns1", "itp", "10.96.0.30")
        .port("http", 80, "TCP")
        .internal_traffic_local()
        .build();
    let plan = only_plan(&[(svc, slice("itp", &[("10.244.2.5", "node-b")]))], &ctx());
    assert!(servers_of(&plan, "10.96.0.30", 80).is_empty());
}

#[test]
fn source_ranges_fill_the_firewall_sets_and_the_node_is_let_in_only_when_a_range_covers_it() {
    let svc = |ranges: &[&str]| {
        ServiceBuilder::new("ns1", "fw", "10.96.0.40")
            .type_("LoadBalancer")
            .node_port("http", 80, "TCP", 30091)
            .ingress_ip("203.0.113.60")
            .source_ranges(ranges)
            .build()
    };
    let lb = ip("203.0.113.60");
    let outside = only_plan(&[(svc(&["198.51.100.0/24"]), slice("fw", &[]))], &ctx());
    assert!(outside.entries.contains(&(
        IpvsSet::LoadBalancerSourceCidr,
        Entry::IpPortNet {
            ip: lb,
            protocol: PortProtocol::Tcp,
            port: 80,
            net: "198.51.100.0/24".parse().unwrap()
        }
    )));
    assert!(outside
        .entries
        .iter()
        .any(|(s, _)| *s == IpvsSet::LoadBalancerFw));
    assert_eq!(
        outside.no_node_access,
        vec![(lb, proxy_core::Protocol::Tcp, 80)]
    );
    let covering = only_plan(&[(svc(&["192.168.56.0/24"]), slice("fw", &[]))], &ctx());
    assert!(covering.no_node_access.is_empty());
    assert!(covering.entries.contains(&(
        IpvsSet::LoadBalancerSourceIp,
        Entry::IpPortIp {
            ip: lb,
            protocol: PortProtocol::Tcp,
            port: 80,
            ip2: lb
        }
    )));
}

#[test]
fn affinity_is_persistence_and_mh_hashes_source_ports() {
    let svc = ServiceBuilder::new("ns1", "sticky", "10.96.0.50")
        .port("http", 80, "TCP")
        .client_ip_affinity(Some(600))
        .build();
    let objects = [(svc, slice("sticky", &[("10.244.1.5", NODE)]))];
    let plan = only_plan(&objects, &ctx());
    let vs = &plan.services[0].service;
    assert_eq!((vs.flags, vs.timeout), (SVC_F_PERSISTENT, 600));
    let mh = PlanContext {
        scheduler: "mh".into(),
        ..ctx()
    };
    let plan = only_plan(&objects, &mh);
    let vs = &plan.services[0].service;
    assert_eq!(vs.flags, SVC_F_PERSISTENT | SVC_F_SCHED2);
    assert_eq!(vs.scheduler, "mh");
}

#[test]
fn sctp_node_ports_are_hash_entries_per_node_address_and_external_ips_of_the_node_are_not_bound() {
    let svc = ServiceBuilder::new("ns1", "sctp", "10.96.0.60")
        .type_("NodePort")
        .node_port("diameter", 3868, "SCTP", 30868)
        .external_ips(&[NODE_IP, "192.0.2.7"])
        .build();
    let sl = SliceBuilder::new("ns1", "sctp-1", "sctp")
        .port("diameter", 3868, "SCTP")
        .endpoint(EndpointBuilder::ready("10.244.1.5").node(NODE))
        .build();
    let plan = only_plan(&[(svc, sl)], &ctx());
    assert!(plan.entries.contains(&(
        IpvsSet::NodePortSctp,
        Entry::IpPort {
            ip: ip(NODE_IP),
            protocol: PortProtocol::Sctp,
            port: 30868
        }
    )));
    assert_eq!(plan.bound, vec![ip("10.96.0.60"), ip("192.0.2.7")]);
    assert_eq!(
        plan.services
            .iter()
            .filter(|p| p.service.protocol == 132)
            .count(),
        4
    );
}

#[test]
fn the_whole_plan_of_the_examples_has_a_virtual_service_per_frontend() {
    let m = fixtures::examples();
    let mut p = PendingChanges::new(
        IpFamily::V4,
        fixtures::EXAMPLE_NODE,
        ServiceFilter::default(),
    );
    m.services.iter().for_each(|s| p.on_service_add(s));
    m.endpoint_slices
        .iter()
        .for_each(|s| p.on_endpoint_slice_add(s));
    let mut st = ProxyState::new(IpFamily::V4, NodeInfo::named(fixtures::EXAMPLE_NODE));
    st.apply(&mut p);
    let plan = Plan::of_state(&st, &ctx());
    let frontends: usize = st
        .service_ports()
        .map(|(_, e)| {
            let s = &e.service;
            1 + s.external_ips.len()
                + s.load_balancer_ips.len()
                + usize::from(s.node_port.is_some())
        })
        .sum();
    assert_eq!(plan.services.len(), frontends);
    let key = ServiceKey {
        address: ip("172.30.0.10"),
        protocol: 6,
        port: 80,
    };
    let (_, servers) = &plan.services[&key];
    assert!(servers.contains_key(&ServerKey {
        address: ip("10.244.1.10"),
        port: 8080
    }));
    // KUBE-IPVS-IPS holds exactly the bound addresses.
    let ipvs_ips: Vec<Entry> = plan.entries[&IpvsSet::IpvsIps].iter().copied().collect();
    let bound: Vec<Entry> = plan.bound.iter().map(|a| Entry::Ip(*a)).collect();
    assert_eq!(ipvs_ips, bound);
}
