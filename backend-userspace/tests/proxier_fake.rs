//! `UserspaceProxier` against the iptables fake, with real listeners on loopback: which syncs
//! write rules (only those whose rules changed, or full ones), that jumps are added once and
//! repaired, that a failed restore leads to a full sync, and that cleanup leaves nothing — without
//! root.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use backend_userspace::{
    EndpointSet, ListenerKey, ListenerSettings, RetryPolicy, UserspaceProxier,
};
use iptables_tool::fake::{Call, SharedFake};
use iptables_tool::IptablesOps;
use proxy_core::proxy_port_metrics::ProxyPortMetrics;
use proxy_core::{
    EndpointSliceHandler, IpFamily, NamespacedName, NodeHandler, NodeInfo, PendingChanges,
    Protocol, Proxier, ProxyState, ServiceFilter, ServiceHandler, ServicePortName,
};

fn state_of(m: &fixtures::Manifests) -> (PendingChanges, ProxyState) {
    let node = fixtures::EXAMPLE_NODE;
    let mut p = PendingChanges::new(IpFamily::V4, node, ServiceFilter::default());
    m.services.iter().for_each(|s| p.on_service_add(s));
    m.endpoint_slices
        .iter()
        .for_each(|s| p.on_endpoint_slice_add(s));
    m.nodes.iter().for_each(|n| p.on_node_change(n));
    let mut s = ProxyState::new(IpFamily::V4, NodeInfo::named(node));
    s.apply(&mut p);
    (p, s)
}

fn web_http() -> ListenerKey {
    ListenerKey {
        port: ServicePortName::new(NamespacedName::new("ns1", "web"), "http", Protocol::Tcp),
        endpoints: EndpointSet::Cluster,
    }
}

fn restores(fake: &SharedFake) -> Vec<String> {
    fake.lock()
        .calls
        .iter()
        .filter_map(|c| match c {
            Call::Restore(t) => Some(t.clone()),
            _ => None,
        })
        .collect()
}

fn nat_rules(fake: &SharedFake, chain: &str) -> Vec<String> {
    let f = fake.lock();
    f.rules
        .table("nat")
        .and_then(|t| t.chain(chain))
        .map(|rules| rules.iter().map(|r| r.to_string()).collect())
        .unwrap_or_default()
}

fn jumps_to(fake: &SharedFake, table: &str, from: &str, to: &str) -> usize {
    let f = fake.lock();
    f.rules
        .table(table)
        .and_then(|t| t.chain(from))
        .map_or(0, |rules| {
            rules.iter().filter(|r| r.jump_target() == Some(to)).count()
        })
}

#[test]
fn syncs_write_rules_only_when_they_change_and_repair_jumps() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let m = fixtures::examples();
    let (mut pending, mut state) = state_of(&m);
    let fake = SharedFake::default();
    let metrics = ProxyPortMetrics::default();
    let mut proxier = UserspaceProxier::new(
        ListenerSettings {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port_range: None,
            udp_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
        },
        runtime.handle().clone(),
        Box::new(fake.clone()),
        metrics,
    );

    // First sync: full, rules and jumps written, a listener per proxied port.
    let report = proxier.sync(&state, &state.resync_diff()).unwrap();
    assert!(report.full);
    let port = proxier
        .proxy_port(&web_http())
        .expect("web:http has a listener");
    let redirect = format!("-j REDIRECT --to-ports {port}");
    assert!(
        nat_rules(&fake, "KUBE-PORTALS-CONTAINER")
            .iter()
            .any(|r| r.contains("172.30.0.10/32") && r.contains(&redirect)),
        "{:?}",
        nat_rules(&fake, "KUBE-PORTALS-CONTAINER")
    );
    for (table, from, to) in [
        ("nat", "PREROUTING", "KUBE-PORTALS-CONTAINER"),
        ("nat", "PREROUTING", "KUBE-NODEPORT-CONTAINER"),
        ("nat", "OUTPUT", "KUBE-PORTALS-HOST"),
        ("nat", "OUTPUT", "KUBE-NODEPORT-HOST"),
        ("filter", "INPUT", "KUBE-PORTALS-FILTER"),
        ("filter", "FORWARD", "KUBE-PORTALS-FILTER"),
        ("filter", "OUTPUT", "KUBE-PORTALS-FILTER"),
    ] {
        assert_eq!(jumps_to(&fake, table, from, to), 1, "{from} -> {to}");
    }
    // The listener answers on loopback.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());

    // Nothing changed: no restore.
    let before = restores(&fake).len();
    let report = proxier
        .sync(&state, &proxy_core::StateDiff::default())
        .unwrap();
    assert!(!report.full);
    assert_eq!(report.total_written(), 0);
    assert_eq!(restores(&fake).len(), before);

    // An endpoint moves: the balancer is updated, the listener and the rules stay.
    let slice = m
        .endpoint_slices
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("web-x7k2p"))
        .unwrap();
    let mut moved = slice.clone();
    moved.endpoints.as_mut().unwrap()[1].addresses = vec!["10.244.2.99".into()];
    pending.on_endpoint_slice_update(slice, &moved);
    let diff = state.apply(&mut pending);
    proxier.sync(&state, &diff).unwrap();
    assert_eq!(restores(&fake).len(), before, "no rule changed");
    assert_eq!(proxier.proxy_port(&web_http()), Some(port));

    // Every endpoint goes: one restore, REJECT instead of the REDIRECT, listener closed.
    let mut empty = moved.clone();
    empty.endpoints = Some(Vec::new());
    pending.on_endpoint_slice_update(&moved, &empty);
    let diff = state.apply(&mut pending);
    proxier.sync(&state, &diff).unwrap();
    let written = restores(&fake);
    assert_eq!(written.len(), before + 1);
    let last = written.last().unwrap();
    assert!(!last.contains("ns1/web:http cluster IP\" -m tcp --dport 80 -j REDIRECT"));
    assert!(last.contains("ns1/web:http cluster IP has no endpoints\" -m tcp --dport 80 -j REJECT"));
    assert_eq!(proxier.proxy_port(&web_http()), None);

    // A failed restore, then the full sync the lifecycle asks for after a failure
    // (`proxy_core::ManagedProxier`, tested in proxy-core): it repairs a jump someone deleted
    // meanwhile.
    fake.lock().fail_next_restore = true;
    pending.on_endpoint_slice_update(&empty, slice);
    let diff = state.apply(&mut pending);
    assert!(proxier.sync(&state, &diff).is_err());
    let jump = [
        "-t",
        "nat",
        "-D",
        "PREROUTING",
        "-m",
        "comment",
        "--comment",
        "handle ClusterIPs; NOTE: this must be before the NodePort rules",
        "-j",
        "KUBE-PORTALS-CONTAINER",
    ];
    assert!(fake.clone().run(&jump).unwrap(), "the jump was there");
    let report = proxier.sync(&state, &state.resync_diff()).unwrap();
    assert!(report.full, "after a failure");
    assert_eq!(
        jumps_to(&fake, "nat", "PREROUTING", "KUBE-PORTALS-CONTAINER"),
        1
    );
    let port = proxier.proxy_port(&web_http()).expect("listener again");
    assert!(nat_rules(&fake, "KUBE-PORTALS-HOST")
        .iter()
        .any(|r| r.contains(&format!("--to-ports {port}"))));

    // Cleanup: no chain, no jump, no listener.
    proxier.cleanup().unwrap();
    for (table, from, to) in [
        ("nat", "PREROUTING", "KUBE-PORTALS-CONTAINER"),
        ("nat", "OUTPUT", "KUBE-NODEPORT-HOST"),
        ("filter", "FORWARD", "KUBE-PORTALS-FILTER"),
    ] {
        assert_eq!(jumps_to(&fake, table, from, to), 0, "{from} -> {to}");
    }
    let f = fake.lock();
    for (table, chain) in backend_userspace::rules::OWNED_CHAINS {
        assert!(
            f.rules.table(table).and_then(|t| t.chain(chain)).is_none(),
            "{table}/{chain} left"
        );
    }
    drop(f);
    // The listener's task is aborted; the runtime drops it (closing the socket) on its next turn,
    // later on a busy machine.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the listener on {port} is still open 30 s after cleanup"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
