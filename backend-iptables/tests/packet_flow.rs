//! Packet-flow tests: the rendered ruleset of the bundled examples, applied to the in-memory
//! iptables and walked packet by packet. These test behaviour, so they survive a harmless reordering
//! of the rules that would break a snapshot.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use backend_iptables::jumps::jump_rules;
use backend_iptables::{RenderConfig, Renderer};
use iptables_tool::ruleset::{Environment, Origin, Outcome, Packet, Ruleset, Verdict};
use proxy_core::{IpFamily, ProxyState};

const NODE_IP: &str = "192.168.56.10";
const POD_A: &str = "10.244.1.99"; // a pod on this node, inside the cluster CIDR
const OUTSIDE: &str = "198.51.100.7"; // an off-cluster client inside lb's source ranges
const DENIED: &str = "203.0.113.200"; // an off-cluster client outside them

struct Bed {
    rules: Ruleset,
    env: Environment,
}

impl Bed {
    fn new(state: &ProxyState, config: RenderConfig) -> Self {
        let guard = config.localhost_node_ports_active();
        let env = Environment {
            local_addresses: config.node_ips.clone(),
            recent: BTreeSet::new(),
        };
        let mut r = Renderer::new(config).unwrap();
        let text = r.render_full_string(state);
        let mut rules = Ruleset::new();
        rules
            .apply_restore(&text)
            .expect("the fake iptables accepts the render");
        rules.add_jumps(&jump_rules(guard)).unwrap();
        Self { rules, env }
    }

    fn examples() -> Self {
        let state = common::examples_state(IpFamily::V4);
        let config = common::examples_config(IpFamily::V4, &state);
        Self::new(&state, config)
    }

    fn send(&self, from: &str, to: &str, protocol: &'static str, origin: Origin) -> Vec<Outcome> {
        let packet = Packet {
            source: from.parse().unwrap(),
            destination: to.parse().unwrap(),
            protocol,
            origin,
        };
        let outcomes = self.rules.evaluate(&packet, &self.env);
        let total: f64 = outcomes.iter().map(|o| o.probability).sum();
        assert!((total - 1.0).abs() < 1e-9, "probabilities sum to {total}");
        outcomes
    }

    fn tcp(&self, from: &str, to: &str) -> Vec<Outcome> {
        self.send(from, to, "tcp", Origin::External)
    }
}

fn dnat(o: &Outcome) -> Option<SocketAddr> {
    match o.verdict {
        Verdict::Accepted { dnat } => dnat,
        _ => None,
    }
}

/// The set of DNAT destinations over every outcome, and whether every outcome is masqueraded.
fn destinations(outcomes: &[Outcome]) -> (BTreeSet<String>, bool) {
    let set = outcomes
        .iter()
        .map(|o| match &o.verdict {
            Verdict::Accepted { dnat: Some(d) } => d.to_string(),
            Verdict::Accepted { dnat: None } => "ACCEPT".into(),
            Verdict::Rejected => "REJECT".into(),
            Verdict::Dropped => "DROP".into(),
        })
        .collect();
    (set, outcomes.iter().all(|o| o.masqueraded))
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn cluster_ip_from_a_pod_is_spread_and_not_masqueraded() {
    let bed = Bed::examples();
    let out = bed.tcp(POD_A, "172.30.0.10:80");
    assert_eq!(
        destinations(&out),
        (set(&["10.244.1.10:8080", "10.244.2.10:8080"]), false)
    );
    for o in &out {
        assert!((o.probability - 0.5).abs() < 1e-9, "{o:?}");
        assert!(!o.masqueraded);
    }
}

#[test]
fn cluster_ip_from_off_cluster_is_masqueraded() {
    let bed = Bed::examples();
    let out = bed.tcp(OUTSIDE, "172.30.0.10:80");
    assert_eq!(
        destinations(&out),
        (set(&["10.244.1.10:8080", "10.244.2.10:8080"]), true)
    );
}

#[test]
fn cluster_ip_from_the_node_itself() {
    let bed = Bed::examples();
    let out = bed.send(NODE_IP, "172.30.0.10:80", "tcp", Origin::LocalProcess);
    // The node's address is outside the pod network: masqueraded, like any off-cluster source.
    assert_eq!(
        destinations(&out),
        (set(&["10.244.1.10:8080", "10.244.2.10:8080"]), true)
    );
}

#[test]
fn other_ports_and_addresses_are_not_touched() {
    let bed = Bed::examples();
    let out = bed.tcp(POD_A, "172.30.0.10:81");
    assert_eq!(destinations(&out), (set(&["ACCEPT"]), false));
    let out = bed.tcp(POD_A, "8.8.8.8:80");
    assert_eq!(destinations(&out), (set(&["ACCEPT"]), false));
}

#[test]
fn node_port_on_a_node_ip_from_outside() {
    let bed = Bed::examples();
    let out = bed.tcp(OUTSIDE, "192.168.56.10:30080");
    assert_eq!(
        destinations(&out),
        (set(&["10.244.1.20:8080", "10.244.2.20:8080"]), true)
    );
}

#[test]
fn node_port_on_localhost() {
    let bed = Bed::examples();
    let out = bed.send("127.0.0.1", "127.0.0.1:30080", "tcp", Origin::LocalProcess);
    assert_eq!(
        destinations(&out),
        (set(&["10.244.1.20:8080", "10.244.2.20:8080"]), true)
    );

    // With localhost NodePorts off, 127.0.0.1 is not a node port address.
    let state = common::examples_state(IpFamily::V4);
    let mut config = common::examples_config(IpFamily::V4, &state);
    config.localhost_node_ports = false;
    let bed = Bed::new(&state, config);
    let out = bed.send("127.0.0.1", "127.0.0.1:30080", "tcp", Origin::LocalProcess);
    assert_eq!(destinations(&out), (set(&["ACCEPT"]), false));
}

#[test]
fn localnet_guard_drops_outside_traffic_to_loopback() {
    let bed = Bed::examples();
    // CVE-2020-8558: a packet from another host addressed to 127.0.0.1 on a non-node-port.
    let out = bed.tcp("192.168.56.99", "127.0.0.1:8080");
    assert_eq!(destinations(&out).0, set(&["DROP"]));
}

#[test]
fn external_ip_is_masqueraded_and_spread() {
    let bed = Bed::examples();
    let out = bed.tcp(OUTSIDE, "192.0.2.40:80");
    assert_eq!(destinations(&out), (set(&["10.244.2.40:8080"]), true));
}

#[test]
fn load_balancer_source_ranges_allow_and_drop() {
    let bed = Bed::examples();
    let allowed = bed.tcp(OUTSIDE, "203.0.113.30:443");
    assert_eq!(
        destinations(&allowed),
        (set(&["10.244.1.30:8443", "10.244.2.30:8443"]), true)
    );
    let trimmed_range = bed.tcp("192.0.2.5", "203.0.113.30:443");
    assert_eq!(
        destinations(&trimmed_range).0,
        set(&["10.244.1.30:8443", "10.244.2.30:8443"])
    );
    let denied = bed.tcp(DENIED, "203.0.113.30:443");
    assert_eq!(destinations(&denied).0, set(&["DROP"]));
    // Node ports are not subject to source ranges (upstream behaviour).
    let node_port = bed.tcp(DENIED, "192.168.56.10:30443");
    assert_eq!(
        destinations(&node_port).0,
        set(&["10.244.1.30:8443", "10.244.2.30:8443"])
    );
}

#[test]
fn proxy_mode_ingress_is_not_programmed() {
    let bed = Bed::examples();
    let out = bed.tcp(OUTSIDE, "203.0.113.31:443");
    assert_eq!(destinations(&out), (set(&["ACCEPT"]), false));
}

#[test]
fn external_traffic_policy_local_with_a_local_endpoint_keeps_the_source() {
    let bed = Bed::examples();
    let out = bed.tcp(OUTSIDE, "203.0.113.32:80");
    assert_eq!(destinations(&out), (set(&["10.244.1.31:8080"]), false));
    let out = bed.tcp(OUTSIDE, "192.168.56.10:30081");
    assert_eq!(destinations(&out), (set(&["10.244.1.31:8080"]), false));
    // Pods short-circuit to all endpoints (as if via the load balancer), unmasqueraded.
    let out = bed.tcp(POD_A, "203.0.113.32:80");
    assert_eq!(
        destinations(&out),
        (set(&["10.244.1.31:8080", "10.244.2.31:8080"]), false)
    );
    // The node itself also reaches all endpoints, masqueraded.
    let out = bed.send(NODE_IP, "203.0.113.32:80", "tcp", Origin::LocalProcess);
    assert_eq!(
        destinations(&out),
        (set(&["10.244.1.31:8080", "10.244.2.31:8080"]), true)
    );
    // The health-check node port is accepted.
    let out = bed.tcp(OUTSIDE, "192.168.56.10:32000");
    assert_eq!(destinations(&out).0, set(&["ACCEPT"]));
}

#[test]
fn external_traffic_policy_local_without_a_local_endpoint_drops() {
    let bed = Bed::examples();
    assert_eq!(
        destinations(&bed.tcp(OUTSIDE, "203.0.113.33:80")).0,
        set(&["DROP"])
    );
    assert_eq!(
        destinations(&bed.tcp(OUTSIDE, "192.168.56.10:30082")).0,
        set(&["DROP"])
    );
    // ... while the cluster IP still works, and pods still short-circuit.
    assert_eq!(
        destinations(&bed.tcp(POD_A, "172.30.0.32:80")).0,
        set(&["10.244.2.32:8080"])
    );
    assert_eq!(
        destinations(&bed.tcp(POD_A, "203.0.113.33:80")).0,
        set(&["10.244.2.32:8080"])
    );
}

#[test]
fn internal_traffic_policy_local() {
    let bed = Bed::examples();
    let out = bed.tcp(POD_A, "172.30.0.50:80");
    assert_eq!(destinations(&out), (set(&["10.244.1.50:8080"]), false));
}

#[test]
fn internal_traffic_policy_local_without_local_endpoint_drops() {
    let state = common::examples_state(IpFamily::V4);
    let config = common::examples_config(IpFamily::V4, &state);
    // The same Service seen from node-b has no... it has one on node-b. Use a node with none.
    let m = fixtures::examples();
    let (_, other) = common::state_of(&m, IpFamily::V4, "node-c");
    let bed = Bed::new(&other, config);
    assert_eq!(
        destinations(&bed.tcp(POD_A, "172.30.0.50:80")).0,
        set(&["DROP"])
    );
    drop(state);
}

#[test]
fn no_endpoints_rejects() {
    let bed = Bed::examples();
    assert_eq!(
        destinations(&bed.tcp(POD_A, "172.30.0.70:80")).0,
        set(&["REJECT"])
    );
    let out = bed.send(NODE_IP, "172.30.0.70:80", "tcp", Origin::LocalProcess);
    assert_eq!(destinations(&out).0, set(&["REJECT"]));
}

#[test]
fn terminating_endpoints_are_the_fallback() {
    let bed = Bed::examples();
    let out = bed.tcp(POD_A, "172.30.0.71:80");
    assert_eq!(destinations(&out), (set(&["10.244.1.71:8080"]), false));
}

#[test]
fn client_ip_affinity_sticks() {
    let mut bed = Bed::examples();
    let first = bed.tcp(POD_A, "172.30.0.60:80");
    assert_eq!(
        destinations(&first).0,
        set(&["10.244.1.60:8080", "10.244.2.60:8080"])
    );
    // Take the outcome that went to 10.244.2.60, and replay with the list it set.
    let chosen = first
        .iter()
        .find(|o| dnat(o) == Some("10.244.2.60:8080".parse().unwrap()))
        .unwrap();
    assert_eq!(chosen.recent_set.len(), 1);
    bed.env.recent = chosen.recent_set.iter().cloned().collect();
    let again = bed.tcp(POD_A, "172.30.0.60:80");
    assert_eq!(destinations(&again).0, set(&["10.244.2.60:8080"]));
    assert_eq!(again.len(), 1);
    assert!((again[0].probability - 1.0).abs() < 1e-9);
}

#[test]
fn udp_and_sctp_ports() {
    let bed = Bed::examples();
    let out = bed.send(POD_A, "172.30.0.10:53", "udp", Origin::External);
    assert_eq!(
        destinations(&out).0,
        set(&["10.244.1.10:5353", "10.244.2.10:5353"])
    );
    // TCP to the UDP port is not the service.
    let out = bed.tcp(POD_A, "172.30.0.10:53");
    assert_eq!(destinations(&out).0, set(&["ACCEPT"]));
    let out = bed.send(POD_A, "172.30.0.80:3868", "sctp", Origin::External);
    assert_eq!(destinations(&out).0, set(&["10.244.2.80:3868"]));
}

#[test]
fn hairpin_to_own_service_is_masqueraded() {
    let bed = Bed::examples();
    let out = bed.tcp("10.244.1.10", "172.30.0.10:80");
    for o in &out {
        let to = dnat(o).unwrap();
        let hairpin = to.ip() == "10.244.1.10".parse::<IpAddr>().unwrap();
        assert_eq!(o.masqueraded, hairpin, "{o:?}");
    }
    assert_eq!(out.len(), 2);
}

#[test]
fn topology_hints_pick_the_zone_endpoint() {
    let bed = Bed::examples();
    assert_eq!(
        destinations(&bed.tcp(POD_A, "172.30.0.82:80")).0,
        set(&["10.244.3.82:8080"])
    );
}

#[test]
fn masquerade_all_masquerades_pods_too() {
    let state = common::examples_state(IpFamily::V4);
    let mut config = common::examples_config(IpFamily::V4, &state);
    config.masquerade_all = true;
    let bed = Bed::new(&state, config);
    let out = bed.tcp(POD_A, "172.30.0.10:80");
    assert!(out.iter().all(|o| o.masqueraded));
}

#[test]
fn ipv6_cluster_ip() {
    let state = common::examples_state(IpFamily::V6);
    let config = common::examples_config(IpFamily::V6, &state);
    let bed = Bed::new(&state, config);
    let out = bed.tcp("fd00:244:1::99", "[fd00:30::81]:80");
    assert_eq!(destinations(&out), (set(&["[fd00:244:1::81]:8080"]), false));
}

#[test]
fn spreading_over_many_endpoints_is_uniform() {
    let m = fixtures::generate(&fixtures::ScaleConfig::new(3, 7));
    let (_, state) = common::state_of(&m, IpFamily::V4, "elsewhere");
    let config = RenderConfig::new(IpFamily::V4);
    let bed = Bed::new(&state, config);
    let out = bed.tcp("10.99.0.1", "172.30.0.2:80");
    assert_eq!(out.len(), 7);
    for o in &out {
        assert!((o.probability - 1.0 / 7.0).abs() < 1e-6, "{o:?}");
    }
}
