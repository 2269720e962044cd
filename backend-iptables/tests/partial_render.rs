//! Partial renders: applied on top of the previous full render, they must give the same rules as a
//! fresh full render of the new state, and their size must follow the change.

mod common;

use backend_iptables::{RenderConfig, Renderer};
use fixtures::builder::{EndpointBuilder, ServiceBuilder, SliceBuilder};
use iptables_tool::ruleset::Ruleset;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use proxy_core::{
    EndpointSliceHandler, IpFamily, NodeInfo, PendingChanges, ProxyState, ServiceFilter,
    ServiceHandler,
};

/// A proxier-in-miniature: the state, the renderer and the fake kernel, kept in step.
struct Harness {
    pending: PendingChanges,
    state: ProxyState,
    renderer: Renderer,
    kernel: Ruleset,
    config: RenderConfig,
}

impl Harness {
    fn new(node: &str, config: RenderConfig) -> Self {
        Self {
            pending: PendingChanges::new(IpFamily::V4, node, ServiceFilter::default()),
            state: ProxyState::new(IpFamily::V4, NodeInfo::named(node)),
            renderer: Renderer::new(config.clone()).unwrap(),
            kernel: Ruleset::new(),
            config,
        }
    }

    /// Applies pending changes through a partial render; returns the payload size and whether it
    /// was full.
    fn sync(&mut self) -> (usize, bool, String) {
        let diff = self.state.apply(&mut self.pending);
        let (body, summary) = self.renderer.render_string(&self.state, &diff);
        let (len, full) = (summary.bytes, summary.full);
        assert_eq!(len, body.len());
        self.kernel
            .apply_restore(&body)
            .unwrap_or_else(|e| panic!("restore failed: {e}\n{body}"));
        (len, full, body)
    }

    /// Checks the kernel against a fresh full render of the current state.
    fn check(&self) {
        let mut fresh = Renderer::new(self.config.clone()).unwrap();
        let mut expected = Ruleset::new();
        expected
            .apply_restore(&fresh.render_full_string(&self.state))
            .unwrap();
        self.kernel
            .equivalent_to(&expected)
            .unwrap_or_else(|e| panic!("partial syncs drifted from a full render: {e}"));
        assert_eq!(self.renderer.counts(), fresh.counts(), "rule counts");
    }
}

fn config() -> RenderConfig {
    let c = RenderConfig::new(IpFamily::V4);
    let mut c = c.with_cluster_cidr(Some("10.0.0.0/8".parse().unwrap()));
    c.node_ips = vec!["192.168.0.1".parse().unwrap()];
    c
}

fn slice(name: &str, service: &str, ips: &[&str], local: &str) -> EndpointSlice {
    let mut b = SliceBuilder::new("ns1", name, service).port("p80", 8080, "TCP");
    for (i, ip) in ips.iter().enumerate() {
        let node = if i == 0 { local } else { "other" };
        b = b.endpoint(EndpointBuilder::ready(ip).node(node));
    }
    b.build()
}

fn lb(name: &str, ip: &str, local: bool, ranges: &[&str]) -> Service {
    let mut b = ServiceBuilder::new("ns1", name, ip)
        .type_("LoadBalancer")
        .node_port(
            "p80",
            80,
            "TCP",
            30000 + ip.rsplit('.').next().unwrap().parse::<i32>().unwrap(),
        )
        .ingress_ip(&format!("203.0.113.{}", ip.rsplit('.').next().unwrap()))
        .source_ranges(ranges);
    if local {
        b = b.external_traffic_local().health_check_node_port(32000);
    }
    b.build()
}

#[test]
fn a_sequence_of_changes_matches_full_renders() {
    let mut h = Harness::new("me", config());
    let a = ServiceBuilder::new("ns1", "a", "172.30.0.1")
        .port("p80", 80, "TCP")
        .build();
    let b = lb("b", "172.30.0.2", false, &["198.51.100.0/24"]);
    let c = ServiceBuilder::new("ns1", "c", "172.30.0.3")
        .port("p80", 80, "TCP")
        .client_ip_affinity(None)
        .external_ips(&["192.0.2.3"])
        .build();
    let sa = slice("a-1", "a", &["10.0.0.1", "10.0.0.2"], "me");
    let sb = slice("b-1", "b", &["10.0.1.1"], "me");
    h.pending.on_service_add(&a);
    h.pending.on_service_add(&b);
    h.pending.on_service_add(&c);
    h.pending.on_endpoint_slice_add(&sa);
    h.pending.on_endpoint_slice_add(&sb);
    let (_, full, _) = h.sync();
    assert!(full, "the first sync is full");
    h.check();

    // One endpoint replaced.
    let sa2 = slice("a-1", "a", &["10.0.0.1", "10.0.0.3"], "me");
    h.pending.on_endpoint_slice_update(&sa, &sa2);
    let (_, full, body) = h.sync();
    assert!(!full);
    assert!(
        !body.contains("KUBE-SVC-") || body.contains("-X KUBE-SEP-"),
        "{body}"
    );
    h.check();

    // A service gains endpoints (REJECT goes away), another switches to Local with no local one.
    let sc = slice("c-1", "c", &["10.0.2.1"], "other");
    h.pending.on_endpoint_slice_add(&sc);
    let b_local = lb("b", "172.30.0.2", true, &["198.51.100.0/24"]);
    h.pending.on_service_update(&b, &b_local);
    h.sync();
    h.check();

    // Source ranges change, affinity removed, a service deleted, its slice deleted.
    let b2 = lb(
        "b",
        "172.30.0.2",
        true,
        &["198.51.100.0/25", "192.168.0.0/16"],
    );
    h.pending.on_service_update(&b_local, &b2);
    let c2 = ServiceBuilder::new("ns1", "c", "172.30.0.3")
        .port("p80", 80, "TCP")
        .build();
    h.pending.on_service_update(&c, &c2);
    h.pending.on_service_delete(&a);
    h.pending.on_endpoint_slice_delete(&sa2);
    let (_, full, body) = h.sync();
    assert!(!full);
    assert!(
        body.contains("-X KUBE-SVC-"),
        "the deleted service's chains are removed:\n{body}"
    );
    h.check();

    // Endpoints all gone: back to REJECT.
    h.pending.on_endpoint_slice_delete(&sc);
    h.sync();
    h.check();

    // Nothing pending: nothing to restore.
    let (len, full, _) = h.sync();
    assert_eq!((len, full), (0, false));
}

#[test]
fn invalidate_forces_a_full_render() {
    let mut h = Harness::new("me", config());
    h.pending.on_service_add(
        &ServiceBuilder::new("ns1", "a", "172.30.0.1")
            .port("p80", 80, "TCP")
            .build(),
    );
    h.sync();
    h.renderer.invalidate();
    h.pending.on_service_add(
        &ServiceBuilder::new("ns1", "b", "172.30.0.2")
            .port("p80", 80, "TCP")
            .build(),
    );
    let (_, full, _) = h.sync();
    assert!(full);
    h.check();
}

#[test]
fn full_render_deletes_chains_it_no_longer_needs() {
    let mut h = Harness::new("me", config());
    let a = ServiceBuilder::new("ns1", "a", "172.30.0.1")
        .port("p80", 80, "TCP")
        .build();
    let sa = slice("a-1", "a", &["10.0.0.1"], "me");
    h.pending.on_service_add(&a);
    h.pending.on_endpoint_slice_add(&sa);
    h.sync();
    h.pending.on_service_delete(&a);
    h.state.apply(&mut h.pending);
    let body = h.renderer.render_full_string(&h.state);
    assert!(body.contains("-X KUBE-SVC-"), "{body}");
    h.kernel.apply_restore(&body).unwrap();
    h.check();
}

#[test]
fn one_endpoint_change_at_20000_services_is_small_and_exact() {
    let manifests = fixtures::generate(&fixtures::ScaleConfig::new(20_000, 10));
    let mut h = Harness::new("bench-node", config());
    for s in &manifests.services {
        h.pending.on_service_add(s);
    }
    for s in &manifests.endpoint_slices {
        h.pending.on_endpoint_slice_add(s);
    }
    let (full_len, full, _) = h.sync();
    assert!(full);
    let old = &manifests.endpoint_slices[12_345];
    let mut new = old.clone();
    new.endpoints.as_mut().unwrap()[3].addresses = vec!["11.1.2.3".into()];
    h.pending.on_endpoint_slice_update(old, &new);
    let (len, full, body) = h.sync();
    assert!(!full);
    assert!(len < 4096, "partial payload {len} bytes:\n{body}");
    println!("partial payload {len} bytes (full {full_len}):\n{body}");
    assert!(
        full_len > 100 * len,
        "full render {full_len} bytes vs partial {len}"
    );
    h.check();
}

#[test]
fn list_first_starts_full_renders_only_and_changes_nothing() {
    let mut h = Harness::new("node-a", config());
    h.renderer.set_list_first(true);
    h.pending.on_service_add(&lb("web", "10.0.0.1", false, &[]));
    let first = slice("web-1", "web", &["10.244.1.2"], "node-a");
    h.pending.on_endpoint_slice_add(&first);
    let (_, full, body) = h.sync();
    assert!(full);
    assert!(
        body.contains("*nat\n-S\n"),
        "full render lists first:\n{body}"
    );
    assert_eq!(
        body.matches("\n-S\n").count(),
        1,
        "only the nat table is listed"
    );
    h.check();

    h.pending
        .on_endpoint_slice_update(&first, &slice("web-1", "web", &["10.244.1.3"], "node-a"));
    let (_, full, body) = h.sync();
    assert!(!full);
    assert!(
        !body.contains("\n-S\n"),
        "partial renders do not list:\n{body}"
    );
    h.check();
}
