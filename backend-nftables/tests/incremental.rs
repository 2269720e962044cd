//! Incremental syncs leave the kernel holding exactly what a fresh full load of the same state
//! gives: after every step of a sequence of changes (Services added and removed, endpoints
//! changing, two Services claiming the same external IP and port, session affinity switched on
//! and off, a Service losing and regaining its endpoints), the table one proxier updated
//! incrementally and the table a new proxier loads from scratch, in another network namespace,
//! are compared object by object (chains, each chain's rules in order, each set's elements),
//! read back from the kernel. Needs root; skips, saying why, elsewhere.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc;

use backend_nftables::{NftablesProxier, NftablesSettings};
use fixtures::builder::{EndpointBuilder, ServiceBuilder, SliceBuilder};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kproxy_netlink::nftables::batch::NftSocket;
use kproxy_netlink::nftables::objects::{self, NFPROTO_IPV4};
use kproxy_netlink::nftables::wire::{emit_attributes, msg, NftAttribute, NftMessage};
use proxy_core::datapath::DetectLocalMode;
use proxy_core::{
    EndpointSliceHandler, IpFamily, NodeInfo, PendingChanges, Proxier, ProxyState, ServiceFilter,
    ServiceHandler,
};

const NODE: &str = "node-a";

/// What the kernel holds in table `ip kube-proxy`, in a form that does not depend on the order
/// objects were created in.
#[derive(Debug, Default, PartialEq, Eq)]
struct Held {
    chains: BTreeSet<String>,
    rules: BTreeMap<String, Vec<String>>,
    elements: BTreeMap<String, BTreeMap<String, usize>>,
}

fn hex(m: &NftMessage, kind: u16) -> String {
    let mut b = Vec::new();
    if let Some(a) = m.attribute(kind) {
        emit_attributes(&[without_regions(a)], &mut b);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A rule's expressions with the region a DNAT rule ORs into `meta random` zeroed: which
/// region of its endpoint map a Service port got depends on the order ports came and went, so a
/// table updated incrementally and one loaded at once number them differently.
fn without_regions(exprs: &NftAttribute) -> NftAttribute {
    let Ok(list) = exprs.children() else {
        return exprs.clone();
    };
    let list = list
        .into_iter()
        .map(|e| {
            let Ok(parts) = e.children() else { return e };
            if parts
                .iter()
                .any(|p| p.kind == 1 && p.as_string().as_deref() == Some("bitwise"))
            {
                let parts = parts
                    .into_iter()
                    .map(|p| {
                        if p.kind != 2 {
                            return p;
                        }
                        let data = p
                            .children()
                            .unwrap()
                            .into_iter()
                            .map(|d| {
                                if d.kind == 5 {
                                    // NFTA_BITWISE_XOR: the region.
                                    NftAttribute::bytes(5, vec![0; d.value_bytes().len()])
                                } else {
                                    d
                                }
                            })
                            .collect();
                        NftAttribute::nested(2, data)
                    })
                    .collect();
                return NftAttribute::nested(e.kind, parts);
            }
            e
        })
        .collect();
    NftAttribute::nested(exprs.kind, list)
}

fn held(socket: &mut NftSocket) -> Held {
    let mut h = Held::default();
    let table = "kube-proxy";
    socket
        .dump(
            objects::dump_request(msg::GETCHAIN, NFPROTO_IPV4, table),
            "chains",
            |m| {
                h.chains.insert(objects::dumped_name(&m).unwrap());
            },
        )
        .unwrap();
    socket
        .dump(
            objects::dump_request(msg::GETRULE, NFPROTO_IPV4, table),
            "rules",
            |m| {
                let chain = m.attribute(2).and_then(|a| a.as_string()).unwrap();
                // The expressions (4) and the comment (7); not the handle.
                h.rules
                    .entry(chain)
                    .or_default()
                    .push(format!("{} {}", hex(&m, 4), hex(&m, 7)));
            },
        )
        .unwrap();
    let mut sets = Vec::new();
    socket
        .dump(
            objects::dump_request(msg::GETSET, NFPROTO_IPV4, table),
            "sets",
            |m| sets.push(objects::dumped_name(&m).unwrap()),
        )
        .unwrap();
    for set in sets {
        let mut elements = BTreeMap::new();
        socket
            .dump(
                objects::dump_elements_request(NFPROTO_IPV4, table, &set),
                "elements",
                |m| {
                    for mut e in objects::dumped_elements(&m) {
                        if set.starts_with("service-endpoints-") {
                            // The range within the port's region (see `without_regions`).
                            let k = u32::from_be_bytes(e.key[..4].try_into().unwrap());
                            e.key = (k & 0x7fff).to_be_bytes().to_vec();
                        }
                        *elements
                            .entry(format!("{:?}", (e.key, e.verdict, e.data, e.interval_end)))
                            .or_insert(0) += 1;
                    }
                },
            )
            .unwrap();
        h.elements.insert(set, elements);
    }
    h
}

fn settings() -> NftablesSettings {
    NftablesSettings::new(DetectLocalMode::ClusterCidr(vec!["10.244.0.0/16"
        .parse()
        .unwrap()]))
}

/// A proxier in a network namespace of its own, on a thread of its own (a network namespace
/// is per thread): it applies each state it is sent and answers with what the kernel holds.
fn namespace_worker(
    fresh_each_time: bool,
) -> (
    mpsc::Sender<Vec<(Service, EndpointSlice)>>,
    mpsc::Receiver<Held>,
) {
    let (tx, rx) = mpsc::channel::<Vec<(Service, EndpointSlice)>>();
    let (htx, hrx) = mpsc::channel();
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
        let open = || {
            NftablesProxier::open(IpFamily::V4, settings())
                .unwrap()
                .with_node_addresses(vec!["192.168.56.10".parse().unwrap()])
        };
        let mut proxier = open();
        let mut pending = PendingChanges::new(IpFamily::V4, NODE, ServiceFilter::default());
        let mut state = ProxyState::new(IpFamily::V4, NodeInfo::named(NODE));
        let mut previous: Vec<(Service, EndpointSlice)> = Vec::new();
        let mut socket = NftSocket::open().unwrap();
        let mut first = true;
        while let Ok(objects) = rx.recv() {
            if fresh_each_time {
                pending = PendingChanges::new(IpFamily::V4, NODE, ServiceFilter::default());
                state = ProxyState::new(IpFamily::V4, NodeInfo::named(NODE));
                previous.clear();
                proxier = open();
            }
            for (s, e) in &previous {
                if !objects
                    .iter()
                    .any(|(s2, _)| s2.metadata.name == s.metadata.name)
                {
                    pending.on_service_delete(s);
                    pending.on_endpoint_slice_delete(e);
                }
            }
            for (s, e) in &objects {
                match previous
                    .iter()
                    .find(|(s2, _)| s2.metadata.name == s.metadata.name)
                {
                    Some((s0, e0)) => {
                        pending.on_service_update(s0, s);
                        pending.on_endpoint_slice_update(e0, e);
                    }
                    None => {
                        pending.on_service_add(s);
                        pending.on_endpoint_slice_add(e);
                    }
                }
            }
            let diff = state.apply(&mut pending);
            let report = proxier.sync(&state, &diff).expect("sync");
            // The first sync of a proxier loads the table; the others are incremental.
            assert_eq!(report.full, fresh_each_time || first, "{diff:?}");
            first = false;
            previous = objects;
            htx.send(held(&mut socket)).unwrap();
        }
    });
    (tx, hrx)
}

fn service(
    name: &str,
    ip: &str,
    extra: impl Fn(ServiceBuilder) -> ServiceBuilder,
    endpoints: &[&str],
) -> (Service, EndpointSlice) {
    let s = extra(ServiceBuilder::new("ns1", name, ip).port("http", 80, "TCP")).build();
    let mut b = SliceBuilder::new("ns1", &format!("{name}-1"), name).port("http", 8080, "TCP");
    for (i, ep) in endpoints.iter().enumerate() {
        let node = if i % 2 == 0 { NODE } else { "node-b" };
        b = b.endpoint(EndpointBuilder::ready(ep).node(node));
    }
    (s, b.build())
}

#[test]
fn incremental_syncs_hold_what_a_full_load_holds() {
    if !fixtures::running_as_root() {
        eprintln!("skipped: not root");
        return;
    }
    let plain = |b: ServiceBuilder| b;
    let steps: Vec<Vec<(Service, EndpointSlice)>> = vec![
        vec![
            service("a", "172.30.0.1", plain, &["10.244.1.1", "10.244.2.1"]),
            service("b", "172.30.0.2", plain, &["10.244.1.2"]),
        ],
        // An endpoint added to a; c arrives, claiming the same external IP and port as d.
        vec![
            service(
                "a",
                "172.30.0.1",
                plain,
                &["10.244.1.1", "10.244.2.1", "10.244.1.9"],
            ),
            service("b", "172.30.0.2", plain, &["10.244.1.2"]),
            service(
                "c",
                "172.30.0.3",
                |b| b.external_ips(&["192.168.57.1"]),
                &["10.244.1.3"],
            ),
            service(
                "d",
                "172.30.0.4",
                |b| b.external_ips(&["192.168.57.1"]),
                &["10.244.1.4"],
            ),
        ],
        // c (which held the shared frontend) leaves: d's verdict takes over.
        vec![
            service(
                "a",
                "172.30.0.1",
                plain,
                &["10.244.1.1", "10.244.2.1", "10.244.1.9"],
            ),
            service("b", "172.30.0.2", plain, &["10.244.1.2"]),
            service(
                "d",
                "172.30.0.4",
                |b| b.external_ips(&["192.168.57.1"]),
                &["10.244.1.4"],
            ),
        ],
        // b loses its endpoints (REJECT); a turns sticky; a NodePort LB with source ranges.
        vec![
            service(
                "a",
                "172.30.0.1",
                |b| b.client_ip_affinity(Some(60)),
                &["10.244.1.1", "10.244.2.1"],
            ),
            service("b", "172.30.0.2", plain, &[]),
            service(
                "d",
                "172.30.0.4",
                |b| b.external_ips(&["192.168.57.1"]),
                &["10.244.1.4"],
            ),
            service(
                "e",
                "172.30.0.5",
                |b| {
                    b.type_("LoadBalancer")
                        .ingress_ip("192.168.58.1")
                        .source_ranges(&["192.168.56.0/24"])
                        .external_traffic_local()
                },
                &["10.244.1.5", "10.244.2.5"],
            ),
        ],
        // a is not sticky any more; b has an endpoint again; d and e leave.
        vec![
            service("a", "172.30.0.1", plain, &["10.244.1.1"]),
            service("b", "172.30.0.2", plain, &["10.244.1.2", "10.244.2.2"]),
        ],
        vec![],
    ];
    let (inc_tx, inc_rx) = namespace_worker(false);
    let (full_tx, full_rx) = namespace_worker(true);
    for (i, objects) in steps.into_iter().enumerate() {
        inc_tx.send(objects.clone()).unwrap();
        full_tx.send(objects).unwrap();
        let (inc, full) = (
            inc_rx.recv().expect("incremental worker"),
            full_rx.recv().expect("full worker"),
        );
        assert!(!full.chains.is_empty());
        assert_eq!(inc.chains, full.chains, "step {i}: chains");
        assert_eq!(inc.rules, full.rules, "step {i}: rules");
        assert_eq!(inc.elements, full.elements, "step {i}: elements");
    }
}
