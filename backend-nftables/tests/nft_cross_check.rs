//! The two readings of one plan agree: `nft -f` of the rendered ruleset sends, byte for byte, the
//! commands the proxier sends for a full load (`program::Writer::full_load`). Run on the bundled
//! examples (every kind of Service), for IPv4 and IPv6, in a scratch network namespace: `nft`'s
//! batch is recorded with strace. Rules are compared chain by chain in order, everything else
//! (tables, chains, sets, counters, elements one by one) as a multiset. Needs root, nft and
//! strace; skips, saying why, without them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::Command;

use backend_nftables::plan::base_plan;
use backend_nftables::program::Writer;
use backend_nftables::proxier::plan_context;
use backend_nftables::render::{plans, write_plans};
use backend_nftables::NftablesSettings;
use fixtures::builder::{EndpointBuilder, ServiceBuilder, SliceBuilder};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kproxy_netlink::nftables::batch::Transaction;
use kproxy_netlink::nftables::wire::{emit_attributes, msg, NftMessage, NftMessageType};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use proxy_core::datapath::DetectLocalMode;
use proxy_core::{
    EndpointSliceHandler, IpFamily, NodeInfo, PendingChanges, ProxyState, ServiceFilter,
    ServiceHandler,
};

fn skip_reason() -> Option<String> {
    let root = fixtures::running_as_root();
    if !root {
        return Some("not root".into());
    }
    ["nft", "strace", "ip"]
        .into_iter()
        .find(|tool| !fixtures::command_exists(tool))
        .map(|tool| format!("{tool} not installed"))
}

/// IPv6 Services of every shape (the examples are mostly IPv4): NodePort, affinity,
/// load balancer with source ranges and a Local policy, UDP, no endpoints.
fn ipv6_services() -> Vec<(Service, EndpointSlice)> {
    let slice = |svc: &str, port: i32, proto: &str, eps: &[(&str, &str)]| {
        let mut b = SliceBuilder::new("v6", &format!("{svc}-1"), svc)
            .address_type("IPv6")
            .port("p", port, proto);
        for (ip, node) in eps {
            b = b.endpoint(EndpointBuilder::ready(ip).node(node));
        }
        b.build()
    };
    let eps = [
        ("fd00:244:1::11", fixtures::EXAMPLE_NODE),
        ("fd00:244:2::12", "node-b"),
    ];
    vec![
        (
            ServiceBuilder::new("v6", "np", "fd00:96::10")
                .type_("NodePort")
                .node_port("p", 80, "TCP", 30610)
                .build(),
            slice("np", 8080, "TCP", &eps),
        ),
        (
            ServiceBuilder::new("v6", "sticky", "fd00:96::11")
                .port("p", 80, "TCP")
                .client_ip_affinity(Some(300))
                .build(),
            slice("sticky", 8080, "TCP", &eps),
        ),
        (
            ServiceBuilder::new("v6", "lb", "fd00:96::12")
                .type_("LoadBalancer")
                .node_port("p", 443, "TCP", 30611)
                .ingress_ip("fd00:56::100")
                .source_ranges(&["fd00:56::/64", "2001:db8::/33"])
                .external_traffic_local()
                .health_check_node_port(30612)
                .build(),
            slice("lb", 8443, "TCP", &eps),
        ),
        (
            ServiceBuilder::new("v6", "dns", "fd00:96::13")
                .port("p", 53, "UDP")
                .external_ips(&["fd00:56::53"])
                .build(),
            slice("dns", 5353, "UDP", &eps),
        ),
        (
            ServiceBuilder::new("v6", "empty", "fd00:96::14")
                .port("p", 80, "TCP")
                .build(),
            slice("empty", 8080, "TCP", &[]),
        ),
    ]
}

fn state(family: IpFamily) -> ProxyState {
    let manifests = fixtures::examples();
    let mut p = PendingChanges::new(family, fixtures::EXAMPLE_NODE, ServiceFilter::default());
    for s in &manifests.services {
        p.on_service_add(s);
    }
    for s in &manifests.endpoint_slices {
        p.on_endpoint_slice_add(s);
    }
    for (s, e) in ipv6_services() {
        p.on_service_add(&s);
        p.on_endpoint_slice_add(&e);
    }
    let mut node = NodeInfo::named(fixtures::EXAMPLE_NODE);
    node.addresses = vec![
        "192.168.56.10".parse().unwrap(),
        "fd00:56::10".parse().unwrap(),
    ];
    let mut st = ProxyState::new(family, node);
    st.apply(&mut p);
    assert!(!st.is_empty(), "the examples hold Services of this family");
    st
}

/// What `nft -f <text>` sends, recorded in a fresh namespace.
fn nft_sends(text: &str, tag: &str) -> Vec<(u16, NftMessage)> {
    let ns = format!("kpx-nftcc-{tag}-{}", std::process::id());
    assert!(Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .unwrap()
        .success());
    let file = std::env::temp_dir().join(format!("{ns}.nft"));
    std::fs::write(&file, text).unwrap();
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            "strace",
            "-xx",
            "-e",
            "trace=sendmsg",
            "-e",
            "write=all",
        ])
        .arg("nft")
        .arg("-f")
        .arg(&file)
        .output()
        .unwrap();
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    let _ = std::fs::remove_file(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "nft -f failed: {}", tail(&stderr));
    // strace's dump: " | 00000  14 00 00 00 …  ascii |", one sendmsg after another.
    let mut datagrams: Vec<Vec<u8>> = Vec::new();
    for line in stderr.lines() {
        if line.starts_with("sendmsg(") {
            datagrams.push(Vec::new());
        } else if let (Some(rest), Some(d)) =
            (line.trim_start().strip_prefix("| "), datagrams.last_mut())
        {
            let hex = &rest[7..rest.len().min(7 + 49)];
            d.extend(
                hex.split_whitespace()
                    .map(|b| u8::from_str_radix(b, 16).unwrap()),
            );
        }
    }
    let mut out = Vec::new();
    for d in datagrams {
        let mut at = 0;
        while at + 16 <= d.len() {
            let m = NetlinkMessage::<NftMessage>::deserialize(&d[at..]).unwrap();
            let len = m.header.length as usize;
            if let NetlinkPayload::InnerMessage(inner) = m.payload {
                out.push((m.header.flags, inner));
            }
            at += (len + 3) & !3;
        }
    }
    out
}

fn tail(s: &str) -> String {
    s.chars()
        .rev()
        .take(2000)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect()
}

/// Rules per chain in order; every other message, and every element on its own, as a multiset.
#[derive(Debug, Default, PartialEq, Eq)]
struct Facts {
    rules: BTreeMap<String, Vec<String>>,
    others: BTreeMap<String, usize>,
}

fn hex(m: &NftMessage, flags: u16) -> String {
    let mut b = Vec::new();
    emit_attributes(&m.attributes, &mut b);
    format!(
        "{:?} f{} fl{:x} {}",
        m.message_type,
        m.family,
        flags & !0x4, // NLM_F_ACK: ours asks for one on the last command
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

fn facts(messages: &[(u16, NftMessage)]) -> Facts {
    let mut f = Facts::default();
    for (flags, m) in messages {
        match m.message_type {
            NftMessageType::Command(msg::NEWRULE) => {
                let chain = m.attribute(2).and_then(|a| a.as_string()).unwrap();
                f.rules.entry(chain).or_default().push(hex(m, *flags));
            }
            NftMessageType::Command(msg::NEWSETELEM) => {
                let set = m.attribute(2).and_then(|a| a.as_string()).unwrap();
                for e in m.attribute(3).unwrap().children().unwrap() {
                    let mut one = e.clone();
                    one.kind = 1; // nft numbers elements by position in its message
                    let mut b = Vec::new();
                    emit_attributes(&[one], &mut b);
                    let key = format!(
                        "element {set} {}",
                        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
                    );
                    *f.others.entry(key).or_default() += 1;
                }
            }
            NftMessageType::Command(_) => *f.others.entry(hex(m, *flags)).or_default() += 1,
            _ => {}
        }
    }
    f
}

fn check(family: IpFamily, tag: &str) {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let st = state(family);
    let mut settings = NftablesSettings::new(DetectLocalMode::ClusterCidr(vec![
        "10.244.0.0/16".parse().unwrap(),
        "fd00:244::/48".parse().unwrap(),
    ]));
    settings.node_port_addresses =
        proxy_core::datapath::NodePortAddressSpec::parse(&["192.168.56.0/24", "fd00:56::/64"])
            .unwrap();
    let addrs: Vec<IpAddr> = st.node().addresses.clone();
    let ctx = plan_context(family, &settings, &st, Some(&addrs));
    let base = base_plan(&ctx);
    let ports = plans(&st, &ctx);
    let mut text = String::new();
    write_plans(family, &base, &ports, &mut text);

    let mut tx = Transaction::new();
    Writer::new(family, &mut tx).full_load(&base, ports.iter(), false);
    let ours = facts(&tx.messages());
    let theirs = facts(&nft_sends(&text, tag));
    assert_eq!(
        ours.rules.keys().collect::<Vec<_>>(),
        theirs.rules.keys().collect::<Vec<_>>(),
        "chains with rules"
    );
    for (chain, rules) in &ours.rules {
        assert_eq!(rules, &theirs.rules[chain], "rules of {chain}");
    }
    let only_ours: Vec<_> = ours
        .others
        .iter()
        .filter(|(k, n)| theirs.others.get(*k) != Some(n))
        .collect();
    let only_theirs: Vec<_> = theirs
        .others
        .iter()
        .filter(|(k, n)| ours.others.get(*k) != Some(n))
        .collect();
    assert!(
        only_ours.is_empty() && only_theirs.is_empty(),
        "ours only: {only_ours:#?}\nnft only: {only_theirs:#?}"
    );
    // The base chains alone have rules in 14 chains; every Service port adds at least one.
    assert!(
        ours.rules.len() > 14 + st.len() / 2 && ours.others.len() > 30,
        "a real ruleset was compared: {} chains with rules, {} other facts",
        ours.rules.len(),
        ours.others.len()
    );
}

#[test]
fn ipv4_full_load_is_what_nft_sends_for_the_rendering() {
    check(IpFamily::V4, "v4");
}

#[test]
fn ipv6_full_load_is_what_nft_sends_for_the_rendering() {
    check(IpFamily::V6, "v6");
}
