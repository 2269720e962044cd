//! Frontend ownership: an externalIP or load-balancer IP that is another Service's cluster IP, or
//! lies inside a ServiceCIDR, is not handed to the modes; the refusal follows the other
//! Service's cluster IP and the ranges as they change, in either order.

use std::net::IpAddr;

use fixtures::builder::ServiceBuilder;
use k8s_openapi::api::networking::v1::{ServiceCIDR, ServiceCIDRSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use proxy_core::frontends::{FrontendKind, RefusalReason};
use proxy_core::{
    IpFamily, NamespacedName, NodeInfo, PendingChanges, Protocol, ProxyState, ServiceCidrHandler,
    ServiceFilter, ServiceHandler, ServicePortName,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn port_of(name: &str) -> ServicePortName {
    ServicePortName::new(NamespacedName::new("ns1", name), "p80", Protocol::Tcp)
}

fn external_ips(state: &ProxyState, name: &str) -> Vec<IpAddr> {
    state
        .get(&port_of(name))
        .unwrap()
        .service
        .external_ips
        .clone()
}

fn lb_ips(state: &ProxyState, name: &str) -> Vec<IpAddr> {
    state
        .get(&port_of(name))
        .unwrap()
        .service
        .load_balancer_ips
        .clone()
}

struct Bed {
    pending: PendingChanges,
    state: ProxyState,
}

impl Bed {
    fn new() -> Self {
        let mut b = Self {
            pending: PendingChanges::new(IpFamily::V4, "n", ServiceFilter::default()),
            state: ProxyState::new(IpFamily::V4, NodeInfo::named("n")),
        };
        b.sync();
        b
    }
    fn sync(&mut self) -> proxy_core::StateDiff {
        self.state.apply(&mut self.pending)
    }
}

fn web() -> k8s_openapi::api::core::v1::Service {
    ServiceBuilder::new("ns1", "web", "10.96.0.10")
        .port("p80", 80, "TCP")
        .build()
}

fn hijacker(ips: &[&str]) -> k8s_openapi::api::core::v1::Service {
    ServiceBuilder::new("ns1", "ext", "10.96.0.20")
        .port("p80", 80, "TCP")
        .external_ips(ips)
        .build()
}

#[test]
fn an_external_ip_that_is_another_services_cluster_ip_is_refused_until_that_service_goes() {
    let mut b = Bed::new();
    b.pending.on_service_add(&web());
    b.pending
        .on_service_add(&hijacker(&["10.96.0.10", "192.168.56.100"]));
    b.sync();
    assert_eq!(external_ips(&b.state, "ext"), [ip("192.168.56.100")]);
    let refused = &b.state.refused_frontends()[&port_of("ext")];
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].address, ip("10.96.0.10"));
    assert_eq!(refused[0].kind, FrontendKind::ExternalIp);
    assert_eq!(
        refused[0].reason,
        RefusalReason::ClusterIpOf(NamespacedName::new("ns1", "web"))
    );
    assert_eq!(
        refused[0].to_string(),
        "externalIP 10.96.0.10 is the cluster IP of Service ns1/web"
    );
    assert_eq!(b.state.refused_frontend_count(), 1);

    // web goes: the address is nobody's cluster IP any more, so ext gets it (a change for it).
    b.pending.on_service_delete(&web());
    let diff = b.sync();
    assert!(
        diff.changed.iter().any(|c| c.name == port_of("ext")),
        "{diff:?}"
    );
    assert_eq!(
        external_ips(&b.state, "ext"),
        [ip("10.96.0.10"), ip("192.168.56.100")]
    );
    assert_eq!(b.state.refused_frontend_count(), 0);

    // web comes back: ext loses it again.
    b.pending.on_service_add(&web());
    let diff = b.sync();
    assert!(
        diff.changed.iter().any(|c| c.name == port_of("ext")),
        "{diff:?}"
    );
    assert_eq!(external_ips(&b.state, "ext"), [ip("192.168.56.100")]);
}

#[test]
fn a_load_balancer_ip_claimed_before_the_cluster_ip_exists_is_refused_when_it_appears() {
    let mut b = Bed::new();
    let lb = ServiceBuilder::new("ns1", "lb", "10.96.0.30")
        .type_("LoadBalancer")
        .port("p80", 80, "TCP")
        .ingress_ip("10.96.0.10")
        .build();
    b.pending.on_service_add(&lb);
    b.sync();
    assert_eq!(lb_ips(&b.state, "lb"), [ip("10.96.0.10")]);
    b.pending.on_service_add(&web());
    b.sync();
    assert!(lb_ips(&b.state, "lb").is_empty());
    let refused = &b.state.refused_frontends()[&port_of("lb")];
    assert_eq!(refused[0].kind, FrontendKind::LoadBalancerIp);
    // The owner itself is untouched.
    assert!(b.state.get(&port_of("web")).is_some());
}

#[test]
fn addresses_inside_a_service_cidr_are_refused_and_follow_the_ranges() {
    let mut b = Bed::new();
    b.pending
        .on_service_add(&hijacker(&["10.96.5.5", "192.168.56.100"]));
    b.sync();
    assert_eq!(external_ips(&b.state, "ext").len(), 2);
    let cidr = ServiceCIDR {
        metadata: ObjectMeta {
            name: Some("kubernetes".into()),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceCIDRSpec {
            cidrs: Some(vec!["10.96.0.0/16".into()]),
        }),
        status: None,
    };
    b.pending.on_service_cidr_change(&cidr);
    b.sync();
    assert_eq!(external_ips(&b.state, "ext"), [ip("192.168.56.100")]);
    assert_eq!(
        b.state.refused_frontends()[&port_of("ext")][0].reason,
        RefusalReason::InServiceCidr("10.96.0.0/16".parse().unwrap())
    );
    b.pending.on_service_cidr_delete(&cidr);
    b.sync();
    assert_eq!(external_ips(&b.state, "ext").len(), 2);
    assert_eq!(b.state.refused_frontend_count(), 0);
}

#[test]
fn a_service_may_list_its_own_cluster_ip_outside_any_range() {
    let mut b = Bed::new();
    let own = ServiceBuilder::new("ns1", "own", "10.96.0.40")
        .port("p80", 80, "TCP")
        .external_ips(&["10.96.0.40"])
        .build();
    b.pending.on_service_add(&own);
    b.sync();
    assert_eq!(external_ips(&b.state, "own"), [ip("10.96.0.40")]);
}
